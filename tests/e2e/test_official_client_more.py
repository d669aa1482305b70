# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""More of what users of the official Backend.AI CLI 23.9.10 do with bai: input to running code,
statistics on `--rm -s` / `rm -s`, `-e` variables, batch sessions and their result, paging,
ordering, filtering and `--plain` listings, `session status-history`, `events --scope kernel`,
`-o` on behalf of another keypair, and `restart` / `session upload|ls|download|rename|logs`."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from official import (
    parse_table,
    requires_official,
    unique_name,
)

pytestmark = [requires_official, pytest.mark.official_client]


@pytest.fixture(scope="module")
def batches(admin):
    """Four finished batch sessions sharing a prefix: two exit 0, two exit 3."""
    prefix = f"ofm{uuid.uuid4().hex[:6]}"
    made = {}
    for i, code in enumerate((0, 3, 0, 3)):
        name = f"{prefix}-b{i}"
        res = admin("start", "--type", "batch", "-t", name, "-c", f"exit {code}", "python")
        assert re.search(r"Session ID [0-9a-f-]{36} is created and ready", res.stderr), res
        made[name] = code
    for name in made:
        admin.wait_status(name, "TERMINATED")
    return prefix, made


def test_run_reads_input(admin):
    res = admin("run", "--rm", "-t", unique_name("ofm-input"),
                "-c", 'x = input("name? ")\nprint("hi", x)', "python", input="bob\n")
    assert "hi bob\n" in res.stdout
    assert "Execution finished. (exit code = 0)" in res.stderr


def test_run_environment_variables(admin):
    res = admin("run", "--rm", "-t", unique_name("ofm-env"), "-e", "FOO=bar=baz", "-e", "N=1",
                "-c", "import os; print(os.environ['FOO'], os.environ['N'])", "python")
    assert res.stdout == "bar=baz 1\n"


def test_run_rm_with_statistics(admin):
    res = admin("run", "--rm", "-s", "-t", unique_name("ofm-stats"), "-c", "print('s')", "python")
    assert res.stdout.startswith("s\n")
    assert "Statistics:" in res.stdout
    assert "Statistics: unavailable" not in res.stdout
    table = res.stdout.split("Statistics:", 1)[1]
    assert re.search(r"^cpu_used\w*\s+[\d,]+", table, re.MULTILINE), table
    assert re.search(r"^mem\w*\s+[\d.]+ \w+", table, re.MULTILINE), table


def test_rm_with_statistics(admin):
    name = unique_name("ofm-rms")
    admin("start", "-t", name, "python")
    res = admin("rm", "-s", name)
    assert "Statistics is not available." not in res.output
    assert re.search(r"^cpu_used\w*\s+[\d,]+", res.stdout, re.MULTILINE), res


def test_batch_sessions_end_with_their_result(admin, batches):
    prefix, made = batches
    rows = admin.table("ps", "--dead", "-f", "name,type,status,status_info,result,startup_command,"
                       "terminated_at", "--filter", f'name like "{prefix}-%"')
    assert {r["Name"] for r in rows} == set(made)
    for r in rows:
        code = made[r["Name"]]
        assert r["Type"] == "BATCH"
        assert r["Status"] == "TERMINATED"
        assert r["Result"] == ("SUCCESS" if code == 0 else "FAILURE")
        assert r["Startup Command"] == f"exit {code}"
        assert r["Terminated At"] != "(null)"


