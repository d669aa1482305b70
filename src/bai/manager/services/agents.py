"""AgentRegistry: agents' heartbeats and kernel events, liveness, and the RPC client.

* ``heartbeat(payload)`` registers an agent on first contact, revives a LOST one, and keeps its
  capacity (``available_slots``), address and isolation up to date. New capacity kicks the
  scheduler.
* ``check_liveness()`` marks agents LOST after ``settings.heartbeat_timeout`` without a
  heartbeat; their sessions are handled by ``Lifecycle.agent_lost`` (interactive -> ERROR
  ``agent-lost``, batch -> PENDING again), which releases their slots once.
* ``handle_events(events)`` applies kernel events in order (idempotent), a batch's progress
  events set-based (``Lifecycle.apply_kernel_events``).
* ``kernel_target(session_row)`` gives the (agent address, kernel id) of a RUNNING session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bai.common.errors import InvalidAPIParameters, SessionNotRunning
from bai.common.events import KernelEvent
from bai.common.resources import ResourceSlot
from bai.common.status import AgentStatus, SessionStatus
from bai.manager.services.rpc import AgentClient
from bai.manager.store.tables import agents, kernels, sessions, utcnow

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)


class AgentRegistry:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self.rpc = AgentClient(root.settings.cluster_token)
        #: agent id -> (what its last heartbeat said, when its row was last written in full)
        self._seen: dict[str, tuple[dict[str, Any], Any]] = {}
        self._appliers = asyncio.Semaphore(EVENT_APPLIERS)
        #: the oldest ``last_heartbeat`` of the ALIVE agents at the last ``check_liveness``
        #: (None: none alive, or not checked yet)
        self.oldest_heartbeat: Any = None

    async def close(self) -> None:
        await self.rpc.close()

    async def heartbeat(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        agent_id = str(payload.get("agent_id") or "").strip()
        address = str(payload.get("address") or "").strip()
        if not agent_id or not address:
            raise InvalidAPIParameters("a heartbeat needs agent_id and address")
        try:
            capacity = ResourceSlot.from_json(payload.get("available_slots") or {})
        except (ArithmeticError, TypeError, ValueError, AttributeError):
            raise InvalidAPIParameters("available_slots must map slot names to numbers") from None
        now = utcnow()
        values = {
            "address": address,
            "runtime": str(payload.get("runtime") or "process"),
            "scaling_group": str(payload.get("scaling_group") or "default"),
            "architecture": str(payload.get("architecture") or "x86_64"),
            "available_slots": capacity.to_json(),
            "isolation": dict(payload.get("isolation") or {}),
            "version": str(payload.get("version") or ""),
        }
        # The usual heartbeat says what the last one said: then it only refreshes
        # last_heartbeat (one UPDATE that also checks the agent is still ALIVE). The whole
        # row is compared and written again on any change and every FULL_HEARTBEAT_EVERY.
        seen = self._seen.get(agent_id)
        rows = None
        if seen and seen[0] == values and (now - seen[1]).total_seconds() < FULL_HEARTBEAT_EVERY:
            rows = await self._touch(agent_id, now)
        if rows is None:
            if await self._register(agent_id, values, now):
                self.root.scheduler.kick()
            self._seen[agent_id] = (values, now)
        known = await self._check_kernels(agent_id, payload.get("kernels"), rows)
        return {"ok": True, "known_kernels": known}

    async def _touch(self, agent_id: str, now) -> list[Any] | None:
        """The usual heartbeat's one transaction: refresh ``last_heartbeat`` if the agent is
        still ALIVE, and then read its live kernels (``_check_kernels``); None if it is not
        ALIVE. (Two transactions, the write and then the read, cost a third more.)"""
        async with self.root.store.begin() as conn:
            res = await conn.execute(_TOUCH, {"_id": agent_id, "_at": now})
            if res.rowcount != 1:
                return None
            return await self._live_kernels(conn, agent_id)

    async def _live_kernels(self, conn, agent_id: str) -> list[Any]:
        """This agent's live kernels: id, status, session, session status, main kernel, and
        whether the session has been in its status for a while (``settled``)."""
        settled = utcnow() - timedelta(seconds=max(10.0, 3 * self.root.settings.schedule_interval))
        return (await conn.execute(_LIVE_KERNELS, {"_agent": agent_id, "_settled": settled})).all()

    async def _register(self, agent_id: str, values: dict[str, Any], now) -> bool:
        """Write the agent's row from a heartbeat; True when the scheduler should look again
        (a new agent, one back from LOST, new capacity or address)."""
        values = {**values, "last_heartbeat": now}
        async with self.root.store.begin() as conn:
            row = (
                await conn.execute(sa.select(agents).where(agents.c.id == agent_id).with_for_update())
            ).mappings().first()
            if row is None:
                await conn.execute(
                    sa.insert(agents).values(
                        id=agent_id, status=AgentStatus.ALIVE.value, status_changed=now,
                        first_contact=now, occupied_slots={}, **values,
                    )
                )
                log.info("agent %s registered at %s with %s", agent_id, values["address"],
                         values["available_slots"])
                return True
            changed = False
            if row["status"] != AgentStatus.ALIVE.value:
                values.update(status=AgentStatus.ALIVE.value, status_changed=now)
                changed = True
                log.info("agent %s is back (was %s)", agent_id, row["status"])
            if (row["available_slots"] != values["available_slots"]
                    or row["address"] != values["address"]):
                changed = True
            await conn.execute(sa.update(agents).where(agents.c.id == agent_id).values(**values))
        return changed

    async def _check_kernels(self, agent_id: str, reported: Any,
                             rows: list[Any] | None = None) -> list[str]:
        """The heartbeat's answer about kernels, from one read of this agent's live kernels
        (``rows``, when the heartbeat's transaction read them already).

        Returns the kernels this agent should keep (docs/internals.md): it drops the others,
        e.g. those of sessions that ended while its link was down. And when the heartbeat lists
        its kernels, RUNNING sessions whose kernel is not among them end as ``kernel-lost``;
        only kernels that have been RUNNING for a while count: a kernel that just started may
        not be in this heartbeat's list yet.
        """
        if rows is None:
            async with self.root.store.connect() as conn:
                rows = await self._live_kernels(conn, agent_id)
        known = [_uuid_text(r.id) for r in rows if r.status != SessionStatus.TERMINATING.value]
        if not isinstance(reported, list):
            return known
        present = {str(k) for k in reported}
        for r in rows:
            if (r.session_status == SessionStatus.RUNNING.value and r.main_kernel_id == r.id
                    and r.settled and _uuid_text(r.id) not in present):
                log.warning("agent %s no longer has kernel %s: ending its session", agent_id,
                            _uuid_text(r.id))
                await self.root.sessions.lifecycle.apply_kernel_event(KernelEvent(
                    "kernel_terminated", agent_id, _uuid_text(r.id), _uuid_text(r.session_id),
                    reason="kernel-lost"))
        return known

    async def handle_events(self, events: list[KernelEvent]) -> None:
        """Apply agent events in order; on the cluster bus, queue them for one replica."""
        dispatch = getattr(self.root.bus, "dispatch", None)
        if dispatch is not None:
            await dispatch(events)
            return
        # A few batches at a time: a hundred agents posting at once must not each hold a
        # database connection (PostgreSQL's pool ran dry, heartbeats waited past the agent
        # timeout); the set-based apply makes a queued batch quick once its turn comes.
        async with self._appliers:
            await self.root.sessions.lifecycle.apply_kernel_events(coalesce_progress(events))

    async def check_liveness(self) -> list[str]:
        """Mark agents LOST whose last heartbeat is too old; end or requeue their sessions.

        One read finds the ALIVE agents past the deadline, the non-ALIVE ones that still hold
        live kernels (lost earlier, handling interrupted), and the oldest heartbeat of the ALIVE
        ones (``oldest_heartbeat``: no agent can be lost before it is ``heartbeat_timeout`` old,
        which lets ``Watchdogs`` skip checks till then); the write transaction is opened only
        when there is an agent to mark (it was opened on every check, every second)."""
        deadline = utcnow() - timedelta(seconds=self.root.settings.heartbeat_timeout)
        alive = AgentStatus.ALIVE.value
        async with self.root.store.connect() as conn:
            found = (await conn.execute(_LOST_OR_STALE, {"_deadline": deadline})).all()
            self.oldest_heartbeat = (await conn.execute(_OLDEST_HEARTBEAT)).scalar()
        if not found:
            return []
        stale = [aid for aid, status in found if status != alive]
        lost: list[str] = []
        if len(stale) < len(found):
            async with self.root.store.begin() as conn:
                lost = list(
                    (
                        await conn.execute(
                            sa.update(agents)
                            .where(agents.c.status == alive, agents.c.last_heartbeat < deadline)
                            .values(status=AgentStatus.LOST.value, status_changed=utcnow())
                            .returning(agents.c.id)
                        )
                    ).scalars()
                )
        for agent_id in sorted(set(lost) | set(stale)):
            if agent_id in lost:
                log.warning("agent %s lost: no heartbeat for %ss", agent_id,
                            self.root.settings.heartbeat_timeout)
            await self.root.sessions.lifecycle.agent_lost(agent_id)
        return lost

    async def kernel_target(self, session_row: Mapping[str, Any]) -> tuple[str, str]:
        """(agent address, kernel id) of a RUNNING session's main kernel."""
        if session_row.get("status") != SessionStatus.RUNNING:
            raise SessionNotRunning(
                f"session {session_row.get('name')} is {session_row.get('status')}, not RUNNING"
            )
        async with self.root.store.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(kernels.c.id, kernels.c.agent_address, agents.c.address)
                    .select_from(kernels.outerjoin(agents, agents.c.id == kernels.c.agent_id))
                    .where(kernels.c.id == session_row["main_kernel_id"])
                )
            ).first()
        if row is None or not (row.address or row.agent_address):
            raise SessionNotRunning(f"session {session_row.get('name')} has no running kernel")
        return row.address or row.agent_address, str(row.id)


