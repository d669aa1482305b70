"""The one writer of session status.

Every status change goes through ``transit``: a compare-and-set ``UPDATE ... WHERE id = :id AND
status = :expected`` checked against ``bai.common.status.TRANSITIONS``, plus in the same
transaction

* a ``session_history`` row (from, to, reason, cause, at),
* ``status_changed``, ``status_info`` (a kebab reason, or the scheduler's readable line),
  ``status_data``, ``scheduled_at`` on SCHEDULED, ``terminated_at`` on TERMINATED/CANCELLED,
* the main kernel row mirrored (status, info, time),
* slot bookkeeping: moving from an occupying status to one that is not releases
  ``occupying_slots`` from the agent (placements, which reserve slots, are ``place_many``). Because the release rides on a compare-and-set that
  only one writer can win, slots are released exactly once.

The events that the change means for clients are appended to an ``Outbox`` and published by the
caller once the transaction has committed. ``transit`` returns the new row, or ``None`` when the
session was not in ``expected`` (a lost race): the caller re-reads and re-decides.

``transit_many`` and ``place_many`` are the same writes for many sessions at once, set-based: one
compare-and-set ``UPDATE ... WHERE id IN (...) AND status = :expected RETURNING id`` per chunk, one
kernel update, one ``executemany`` of history rows. The scheduler and the agents' event batches use
them when thousands of sessions move at once. ``transit_many`` may also walk a path of steps
(PREPARING -> PREPARED -> CREATING -> RUNNING) in one compare-and-set: every step is checked
against the table and gets its history row and events, as if made one by one in the transaction.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from bai.common.events import SessionEvent
from bai.common.resources import ResourceSlot
from bai.common.status import FINAL, OCCUPYING, SessionStatus, check_transition
from bai.manager.store.engine import LATER, AsyncConnection, Store
from bai.manager.store.tables import agents, kernels, session_history, sessions, utcnow

S = SessionStatus

#: (its result unread: on SQLite it goes with the commit, ``store.engine.LATER``)
_INSERT_HISTORY = sa.insert(session_history).execution_options(**LATER)

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
    kid = row.get("main_kernel_id")
    return step_events(str(row["id"]), row["name"], row["access_key"],
                       str(kid) if kid else None, to, reason, exit_code)


def step_events(sid: str, name: str, access_key: str, kid: str | None, to: SessionStatus,
                reason: str, exit_code: int | None = None) -> list[SessionEvent]:
    """The session event of entering ``to`` and the kernel event that goes with it, in the
    order clients expect (``_KERNEL_FIRST``)."""
    status = to.value
    code = exit_code if to in (S.TERMINATED, S.TERMINATING) else None
    sess = SessionEvent(SESSION_EVENT[to], sid, name, access_key, reason, code, None, status)
    kname = KERNEL_EVENT.get(to)
    if not (kname and kid):
        return [sess]
    kev = SessionEvent(kname, sid, name, access_key, reason, code, kid, status)
    return [kev, sess] if to in _KERNEL_FIRST else [sess, kev]


#: a session's row by its id, built once: every transition reads one first, and building the
#: select of the table's ~40 columns (and its cache key) anew each time cost more than running it
_SESSION_BY_ID = sa.select(sessions).where(sessions.c.id == sa.bindparam("_sid"))


async def load_session(conn: AsyncConnection, session_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await conn.execute(_SESSION_BY_ID, {"_sid": session_id})).mappings().first()
    return dict(row) if row is not None else None


async def release_on_agent(conn: AsyncConnection, agent_id: str, amount: Mapping[str, Any]) -> None:
    """Give ``amount`` back to the agent's free slots (``occupied_slots`` never goes below 0)."""
    row = (
        await conn.execute(
            sa.select(agents.c.occupied_slots).where(agents.c.id == agent_id).with_for_update()
        )
    ).first()
    if row is None:
        return
    new = ResourceSlot.from_json(row.occupied_slots) - ResourceSlot.from_json(amount)
    # Never below zero, whatever happened to the agent's records meanwhile.
    new = ResourceSlot({k: max(v, 0) for k, v in new.items()})
    await conn.execute(
        sa.update(agents).where(agents.c.id == agent_id)
        .values(occupied_slots=new.nonzero().to_json()).execution_options(**LATER)
    )


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
    exit_code: int | None = None,
    now: datetime | None = None,
    row: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Move one session from ``expected`` to ``to``; see the module docstring.

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
    releases = expected in OCCUPYING and to not in OCCUPYING
    if releases:  # in the same statement as the status
        vals["occupying_slots"] = {}

    res = await conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == session_id, sessions.c.status == str(expected))
        .values(**vals)
    )
    if res.rowcount != 1:
        return None

    agent_ids = list(row.get("agent_ids") or [])
    if releases:
        occupying = row.get("occupying_slots") or {}
        if occupying and agent_ids:
            await release_on_agent(conn, agent_ids[0], occupying)
        outbox.kick_scheduler = True
    if to in FINAL or to is S.PENDING:
        outbox.kick_scheduler = True

    # the kernel's mirror and the history are read by nobody here: on SQLite they go with the
    # transaction's next statement or its commit (``LATER``)
    if row.get("main_kernel_id"):
        await conn.execute(
            sa.update(kernels).where(kernels.c.id == row["main_kernel_id"]).values(**kernel_vals)
            .execution_options(**LATER)
        )
    await conn.execute(_INSERT_HISTORY, [{
        "session_id": session_id, "from_status": str(expected), "to_status": str(to),
        "reason": reason, "cause": cause, "at": now,
    }])
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
    conn: AsyncConnection, rows: Sequence[Mapping[str, Any]], cause: str, outbox: Outbox,
    now: datetime | None = None, *, store: Store,
) -> None:
    """The first history entry (None -> PENDING) and ``session_enqueued`` of each of ``rows``
    (sessions just written), the history in one statement (``Store.insert_later``)."""
    at = now or utcnow()
    history = [dict(session_id=row["id"], from_status=None, to_status=str(S.PENDING),
                    reason="enqueued", cause=cause, at=at) for row in rows]
    await store.insert_later(conn, _INSERT_HISTORY, history)
    for row in rows:
        ev = SessionEvent("session_enqueued", str(row["id"]), row["name"], row["access_key"],
                          reason="enqueued", status="PENDING")
        outbox.events.append(ev)
        outbox.notify(row, [ev])
    # A pass places what can start now. Sessions that may not start yet (``starts_at`` ahead)
    # kick none: their line comes from their create (``scheduling.first_lines``) or the next
    # timer pass, so queueing thousands of them for later costs no pass over the queue each.
    if any(row.get("starts_at") is None or row["starts_at"] <= at for row in rows):
        outbox.kick_scheduler = True


