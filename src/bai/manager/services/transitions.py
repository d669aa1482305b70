"""The one writer of session status.

Every status change goes through ``transit``: a compare-and-set ``UPDATE ... WHERE id = :id AND
status = :expected`` checked against ``bai.common.status.TRANSITIONS``, plus in the same
transaction

* a ``session_history`` row (from, to, reason, cause, at),
* ``status_changed``, ``status_info`` (a kebab reason, or the scheduler's readable line),
  ``status_data``, ``scheduled_at`` on SCHEDULED, ``terminated_at`` on TERMINATED/CANCELLED,
* the main kernel row mirrored (status, info, time),
* slot bookkeeping: moving into SCHEDULED with ``place_on`` reserves the session's request on that
  agent (refused when it no longer fits); moving from an occupying status to one that is not
  releases ``occupying_slots`` from the agent. Because the release rides on a compare-and-set that
  only one writer can win, slots are released exactly once.

The events that the change means for clients are appended to an ``Outbox`` and published by the
caller once the transaction has committed. ``transit`` returns the new row, or ``None`` when the
session was not in ``expected`` (a lost race): the caller re-reads and re-decides.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bai.common.events import SessionEvent
from bai.common.resources import ResourceSlot
from bai.common.status import FINAL, OCCUPYING, SessionStatus, check_transition
from bai.manager.store.tables import agents, kernels, session_history, sessions, utcnow

S = SessionStatus

#: The session event a client sees when a session enters a status.
SESSION_EVENT = {
    S.PENDING: "session_pending",
    S.SCHEDULED: "session_scheduled",
    S.PREPARING: "session_preparing",
    S.PULLING: "session_pulling",
    S.PREPARED: "session_prepared",
    S.CREATING: "session_creating",
    S.RUNNING: "session_started",
    S.RESTARTING: "session_restarting",
    S.RESIZING: "session_resizing",
    S.SUSPENDED: "session_suspended",
    S.TERMINATING: "session_terminating",
    S.TERMINATED: "session_terminated",
    S.CANCELLED: "session_cancelled",
    S.ERROR: "session_error",
}
#: The kernel event that accompanies it (the upstream SSE stream forwards these).
KERNEL_EVENT = {
    S.PREPARING: "kernel_preparing",
    S.PULLING: "kernel_pulling",
    S.CREATING: "kernel_creating",
    S.RUNNING: "kernel_started",
    S.TERMINATING: "kernel_terminating",
    S.TERMINATED: "kernel_terminated",
    S.CANCELLED: "kernel_cancelled",
}
#: Kernel events that come before the session event of the same step (the rest come after).
_KERNEL_FIRST = {S.RUNNING, S.TERMINATED, S.CANCELLED}


@dataclass
class Outbox:
    """Side effects of a transaction, carried out after it commits."""

    events: list[SessionEvent] = field(default_factory=list)
    #: slots were released or the queue changed: run a scheduling pass
    kick_scheduler: bool = False
    #: (callback_url, body) webhook notifications (manager-semantics §5.4)
    callbacks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def extend(self, other: Outbox) -> None:
        self.events.extend(other.events)
        self.kick_scheduler |= other.kick_scheduler
        self.callbacks.extend(other.callbacks)

    def notify(self, row: Mapping[str, Any], events: list[SessionEvent]) -> None:
        """Queue the session's webhook for each of its ``session_*`` events."""
        url = row.get("callback_url")
        if not url:
            return
        for ev in events:
            if ev.name.startswith("session_"):
                self.callbacks.append((url, {
                    "type": "session_lifecycle",
                    "event": ev.name.removeprefix("session_"),
                    "session_id": str(row["id"]),
                    "when": utcnow().isoformat(),
                }))


