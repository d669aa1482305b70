"""Watchdogs: no session hangs, idle sessions end, lost agents are noticed.

* Deadlines (``settings.deadline_<phase>``): a session in SCHEDULED, PREPARING, PULLING,
  PREPARED, CREATING or RESTARTING past its deadline goes to ERROR with ``<phase>-timeout``;
  TERMINATING past its deadline is forced to TERMINATED (``terminating-timeout``) -- it always
  ends.
* Idle timeout: an interactive RUNNING session with no activity (``last_activity_at``, reset by
  ``SessionService.touch``) for its ``idle_timeout`` seconds (from the keypair's resource
  policy; 0 = never) is terminated with reason ``idle-timeout``.
* Agent liveness: ``AgentRegistry.check_liveness``.

The loop sleeps until its next check is due, and wakes for nothing else (``wake`` makes it
look again, e.g. after settings changed at run time). Each check, once it ran, says when it may
find something next:

* liveness: when the oldest ALIVE heartbeat it saw is ``AgentRegistry.lost_after`` old, or an
  agent that became ALIVE after its read (its heartbeat is no older than the read, less
  ``ENTRY_SLACK``) may be: one agent beating every 3 s costs a read every ~15 s, no agent at all
  the same. On SQLite, while nothing but heartbeats was written since the read, when the oldest
  heartbeat this manager heard since of the agents ALIVE then is that old
  (``AgentRegistry.oldest_heard``): a beating agent costs no check, only a wake-up each
  ``lost_after`` to see that it beat;
* deadlines: when the oldest session of a phase it saw may be past its deadline, or one that
  entered a phase after its read may be. On SQLite, where this manager is the only writer and
  counts its writes to sessions (``Store.listing_changes``), no session entered a phase while
  none was written: the loop then sleeps until the oldest it saw is due (none: for ever), and the
  first write after the check wakes it once (``Store.on_listing_change``);
* idle: every ``idle_check_interval``; on SQLite, while no session was written since, only once
  a session it read may be idle.

No check runs sooner than ``MIN_GAP`` s after the last one of its kind (a deadline shorter than
``ENTRY_SLACK``, a check that found work it could not finish). An idle manager with 5,200
sessions waiting for later then wakes four times a minute for one small read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bai.common.errors import BaiError
from bai.common.status import SessionStatus, SessionType
from bai.manager.services.loops import stopping as _stopping
from bai.manager.services.transitions import load_session, transit
from bai.manager.store.tables import sessions, utcnow

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)
S = SessionStatus

DEADLINE_PHASES = (S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RESTARTING,
                   S.TERMINATING)
#: seconds at least between two checks of one kind
MIN_GAP = 1.0
#: seconds a session may have entered a phase (an agent become ALIVE) before the check that did
#: not see it: its transaction began before the check's read and committed after it, or another
#: replica's clock is behind
ENTRY_SLACK = 5.0
_NEVER = float("inf")

# The checks' statements, built once (building them each time, and their cache keys, cost as
# much as running them). Deadlines take each phase's cut-off as ``_cut_<phase>``.
_OVERDUE = sa.select(sessions.c.id, sessions.c.status).where(sa.or_(*[
    sa.and_(sessions.c.status == str(st),
            sessions.c.status_changed < sa.bindparam(f"_cut_{st.value}",
                                                     type_=sessions.c.status_changed.type))
    for st in DEADLINE_PHASES]))
_OLDEST_BY_PHASE = (sa.select(sessions.c.status, sa.func.min(sessions.c.status_changed))
                    .where(sessions.c.status.in_([str(st) for st in DEADLINE_PHASES]))
                    .group_by(sessions.c.status))
_IDLE_CANDIDATES = (sa.select(sessions.c.id, sessions.c.idle_timeout, sessions.c.last_activity_at)
                    .where(sessions.c.status == str(S.RUNNING),
                           sessions.c.type == SessionType.INTERACTIVE.value,
                           sessions.c.idle_timeout > 0))


class Watchdogs:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self._wake = asyncio.Event()
        #: the last check of each kind: utcnow() as it began (None: not yet), and monotonic
        self._liveness_read: Any = None
        self._liveness_at = float("-inf")
        self._deadlines_read: Any = None
        self._deadlines_at = float("-inf")
        self._idle_at = float("-inf")
        #: the oldest status change of each phase at the last deadline check (absent: none)
        self._oldest: dict[str, Any] = {}
        #: SQLite: utcnow() at the first write to a session since the last deadline check
        #: (``_written``; None: none yet); elsewhere other replicas write unseen: the read's
        #: time stands for it
        self._written_at: Any = None
        #: ``Store.listing_changes`` as the last deadline and idle checks began (SQLite: while
        #: it stays the same, no session changed since, see ``_unwritten_since``); the earliest
        #: moment a session the last idle check read may be idle (None: none)
        self._deadlines_changes = self._idle_changes = -1
        self._idle_next: Any = None
        #: check -> time.monotonic() when it is tried again after a failure
        self._retry: dict[str, float] = {}
        #: checks run by the loop, times it woke (whether or not a check was due), and while it
        #: sleeps, time.monotonic() when it wakes (inf: when something wakes it; else None)
        self.checks = 0
        self.wakes = 0
        self.sleeping_until: float | None = None

    def deadline_for(self, status: SessionStatus) -> float:
        return float(getattr(self.root.settings, f"deadline_{status.value.lower()}"))

    def wake(self) -> None:
        """Look again at what is due now (settings changed at run time, an agent added)."""
        self._wake.set()

    def _written(self) -> None:
        """A transaction wrote to sessions (SQLite, the first one since a check that counts
        on none: ``_arm``)."""
        self.root.store.on_listing_change = None
        if self._written_at is None:
            self._written_at = utcnow()
        self._wake.set()

    async def run(self) -> None:
        checks = (("liveness", self._liveness_in, self._check_liveness),
                  ("deadlines", self._deadlines_in, self.check_deadlines),
                  ("idle", self._idle_in, self.check_idle))
        while True:
            delay = min(self._due(name, due) for name, due, _ in checks)
            if delay > 0:
                self.sleeping_until = time.monotonic() + delay
                try:
                    async with asyncio.timeout(None if delay == _NEVER else delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self.sleeping_until = None
                self._wake.clear()
                self.wakes += 1
            for name, due, check in checks:
                if self._due(name, due) > 0:
                    continue
                self.checks += 1
                try:
                    await check()
                    self._retry.pop(name, None)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if _stopping():
                        raise
                    log.exception("%s check failed", name)
                    self._retry[name] = time.monotonic() + MIN_GAP

    def _due(self, name: str, due) -> float:
        """Seconds until the check ``name`` is due: when it says, or its retry after a failure
        (what it read before failing may be stale)."""
        return min(due(), self._retry.get(name, _NEVER) - time.monotonic())

    def _arm(self) -> None:
        """After a check, on SQLite, while the deadline or the idle check counts on no session
        being written since it ran: the first write wakes the loop (a session may have entered
        a phase, or become idle), once."""
        store = self.root.store
        if not store.is_sqlite:
            return
        if self._written_at is None and not self._unwritten_since(self._deadlines_changes):
            self._written_at = self._deadlines_read  # written while the deadline check read
        if ((self._written_at is None and self._deadlines_read is not None)
                or self._unwritten_since(self._idle_changes)):
            store.on_listing_change = self._written

    @staticmethod
    def _after(at: float, seconds: float) -> float:
        """Seconds from now (monotonic) until ``seconds`` after ``at``, or ``MIN_GAP``
        after it if that is later."""
        return at + max(seconds, MIN_GAP) - time.monotonic()

    @staticmethod
    def _until(read: Any, at: float, when: Any) -> float:
        """Seconds from now until ``when`` (utc; None: never), and at least ``MIN_GAP`` after
        the check that began at ``read`` (utc) and ``at`` (monotonic)."""
        if when is None:
            return _NEVER
        return Watchdogs._after(at, (when - read).total_seconds())

    def _unwritten_since(self, changes: int) -> bool:
        """Whether no session was written since ``Store.listing_changes`` read ``changes``:
        on SQLite this manager is the only writer and counts its writes; elsewhere other
        replicas write unseen, so never."""
        store = self.root.store
        return store.is_sqlite and store.listing_changes == changes

    def _liveness_in(self) -> float:
        """Seconds until an agent may be lost: the oldest heartbeat the last check saw, or one
        of an agent that became ALIVE since, ``lost_after`` old (the timeout as set now)."""
        read = self._liveness_read
        if read is None:
            return 0.0
        heard = self.root.agents.oldest_heard()
        if heard is not None:  # SQLite, no agent became ALIVE since: as their heartbeats say
            return self._until(read, self._liveness_at,
                               heard + timedelta(seconds=self.root.agents.lost_after))
        since = read - timedelta(seconds=ENTRY_SLACK)
        oldest = self.root.agents.oldest_heartbeat
        base = since if oldest is None else min(oldest, since)
        return self._until(read, self._liveness_at,
                           base + timedelta(seconds=self.root.agents.lost_after))

    async def _check_liveness(self) -> None:
        self._liveness_read, self._liveness_at = utcnow(), time.monotonic()
        await self.root.agents.check_liveness()

    def _deadlines_in(self) -> float:
        """Seconds until a session may be past its phase's deadline (as set now): the oldest
        one of a phase at the last check, or one that entered any phase since. On SQLite none
        entered while no session was written (``_written_at``)."""
        read = self._deadlines_read
        if read is None:
            return 0.0
        entered = self._written_at if self.root.store.is_sqlite else read
        since = None if entered is None else entered - timedelta(seconds=ENTRY_SLACK)
        due = None
        for st in DEADLINE_PHASES:
            limit = timedelta(seconds=self.deadline_for(st))
            for start in (since, self._oldest.get(st.value)):
                if start is not None and (due is None or start + limit < due):
                    due = start + limit
        return self._until(read, self._deadlines_at, due)

    def _idle_in(self) -> float:
        """Seconds until the idle check may find something: ``idle_check_interval`` after the
        last one; on SQLite while no session was written since (a session that starts, or whose
        activity moves, is a write), when a session it read may be idle, or never."""
        every = self.root.settings.idle_check_interval
        if not self._unwritten_since(self._idle_changes):
            return self._after(self._idle_at, every)
        if self._idle_next is None:
            return _NEVER
        return max(self._after(self._idle_at, 0.0),
                   (self._idle_next - utcnow()).total_seconds())

    async def check_deadlines(self) -> int:
        """End every session that stayed too long in a transitional phase."""
        now = utcnow()
        self._deadlines_read, self._deadlines_at = now, time.monotonic()
        self._deadlines_changes, self._written_at = self.root.store.listing_changes, None
        cuts = {f"_cut_{st.value}": now - timedelta(seconds=self.deadline_for(st))
                for st in DEADLINE_PHASES}
        async with self.root.store.connect() as conn:
            overdue = (await conn.execute(_OVERDUE, cuts)).all()
            self._oldest = dict((await conn.execute(_OLDEST_BY_PHASE)).all())
        self._arm()
        lifecycle = self.root.sessions.lifecycle
        for sid, status in overdue:
            phase = S(status)
            reason = f"{phase.value.lower()}-timeout"
            if phase is S.TERMINATING:
                await lifecycle.finish_termination(sid, None, reason=reason, cause="deadline")
                continue
            async with lifecycle.tx() as (conn, outbox):
                row = await load_session(conn, sid)
                if row is None or row["status"] != status:
                    continue
                new = await transit(
                    conn, sid, phase, S.ERROR, reason=reason, cause="deadline", outbox=outbox,
                    row=row, status_data={"error": {
                        "src": "manager",
                        "repr": f"{phase} did not end within {self.deadline_for(phase):g}s"}},
                )
            if new is not None:
                # The kernel may still come up on its agent: make sure it does not linger.
                lifecycle.spawn(self._cleanup(sid), f"cleanup-{sid}")
        return len(overdue)

    async def _cleanup(self, sid) -> None:
        await self.root.sessions.lifecycle.destroy_kernel_quietly(sid, "deadline-exceeded")

    async def check_idle(self) -> int:
        now = utcnow()
        self._idle_at = time.monotonic()
        self._idle_changes = self.root.store.listing_changes
        async with self.root.store.connect() as conn:
            rows = (await conn.execute(_IDLE_CANDIDATES)).all()
        ends = [r.last_activity_at + timedelta(seconds=r.idle_timeout) for r in rows]
        self._idle_next = min(ends, default=None)
        self._arm()
        idle = [r.id for r, end in zip(rows, ends, strict=True) if end <= now]
        for sid in idle:
            log.info("session %s idle: terminating", sid)
            self.root.sessions.lifecycle.spawn(
                self._terminate_idle(sid), f"idle-{sid}"
            )
        return len(idle)

    async def _terminate_idle(self, sid) -> None:
        try:
            await self.root.sessions.lifecycle.terminate(
                sid, reason="idle-timeout", cause="idle-checker"
            )
        except BaiError as e:
            log.warning("idle termination of %s failed: %s", sid, e)
