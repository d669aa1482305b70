"""The scheduler's I/O loop: load once, ``decide`` in memory, write in batches.

A pass runs when kicked (enqueue, termination, agent change) and on a timer
(``settings.schedule_interval``). Kicks that arrive during a pass coalesce into one more pass.
Placements are written in one transaction, each PENDING -> SCHEDULED a compare-and-set with its
slot reservation (a savepoint, so a placement another replica won does not undo the others);
the reasons of sessions that stay PENDING are written with one ``executemany``, only where they
changed. Then the kernels are started on their agents.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bai.common.events import SessionEvent
from bai.common.resources import ResourceSlot
from bai.common.status import OCCUPYING, SessionStatus
from bai.manager.scheduler.decision import (
    AgentView,
    Decision,
    DependencyView,
    KeypairLimits,
    PendingSession,
    SchedulingInput,
    decide,
)
from bai.manager.services.transitions import Outbox, PlacementRefused, transit
from bai.manager.store.tables import (
    agents,
    domains,
    groups,
    keypair_resource_policies,
    keypairs,
    scaling_groups,
    session_dependencies,
    sessions,
    utcnow,
)

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)
S = SessionStatus
_OCC = [str(s) for s in OCCUPYING]
#: kernels being started (a transaction, then the agent's create call) at one time
START_CONCURRENCY = 32


async def load_input(conn: AsyncConnection, now=None, idle_slack: float = 0) -> SchedulingInput:
    """Everything one pass needs, in a handful of queries.

    ``inp.current_info`` maps each pending session to its ``status_info`` now, so that the
    writer only touches rows whose line changes. ``inp.releases`` lists, per agent, when its
    occupying sessions are expected to give their slots back (see ``release_time``);
    ``idle_slack`` is how late the idle checker may notice an expired idle timeout.
    """
    now = now or utcnow()
    c = sessions.c
    group_limit_rows = [
        g for g in (await conn.execute(sa.select(groups.c.id, groups.c.total_resource_slots))).all()
        if g.total_resource_slots
    ]
    # Group ids cost a UUID per row: load them only when some group has a limit.
    cols = [c.id, c.name, c.access_key, c.created_at, c.requested_slots, c.scaling_group,
            c.domain_name, c.starts_at, c.status_info, c.type, c.idle_timeout]
    if group_limit_rows:
        cols.append(c.group_id)
    pending_rows = (
        await conn.execute(sa.select(*cols).where(c.status == str(S.PENDING)))
    ).all()
    deps: dict[uuid.UUID, list[uuid.UUID]] = {}
    dep_views: dict[uuid.UUID, DependencyView] = {}
    if pending_rows:
        d = session_dependencies.c
        dep_rows = (
            await conn.execute(
                sa.select(d.session_id, d.depends_on, c.name, c.status, c.result, c.type)
                .join(sessions, sessions.c.id == d.depends_on)
                .where(d.session_id.in_(
                    sa.select(c.id).where(c.status == str(S.PENDING)).scalar_subquery()))
            )
        ).all()
        for r in dep_rows:
            deps.setdefault(r.session_id, []).append(r.depends_on)
            dep_views[r.depends_on] = DependencyView(r.depends_on, r.name, r.status, r.result,
                                                     r.type)
    pending = [
        PendingSession(
            id=r.id, name=r.name, access_key=r.access_key, user_id=None,
            created_at=r.created_at, requested=ResourceSlot.from_json(r.requested_slots),
            scaling_group=r.scaling_group, group_id=r.group_id if group_limit_rows else None,
            domain_name=r.domain_name, starts_at=r.starts_at,
            dependencies=tuple(deps.get(r.id, ())), kind=r.type, idle_timeout=r.idle_timeout or 0,
        )
        for r in pending_rows
    ]
    current_info = {r.id: r.status_info for r in pending_rows}
    agent_views = [
        AgentView(
            id=r.id, capacity=ResourceSlot.from_json(r.available_slots),
            occupied=ResourceSlot.from_json(r.occupied_slots), scaling_group=r.scaling_group,
            alive=r.status == "ALIVE", schedulable=r.schedulable, address=r.address,
        )
        for r in (await conn.execute(sa.select(agents))).all()
    ]
    sgroups = (await conn.execute(sa.select(scaling_groups))).all()
    inp = SchedulingInput(
        pending=pending, agents=agent_views, now=now,
        policies={g.name: g.scheduler for g in sgroups},
        strategies={g.name: g.agent_selection for g in sgroups},
        dependencies=dep_views, idle_slack=idle_slack,
    )
    inp.current_info = current_info
    if not pending:
        return inp
    # What live sessions hold, per keypair / group / domain (occupying statuses only).
    usage_rows = (
        await conn.execute(
            sa.select(c.access_key, c.group_id, c.domain_name, c.occupying_slots, c.agent_ids,
                      c.status, c.type, c.idle_timeout, c.last_activity_at, c.status_changed)
            .where(c.status.in_(_OCC))
        )
    ).all()
    by_key: dict[str, tuple[int, ResourceSlot]] = {}
    by_group: dict[Any, ResourceSlot] = {}
    by_domain: dict[str, ResourceSlot] = {}
    releases: dict[str, list[tuple[datetime, ResourceSlot]]] = {}
    for r in usage_rows:
        slots = ResourceSlot.from_json(r.occupying_slots)
        at = release_time(r, idle_slack)
        if at is not None and r.agent_ids:
            releases.setdefault(r.agent_ids[0], []).append((at, slots))
        n, acc = by_key.get(r.access_key, (0, ResourceSlot()))
        by_key[r.access_key] = (n + 1, acc + slots)
        by_group[r.group_id] = by_group.get(r.group_id, ResourceSlot()) + slots
        by_domain[r.domain_name] = by_domain.get(r.domain_name, ResourceSlot()) + slots
    keys = {p.access_key for p in pending}
    kp_rows = (
        await conn.execute(
            sa.select(keypairs.c.access_key, keypair_resource_policies)
            .join(keypair_resource_policies,
                  keypair_resource_policies.c.name == keypairs.c.resource_policy)
            .where(keypairs.c.access_key.in_(keys))
        )
    ).mappings().all()
    kps = {}
    for r in kp_rows:
        n, occ = by_key.get(r["access_key"], (0, ResourceSlot()))
        kps[r["access_key"]] = KeypairLimits(
            max_concurrent_sessions=r["max_concurrent_sessions"] or 0,
            total_resource_slots=ResourceSlot.from_json(r["total_resource_slots"]),
            policy_name=r["name"], concurrent=n, occupied=occ,
        )
    inp.keypairs = kps
    inp.releases = releases
    inp.usage_by_key = {k: v[1] for k, v in by_key.items()}
    inp.group_limits = {
        g.id: (ResourceSlot.from_json(g.total_resource_slots), by_group.get(g.id, ResourceSlot()))
        for g in group_limit_rows
    }
    inp.domain_limits = {
        d.name: (ResourceSlot.from_json(d.total_resource_slots), by_domain.get(d.name, ResourceSlot()))
        for d in (await conn.execute(sa.select(domains.c.name, domains.c.total_resource_slots))).all()
        if d.total_resource_slots
    }
    return inp


#: queue positions up to which every change of a waiting session's line is an event; deeper in
#: the queue only a new reason code is (a placement shifts every position behind it)
EVENT_POSITIONS = 100


def pending_events(inp: SchedulingInput, decision: Decision,
                   rows: list[dict[str, Any]]) -> list[SessionEvent]:
    """``session_pending`` events for waiting sessions whose reason line changed: reason code,
    ``statusInfo``, ``queuePosition``, ``estimatedStart`` (iso or null) and the scheduler's
    details, the same as ``status_data["scheduler"]``."""
    by_id = {p.id: p for p in inp.pending}
    out = []
    for row in rows:
        w = decision.waits[row["_id"]]
        old = inp.current_info.get(w.session_id) or ""
        if w.position > EVENT_POSITIONS and old.split(":", 1)[0] == w.code:
            continue
        p = by_id[w.session_id]
        out.append(pending_event(p.id, p.name, p.access_key, w.info, row["_data"]["scheduler"]))
    return out


def pending_event(sid: Any, name: str, access_key: str, info: str,
                  sched: dict[str, Any]) -> SessionEvent:
    """The ``session_pending`` event that tells why a session waits (also replayed by SSE)."""
    return SessionEvent(
        "session_pending", str(sid), name, access_key, reason=str(sched.get("reason") or ""),
        status=str(S.PENDING),
        extra={"statusInfo": info, "queuePosition": sched.get("position"),
               "estimatedStart": sched.get("estimated_start"), "scheduler": sched},
    )


#: starting phases: an interactive session in one will run, then end when idle
_STARTING = {str(s) for s in (S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING)}


#: seconds a release may take beyond its known time: the termination itself (agent round trip)
#: and the scheduling pass that follows it
RELEASE_ALLOWANCE = 5.0


def release_time(r: Any, idle_slack: float) -> datetime | None:
    """When an occupying session is expected to give its slots back, or None when unknown.

    TERMINATING: since it began terminating, plus ``RELEASE_ALLOWANCE`` (past times count as
    now). An interactive session with an idle timeout: when the timeout would expire if it stays
    idle (RUNNING: from its last activity; still starting: from its last status change, a lower
    bound), plus ``idle_slack`` (the idle checker's interval and the allowance). Anything else
    (batch sessions, no idle timeout, restarting or suspended sessions): unknown.
    """
    if r.status == str(S.TERMINATING):
        return r.status_changed + timedelta(seconds=RELEASE_ALLOWANCE)
    if r.type != "INTERACTIVE" or not r.idle_timeout or r.idle_timeout <= 0:
        return None
    if r.status == str(S.RUNNING):
        since = r.last_activity_at
    elif r.status in _STARTING:
        since = r.status_changed
    else:
        return None
    return since + timedelta(seconds=r.idle_timeout + idle_slack)


class SchedulerLoop:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self._wake = asyncio.Event()
        self._starts = asyncio.Semaphore(START_CONCURRENCY)
        self.passes = 0
        self.last_pass_seconds = 0.0

    def kick(self) -> None:
        """Ask for a pass soon (coalesced)."""
        self._wake.set()

    async def run(self) -> None:
        interval = self.root.settings.schedule_interval
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as
            # the kick does, and this loop then never stopped (ManagerRoot.stop hung)
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(0.5)

    async def run_pass(self) -> Decision:
        """One pass: decide, write placements and reasons, start the placed kernels."""
        t0 = time.perf_counter()
        async with self.root.store.connect() as conn:
            inp = await load_input(
                conn, idle_slack=self.root.settings.idle_check_interval + RELEASE_ALLOWANCE)
        decision = decide(inp) if inp.pending else Decision()
        placed = await self._write(inp, decision)
        self.passes += 1
        self.last_pass_seconds = time.perf_counter() - t0
        for sid in placed:
            self.root.sessions.lifecycle.spawn(self._start(sid), f"start-{sid}")
        return decision

    async def _start(self, sid: uuid.UUID) -> None:
        # A pass may place thousands at once: start a bounded number at a time, so that the
        # agents' events (which move started kernels on to RUNNING) are not queued behind
        # every other placement's start.
        async with self._starts:
            await self.root.sessions.lifecycle.start_kernel(sid)

    async def _write(self, inp: SchedulingInput, decision: Decision) -> list[uuid.UUID]:
        lifecycle = self.root.sessions.lifecycle
        placed: list[uuid.UUID] = []
        outbox = Outbox()
        refused = False
        now = utcnow()
        if decision.assignments or decision.cancels:
            async with self.root.store.begin() as conn:
                for a in decision.assignments:
                    try:
                        async with conn.begin_nested():
                            row = await transit(
                                conn, a.session_id, S.PENDING, S.SCHEDULED, reason="scheduled",
                                cause="scheduler", outbox=outbox, place_on=(a.agent_id, a.address),
                                now=now,
                            )
                    except PlacementRefused:
                        refused = True
                        continue
                    if row is not None:
                        placed.append(a.session_id)
                for sid, reason in decision.cancels:
                    w = decision.waits.get(sid)
                    await transit(
                        conn, sid, S.PENDING, S.CANCELLED, reason=reason, cause="scheduler",
                        outbox=outbox, info=f"{reason}: {w.msg}" if w else reason,
                        status_data=w.status_data() if w else None, now=now,
                    )
        # Reasons of sessions that stay pending: only rows whose line changed.
        cancelled = {sid for sid, _ in decision.cancels}
        waits = [w for sid, w in decision.waits.items() if sid not in cancelled]
        if waits:
            current = inp.current_info
            rows = [
                {"_id": w.session_id, "_info": w.info, "_data": w.status_data()}
                for w in waits
                if w.session_id in current and current[w.session_id] != w.info
            ]
            if rows:
                outbox.events.extend(pending_events(inp, decision, rows))
                stmt = (
                    sa.update(sessions)
                    .where(sessions.c.id == sa.bindparam("_id"),
                           sessions.c.status == str(S.PENDING))
                    .values(status_info=sa.bindparam("_info"), status_data=sa.bindparam("_data"))
                )
                async with self.root.store.begin() as conn:
                    for i in range(0, len(rows), 2000):
                        await conn.execute(stmt, rows[i:i + 2000])
        # This pass already reacted to what it changed; only a lost placement needs another.
        outbox.kick_scheduler = refused
        await lifecycle.flush(outbox)
        return placed
