"""The event-to-status mapping (``kernel_events.decide``) without a database: event and session
row in, transitions out."""

from __future__ import annotations

import pytest

from bai.common.events import KernelEvent
from bai.common.status import SessionResult
from bai.common.status import SessionStatus as S
from bai.manager.services.kernel_events import BatchResult, Decision, Move, decide


def ev(name: str, reason: str = "", exit_code: int | None = None, **data) -> KernelEvent:
    return KernelEvent(name, "agent-1", "k1", "s1", reason=reason, exit_code=exit_code, data=data)


def row(status: S, type: str = "INTERACTIVE", info: str | None = None) -> dict:
    return {"status": str(status), "type": type, "status_info": info}


@pytest.mark.parametrize("status, name, steps", [
    (S.SCHEDULED, "kernel_started", [S.PREPARING, S.PREPARED, S.CREATING, S.RUNNING]),
    (S.PREPARING, "kernel_pulling", [S.PULLING]),
    (S.PULLING, "kernel_creating", [S.PREPARED, S.CREATING]),
    (S.PREPARED, "kernel_prepared", []),
    (S.RUNNING, "kernel_creating", []),
    (S.RESTARTING, "kernel_started", [S.RUNNING]),
    (S.PENDING, "kernel_started", []),
])
def test_progress_walks_to_the_event_step_by_step(status, name, steps):
    d = decide(ev(name), row(status), is_main=True)
    assert [s for s, _ in d.walk] == steps
    assert d.walk_from == (status if steps else None)
    assert d.started == (bool(steps) and steps[-1] is S.RUNNING)
    assert d.moves == () and d.destroy_orphan is None
    if steps:
        assert dict(d.walk)[steps[-1]] in ("pulling-image", "creating", "started")


@pytest.mark.parametrize("status, info, orphan", [
    (S.TERMINATING, "user-requested-x", "user-requested-x"),
    (S.ERROR, None, "user-requested"),
])
def test_a_kernel_that_starts_after_its_session_ended_is_destroyed(status, info, orphan):
    assert decide(ev("kernel_started"), row(status, info=info), is_main=True) == \
        Decision(destroy_orphan=orphan)


@pytest.mark.parametrize("status", [S.RUNNING, S.TERMINATED, S.CANCELLED])
def test_events_of_other_kernels_or_ended_sessions_change_nothing(status):
    not_main = decide(ev("kernel_started"), row(status), is_main=False)
    assert not_main == Decision(destroy_orphan="not-found-in-manager")
    assert decide(ev("kernel_terminated", exit_code=3), row(status), is_main=False) == \
        Decision(kernel_exit_code=3)
    if status is not S.RUNNING:
        assert decide(ev("kernel_creating"), row(status), is_main=True) == Decision()


def test_creation_failure_while_starting_is_an_error():
    d = decide(ev("kernel_creation_failed", "no such image", error="boom"), row(S.PREPARING),
               is_main=True)
    assert d.moves == (Move(S.PREPARING, S.ERROR, "failed-to-create: no such image",
                            status_data={"error": {"src": "agent", "agent_id": "agent-1",
                                                   "repr": "boom"}}),)
    assert decide(ev("kernel_creation_failed", "image-missing"), row(S.CREATING),
                  is_main=True).moves[0].reason == "image-missing"
    assert decide(ev("kernel_creation_failed"), row(S.RUNNING), is_main=True) == Decision()


def test_termination_ends_a_terminating_session_with_its_reason():
    d = decide(ev("kernel_terminated", "killed", 137), row(S.TERMINATING, info="user-requested"),
               is_main=True)
    assert d == Decision(kernel_exit_code=137, moves=(
        Move(S.TERMINATING, S.TERMINATED, "killed", info="user-requested", exit_code=137),))
    oom = decide(ev("kernel_terminated", "OOM killer", 137), row(S.TERMINATING, info="x"), True)
    assert oom.moves[0].info == "oom-killed" and oom.moves[0].reason == "oom-killed"


@pytest.mark.parametrize("status", [S.ERROR, S.PENDING])
def test_termination_of_an_errored_or_requeued_session_only_records_the_exit_code(status):
    assert decide(ev("kernel_terminated", exit_code=1), row(status), True) == \
        Decision(kernel_exit_code=1)


def test_an_interactive_kernel_that_exits_ends_its_session():
    d = decide(ev("kernel_terminated", "", 0), row(S.RUNNING), True)
    assert d.result is None
    assert d.moves == (Move(S.RUNNING, S.TERMINATING, "self-terminated", exit_code=0),
                       Move(S.TERMINATING, S.TERMINATED, "self-terminated", exit_code=0))


@pytest.mark.parametrize("status", [S.RUNNING, S.RESIZING, S.SUSPENDED])
@pytest.mark.parametrize("code, result, event, reason", [
    (0, SessionResult.SUCCESS, "session_success", "task-done"),
    (2, SessionResult.FAILURE, "session_failure", "task-failed"),
    (None, SessionResult.FAILURE, "session_failure", "task-failed"),
])
def test_a_batch_session_records_its_result_and_finishes(status, code, result, event, reason):
    d = decide(ev("kernel_terminated", "", code), row(status, type="BATCH"), True)
    assert d.result == BatchResult(result, event, reason, code if code is not None else -1)
    assert [(m.src, m.to, m.reason) for m in d.moves] == [
        (status, S.TERMINATING, "task-finished"), (S.TERMINATING, S.TERMINATED, "task-finished")]


def test_an_oom_kill_is_an_error_and_a_failed_batch():
    d = decide(ev("kernel_terminated", "Out of memory", 137), row(S.RUNNING, type="BATCH"), True)
    assert d.result == BatchResult(SessionResult.FAILURE, "session_failure", "oom-killed", 137)
    assert d.moves == (Move(S.RUNNING, S.ERROR, "oom-killed", exit_code=137, status_data={
        "kernel": {"exit_code": 137, "reason": "oom-killed"}}),)


@pytest.mark.parametrize("status", [S.CREATING, S.PREPARING, S.RESTARTING, S.SCHEDULED])
def test_a_kernel_that_dies_while_starting_or_restarting_is_an_error(status):
    d = decide(ev("kernel_terminated", "segfault in init", 139), row(status, type="BATCH"), True)
    assert d.result is None
    assert d.moves == (Move(status, S.ERROR, "self-terminated: segfault in init", exit_code=139,
                            status_data={"kernel": {"exit_code": 139,
                                                    "reason": "self-terminated: segfault in init"}}),)


def test_unknown_events_change_nothing():
    assert decide(ev("kernel_heartbeat"), row(S.RUNNING), True) == Decision()