def _uuid_text(raw: Any) -> str:
    """The usual text of a UUID read raw: SQLite gives 32 hex digits, PostgreSQL a UUID."""
    if isinstance(raw, str) and len(raw) == 32:
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    return str(raw)


#: agent event batches applied at one time
EVENT_APPLIERS = 4

#: how often a heartbeat that says nothing new still rewrites the agent's whole row (seconds)
FULL_HEARTBEAT_EVERY = 30.0

_LIVE = (
    SessionStatus.SCHEDULED, SessionStatus.PREPARING, SessionStatus.PULLING,
    SessionStatus.PREPARED, SessionStatus.CREATING, SessionStatus.RUNNING,
    SessionStatus.RESTARTING, SessionStatus.RESIZING, SessionStatus.SUSPENDED,
    SessionStatus.TERMINATING,
)
_LIVE_NAMES = [s.value for s in _LIVE]


# The heartbeat's statements, built once (an agent heartbeats every 3 s: building them each
# time, and their cache keys, cost as much as running them).
_TOUCH = (sa.update(agents)
          .where(agents.c.id == sa.bindparam("_id"), agents.c.status == AgentStatus.ALIVE.value)
          .values(last_heartbeat=sa.bindparam("_at")))
# ids as stored (SQLite: hex text) rather than a uuid.UUID each: agents heartbeat every few
# seconds and each may hold hundreds of kernels
_KID, _SID, _MAIN = (sa.type_coerce(c, sa.String) for c in (
    kernels.c.id, kernels.c.session_id, sessions.c.main_kernel_id))
