# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""The official Backend.AI CLI 23.9.10 runs code on bai: `run`, `start`, `rm` (seed commands)."""

from __future__ import annotations

import re
import textwrap
from decimal import Decimal

import pytest
from official import (
    requires_official,
    row_named,
    unique_name,
)

pytestmark = [requires_official, pytest.mark.official_client]

_READY = re.compile(r"Session ID ([0-9a-f-]{36}) is created and ready")


def test_run_rm_hello_world(admin):
    """The seed's first command, as written (with the `python` alias)."""
    res = admin("run", "--rm", "-c", 'print("hello world")', "python")
    assert res.stdout == "hello world\n"
    m = re.search(r"Session name prefix: (\S+)", res.stderr)
    assert m, res
    name = m.group(1)
    assert f"Session {name} is ready" in res.stderr
    assert "Execution finished. (exit code = 0)" in res.stderr
    # --rm: the client destroyed it after the execution
    admin.wait_status(name, "TERMINATED")


def test_run_streams_stdout_stderr_and_exit_code(admin):
    name = unique_name("ofr-io")
    code = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(3)"
    res = admin("run", "--rm", "-t", name, "-c", code, "python")
    assert "to out\n" in res.stdout
    assert "to err\n" in res.stderr
    assert "to err" not in res.stdout
    assert f"Session {name} is ready (domain=default, group=default)" in res.stderr


def test_run_reuses_a_named_session_and_keeps_state(admin):
    name = unique_name("ofr-state")
    try:
        first = admin("run", "-t", name, "-c", "x = 41\nprint('set')", "python")
        assert first.stdout == "set\n"
        assert admin.status_of(name) == "RUNNING"  # no --rm: it stays
        second = admin("run", "-t", name, "-c", "print(x + 1)", "python")
        assert f"Reusing session {name}" in second.stderr
        assert second.stdout == "42\n"
    finally:
        admin("rm", name, check=False)


def test_run_files_with_exec(admin):
    """`run --rm --exec 'python myscript.py arg1 arg2' python ./myscript.py` (seed)."""
    work = admin.workdir / "files1"
    (work / "data").mkdir(parents=True)
    (work / "myscript.py").write_text(textwrap.dedent("""\
        import sys
        print("args:", sys.argv[1:])
        print("data:", open("data/input.txt").read().strip())
    """))
    (work / "data" / "input.txt").write_text("forty-two\n")
    name = unique_name("ofr-files")
    res = admin("run", "--rm", "-t", name, "--exec", "python myscript.py arg1 arg2", "python",
                "./myscript.py", "data/input.txt", cwd=work)
    assert "args: ['arg1', 'arg2']\n" in res.stdout
    assert "data: forty-two\n" in res.stdout
    assert "Uploading done." in res.stderr
    assert "Execution finished. (exit code = 0)" in res.stderr


def test_run_files_exec_exit_code(admin):
    work = admin.workdir / "files2"
    work.mkdir(parents=True)
    (work / "fail.py").write_text("import sys\nprint('failing')\nsys.exit(3)\n")
    res = admin("run", "--rm", "-t", unique_name("ofr-fail"), "--exec", "python fail.py",
                "python", "fail.py", cwd=work)
    assert "failing\n" in res.stdout
    assert "Execution finished. (exit code = 3)" in res.stderr


def test_run_enqueue_only_does_not_execute(admin):
    name = unique_name("ofr-enq")
    try:
        res = admin("run", "--enqueue-only", "-t", name, "-c", "print('must not run')", "python")
        assert f"Session ID {name} is enqueued for scheduling." in res.stderr
        assert "must not run" not in res.output
        assert "Execution finished" not in res.stderr
        # the session exists and is scheduled normally afterwards
        admin.wait_status(name, "RUNNING")
    finally:
        admin("rm", name, check=False)


def test_run_with_resources(admin):
    """Repeated -r options become the session's occupying slots."""
    name = unique_name("ofr-res")
    try:
        res = admin("run", "-t", name, "-r", "cpu=2", "-r", "mem=768m", "-r", "cuda.shares=2",
                    "-c", "print('with slots')", "python")
        assert res.stdout == "with slots\n"
        rows = admin.table("ps", "-f", "name,occupying_slots", "--filter", f'name == "{name}"')
        slots = dict(p.split(":", 1) for p in row_named(rows, name)["Occupying Slots"].split(", "))
        assert Decimal(slots["cpu"]) == 2
        assert slots["mem"] == "768.0M"
        assert Decimal(slots["cuda.shares"]) == 2
        item = admin.session_json(name, fields="name,occupying_slots")
        assert Decimal(str(item["occupying_slots"]["mem"])) == 768 * 2**20
    finally:
        admin("rm", name, check=False)


def test_run_errors_are_reported(admin):
    res = admin("run", "--rm", "-t", unique_name("ofr-bad"), "-r", "cpu=abc", "-c", "print(1)",
                "python")
    assert "BackendAPIError(400" in res.stderr
    res = admin("run", "--rm", "-t", unique_name("ofr-bad"), "-c", "print(1)",
                "no-such-image:0.0")
    assert "BackendAPIError(" in res.stderr
    assert "1\n" not in res.stdout


