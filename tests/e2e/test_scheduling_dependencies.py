"""Issue 5 acceptance: batch sessions, dependencies, deferred starts and the session's story,
through the real ``backend.ai`` CLI on one stack (process runtime: the startup commands really
run and their exit codes decide the result).

* ``--type batch`` with a startup command ends by itself: SUCCESS or FAILURE from the exit code.
* ``--depends A`` waits for A; when A fails or is cancelled the dependent is CANCELLED with a
  reason naming A; when A succeeds the dependent runs.
* ``--starts-at`` (relative ``1m``/``3s`` or an ISO time) keeps the session PENDING with that
  reason and that estimate until then.
* ``history`` prints every transition with its time, reason and cause; ``events`` of a session
  that does not exist is a clear error.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduling_support import (  # noqa: F401 - stack: the fixture
    history,
    parse_time,
    session,
    stack,
    wait_for,
)

FINAL = ("TERMINATED", "CANCELLED", "ERROR")


def batch(stack, name: str, command: str, *extra: str) -> None:
    stack.cli("start", "--enqueue-only", "-t", name, "--type", "batch", "-r", "cpu=0.5",
              *extra, "-c", command, "python")


def ended(stack, name: str, timeout: float = 60) -> dict:
    def check():
        s = session(stack, name)
        return s if s["status"] in FINAL else None

    return wait_for(check, timeout, f"{name} ends")


def test_batch_result_comes_from_the_exit_code_and_the_session_ends_itself(stack):
    proc = stack.cli("start", "-t", "answer-1", "--type", "batch", "-c",
                     'python -c "print(42)"', "python")
    assert "Traceback" not in proc.stderr
    s = ended(stack, "answer-1")
    assert (s["status"], s["result"], s["status_info"]) == ("TERMINATED", "SUCCESS", "task-finished")
    batch(stack, "fails-1", "exit 3")
    s = ended(stack, "fails-1")
    assert (s["status"], s["result"]) == ("TERMINATED", "FAILURE")

    # the whole story, as a person reads it
    out = stack.cli("history", "fails-1").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["Time", "From", "To", "Reason", "Cause"]
    body = [ln.split() for ln in lines[2:] if ln.strip()]
    assert [(r[1], r[2]) for r in body] == [
        ("-", "PENDING"), ("PENDING", "SCHEDULED"), ("SCHEDULED", "PREPARING"),
        ("PREPARING", "PREPARED"), ("PREPARED", "CREATING"), ("CREATING", "RUNNING"),
        ("RUNNING", "TERMINATING"), ("TERMINATING", "TERMINATED")]
    assert body[0][3] == "enqueued" and body[0][4].startswith("user:")
    assert body[1][3:] == ["scheduled", "scheduler"]
    assert body[-1][3:] == ["task-finished", "agent:local"]
    times = [parse_time(r[0]) for r in body]
    assert times == sorted(times)


def test_dependents_wait_then_run_or_are_cancelled_naming_the_dependency(stack):
    batch(stack, "dep-bad", "sleep 8; exit 1")
    batch(stack, "after-bad", "exit 0", "--depends", "dep-bad")
    batch(stack, "dep-good", "sleep 4; exit 0")
    batch(stack, "after-good", "exit 0", "--depends", "dep-good")

    def waiting(name):
        s = session(stack, name)
        return s if s["status_info"].startswith("dependencies: ") else None

    # it waits, saying for what (dep-bad is still running)
    s = wait_for(lambda: waiting("after-bad"), 20, "after-bad says it waits for dep-bad")
    assert s["status"] == "PENDING"
    assert "waiting for dependencies to finish: dep-bad (" in s["status_info"]
    assert s["status_data"]["scheduler"]["reason"] == "dependencies"
    assert s["status_data"]["scheduler"]["waiting_for"] == [session(stack, "dep-bad")["session_id"]]

    s = ended(stack, "after-bad")
    assert s["status"] == "CANCELLED"
    dep_id = session(stack, "dep-bad")["session_id"]
    assert s["status_info"] == f"dependency-failed: dependency dep-bad ({dep_id}) failed"
    s = ended(stack, "after-good")
    assert (s["status"], s["result"]) == ("TERMINATED", "SUCCESS")
    started = next(h for h in history(stack, "after-good") if h["to"] == "SCHEDULED")
    dep_done = next(h for h in history(stack, "dep-good") if h["to"] == "TERMINATED")
    assert parse_time(started["at"]) >= parse_time(dep_done["at"])

    # a cancelled dependency: rm of a session that was still pending
    batch(stack, "dep-later", "exit 0", "--starts-at", "1h")
    batch(stack, "after-later", "exit 0", "--depends", "dep-later")
    stack.cli("rm", "dep-later")
    s = ended(stack, "after-later")
    assert s["status"] == "CANCELLED"
    assert s["status_info"].startswith("dependency-failed: dependency dep-later (")
    assert s["status_info"].endswith(") was cancelled")
    cancel = history(stack, "after-later")[-1]
    assert (cancel["from"], cancel["to"], cancel["reason"], cancel["cause"]) == (
        "PENDING", "CANCELLED", "dependency-failed", "scheduler")


def test_starts_at_keeps_the_session_pending_until_then(stack):
    before = datetime.now(UTC)
    batch(stack, "deferred-1", "exit 0", "--starts-at", "1m")
    soon = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    batch(stack, "deferred-2", "exit 0", "--starts-at", soon)
    batch(stack, "deferred-3", "exit 0", "--starts-at", "3s")

    def reasoned(name):
        s = session(stack, name)
        return s if s["status_info"].startswith("starts-at: ") else None

    s = wait_for(lambda: reasoned("deferred-1"), 30, "deferred-1 says it waits for its time")
    sched = s["status_data"]["scheduler"]
    starts = parse_time(sched["starts_at"])
    assert before + timedelta(seconds=55) <= starts <= datetime.now(UTC) + timedelta(seconds=65)
    assert sched["reason"] == "starts-at"
    assert parse_time(sched["estimated_start"]) == starts.replace(microsecond=0)
    assert f"estimated start {sched['estimated_start']}" in s["status_info"]

    for name in ("deferred-2", "deferred-3"):
        s = ended(stack, name)
        assert (s["status"], s["result"]) == ("TERMINATED", "SUCCESS"), s
        steps = history(stack, name)
        placed = next(h for h in steps if h["to"] == "SCHEDULED")
        enqueued = steps[0]
        assert parse_time(placed["at"]) >= parse_time(enqueued["at"]) + timedelta(seconds=3)
    # the one-minute session is still waiting, for the same reason
    s = session(stack, "deferred-1")
    assert s["status"] == "PENDING" and s["status_info"].startswith("starts-at: ")
    stack.cli("rm", "deferred-1")


def test_events_of_an_unknown_session_is_a_clear_error(stack):
    proc = stack.cli("events", "no-such-session", check=False, timeout=30)
    assert proc.returncode != 0
    assert "no-such-session" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
