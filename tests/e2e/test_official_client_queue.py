# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""The official Backend.AI CLI 23.9.10 against a full agent: queueing, `--max-wait`,
`--enqueue-only`, `events` (ends by itself) and `rm` of a pending session (CANCELLED).

The module has its own small stack (an agent of 2 cpus) so that one `-r cpu=2` session fills it.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from official import (
    OFFICIAL_EXE,
    make_official,
    requires_official,
    row_named,
    start_stack,
    stop_stack,
    unique_name,
)

pytestmark = [requires_official, pytest.mark.official_client]

_READY = re.compile(r"Session ID ([0-9a-f-]{36}) is created and ready")
#: Seconds `events` may take to notice that its session ended (bounded: it must end by itself).
EVENTS_END_WAIT = 30


@pytest.fixture(scope="module")
def small():
    if not OFFICIAL_EXE:
        pytest.skip("BAI_OFFICIAL_CLIENT is not set")
    st = start_stack("cpu=2", "mem=2g")
    yield st
    stop_stack(st)


@pytest.fixture(scope="module")
def client(small, official_home):
    return make_official(small.endpoint, small.keys()["admin"], official_home / "small")


@pytest.fixture(scope="module")
def blocker(client):
    """A running session that holds both cpus of the agent."""
    name = unique_name("ofq-block")
    res = client("start", "-t", name, "-r", "cpu=2", "python")
    assert _READY.search(res.stderr), res
    yield name
    client("rm", name, check=False)


def events_lines(stdout: str) -> list[tuple[str, dict]]:
    out = []
    for line in stdout.splitlines():
        name, _, data = line.partition(" ")
        out.append((name, json.loads(data)))
    return out


def finish(proc: subprocess.Popen, timeout: float = EVENTS_END_WAIT) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"`events` did not end by itself within {timeout} s after its session "
                             f"ended\nstdout: {stdout}\nstderr: {stderr}") from None
    return proc.returncode, stdout, stderr


def test_max_wait_returns_without_running_the_code(client, blocker):
    name = unique_name("ofq-wait")
    try:
        res = client("run", "--rm", "--max-wait", "2", "-t", name, "-r", "cpu=2",
                     "-c", "print('must not run')", "python")
        assert f"Session ID {name} is still on the job queue." in res.stderr
        assert "must not run" not in res.output
        item = client.session_json(name, fields="name,status,status_info")
        assert item["status"] == "PENDING"  # --rm did not remove it: it never ran
        assert "cpu" in item["status_info"]
    finally:
        client("rm", name, check=False)


def test_start_max_wait_reports_queue(client, blocker):
    name = unique_name("ofq-swait")
    try:
        res = client("start", "--max-wait", "1", "-t", name, "-r", "cpu=1", "python")
        assert re.search(r"Session ID [0-9a-f-]{36} is still on the job queue\.", res.stderr), res
        assert client.status_of(name) == "PENDING"
    finally:
        client("rm", name, check=False)


def test_enqueue_only_pending_shows_in_ps(client, blocker):
    name = unique_name("ofq-enq")
    try:
        res = client("run", "--enqueue-only", "-t", name, "-r", "cpu=2", "-c", "print(1)", "python")
        assert f"Session ID {name} is enqueued for scheduling." in res.stderr
        rows = client.table("ps")
        row = row_named(rows, name)
        assert row["Status"] == "PENDING"
        assert "cpu" in row["Status Info"]
        running = client.list_json("ps", "--running", "--limit", "100")["items"]
        assert name not in {it["name"] for it in running}
        rows = client.table("ps", "--status", "PENDING")
        assert row_named(rows, name)["Status"] == "PENDING"
    finally:
        client("rm", name, check=False)


def test_rm_pending_cancels_and_events_end(client, blocker):
    """`rm` of a PENDING session: CANCELLED under `ps --dead`; `events` on it then ends (exit 0)."""
    name = unique_name("ofq-cancel")
    res = client("start", "--enqueue-only", "-t", name, "-r", "cpu=2", "python")
    m = re.search(r"Session ID ([0-9a-f-]{36}) is enqueued for scheduling", res.stderr)
    assert m, res
    sid = m.group(1)
    proc = client.popen("events", name)
    try:
        assert client.status_of(name) == "PENDING"
        assert proc.poll() is None, "events ended while its session was still pending"
        client("rm", name)
        rc, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, stderr
    events = events_lines(stdout)
    names = [e for e, _ in events]
    assert "session_enqueued" in names
    assert "session_cancelled" in names
    assert names[-1] == "server_close"
    data = dict(events)["session_cancelled"]
    assert data["sessionName"] == name and data["sessionId"] == sid
    assert data["ownerAccessKey"] == client.access_key
    rows = client.table("ps", "--dead")
    row = row_named(rows, name)
    assert row["Status"] == "CANCELLED"
    assert row["Session ID"] == sid
    assert name not in {it["name"] for it in client.list_json("ps", "--limit", "100")["items"]}


def test_events_follow_scheduling_and_end_with_the_session(client, blocker):
    """`events SESSION` prints the scheduling and preparation steps as they happen and ends by
    itself when the session ends (seed: "To watch what is happening behind the scene")."""
    name = unique_name("ofq-events")
    res = client("start", "--enqueue-only", "-t", name, "-r", "cpu=2", "python")
    sid = re.search(r"Session ID ([0-9a-f-]{36})", res.stderr).group(1)
    proc = client.popen("events", sid)  # by UUID
    try:
        assert client.status_of(name) == "PENDING"
        # frees the agent: the pending session gets scheduled (runs last of the blocker's users)
        client("rm", blocker)
        client.wait_status(name, "RUNNING")
        assert proc.poll() is None, "events ended while its session was running"
        client("rm", name)
        rc, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, stderr
    events = events_lines(stdout)
    names = [e for e, _ in events]
    for expected in ("session_enqueued", "session_scheduled", "kernel_preparing",
                     "kernel_started", "session_started", "session_terminated"):
        assert expected in names, f"{expected} missing from events:\n{stdout}"
    order = [names.index(e) for e in ("session_enqueued", "session_scheduled",
                                      "kernel_preparing", "session_started",
                                      "session_terminated")]
    assert order == sorted(order)
    assert names[-1] == "server_close"
    for ev, data in events[:-1]:
        assert data["sessionId"] == sid and data["sessionName"] == name, (ev, data)
        if ev.startswith("kernel_"):
            assert data["kernelId"] and data["clusterRole"] == "main"
    assert dict(events)["session_terminated"]["reason"] == "user-requested"
    rows = client.table("ps", "--dead", "-f", "name,status")
    assert row_named(rows, name)["Status"] == "TERMINATED"


def test_events_scope_session_only(client):
    name = unique_name("ofq-scope")
    client("start", "-t", name, "python")
    proc = client.popen("events", "--scope", "session", name)
    try:
        client("rm", name)
        rc, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, stderr
    names = [e for e, _ in events_lines(stdout)]
    assert "session_started" in names and "session_terminated" in names
    assert not [n for n in names if n.startswith("kernel_")]