def test_console_paging_lists_every_row_once(admin, batches):
    prefix, made = batches
    flt = f'name like "{prefix}-%"'
    rows = admin.table("ps", "--all", "--limit", "1", "-f", "name,id,status_changed",
                       "--filter", flt)
    assert sorted(r["Name"] for r in rows) == sorted(made)  # four pages of one
    assert len({r["Session ID"] for r in rows}) == 4
    stamps = [r["Last Updated"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)  # most recently changed first
    rows = admin.table("ps", "--all", "--limit", "2", "--offset", "1", "-f", "name",
                       "--filter", flt)
    assert len(rows) == 3


def test_order_filter_plain(admin, batches):
    prefix, made = batches
    flt = f'name like "{prefix}-%"'
    rows = admin.table("ps", "--all", "--order", "name", "-f", "name", "--filter", flt)
    assert [r["Name"] for r in rows] == sorted(made)
    rows = admin.table("ps", "--all", "--order", "-name", "-f", "name", "--filter", flt)
    assert [r["Name"] for r in rows] == sorted(made, reverse=True)
    failed = admin.table("ps", "--all", "-f", "name", "--filter",
                         f'{flt} & result == "FAILURE"')
    assert sorted(r["Name"] for r in failed) == sorted(n for n, c in made.items() if c)
    plain = admin("ps", "--all", "--plain", "--order", "name", "-f", "name,status",
                  "--filter", flt).stdout
    assert [line.split() for line in plain.splitlines() if line.strip()] == [
        [n, "TERMINATED"] for n in sorted(made)]


def test_json_page(admin, batches):
    prefix, _ = batches
    doc = admin.list_json("ps", "--dead", "--limit", "2", "--offset", "2", "--filter",
                          f'name like "{prefix}-%"', "-f", "name,result")
    assert doc["count"] == 2 and doc["total_count"] == 4
    assert all(set(it) == {"name", "result"} for it in doc["items"])


def test_bad_filter_is_a_readable_error(admin):
    res = admin("ps", "--filter", "name === 1", check=False)
    assert res.returncode == 1
    assert "BackendAPIError" in res.stderr


def test_status_history(admin, batches):
    prefix, _ = batches
    res = admin("session", "status-history", f"{prefix}-b0")
    for status in ("PENDING", "SCHEDULED", "PREPARING", "RUNNING", "TERMINATED"):
        assert f"'{status}'" in res.stderr


def test_events_scope_kernel_by_uuid(admin):
    """A batch session ends by itself: `events --scope kernel UUID` shows only kernel events,
    the kernel's exit code, and then ends."""
    name = unique_name("ofm-evk")
    res = admin("start", "--type", "batch", "-t", name, "-c", "sleep 1; exit 2", "python")
    sid = re.search(r"Session ID ([0-9a-f-]{36})", res.stderr).group(1)
    proc = admin.popen("events", "--scope", "kernel", sid)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [line.partition(" ") for line in stdout.splitlines()]
    names = [n for n, _, _ in lines]
    assert "kernel_started" in names and "kernel_terminated" in names
    assert not [n for n in names if n.startswith("session_")]
    assert names[-1] == "server_close"
    terminated = json.loads({n: d for n, _, d in lines}["kernel_terminated"])
    assert terminated["sessionId"] == sid and terminated["exitCode"] == 2
    assert admin.session_json(name, fields="name,result")["result"] == "FAILURE"


def test_admin_acts_for_another_keypair(admin, user):
    """`start -o`, `events -o` and `rm -o` with a user's access key, as an admin."""
    name = unique_name("ofm-owner")
    res = admin("start", "-o", user.access_key, "-t", name, "python")
    sid = re.search(r"Session ID ([0-9a-f-]{36}) is created and ready", res.stderr).group(1)
    item = user.session_json(name, fields="name,id,access_key,status")
    assert item == {"name": name, "session_id": sid, "access_key": user.access_key,
                    "status": "RUNNING"}
    proc = admin.popen("events", "-o", user.access_key, name)
    try:
        assert admin("rm", name, check=False).returncode == 1  # not the admin's own session
        assert user.status_of(name) == "RUNNING"
        admin("rm", "-o", user.access_key, name)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "session_terminated" in stdout and stdout.rstrip().endswith("server_close {}")
    assert user.session_json(name, fields="name,status")["status"] == "TERMINATED"


def test_secondary_session_commands(admin):
    """`session upload|ls|download|rename`, `restart` and `session logs` of a running session."""
    name = unique_name("ofm-sess")
    work = admin.workdir / "sess"
    work.mkdir()
    (work / "up.txt").write_text("uploaded\n")
    admin("start", "-t", name, "python")
    try:
        kernel = admin.session_json(name, fields="name,main_kernel_id")["main_kernel_id"]
        assert admin("run", "-t", name, "-c", "x = 1", "python").returncode == 0
        assert "Uploaded." in admin("session", "upload", name, "up.txt", cwd=work).stderr
        rows = parse_table(admin("session", "ls", name).stdout)
        assert [r["Size"] for r in rows if r["File name"] == "up.txt"] == ["9 Bytes"]
        down = admin.workdir / "down"
        down.mkdir()
        admin("session", "download", name, "up.txt", cwd=down)
        assert (down / "up.txt").read_text() == "uploaded\n"
        admin("session", "logs", name)
        res = admin("restart", name)
        assert "Done." in res.stderr
        admin.wait_status(name, "RUNNING")
        item = admin.session_json(name, fields="name,status,main_kernel_id")
        assert item["main_kernel_id"] != kernel  # a fresh kernel: the interpreter state is gone
        res = admin("run", "-t", name, "-c", "print('x' in dir())", "python")
        assert res.stdout == "False\n"
        renamed = unique_name("ofm-renamed")
        admin("session", "rename", name, renamed)
        assert admin.session_json(renamed, fields="name,main_kernel_id")["main_kernel_id"] == (
            item["main_kernel_id"])
        name = renamed
    finally:
        admin("rm", name, check=False)
