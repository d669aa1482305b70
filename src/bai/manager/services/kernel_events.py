"""What an agent's kernel event means for its session: a pure decision (event and row in,
transitions out), no I/O. ``Lifecycle`` loads the rows, calls ``decide`` and carries the decision
out in one transaction (compare-and-set writes: a lost race re-reads and decides again).

The mapping, for an event about a session's *main* kernel while the session has not ended
(any other kernel, or an ended session: nothing, except that a ``kernel_started`` there is an
orphan to destroy, ``not-found-in-manager``):

* progress (``kernel_preparing`` / ``_pulling`` / ``_prepared`` / ``_creating`` / ``_started``):
  walk along ``PROGRESS`` to the event's status, one step each (``walk``); nothing when already
  there or past it; a ``kernel_started`` for a TERMINATING or ERROR session is an orphan to
  destroy (with the session's status_info as the reason);
* ``kernel_creation_failed`` while starting (not yet RUNNING): -> ERROR ``failed-to-create``;
* ``kernel_terminated``: TERMINATING -> TERMINATED; ERROR and PENDING: nothing; while RUNNING
  (or RESIZING / SUSPENDED): a batch session records its result (SUCCESS on exit code 0 without
  OOM) and a ``session_success`` / ``session_failure`` event, then -> TERMINATING -> TERMINATED
  (``task-finished`` for batch); an OOM kill, or a death while starting or restarting: -> ERROR.

A ``kernel_terminated`` with an exit code records it on the kernel whatever else happens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bai.common.events import KernelEvent
from bai.common.status import FINAL, SessionResult, SessionStatus, SessionType

S = SessionStatus

#: The healthy path a kernel's progress events walk along.
PROGRESS = (S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RUNNING)
EVENT_TARGET = {
    "kernel_preparing": S.PREPARING,
    "kernel_pulling": S.PULLING,
    "kernel_prepared": S.PREPARED,
    "kernel_creating": S.CREATING,
    "kernel_started": S.RUNNING,
}
STEP_REASON = {
    S.PREPARING: "preparing",
    S.PULLING: "pulling-image",
    S.PREPARED: "prepared",
    S.CREATING: "creating",
    S.RUNNING: "started",
}
#: statuses in which a kernel's death ends the session normally
_LIVE = (S.RUNNING, S.RESIZING, S.SUSPENDED)


def next_step(current: SessionStatus, target: SessionStatus) -> SessionStatus | None:
    """The next status on the way from ``current`` to ``target`` along ``PROGRESS``."""
    if current not in PROGRESS or target not in PROGRESS:
        return None
    if PROGRESS.index(current) >= PROGRESS.index(target):
        return None
    if current is S.PREPARING:
        return S.PULLING if target is S.PULLING else S.PREPARED
    if current is S.PULLING:
        return S.PREPARED
    return PROGRESS[PROGRESS.index(current) + 1]


def walk(current: SessionStatus, target: SessionStatus) -> list[tuple[SessionStatus, str]]:
    """The steps (status, reason) from ``current`` to ``target``; empty when already there or
    past it. A restarting session goes straight back to RUNNING."""
    step = S.RUNNING if current is S.RESTARTING and target is S.RUNNING else next_step(current, target)
    path = []
    while step is not None:
        path.append((step, STEP_REASON[step]))
        step = next_step(step, target)
    return path


_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def reason_line(reason: str | None, default: str) -> str:
    """A kebab reason for ``status_info``; an agent's sentence becomes ``default: sentence``."""
    reason = (reason or "").strip()
    if not reason:
        return default
    return reason if _KEBAB.match(reason) else f"{default}: {reason}"


@dataclass(frozen=True)
class Move:
    """One compare-and-set transition ``src -> to`` (``transitions.transit``)."""

    src: SessionStatus
    to: SessionStatus
    reason: str
    info: str | None = None
    status_data: dict[str, Any] | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class BatchResult:
    """A batch session's outcome: ``sessions.result`` and its session event."""

    result: SessionResult
    event: str  # session_success | session_failure
    reason: str  # task-done | task-failed | oom-killed
    exit_code: int


