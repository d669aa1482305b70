"""`backend.ai run` / `start` / `rm` as a user types them, against the real embedded stack."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def session_row(stack, name: str, user: bool = False) -> dict | None:
    proc = stack.cli("--output", "json", "ps", "--all", "--all-statuses", "-f",
                     "name,id,status,status_info,occupying_slots", user=user)
    for item in json.loads(proc.stdout)["items"]:
        if item["name"] == name:
            return item
    return None


def test_hello_world(stack):
    proc = stack.cli("run", "--rm", "-c", 'print("hello world")', "python")
    assert proc.stdout == "hello world\n"


def all_sessions(stack) -> dict[str, str]:
    proc = stack.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", "name,status")
    return {i["name"]: i["status"] for i in json.loads(proc.stdout)["items"]}


def test_run_rm_twice_with_one_name_and_without_a_name(stack):
    """``run --rm -t NAME`` back to back: each has ended (TERMINATED) when it returns, so the
    next finds the name free (fails with "already exists" if the command returned while its
    session was still TERMINATING). Without ``-t`` the command may return while its session
    ends (the name is made up): it ends TERMINATED all the same."""
    name = unique("again")
    for _ in range(3):
        assert stack.cli("run", "--rm", "-t", name, "-c", "print(1)", "python").stdout == "1\n"
        returned = datetime.now(UTC)
        ended = json.loads(stack.cli("--output", "json", "history", name).stdout)[-1]
        assert ended["to"] == "TERMINATED"
        assert datetime.fromisoformat(ended["at"]) <= returned  # before the command returned
    before = set(all_sessions(stack))
    assert stack.cli("run", "--rm", "-c", "print(2)", "python").stdout == "2\n"
    deadline = time.monotonic() + 30
    while True:
        new = {n: st for n, st in all_sessions(stack).items() if n not in before}
        assert len(new) == 1, new
        if list(new.values()) == ["TERMINATED"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert list(new.values()) == ["TERMINATED"]


def test_script_with_arguments(stack, tmp_path):
    (tmp_path / "myscript.py").write_text("import sys\nprint('args:', sys.argv[1:])\n")
    proc = stack.cli("run", "--rm", "--exec", "python myscript.py arg1 arg2", "python",
                     "./myscript.py", cwd=tmp_path)
    assert proc.stdout == "args: ['arg1', 'arg2']\n"


def test_variables_persist_between_executions_of_one_session(stack):
    name = unique("keep")
    stack.cli("start", "-t", name, "python")
    try:
        stack.cli("run", "-t", name, "python", "-c", "x = 41")
        proc = stack.cli("run", "-t", name, "python", "-c", "print(x + 1)")
        assert proc.stdout == "42\n"
    finally:
        stack.cli("rm", name)


def test_exit_code_and_stderr_of_failing_code(stack):
    proc = stack.cli("run", "--rm", "python", "-c", "import sys; print('bye', file=sys.stderr);"
                     " sys.exit(3)", check=False)
    assert proc.returncode == 3
    assert "bye" in proc.stderr


def test_a_user_sees_only_their_own_sessions_and_the_admin_sees_them_all(stack):
    mine, theirs = unique("mine"), unique("admins")
    stack.cli("start", "-t", mine, "python", user=True)
    stack.cli("start", "-t", theirs, "python")
    try:
        assert session_row(stack, mine, user=True) is not None
        assert session_row(stack, theirs, user=True) is None
        assert session_row(stack, mine) is not None
        keys = stack.keys()
        proc = stack.cli("--output", "json", "ps", "--all", "--access-key",
                         keys["user"]["access_key"])
        names = [i["name"] for i in json.loads(proc.stdout)["items"]]
        assert mine in names and theirs not in names
        proc = stack.cli("ps", "--access-key", keys["admin"]["access_key"], user=True,
                         check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: ")
    finally:
        stack.cli("rm", mine, user=True)
        stack.cli("rm", theirs)


@pytest.mark.parametrize("args, needle", [
    (["run", "--rm", "-c", "print(1)", "no-such-image:1.0"], "no-such-image"),
    (["run", "--rm", "-r", "cpu=abc", "-c", "print(1)", "python"], "cpu"),
    (["run", "--rm", "-r", "mem=1z", "-c", "print(1)", "python"], "mem"),
    (["run", "--rm", "-r", "cpu=512", "-c", "print(1)", "python"], "cpu"),
    (["run", "--rm", "-r", "cpu=0", "-c", "print(1)", "python"], "cuda.shares"),
    (["run", "--rm", "-r", "mem=0", "-c", "print(1)", "python"], "cuda.device"),
    (["run", "--rm", "-r", "gpu=1", "-c", "print(1)", "python"], "cuda.shares"),
    (["start", "-r", "foo=1", "python"], "cuda.device"),
    (["rm", "no-such-session-xyz"], "no-such-session-xyz"),
    (["info", "no-such-session-xyz"], "no-such-session-xyz"),
])
def test_bad_input_is_one_line_and_leaves_nothing(stack, args, needle):
    before = json.loads(stack.cli("--output", "json", "ps", "--all-statuses").stdout)["total_count"]
    proc = stack.cli(*args, check=False)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("Error: ") and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    after = json.loads(stack.cli("--output", "json", "ps", "--all-statuses").stdout)["total_count"]
    assert after == before


def test_unknown_image_names_what_is_available(stack):
    proc = stack.cli("run", "-c", "1", "nosuchimage", check=False)
    assert proc.returncode == 1 and "python" in proc.stderr


def test_wrong_secret_key_is_refused_with_one_line(stack):
    env = dict(stack.env)
    keys = stack.keys()["admin"]
    env.update(BACKEND_ACCESS_KEY=keys["access_key"], BACKEND_SECRET_KEY="x" * 40)
    import subprocess

    from stacks import CLI

    proc = subprocess.run([CLI, "ps"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("Error: ")


def test_history_tells_the_whole_story(stack):
    name = unique("story")
    stack.cli("run", "--rm", "-t", name, "-c", "print(1)", "python")
    proc = stack.cli("--output", "json", "history", name)
    steps = [(e["from"], e["to"]) for e in json.loads(proc.stdout)]
    assert steps[0] == (None, "PENDING")
    assert ("CREATING", "RUNNING") in steps or any(t == "RUNNING" for _, t in steps)
    assert steps[-1][1] == "TERMINATED"
    table = stack.cli("history", name).stdout
    assert table.splitlines()[0].split() == ["Time", "From", "To", "Reason", "Cause"]


def test_events_follow_a_session_from_start_to_end(stack):
    import subprocess
    import time

    from stacks import CLI

    name = unique("evts")
    stack.cli("start", "--enqueue-only", "-t", name, "python")
    events = subprocess.Popen([CLI, "events", name], env=stack.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(3)  # the session starts meanwhile
        stack.cli("rm", name)
        out, err = events.communicate(timeout=60)
    finally:
        events.kill()
    assert events.returncode == 0, err
    lines = out.splitlines()
    names = [ln.split(" ", 1)[0] for ln in lines]
    assert names[-1] == "server_close"
    assert "session_scheduled" in names, names
    end = [n for n in names if n in ("session_terminated", "session_cancelled")]
    assert end, names
    event, data = lines[names.index(end[-1])].split(" ", 1)
    assert json.loads(data)["sessionName"] == name


def test_out_of_memory_is_recorded_even_after_rm(stack):
    code = "x = bytearray(1024 * 1024 * 1024)\nprint('survived')"
    kept = stack.cli("run", "-t", "oom-kept", "-r", "mem=256m", "-c", code, "python", check=False)
    assert kept.returncode != 0 and "survived" not in kept.stdout
    assert "memory" in kept.stderr
    # the agent gives the runner a moment to report before it ends the kernel: wait for it
    deadline = time.monotonic() + 30
    while True:
        live = stack.cli("ps", "-f", "name,status,status_info", "--output", "json")
        row = next(i for i in json.loads(live.stdout)["items"] if i["name"] == "oom-kept")
        if row["status"] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (row["status"], row["status_info"]) == ("ERROR", "oom-killed")

    # with --rm the session is removed afterwards, and still says why it ended
    gone = stack.cli("run", "--rm", "-t", "oom-removed", "-r", "mem=256m", "-c", code, "python",
                     check=False)
    assert gone.returncode != 0
    dead = stack.cli("ps", "--dead", "-f", "name,status,status_info", "--output", "json",
                     "--all")
    row = next(i for i in json.loads(dead.stdout)["items"] if i["name"] == "oom-removed")
    assert (row["status"], row["status_info"]) == ("TERMINATED", "oom-killed")
    history = stack.cli("history", "oom-removed").stdout
    assert "oom-killed" in history and "user-requested" in history
    stack.cli("rm", "oom-kept")


def test_an_ended_session_shows_what_it_occupied(stack):
    ran, cancelled = unique("held"), unique("never")
    stack.cli("run", "--rm", "-t", ran, "-r", "cpu=2", "-r", "mem=300m", "-c", "1", "python")
    stack.cli("start", "--enqueue-only", "--starts-at", "1h", "-t", cancelled, "python")
    stack.cli("rm", cancelled)
    assert session_row(stack, ran)["status"] == "TERMINATED"
    assert session_row(stack, ran)["occupying_slots"] == {"cpu": "2", "mem": str(300 * 2**20)}
    assert not session_row(stack, cancelled)["occupying_slots"]
    table = stack.cli("ps", "--dead", "--all", "-f", "name,occupying_slots").stdout
    line = next(ln for ln in table.splitlines() if ln.startswith(ran))
    assert "cpu" in line and "300m" in line, table