def session_events(
    row: Mapping[str, Any], to: SessionStatus, reason: str, exit_code: int | None = None
) -> list[SessionEvent]:
    sid, name, ak = str(row["id"]), row["name"], row["access_key"]
    kid = str(row["main_kernel_id"]) if row.get("main_kernel_id") else None
    out: list[SessionEvent] = []
    sess = SessionEvent(
        SESSION_EVENT[to], sid, name, ak, reason=reason, status=str(to),
        exit_code=exit_code if to in (S.TERMINATED, S.TERMINATING) else None,
    )
    kname = KERNEL_EVENT.get(to)
    kev = (
        SessionEvent(
            kname, sid, name, ak, reason=reason, kernel_id=kid, status=str(to),
            exit_code=exit_code if to in (S.TERMINATED, S.TERMINATING) else None,
        )
        if kname and kid
        else None
    )
    if kev is not None and to in _KERNEL_FIRST:
        out.append(kev)
    out.append(sess)
    if kev is not None and to not in _KERNEL_FIRST:
        out.append(kev)
    return out


class PlacementRefused(Exception):
    """The agent no longer has room (a concurrent reservation won)."""


async def load_session(conn: AsyncConnection, session_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))
    ).mappings().first()
    return dict(row) if row is not None else None


async def adjust_agent(
    conn: AsyncConnection, agent_id: str, delta: Mapping[str, Any], sign: int,
    *, check_capacity: bool = False,
) -> bool:
    """Add (sign=+1) or remove (sign=-1) slots from an agent's ``occupied_slots``."""
    row = (
        await conn.execute(
            sa.select(agents.c.occupied_slots, agents.c.available_slots, agents.c.status)
            .where(agents.c.id == agent_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        return not check_capacity
    occupied = ResourceSlot.from_json(row.occupied_slots)
    amount = ResourceSlot.from_json(delta)
    if sign > 0:
        if check_capacity:
            free = ResourceSlot.from_json(row.available_slots) - occupied
            if row.status != "ALIVE" or not amount.fits_in(free):
                return False
        new = occupied + amount
    else:
        new = occupied - amount
        # Never below zero, whatever happened to the agent's records meanwhile.
        new = ResourceSlot({k: max(v, 0) for k, v in new.items()})
    await conn.execute(
        sa.update(agents).where(agents.c.id == agent_id).values(occupied_slots=new.nonzero().to_json())
    )
    return True


async def transit(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    expected: SessionStatus,
    to: SessionStatus,
    *,
    reason: str,
    cause: str,
    outbox: Outbox,
    info: str | None = None,
    status_data: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    place_on: tuple[str, str] | None = None,
    exit_code: int | None = None,
    now: datetime | None = None,
    row: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Move one session from ``expected`` to ``to``; see the module docstring.

    ``place_on=(agent_id, address)`` is required for PENDING -> SCHEDULED and reserves the
    session's ``requested_slots`` there; ``PlacementRefused`` is raised when they no longer fit.
    ``row`` may pass an already-loaded row (saves a read); it is re-checked by the CAS anyway.
    """
    expected, to = S(expected), S(to)
    check_transition(session_id, expected, to)
    now = now or utcnow()
    if row is None or row.get("status") != expected:
        row = await load_session(conn, session_id)
    if row is None or row["status"] != expected:
        return None
    vals: dict[str, Any] = {
        "status": str(to),
        "status_changed": now,
        "status_info": reason if info is None else info,
        "status_data": status_data if status_data is not None else {},
    }
    if to is S.SCHEDULED:
        vals["scheduled_at"] = now
    if to in FINAL:
        vals["terminated_at"] = now
    if to is S.RUNNING:
        vals["last_activity_at"] = now
    kernel_vals: dict[str, Any] = {
        "status": str(to), "status_info": vals["status_info"], "status_changed": now,
    }
    if to in FINAL:
        kernel_vals["terminated_at"] = now
    if exit_code is not None:
        kernel_vals["exit_code"] = exit_code
    if values:
        vals.update(values)

    res = await conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == session_id, sessions.c.status == str(expected))
        .values(**vals)
    )
    if res.rowcount != 1:
        return None

    was_occupying, now_occupying = expected in OCCUPYING, to in OCCUPYING
    agent_ids = list(row.get("agent_ids") or [])
    if to is S.SCHEDULED and place_on is not None:
        agent_id, address = place_on
        requested = row["requested_slots"]
        if not await adjust_agent(conn, agent_id, requested, +1, check_capacity=True):
            raise PlacementRefused(agent_id)
        await conn.execute(
            sa.update(sessions)
            .where(sessions.c.id == session_id)
            .values(occupying_slots=requested, agent_ids=[agent_id])
        )
        kernel_vals.update(agent_id=agent_id, agent_address=address, occupied_slots=requested)
        vals.update(occupying_slots=requested, agent_ids=[agent_id])
    elif was_occupying and not now_occupying:
        occupying = row.get("occupying_slots") or {}
        if occupying and agent_ids:
            await adjust_agent(conn, agent_ids[0], occupying, -1)
        await conn.execute(
            sa.update(sessions).where(sessions.c.id == session_id).values(occupying_slots={})
        )
        vals["occupying_slots"] = {}
        outbox.kick_scheduler = True
    if to in FINAL or to is S.PENDING:
        outbox.kick_scheduler = True

    if row.get("main_kernel_id"):
        await conn.execute(
            sa.update(kernels).where(kernels.c.id == row["main_kernel_id"]).values(**kernel_vals)
        )
    await conn.execute(
        sa.insert(session_history).values(
            session_id=session_id, from_status=str(expected), to_status=str(to),
            reason=reason, cause=cause, at=now,
        )
    )
    new_row = {**row, **vals}
    evs = session_events(new_row, to, reason, exit_code)
    outbox.events.extend(evs)
    outbox.notify(new_row, evs)
    return new_row


async def replace_kernel(
    conn: AsyncConnection, row: Mapping[str, Any], reason: str, now: datetime | None = None
) -> uuid.UUID:
    """Give the session a fresh main kernel (requeue, restart); the old one becomes history.

    Agents are idempotent on kernel ids, so a new attempt needs a new id; late events about the
    old kernel are recognised (not the main kernel any more) and ignored.
    """
    now = now or utcnow()
    old = row.get("main_kernel_id")
    new_id = uuid.uuid4()
    old_row = None
    if old:
        old_row = (
            await conn.execute(sa.select(kernels).where(kernels.c.id == old))
        ).mappings().first()
        await conn.execute(
            sa.update(kernels)
            .where(kernels.c.id == old, kernels.c.status.not_in([str(s) for s in FINAL]))
            .values(status=str(S.TERMINATED), status_info=reason, status_changed=now,
                    terminated_at=now)
        )
    await conn.execute(
        sa.insert(kernels).values(
            id=new_id,
            session_id=row["id"],
            image=row["image"],
            status=row["status"],
            status_info=reason,
            status_changed=now,
            requested_slots=row["requested_slots"],
            occupied_slots=row["requested_slots"],
            agent_id=old_row["agent_id"] if old_row is not None and row["status"] != "PENDING" else None,
            agent_address=old_row["agent_address"] if old_row is not None and row["status"] != "PENDING" else None,
            created_at=now,
        )
    )
    await conn.execute(
        sa.update(sessions).where(sessions.c.id == row["id"]).values(
            main_kernel_id=new_id, attempt=sessions.c.attempt + 1
        )
    )
    return new_id


async def record_enqueued(
    conn: AsyncConnection, row: Mapping[str, Any], cause: str, outbox: Outbox,
    now: datetime | None = None,
) -> None:
    """The first history entry (None -> PENDING) and ``session_enqueued``."""
    await conn.execute(
        sa.insert(session_history).values(
            session_id=row["id"], from_status=None, to_status=str(S.PENDING),
            reason="enqueued", cause=cause, at=now or utcnow(),
        )
    )
    ev = SessionEvent("session_enqueued", str(row["id"]), row["name"], row["access_key"],
                      reason="enqueued", status="PENDING")
    outbox.events.append(ev)
    outbox.notify(row, [ev])
    outbox.kick_scheduler = True