#: ids per ``IN (...)`` list (SQLite allows 32,766 parameters per statement)
CHUNK = 500


def in_lists(items: Sequence, n: int = CHUNK):
    """``items`` in ``IN (...)`` lists of at most ``n``, each padded (its last item repeated) to
    a power of two: a handful of statement texts instead of one per length, so that the
    drivers' prepared-statement caches hit (asyncpg prepares each new text: a round trip)."""
    for i in range(0, len(items), n):
        chunk = list(items[i:i + n])
        size = 8
        while size < len(chunk):
            size *= 2
        yield chunk + chunk[-1:] * (min(size, n) - len(chunk))


#: the columns a set-based move reads: enough for its writes, events, webhooks and kernel specs
MOVE_COLUMNS = tuple(sessions.c[name] for name in (
    "id", "name", "access_key", "status", "type", "main_kernel_id", "callback_url",
    "requested_slots", "occupying_slots", "agent_ids", "image", "environ", "startup_command",
    "bootstrap_script", "mounts",
))


async def lock_sessions(
    conn: AsyncConnection, ids: Sequence[uuid.UUID],
    statuses: SessionStatus | Sequence[SessionStatus], columns: Sequence[Any] = MOVE_COLUMNS,
) -> list[dict[str, Any]]:
    """The rows of ``ids`` that are in one of ``statuses``, locked until the transaction ends
    (PostgreSQL; SQLite's write transactions hold the database lock already); ``columns``
    only (``MOVE_COLUMNS`` by default)."""
    wanted = [str(statuses)] if isinstance(statuses, str) else [str(s) for s in statuses]
    out: list[dict[str, Any]] = []
    stmt = _lock_statement(tuple(columns))
    for chunk in in_lists(list(ids)):
        res = await conn.execute(stmt, {"_ids": chunk, "_wanted": wanted})
        out.extend(dict(r) for r in res.mappings())
    return out


@functools.lru_cache(maxsize=32)
def _lock_statement(columns: tuple[Any, ...]) -> sa.Select:
    """``lock_sessions``'s read of ``columns``, built once (a move's statement took 0.27 ms to
    build, and its cache key more)."""
    return (sa.select(*columns)
            .where(sessions.c.id.in_(sa.bindparam("_ids", expanding=True)),
                   sessions.c.status.in_(sa.bindparam("_wanted", expanding=True)))
            .with_for_update())