@dataclass(frozen=True)
class Decision:
    #: record this exit code on the kernel row
    kernel_exit_code: int | None = None
    #: ask the agent to destroy this (orphaned) kernel, with this reason
    destroy_orphan: str | None = None
    #: progress: the walk from ``walk_from`` (one compare-and-set, ``transit_many``)
    walk_from: SessionStatus | None = None
    walk: list[tuple[SessionStatus, str]] = field(default_factory=list)
    result: BatchResult | None = None
    #: transitions made one after the other (each from where the previous one left)
    moves: tuple[Move, ...] = ()

    @property
    def started(self) -> bool:
        """The walk ends in RUNNING: what kernel_started says (ports, container) is written."""
        return bool(self.walk) and self.walk[-1][0] is S.RUNNING


def decide(ev: KernelEvent, row: Mapping[str, Any], is_main: bool) -> Decision:
    """What ``ev`` (about a kernel of the session ``row``) changes; see the module docstring."""
    exit_code = ev.exit_code if ev.name == "kernel_terminated" else None
    status = S(row["status"])
    if not is_main or status in FINAL:
        orphan = "not-found-in-manager" if ev.name == "kernel_started" else None
        return Decision(kernel_exit_code=exit_code, destroy_orphan=orphan)
    target = EVENT_TARGET.get(ev.name)
    if target is not None:
        if status in (S.TERMINATING, S.ERROR) and target is S.RUNNING:
            return Decision(destroy_orphan=row.get("status_info") or "user-requested")
        path = walk(status, target)
        return Decision(walk_from=status if path else None, walk=path)
    if ev.name == "kernel_creation_failed":
        if status in PROGRESS and status is not S.RUNNING:
            data = {"error": {"src": "agent", "agent_id": ev.agent_id,
                              "repr": str(ev.data.get("error") or ev.reason)}}
            return Decision(moves=(Move(status, S.ERROR, reason_line(ev.reason, "failed-to-create"),
                                        status_data=data),))
        return Decision()
    if ev.name == "kernel_terminated":
        return _terminated(ev, row, status, exit_code)
    return Decision()


def _terminated(ev: KernelEvent, row: Mapping[str, Any], status: SessionStatus,
                exit_code: int | None) -> Decision:
    text = (ev.reason or "").lower()
    oom = "oom" in text or "out of memory" in text
    reason = "oom-killed" if oom else reason_line(ev.reason, "self-terminated")
    if status is S.TERMINATING:
        info = "oom-killed" if oom else (row.get("status_info") or reason)
        return Decision(kernel_exit_code=exit_code, moves=(
            Move(status, S.TERMINATED, reason, info=info, exit_code=exit_code),))
    if status in (S.ERROR, S.PENDING):
        return Decision(kernel_exit_code=exit_code)
    is_batch = row["type"] == SessionType.BATCH
    result = None
    if status in _LIVE and is_batch:
        ok = exit_code == 0 and not oom
        result = BatchResult(
            SessionResult.SUCCESS if ok else SessionResult.FAILURE,
            "session_success" if ok else "session_failure",
            "task-done" if ok else ("oom-killed" if oom else "task-failed"),
            int(exit_code) if exit_code is not None else -1)
    if oom or status not in _LIVE:
        # died while starting, restarting, or out of memory: an error the user must see
        data = {"kernel": {"exit_code": exit_code, "reason": reason}}
        return Decision(kernel_exit_code=exit_code, result=result, moves=(
            Move(status, S.ERROR, "oom-killed" if oom else reason, status_data=data,
                 exit_code=exit_code),))
    done = "task-finished" if is_batch else reason
    return Decision(kernel_exit_code=exit_code, result=result, moves=(
        Move(status, S.TERMINATING, done, exit_code=exit_code),
        Move(S.TERMINATING, S.TERMINATED, done, exit_code=exit_code)))
