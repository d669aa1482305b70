"""Issue 5 acceptance, as a new user tries it: two agents of 2 cpus each (the stack's own agent and
a second daemon), driven by the real ``backend.ai`` CLI.

* ``-r cpu=4`` is refused at create: no agent can ever hold it.
* A ``-r cpu=2`` session behind a full cluster says why (the reason names cpu, requested vs
  free), where it is in the queue, and when it should start; ``ps``, ``admin session list``,
  ``info`` and ``events`` all show it.
* Small sessions submitted after it do not delay it past that estimate, and they run too.

The sessions that fill the cluster are interactive ones with a short idle timeout (the default
policy's, from ``BAI_MANAGER_DEFAULT_IDLE_TIMEOUT`` at init), so their ends are known and the
waiting session's start can be estimated. The dummy runtime: real processes are not the point.
"""

from __future__ import annotations

import time

import pytest
from scheduling_support import (
    ExtraAgent,
    agents,
    events_until,
    history,
    parse_time,
    session,
    status,
    wait_for,
)

IDLE_TIMEOUT = 20
STAGGER = 4


@pytest.fixture
def cluster(make_stack):
    stack = make_stack("cpu=2", "mem=4g", runtime="dummy", env={
        "BAI_MANAGER_DEFAULT_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "BAI_MANAGER_IDLE_CHECK_INTERVAL": "1",
    })
    second = ExtraAgent(stack, "second")
    try:
        wait_for(lambda: agents(stack).get("second", {}).get("status") == "ALIVE", 30,
                 "the second agent registers")
        yield stack
    finally:
        second.stop()


def test_large_request_waits_with_reason_position_estimate_and_is_not_delayed(cluster):
    stack = cluster
    # never fits any agent: refused at once, with the slot named
    proc = stack.cli("start", "-t", "huge-1", "-r", "cpu=4", "python", check=False)
    assert proc.returncode != 0
    assert "cpu requested 4" in proc.stderr and "largest agent" in proc.stderr
    assert "Traceback" not in proc.stderr

    # Fill both agents (two cpu=1 sessions each, concentrated placement). The first agent's two
    # sessions end (idle) STAGGER s apart: in between it has one free cpu that the small
    # sessions queued later must leave alone, or the large one would be delayed.
    fillers = [f"fill-{i}" for i in range(4)]
    for i, name in enumerate(fillers):
        stack.cli("start", "-t", name, "-r", "cpu=1", "python")
        if i == 0:
            time.sleep(STAGGER)
    stack.cli("start", "--enqueue-only", "-t", "big-1", "-r", "cpu=2", "python")
    smalls = ["small-1", "small-2"]
    for name in smalls:
        stack.cli("start", "--enqueue-only", "-t", name, "-r", "cpu=1", "python")

    def waiting_reason():
        s = session(stack, "big-1")
        sched = s["status_data"].get("scheduler") or {}
        return s if s["status"] == "PENDING" and sched.get("estimated_start") else None

    big = wait_for(waiting_reason, 30, "big-1 waits with an estimated start")
    sched = big["status_data"]["scheduler"]
    assert sched["reason"] == "insufficient-resources"
    assert sched["position"] == 1
    assert sched["shortfall"]["cpu"]["requested"] == "2"
    assert sched["shortfall"]["cpu"]["free"] in ("0", "1")
    estimate = parse_time(sched["estimated_start"])
    held = sched["reserved_agent"]
    info = big["status_info"]
    assert info.startswith("insufficient-resources: cpu requested 2, free ")
    assert f"(position 1 in queue, estimated start {sched['estimated_start']})" in info

    # every place a user looks shows it
    for args in (["ps"], ["admin", "session", "list"], ["info", "big-1"]):
        out = stack.cli(*args).stdout
        assert "cpu requested 2" in out and "position 1 in queue" in out, (args, out)
        assert sched["estimated_start"] in out, (args, out)
    seen = events_until(stack, "big-1", lambda ev, d: ev == "session_pending")
    pending = seen[-1][1]
    assert pending["reason"] == "insufficient-resources"
    assert pending["queuePosition"] == 1
    assert pending["estimatedStart"] == sched["estimated_start"]

    # the small sessions queue behind it
    positions = {n: session(stack, n)["status_data"]["scheduler"]["position"] for n in smalls}
    assert positions == {"small-1": 2, "small-2": 3}

    wait_for(lambda: status(stack, "big-1") == "RUNNING", IDLE_TIMEOUT + 40, "big-1 runs")
    started = next(h for h in history(stack, "big-1") if h["to"] == "SCHEDULED")
    assert parse_time(started["at"]) <= estimate, (started, estimate)
    assert session(stack, "big-1")["agent_ids"] == [held]
    # and nothing starves: the small ones run as well, never on the held agent before it
    wait_for(lambda: all(status(stack, n) == "RUNNING" for n in smalls), IDLE_TIMEOUT + 40,
             "the small sessions run")
    for name in smalls:
        if session(stack, name)["agent_ids"] == [held]:
            placed = next(h for h in history(stack, name) if h["to"] == "SCHEDULED")
            assert parse_time(placed["at"]) >= parse_time(started["at"]), (name, placed, started)