async def transit_many(
    conn: AsyncConnection,
    rows: Sequence[Mapping[str, Any]],
    expected: SessionStatus,
    path: Sequence[tuple[SessionStatus, str]],
    *,
    cause: str,
    outbox: Outbox,
    now: datetime | None = None,
    exit_code: int | None = None,
    values: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Move sessions that are in ``expected`` along ``path`` ([(status, reason), ...]; they end
    in the last status), with the writes and events ``transit`` makes for each step.

    One compare-and-set per chunk decides which rows move; the moved rows are returned (a row
    another writer changed meanwhile is left out, and the caller re-reads it). Leaving an
    occupying status for one that is not releases the slots, summed per agent. ``exit_code``
    goes on the main kernels and into the events as ``transit`` puts it; ``values`` are more
    columns of the sessions set in the same statement.
    """
    expected = S(expected)
    steps = [(S(st), reason) for st, reason in path]
    src = expected
    for dst, _ in steps:
        check_transition("(batch)", src, dst)
        src = dst
    to, reason = steps[-1]
    now = now or utcnow()
    vals: dict[str, Any] = {
        "status": str(to), "status_changed": now, "status_info": reason, "status_data": {},
    }
    kernel_vals: dict[str, Any] = {"status": str(to), "status_info": reason, "status_changed": now}
    passes = {st for st, _ in steps}
    if S.SCHEDULED in passes:
        vals["scheduled_at"] = now
    if to in FINAL:
        vals["terminated_at"] = kernel_vals["terminated_at"] = now
    if S.RUNNING in passes:
        vals["last_activity_at"] = now
    releases = expected in OCCUPYING and to not in OCCUPYING
    if releases:
        vals["occupying_slots"] = {}
    if exit_code is not None:
        kernel_vals["exit_code"] = exit_code
    if values:
        vals.update(values)

    by_id = {r["id"]: r for r in rows}
    moved: list[dict[str, Any]] = []
    for chunk in in_lists(list(by_id)):
        res = await conn.execute(
            sa.update(sessions)
            .where(sessions.c.id.in_(chunk), sessions.c.status == str(expected))
            .values(**vals)
            .returning(sessions.c.id)
        )
        won = list(res.scalars())
        kids = [by_id[sid]["main_kernel_id"] for sid in won if by_id[sid].get("main_kernel_id")]
        if kids:
            await conn.execute(sa.update(kernels).where(kernels.c.id.in_(kids))
                               .values(**kernel_vals).execution_options(**LATER))
        moved.extend({**by_id[sid], **vals} for sid in won)
    if not moved:
        return moved

    if releases:
        freed: dict[str, ResourceSlot] = {}
        for r in moved:
            agent_ids = list(by_id[r["id"]].get("agent_ids") or [])
            occupying = by_id[r["id"]].get("occupying_slots")
            if agent_ids and occupying:
                freed[agent_ids[0]] = freed.get(agent_ids[0], ResourceSlot()) + ResourceSlot.from_json(occupying)
        for agent_id, amount in freed.items():
            await release_on_agent(conn, agent_id, amount)
        outbox.kick_scheduler = True
    if to in FINAL or to is S.PENDING:
        outbox.kick_scheduler = True

    await _record_walk(conn, moved, expected, steps, cause=cause, outbox=outbox, now=now,
                       exit_code=exit_code)
    return moved


async def _record_walk(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]],
                       expected: SessionStatus, steps: Sequence[tuple[SessionStatus, str]], *,
                       cause: str, outbox: Outbox, now: datetime,
                       exit_code: int | None = None) -> None:
    """History rows (one ``executemany``) and events of ``rows`` having walked ``steps``."""
    walk, src = [], expected.value
    for dst, why in steps:
        walk.append((src, dst.value, dst, why))
        src = dst.value
    history, events = [], outbox.events
    for r in rows:
        sid, kid = r["id"], r.get("main_kernel_id")
        sid_text, kid_text = str(sid), str(kid) if kid else None
        for src, dst_text, dst, why in walk:
            history.append({"session_id": sid, "from_status": src, "to_status": dst_text,
                            "reason": why, "cause": cause, "at": now})
            evs = step_events(sid_text, r["name"], r["access_key"], kid_text, dst, why,
                              exit_code)
            events.extend(evs)
            if r.get("callback_url"):
                outbox.notify(r, evs)
    await conn.execute(_INSERT_HISTORY, history)


# place_many's statements, built once (building them took ~0.55 ms a placement)
_LOCK_AGENTS = (
    sa.select(agents.c.id, agents.c.occupied_slots, agents.c.available_slots, agents.c.status)
    .where(agents.c.id.in_(sa.bindparam("_ids", expanding=True)))
    .with_for_update())
_PLACE_SESSIONS = (
    sa.update(sessions)
    .where(sessions.c.id.in_(sa.bindparam("_ids", expanding=True)),
           sessions.c.status == S.PENDING.value)
    .values(status=sa.bindparam("_to"), status_changed=sa.bindparam("_now"),
            status_info=sa.bindparam("_info"), status_data=sa.bindparam("_data"),
            scheduled_at=sa.bindparam("_now"), occupying_slots=sessions.c.requested_slots,
            agent_ids=sa.bindparam("_agents")))
_PLACE_SESSIONS_LATER = _PLACE_SESSIONS.execution_options(**LATER)


async def place_many(
    conn: AsyncConnection,
    placements: Sequence[tuple[uuid.UUID, str, str]],
    *,
    outbox: Outbox,
    then: Sequence[tuple[SessionStatus, str]] = (),
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """PENDING -> SCHEDULED for many sessions, each reserving its request on its agent, and on
    along ``then`` ([(status, reason), ...]) in the same compare-and-set, as ``transit_many``.

    ``placements`` are (session id, agent id, agent address) in the scheduler's order. The
    sessions and agents are locked, each agent takes what still fits it in that order, and the
    writes are one ``executemany`` each. Returns (the placed rows, how many were refused because
    their agent no longer had room or is gone); a session that is no longer PENDING is skipped.
    """
    now = now or utcnow()
    steps = [(S.SCHEDULED, "scheduled"), *((S(st), why) for st, why in then)]
    src = S.PENDING
    for dst, _ in steps:
        check_transition("(batch)", src, dst)
        src = dst
    to, info = steps[-1][0].value, steps[-1][1]
    rows = {r["id"]: r for r in await lock_sessions(conn, [p[0] for p in placements], S.PENDING)}
    agent_ids = sorted({p[1] for p in placements})
    agent_rows = {}
    for chunk in in_lists(agent_ids):
        res = await conn.execute(_LOCK_AGENTS, {"_ids": chunk})
        agent_rows.update({r.id: r for r in res})
    free = {
        a.id: ResourceSlot.from_json(a.available_slots) - ResourceSlot.from_json(a.occupied_slots)
        for a in agent_rows.values() if a.status == "ALIVE"
    }
    occupied = {a: ResourceSlot.from_json(agent_rows[a].occupied_slots) for a in free}
    placed: list[dict[str, Any]] = []
    refused = 0
    session_params, kernel_params = [], []
    for sid, agent_id, address in placements:
        row = rows.get(sid)
        if row is None:
            continue
        want = ResourceSlot.from_json(row["requested_slots"])
        room = free.get(agent_id)
        if room is None or not want.fits_in(room):
            refused += 1
            continue
        free[agent_id] = room - want
        occupied[agent_id] = occupied[agent_id] + want
        session_params.append({"_id": sid, "_agents": [agent_id], "_address": address})
        if row.get("main_kernel_id"):
            kernel_params.append({"_kid": row["main_kernel_id"], "_agent": agent_id,
                                  "_address": address})
        placed.append({**row, "status": to, "status_changed": now,
                       "status_info": info, "status_data": {}, "scheduled_at": now,
                       "occupying_slots": row["requested_slots"], "agent_ids": [agent_id],
                       "_address": address})
    if not placed:
        return placed, refused
    # one statement per agent (its sessions share every value): a scheduler spreads a chunk
    # over few agents, and per-row parameters cost more than the statements
    by_agent: dict[str, tuple[str, list, list]] = {}
    for p in session_params:
        by_agent.setdefault(p["_agents"][0], (p["_address"], [], []))[1].append(p["_id"])
    for p in kernel_params:
        by_agent[p["_agent"]][2].append(p["_kid"])
    # SQLite: this write transaction has held the database since the rows were read PENDING,
    # so each of them moves; the update goes with the commit (LATER) and is not counted
    sqlite = conn.dialect.name == "sqlite"
    place = _PLACE_SESSIONS_LATER if sqlite else _PLACE_SESSIONS
    moved = 0
    for agent_id, (address, sids, kids) in by_agent.items():
        for chunk in in_lists(sids):
            res = await conn.execute(place, {
                "_ids": chunk, "_to": to, "_now": now, "_info": info, "_data": {},
                "_agents": [agent_id]})
            moved += res.rowcount
        for chunk in in_lists(kids):
            await conn.execute(
                sa.update(kernels).where(kernels.c.id.in_(chunk))
                .values(status=to, status_info=info, status_changed=now, agent_id=agent_id,
                        agent_address=address, occupied_slots=kernels.c.requested_slots)
                .execution_options(**LATER))
    if not sqlite and moved != len(session_params):
        # the rows are locked: this means a writer that ignores the protocol; undo everything
        raise RuntimeError(f"placing {len(session_params)} sessions moved {moved}")
    touched = {p["_agents"][0] for p in session_params}
    await conn.execute(
        sa.update(agents).where(agents.c.id == sa.bindparam("_aid"))
        .values(occupied_slots=sa.bindparam("_occ", type_=sa.JSON)).execution_options(**LATER),
        [{"_aid": a, "_occ": occupied[a].nonzero().to_json()} for a in sorted(touched)],
    )
    await _record_walk(conn, placed, S.PENDING, steps, cause="scheduler", outbox=outbox, now=now)
    return placed, refused
