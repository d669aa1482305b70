"""Session and kernel statuses, the named status sets, and the one transition table.

The statuses are exactly those the user guide lists. Nothing outside ``TRANSITIONS`` decides
whether a session may move from one status to another: the manager calls ``check_transition``
before every compare-and-set write, and the property tests check every recorded move against it.

Lifecycle of a healthy session::

    PENDING -> SCHEDULED -> PREPARING -> [PULLING ->] PREPARED -> CREATING -> RUNNING
            -> TERMINATING -> TERMINATED

A PENDING session that is removed becomes CANCELLED. Any non-terminal phase may fail to ERROR;
an ERROR session holds no slots once its kernels are gone and moves to TERMINATED when removed.
A session whose agent is lost may be queued again (back to PENDING) when it is a batch session.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence

from bai.common.errors import InvalidTransition


class SessionStatus(str, enum.Enum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PREPARING = "PREPARING"
    PULLING = "PULLING"
    PREPARED = "PREPARED"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    RESIZING = "RESIZING"
    SUSPENDED = "SUSPENDED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


# Kernels move through the same statuses as their session.
KernelStatus = SessionStatus

S = SessionStatus

#: Allowed moves. Every status appears as a key; final statuses map to an empty set.
TRANSITIONS: Mapping[SessionStatus, frozenset[SessionStatus]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.CANCELLED, S.ERROR}),
    S.SCHEDULED: frozenset({S.PREPARING, S.PENDING, S.TERMINATING, S.CANCELLED, S.ERROR}),
    S.PREPARING: frozenset({S.PULLING, S.PREPARED, S.PENDING, S.TERMINATING, S.CANCELLED, S.ERROR}),
    S.PULLING: frozenset({S.PREPARED, S.PENDING, S.TERMINATING, S.CANCELLED, S.ERROR}),
    S.PREPARED: frozenset({S.CREATING, S.PENDING, S.TERMINATING, S.CANCELLED, S.ERROR}),
    S.CREATING: frozenset({S.RUNNING, S.PENDING, S.TERMINATING, S.CANCELLED, S.ERROR}),
    S.RUNNING: frozenset(
        {S.RESTARTING, S.RESIZING, S.SUSPENDED, S.TERMINATING, S.PENDING, S.ERROR}
    ),
    S.RESTARTING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    S.RESIZING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    S.SUSPENDED: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    S.TERMINATING: frozenset({S.TERMINATED, S.ERROR}),
    S.ERROR: frozenset({S.TERMINATING, S.TERMINATED}),
    S.TERMINATED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: Statuses a session never leaves.
FINAL = frozenset({S.TERMINATED, S.CANCELLED})
#: Statuses in which a session needs no more work from the system (ERROR waits only for `rm`).
TERMINAL = FINAL | {S.ERROR}
#: Statuses in which a session holds slots on an agent.
OCCUPYING = frozenset(
    {
        S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RUNNING,
        S.RESTARTING, S.RESIZING, S.SUSPENDED, S.TERMINATING,
    }
)
#: Phases that must end by themselves within a deadline (DESIGN.md section 4).
TRANSITIONAL = frozenset(
    {S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RESTARTING, S.TERMINATING}
)
#: A session in one of these can execute code.
EXECUTABLE = frozenset({S.RUNNING})

#: The user guide's status filters for `ps` / `admin session list`.
#: The guide's default set lists PENDING, PREPARING, PREPARED, CREATING, RUNNING, RESTARTING,
#: TERMINATING, RESIZING, SUSPENDED and ERROR; we also show SCHEDULED and PULLING, the two short
#: steps between them, so that no live session is ever invisible.
LIST_DEFAULT = (
    S.PENDING, S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RUNNING,
    S.RESTARTING, S.TERMINATING, S.RESIZING, S.SUSPENDED, S.ERROR,
)
#: `--running`: the guide names CREATING, PULLING and RUNNING (its older edition PREPARING,
#: PULLING and RUNNING); we take the steps of starting up plus RUNNING.
LIST_RUNNING = (S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RUNNING)
#: `--dead`
LIST_DEAD = (S.CANCELLED, S.TERMINATED)
LIST_ALL = tuple(SessionStatus)


def can_transit(src: SessionStatus, dst: SessionStatus) -> bool:
    return dst in TRANSITIONS[src]


def check_transition(
    session: object,
    src: SessionStatus,
    dst: SessionStatus,
    history: Sequence[object] = (),
) -> None:
    """Raise ``InvalidTransition`` unless ``src -> dst`` is in the table."""
    if not can_transit(src, dst):
        raise InvalidTransition(
            f"session {session}: {src} -> {dst} is not an allowed transition",
            data={
                "session": str(session),
                "from": str(src),
                "to": str(dst),
                "history": [str(h) for h in history],
            },
        )


def parse_statuses(names: str | Iterable[str]) -> tuple[list[SessionStatus], list[str]]:
    """Split a comma list (or iterable) into known statuses and unknown names.

    The official client sends names we do not have (``RUNNING_DEGRADED``); callers decide
    whether unknown names are an error (our CLI) or ignored (the compatibility listing).
    """
    if isinstance(names, str):
        names = names.split(",")
    known: list[SessionStatus] = []
    unknown: list[str] = []
    for raw in names:
        name = raw.strip().upper()
        if not name:
            continue
        try:
            known.append(SessionStatus(name))
        except ValueError:
            unknown.append(name)
    return known, unknown


class SessionType(str, enum.Enum):
    INTERACTIVE = "INTERACTIVE"
    BATCH = "BATCH"


class SessionResult(str, enum.Enum):
    UNDEFINED = "UNDEFINED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class AgentStatus(str, enum.Enum):
    ALIVE = "ALIVE"
    LOST = "LOST"
    TERMINATED = "TERMINATED"