def test_start_named_then_reuse(admin):
    name = unique_name("ofr-start")
    try:
        res = admin("start", "-t", name, "python")
        m = _READY.search(res.stderr)
        assert m, res
        sid = m.group(1)
        rows = admin.table("ps", "--filter", f'name == "{name}"')
        row = row_named(rows, name)
        assert row["Session ID"] == sid and row["Status"] == "RUNNING"
        again = admin("start", "-t", name, "python")
        assert f"Session ID {sid} is already running and ready." in again.stderr
        refused = admin("start", "--no-reuse", "-t", name, "python", check=False)
        assert refused.returncode == 1
        assert "BackendAPIError: 400" in refused.stderr
        assert f"Existing session ID: {sid}" in refused.stderr
        # `create` and `session create` are the same command
        assert sid in admin("session", "create", "-t", name, "python").stderr
    finally:
        admin("rm", name, check=False)


def test_start_as_user_is_owned_by_user(user, admin):
    name = unique_name("ofr-ustart")
    try:
        sid = _READY.search(user("start", "-t", name, "python").stderr).group(1)
        item = admin.session_json(name, access_key=user.access_key,
                                  fields="name,id,access_key,status")
        assert item == {"name": name, "session_id": sid, "access_key": user.access_key,
                        "status": "RUNNING"}
        # a user cannot remove an admin's session, nor see it by name
        other = unique_name("ofr-astart")
        admin("start", "-t", other, "python")
        res = user("rm", other, check=False)
        assert res.returncode == 1
        assert "404 Not Found" in res.stderr
        assert admin.status_of(other) == "RUNNING"
        admin("rm", other)
    finally:
        user("rm", name, check=False)


def test_rm_running_session(admin):
    name = unique_name("ofr-rm")
    sid = _READY.search(admin("start", "-t", name, "python").stderr).group(1)
    res = admin("rm", name)
    assert "Done." in res.stderr
    admin.wait_status(name, "TERMINATED")
    rows = admin.table("ps", "--dead", "--filter", f'name == "{name}"')
    row = row_named(rows, name)
    assert row["Session ID"] == sid
    assert row["Status"] == "TERMINATED"
    assert row["Status Info"] == "user-requested"
    # not listed among the active ones any more
    assert admin.list_json("ps", "--filter", f'name == "{name}"')["count"] == 0


def test_rm_by_uuid_and_several_at_once(admin):
    a, b = unique_name("ofr-rma"), unique_name("ofr-rmb")
    sid_a = _READY.search(admin("start", "-t", a, "python").stderr).group(1)
    admin("start", "-t", b, "python")
    admin("rm", sid_a, b)
    admin.wait_status(a, "TERMINATED")
    admin.wait_status(b, "TERMINATED")


def test_rm_unknown_session(admin):
    res = admin("rm", unique_name("ofr-nosuch"), check=False)
    assert res.returncode == 1
    assert "BackendAPIError: 404 Not Found" in res.stderr
    assert 'use "-o" / "--owner" option' in res.stderr


def test_start_larger_than_any_agent_is_refused(admin):
    name = unique_name("ofr-huge")
    res = admin("start", "-t", name, "-r", "cpu=1000", "python", check=False, timeout=60)
    assert res.returncode == 1
    assert "BackendAPIError: 4" in res.stderr  # a 4xx problem, printed with its title
    assert len(res.stderr.strip().splitlines()) >= 2
    assert admin.list_json("ps", "--all", "--filter", f'name == "{name}"')["count"] == 0


def test_run_files_with_odd_names_in_subfolders(admin):
    """Upload filenames arrive percent-encoded (`data%20dir%2F...`): bai restores the path."""
    work = admin.workdir / "files3"
    (work / "data dir").mkdir(parents=True)
    (work / "main.py").write_text(
        'import sys\nprint(open("data dir/ü ñ.txt").read().strip(), sys.argv[1:])\n')
    (work / "data dir" / "ü ñ.txt").write_text("unicode ok\n")
    res = admin("run", "--rm", "-t", unique_name("ofr-odd"), "--exec", "python main.py a",
                "python", "main.py", "data dir/ü ñ.txt", cwd=work)
    assert res.stdout == "unicode ok ['a']\n"


def test_run_code_raising_an_exception(admin):
    res = admin("run", "--rm", "-t", unique_name("ofr-exc"), "-c", "1/0", "python")
    assert "ZeroDivisionError" in res.stderr
    assert "Execution finished. (exit code = 1)" in res.stderr


def test_run_max_wait_in_time_works_normally(admin):
    """Seed: "If the session starts within the given --max-wait seconds, it works normally"."""
    res = admin("run", "--rm", "--max-wait", "120", "-t", unique_name("ofr-mw"),
                "-c", "print('in time')", "python")
    assert res.stdout == "in time\n"
    assert "still on the job queue" not in res.stderr


def test_run_streams_large_output_in_order(admin):
    code = "import sys\nfor i in range(20000): print(i, 'y' * 100)\nprint('end', file=sys.stderr)"
    res = admin("run", "--rm", "-t", unique_name("ofr-big"), "-c", code, "python")
    lines = res.stdout.splitlines()
    assert len(lines) == 20000
    assert all(line == f"{i} {'y' * 100}" for i, line in enumerate(lines))
    assert "end\n" in res.stderr
