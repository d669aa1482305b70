"""AgentRegistry: agents' heartbeats and kernel events, liveness, and the RPC client.

* ``heartbeat(payload)`` registers an agent on first contact, revives a LOST one, and keeps its
  capacity (``available_slots``), address and isolation up to date. New capacity kicks the
  scheduler. A heartbeat that says nothing new writes ``last_heartbeat`` only every
  ``touch_every`` (a third of the timeout); on SQLite it sends no SQL at all while nothing
  was written since its last read, and its time is written by the next liveness check
  (``_write_heard``: one write per check, not one per heartbeat). The answer tells the agent
  how seldom it may beat while it has nothing new to say (``idle_interval``: ``touch_every``):
  an idle agent's heartbeats were most of an idle manager's CPU (~1.2 ms each, 20 a minute).
* ``check_liveness()`` marks agents LOST after ``settings.heartbeat_timeout`` without a
  heartbeat (``lost_after`` since the stored one, which lags by up to ``touch_every``); their
  sessions are handled by ``Lifecycle.agent_lost`` (interactive -> ERROR ``agent-lost``, batch
  -> PENDING again), which releases their slots once.
* ``handle_events(events)`` applies kernel events in order (idempotent), a batch's progress
  events set-based (``Lifecycle.apply_kernel_events``).
* ``kernel_target(session_row)`` gives the (agent address, kernel id) of a RUNNING session.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
        #: agent id -> what its heartbeats said, and when its row was last written
        self._seen: dict[str, _Seen] = {}
        self._appliers = asyncio.Semaphore(EVENT_APPLIERS)
        #: the ALIVE agents and their ``last_heartbeat`` at the last ``check_liveness`` read,
        #: and ``Store.changes`` as it began (``oldest_heard``)
        self._alive_read: dict[str, Any] = {}
        self._alive_changes = -1
        #: kernel id -> (its agent's address, when): where the scheduler of this process has
        #: just placed each kernel (``placed``), for the run stream's ``kernel_target``
        self._placed: dict[str, tuple[str, float]] = {}
        #: session id -> what a run stream waits for: (address, kernel id) once the agent
        #: took its kernel's create request (``start_accepted``)
        self._accepting: dict[str, asyncio.Future[tuple[str, str]]] = {}

    async def close(self) -> None:
        await self.rpc.close()

    @property
    def touch_every(self) -> float:
        """Seconds at most between two writes of an agent's ``last_heartbeat`` while its
        heartbeats say nothing new (a share of ``heartbeat_timeout``, as set now)."""
        return self.root.settings.heartbeat_timeout * TOUCH_SHARE

    @property
    def lost_after(self) -> float:
        """Seconds after its stored ``last_heartbeat`` that an agent is LOST: the timeout
        plus ``touch_every``, the most the stored value may lag behind the agent's last
        heartbeat. A silent agent is lost between ``heartbeat_timeout`` and that after its
        last heartbeat, never before."""
        return self.root.settings.heartbeat_timeout + self.touch_every

    async def heartbeat(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to an agent's heartbeat (docs/internals.md), with ``idle_interval``: the
        seconds it may wait before the next one while it has nothing new to say,
        ``touch_every`` (the liveness rule is the same as with more of them: LOST
        ``heartbeat_timeout`` to ``lost_after`` after the last one)."""
        answer = await self._heartbeat(payload)
        answer["idle_interval"] = self.touch_every
        return answer

    async def _heartbeat(self, payload: Mapping[str, Any]) -> dict[str, Any]:
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
        instance = str(payload.get("instance") or "")  # a restarted agent: its row again
        reported = payload.get("kernels")
        report = tuple(sorted(str(k) for k in reported)) if isinstance(reported, list) else None
        # The usual heartbeat says what the last one said. Then last_heartbeat is written only
        # every touch_every (check_liveness allows for the lag), with a read of the agent's
        # status and kernels between; on SQLite, while no transaction ended since that read,
        # the answer is the last one and no SQL is sent. The whole row is compared and
        # written again on any change (capacity, address, isolation, a restart) at once, and on
        # PostgreSQL, where other replicas write the row too, every FULL_HEARTBEAT_EVERY (on
        # SQLite this manager wrote it, and the touch finds a row it did not: no longer ALIVE).
        seen = self._seen.get(agent_id)
        found = None
        if (seen is not None and seen.values == values and seen.instance == instance
                and (self.root.store.is_sqlite
                     or (now - seen.full_at).total_seconds() < FULL_HEARTBEAT_EVERY)):
            quiet = self._quiet(seen, report)
            if self.root.store.is_sqlite:
                seen.heard_at = now
                if quiet is not None:
                    # the answer holds and the agent is ALIVE (nothing was written since the
                    # read that said so): its time is written when the liveness check needs it
                    return {"ok": True, "known_kernels": list(quiet)}
            if (now - seen.touched_at).total_seconds() >= self.touch_every:
                found = await self._touch(agent_id, now, quiet is None)
                if found is not None:
                    seen.touched_at = now
                    if quiet is not None:  # the kernels were not read again: still the same
                        seen.quiet = (found[1], report, quiet)
                        return {"ok": True, "known_kernels": list(quiet)}
            elif quiet is not None:
                return {"ok": True, "known_kernels": list(quiet)}
            else:
                found = await self._read(agent_id)
        if found is None:
            if await self._register(agent_id, values, now):
                self.root.scheduler.kick()
            seen = self._seen[agent_id] = _Seen(values, instance, now)
            found = await self._read(agent_id) or ([], None)
        rows, mark = found
        known, settled = await self._check_kernels(agent_id, reported, rows)
        seen.quiet = (mark, report, tuple(known)) if settled and mark is not None else None
        return {"ok": True, "known_kernels": known}

    def _quiet(self, seen: _Seen, report: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The last answer, where it holds without a read: on SQLite (this process is the
        only writer), no transaction ended since it was read and the agent reports the same
        kernels. None otherwise."""
        q = seen.quiet
        if q is None or q[0] != self.root.store.transactions or q[1] != report:
            return None
        return q[2]

    def _mark(self) -> int | None:
        store = self.root.store
        return store.transactions if store.is_sqlite else None

    async def _touch(self, agent_id: str, now, read: bool = True) -> tuple[list[Any], int | None] | None:
        """Refresh ``last_heartbeat`` if the agent is still ALIVE, and then (``read``) read
        its live kernels, in one transaction; None if it is not ALIVE. With the rows, the
        ``Store.transactions`` they hold for (SQLite; None elsewhere)."""
        async with self.root.store.begin() as conn:
            res = await conn.execute(_TOUCH, {"_id": agent_id, "_at": now})
            self.root.store.heartbeat_only(conn)
            if res.rowcount != 1:
                return None
            rows = await self._live_kernels(conn, agent_id) if read else []
            mark = self._mark()
        # this transaction's own end is the one more (SQLite: no other writer runs meanwhile)
        return rows, (None if mark is None else mark + 1)

    async def _read(self, agent_id: str) -> tuple[list[Any], int | None] | None:
        """The agent's live kernels in one read that also checks it is ALIVE (None if not),
        with the ``Store.transactions`` they hold for (SQLite; None elsewhere)."""
        mark = self._mark()
        settled = self._settled_since()
        async with self.root.store.connect() as conn:
            rows = (await conn.execute(_ALIVE_AND_KERNELS,
                                       {"_agent": agent_id, "_settled": settled})).all()
        if not rows or rows[0].agent_status != AgentStatus.ALIVE.value:
            return None
        return [r for r in rows if r.id is not None], mark

    def _settled_since(self):
        return utcnow() - timedelta(seconds=max(10.0, 3 * self.root.settings.schedule_interval))

    async def _live_kernels(self, conn, agent_id: str) -> list[Any]:
        """This agent's live kernels: id, status, session, session status, main kernel, and
        whether the session has been in its status for a while (``settled``)."""
        return (await conn.execute(_LIVE_KERNELS, {"_agent": agent_id,
                                                   "_settled": self._settled_since()})).all()

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
                             rows: list[Any]) -> tuple[list[str], bool]:
        """The heartbeat's answer about kernels, from one read of this agent's live kernels
        (``rows``), and whether it holds as long as nothing is written (no RUNNING kernel
        missing from the agent's list, which may count as lost once settled).

        Returns the kernels this agent should keep (docs/internals.md): it drops the others,
        e.g. those of sessions that ended while its link was down. And when the heartbeat lists
        its kernels, RUNNING sessions whose kernel is not among them end as ``kernel-lost``;
        only kernels that have been RUNNING for a while count: a kernel that just started may
        not be in this heartbeat's list yet.
        """
        known = [_uuid_text(r.id) for r in rows if r.status != SessionStatus.TERMINATING.value]
        if not isinstance(reported, list):
            return known, True
        present = {str(k) for k in reported}
        steady = True
        for r in rows:
            if (r.session_status == SessionStatus.RUNNING.value and r.main_kernel_id == r.id
                    and _uuid_text(r.id) not in present):
                steady = False
                if not r.settled:
                    continue
                log.warning("agent %s no longer has kernel %s: ending its session", agent_id,
                            _uuid_text(r.id))
                await self.root.sessions.lifecycle.apply_kernel_event(KernelEvent(
                    "kernel_terminated", agent_id, _uuid_text(r.id), _uuid_text(r.session_id),
                    reason="kernel-lost"))
        return known, steady

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
        ones (``oldest_heartbeat``: no agent can be lost before it is ``lost_after`` old,
        which lets ``Watchdogs`` skip checks till then); the write transaction is opened only
        when there is an agent to mark (it was opened on every check, every second). On
        SQLite the heartbeats this process answered without SQL are written first."""
        await self._write_heard()
        deadline = utcnow() - timedelta(seconds=self.lost_after)
        alive = AgentStatus.ALIVE.value
        self._alive_changes = self.root.store.changes
        async with self.root.store.connect() as conn:
            found = (await conn.execute(_LOST_OR_STALE, {"_deadline": deadline})).all()
            self._alive_read = dict((await conn.execute(_ALIVE_HEARTBEATS)).all())
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

    @property
    def oldest_heartbeat(self) -> Any:
        """The oldest ``last_heartbeat`` of the ALIVE agents at the last ``check_liveness``
        (None: none alive, or not checked yet)."""
        return min(self._alive_read.values(), default=None)

    def oldest_heard(self) -> Any:
        """On SQLite, while nothing but heartbeats was written since the last
        ``check_liveness`` read (then no agent became ALIVE since): the oldest last heartbeat of
        the agents ALIVE at that read, as this process heard them since; None otherwise, or with
        none ALIVE. No agent can be lost before it is ``lost_after`` old: a beating agent then
        costs the watchdogs no check at all."""
        store = self.root.store
        if not store.is_sqlite or store.changes != self._alive_changes:
            return None
        oldest = None
        for aid, at in self._alive_read.items():
            seen = self._seen.get(aid)
            if seen is not None:
                at = max(x for x in (at, seen.touched_at, seen.heard_at) if x is not None)
            if oldest is None or at < oldest:
                oldest = at
        return oldest

    async def _write_heard(self) -> None:
        """SQLite: write ``last_heartbeat`` of the agents whose heartbeats only this process
        knows of (``_Seen.heard_at``: quiet ones, which send no SQL), in one transaction that
        keeps their answers standing."""
        store = self.root.store
        heard = [(aid, seen) for aid, seen in self._seen.items()
                 if seen.heard_at is not None and seen.heard_at > seen.touched_at]
        if not heard:
            return
        before = store.transactions
        async with store.begin() as conn:
            await conn.execute(_TOUCH, [{"_id": aid, "_at": seen.heard_at} for aid, seen in heard])
            store.heartbeat_only(conn)
        for _, seen in heard:
            seen.touched_at = seen.heard_at
            q = seen.quiet
            if q is not None and q[0] == before and store.transactions == before + 1:
                seen.quiet = (store.transactions, q[1], q[2])  # only this one ended since

    def await_accepted(self, session_id: str) -> asyncio.Future[tuple[str, str]]:
        """A future of (agent address, kernel id) once the agent this process's scheduler
        placed the session's kernel on has taken its create request; the caller cancels it
        when done waiting (a session placed elsewhere, or never, resolves none)."""
        fut = asyncio.get_running_loop().create_future()
        self._accepting[session_id] = fut
        fut.add_done_callback(lambda _: self._accepting.pop(session_id, None))
        return fut

    def start_accepted(self, session_id: str, address: str, kernel_id: str) -> None:
        """The agent at ``address`` took the create request of ``kernel_id``."""
        fut = self._accepting.get(session_id)
        if fut is not None and not fut.done():
            self._placed.pop(kernel_id, None)  # the waiter needs no kernel_target
            fut.set_result((address, kernel_id))

    def placed(self, kernel_id: str, address: str) -> None:
        """The scheduler placed ``kernel_id`` on the agent at ``address`` (just committed)."""
        if len(self._placed) >= PLACED_MAX:  # kernels placed but never asked for
            self._placed.clear()
        self._placed[kernel_id] = (address, time.monotonic())

    async def kernel_target(self, session_row: Mapping[str, Any],
                            just_placed: bool = False) -> tuple[str, str]:
        """(agent address, kernel id) of a RUNNING session's main kernel. ``just_placed``: the
        session started a moment ago (the run stream, right after its create): where this
        process placed its kernel less than ``PLACED_SECONDS`` ago, that placement answers
        without a read (once)."""
        if session_row.get("status") != SessionStatus.RUNNING:
            raise SessionNotRunning(
                f"session {session_row.get('name')} is {session_row.get('status')}, not RUNNING"
            )
        kernel_id = str(session_row["main_kernel_id"])
        hit = self._placed.pop(kernel_id, None)
        if just_placed and hit is not None and time.monotonic() - hit[1] < PLACED_SECONDS:
            return hit[0], kernel_id
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
#: placements kept for ``kernel_target`` (at most; past it they start over), and how long one
#: stands: the run stream asks within milliseconds of the start (an agent restarted at another
#: address within that time would be asked at its old one: the run then fails as it does when
#: the agent goes away mid-run)
PLACED_MAX, PLACED_SECONDS = 1024, 5.0

#: how often a heartbeat that says nothing new still rewrites the agent's whole row (seconds;
#: PostgreSQL, where other replicas may have written it since)
FULL_HEARTBEAT_EVERY = 30.0
#: the share of ``heartbeat_timeout`` after which such a heartbeat writes ``last_heartbeat``
#: (15 s: every 5 s, every other heartbeat of an agent that beats every 3 s)
TOUCH_SHARE = 1 / 3


class _Seen:
    """What this replica knows of an agent from its heartbeats."""

    __slots__ = ("values", "instance", "full_at", "touched_at", "heard_at", "quiet")

    def __init__(self, values: dict[str, Any], instance: str, now: Any) -> None:
        self.values = values  #: the row as the last heartbeat said it
        self.instance = instance  #: the agent's run (a new one after a restart)
        self.full_at = self.touched_at = now  #: the whole row, last_heartbeat last written
        #: SQLite: the last quiet heartbeat, not written yet if later than ``touched_at``
        #: (``AgentRegistry._write_heard``, before each liveness check)
        self.heard_at: Any = None
        #: (Store.transactions, reported kernels, known kernels) of the last answer, which
        #: holds while no transaction ended since (SQLite); None: read again
        self.quiet: tuple[int, tuple[str, ...] | None, tuple[str, ...]] | None = None

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
#: a live kernel's columns in the heartbeat's reads: id, status, session, session status,
#: main kernel, and whether the session has been in its status for a while (``settled``)
_KERNEL_COLUMNS = (
    _KID.label("id"), kernels.c.status, _SID.label("session_id"),
    sessions.c.status.label("session_status"), _MAIN.label("main_kernel_id"),
    (sessions.c.status_changed
     < sa.bindparam("_settled", type_=sessions.c.status_changed.type)).label("settled"))
_LIVE_KERNELS = (
    sa.select(*_KERNEL_COLUMNS)
    .join(sessions, sessions.c.id == kernels.c.session_id)
    .where(kernels.c.agent_id == sa.bindparam("_agent"), kernels.c.status.in_(_LIVE_NAMES)))
# the usual heartbeat's read between two writes: the agent's status (ALIVE?) and its live
# kernels, one row each (the kernel's columns NULL when it has none)
_ALIVE_AND_KERNELS = (
    sa.select(agents.c.status.label("agent_status"), *_KERNEL_COLUMNS)
    .select_from(agents.outerjoin(
        kernels.join(sessions, sessions.c.id == kernels.c.session_id),
        sa.and_(kernels.c.agent_id == agents.c.id, kernels.c.status.in_(_LIVE_NAMES))))
    .where(agents.c.id == sa.bindparam("_agent")))

# check_liveness's: the ALIVE agents past the deadline and the others that still hold live
# kernels; the heartbeat of each ALIVE one
_LOST_OR_STALE = sa.select(agents.c.id, agents.c.status).where(sa.or_(
    sa.and_(agents.c.status == AgentStatus.ALIVE.value,
            agents.c.last_heartbeat < sa.bindparam("_deadline",
                                                   type_=agents.c.last_heartbeat.type)),
    sa.and_(agents.c.status != AgentStatus.ALIVE.value,
            sa.exists().where(kernels.c.agent_id == agents.c.id,
                              kernels.c.status.in_(_LIVE_NAMES)))))
_ALIVE_HEARTBEATS = (sa.select(agents.c.id, agents.c.last_heartbeat)
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