_LIVE_KERNELS = (
    sa.select(_KID.label("id"), kernels.c.status, _SID.label("session_id"),
              sessions.c.status.label("session_status"), _MAIN.label("main_kernel_id"),
              (sessions.c.status_changed
               < sa.bindparam("_settled", type_=sessions.c.status_changed.type)).label("settled"))
    .join(sessions, sessions.c.id == kernels.c.session_id)
    .where(kernels.c.agent_id == sa.bindparam("_agent"), kernels.c.status.in_(_LIVE_NAMES)))

# check_liveness's: the ALIVE agents past the deadline and the others that still hold live
# kernels; the oldest heartbeat of the ALIVE ones
_LOST_OR_STALE = sa.select(agents.c.id, agents.c.status).where(sa.or_(
    sa.and_(agents.c.status == AgentStatus.ALIVE.value,
            agents.c.last_heartbeat < sa.bindparam("_deadline",
                                                   type_=agents.c.last_heartbeat.type)),
    sa.and_(agents.c.status != AgentStatus.ALIVE.value,
            sa.exists().where(kernels.c.agent_id == agents.c.id,
                              kernels.c.status.in_(_LIVE_NAMES)))))
_OLDEST_HEARTBEAT = (sa.select(sa.func.min(agents.c.last_heartbeat))
                     .where(agents.c.status == AgentStatus.ALIVE.value))

#: the progress events of a starting kernel, in the order an agent reports them
_PROGRESS_ORDER = {name: i for i, name in enumerate(
    ("kernel_preparing", "kernel_pulling", "kernel_prepared", "kernel_creating", "kernel_started"))}


def coalesce_progress(events: list[KernelEvent]) -> list[KernelEvent]:
    """The batch with each run of one kernel's progress events reduced to its last one.

    Applying ``kernel_started`` walks the session through every status before it
    (PREPARING -> PREPARED -> CREATING -> RUNNING) in one transaction, with the same history
    and session events as applying each event in turn, which took a transaction per event.
    ``kernel_pulling`` is never dropped (the walk does not pass through PULLING by itself),
    and any other event of the kernel, or a step back (a new start), ends the run.
    """
    out: list[KernelEvent | None] = []
    last_progress: dict[str, int] = {}  # kernel -> index in out of its pending progress event
    for ev in events:
        rank = _PROGRESS_ORDER.get(ev.name)
        if rank is not None:
            i = last_progress.get(ev.kernel_id)
            prev = out[i] if i is not None else None
            if (prev is not None and prev.name != "kernel_pulling"
                    and _PROGRESS_ORDER[prev.name] <= rank):
                out[i] = None
            last_progress[ev.kernel_id] = len(out)
        else:
            last_progress.pop(ev.kernel_id, None)
        out.append(ev)
    return [ev for ev in out if ev is not None]
