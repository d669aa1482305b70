"""Issue 5 acceptance: never stuck. Through the real ``backend.ai`` CLI and real daemons:

* ``kill -9`` of an agent daemon: within the (small, for the test) heartbeat timeout its
  interactive session goes ERROR with ``agent-lost``, its batch session is queued again and runs
  to SUCCESS on the other agent, and the lost agent holds no slots any more.
* A transitional phase past its deadline ends with ``<phase>-timeout`` (CREATING here: the dummy
  runtime is told to take far longer to create a kernel than the manager allows).
"""

from __future__ import annotations

import pytest
from scheduling_support import (
    ExtraAgent,
    agents,
    history,
    kill_local_agent,
    session,
    status,
    wait_for,
)

HEARTBEAT_TIMEOUT = 3


@pytest.fixture
def two_agents(make_stack):
    fast = {"BAI_MANAGER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "BAI_AGENT_HEARTBEAT_INTERVAL": "0.5"}
    stack = make_stack("cpu=2", "mem=2g", runtime="process", env=fast)
    second = ExtraAgent(stack, "second")
    try:
        wait_for(lambda: agents(stack).get("second", {}).get("status") == "ALIVE", 30,
                 "the second agent registers")
        yield stack, second
    finally:
        second.stop()


def test_killed_agent_loses_interactive_sessions_and_reruns_batch_ones(two_agents):
    stack, second = two_agents
    stack.cli("start", "--enqueue-only", "-t", "job-1", "--type", "batch", "-r", "cpu=1",
              "-c", "sleep 6; echo done", "python")
    wait_for(lambda: status(stack, "job-1") == "RUNNING", 60, "job-1 runs")
    stack.cli("start", "-t", "inter-1", "-r", "cpu=1", "python")
    victim = session(stack, "job-1")["agent_ids"][0]
    assert session(stack, "inter-1")["agent_ids"] == [victim]  # concentrated placement
    survivor = "second" if victim == "local" else "local"

    if victim == "local":
        kill_local_agent(stack)
    else:
        second.kill()

    wait_for(lambda: status(stack, "inter-1") == "ERROR", HEARTBEAT_TIMEOUT + 30,
             "the interactive session leaves RUNNING")
    assert session(stack, "inter-1")["status_info"] == "agent-lost"
    lost = wait_for(lambda: agents(stack)[victim]["status"] == "LOST" and agents(stack)[victim],
                    30, "the agent is marked lost")
    assert all(v in ("0", 0) for v in (lost.get("occupied_slots") or {}).values()), lost

    def finished():
        s = session(stack, "job-1")
        return s if s["status"] in ("TERMINATED", "ERROR", "CANCELLED") else None

    job = wait_for(finished, 90, "the batch session ends")
    assert (job["status"], job["result"]) == ("TERMINATED", "SUCCESS"), job
    assert job["agent_ids"] == [survivor]
    steps = [(h["from"], h["to"], h["reason"]) for h in history(stack, "job-1")]
    requeued = steps.index(("RUNNING", "PENDING", "agent-lost"))
    assert ("PENDING", "SCHEDULED", "scheduled") in steps[requeued:]
    assert steps[-1] == ("TERMINATING", "TERMINATED", "task-finished")
    # the human history says the same
    out = stack.cli("history", "job-1").stdout
    assert "agent-lost" in out and f"agent:{victim}" in out


def test_a_phase_past_its_deadline_ends_with_the_reason(make_stack):
    stack = make_stack("cpu=2", "mem=2g", runtime="dummy", env={
        "BAI_MANAGER_DEADLINE_CREATING": "2", "BAI_AGENT_DUMMY_CREATE_DELAY": "60"})
    proc = stack.cli("start", "-t", "slow-1", "python", check=False, timeout=60)
    assert proc.returncode != 0
    assert status(stack, "slow-1") == "ERROR"
    assert session(stack, "slow-1")["status_info"] == "creating-timeout"
    assert ("CREATING", "ERROR", "creating-timeout") in [
        (h["from"], h["to"], h["reason"]) for h in history(stack, "slow-1")]
    # and its slots are free again
    assert agents(stack)["local"]["occupied_slots"] in ({}, {"cpu": "0", "mem": "0"})
