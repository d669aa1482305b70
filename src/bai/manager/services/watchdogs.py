"""Watchdogs: no session hangs, idle sessions end, lost agents are noticed.

* Deadlines (``settings.deadline_<phase>``): a session in SCHEDULED, PREPARING, PULLING,
  PREPARED, CREATING or RESTARTING past its deadline goes to ERROR with ``<phase>-timeout``;
  TERMINATING past its deadline is forced to TERMINATED (``terminating-timeout``) -- it always
  ends.
* Idle timeout: an interactive RUNNING session with no activity (``last_activity_at``, reset by
  ``SessionService.touch``) for its ``idle_timeout`` seconds (from the keypair's resource
  policy; 0 = never) is terminated with reason ``idle-timeout``.
* Agent liveness: ``AgentRegistry.check_liveness``.

The loop ticks every second but checks only what may be due: liveness once the oldest ALIVE
heartbeat it last saw is ``heartbeat_timeout`` old (agents heartbeat every 3 s: a check every
~12 s, not every second), deadlines once the oldest session of a phase may be past its deadline
(``_deadline_due``), both at least every ``CHECK_MAX`` s. An idle manager then reads the database
a few times a minute instead of three times a second; settings changed at run time count at once.
On SQLite, where this manager is the only writer and counts its writes to sessions
(``Store.listing_changes``), the periodic deadline check and the idle check (every
``idle_check_interval``) are skipped while no session was written since the last one and nothing
it read may be due: 5,200 sessions waiting for later cost no such read.
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
#: seconds at most between two liveness checks, and between two deadline checks
CHECK_MAX = 10.0
#: seconds a session may have entered a phase before the deadline check that did not see it
#: (its transaction began before the check's read and committed after it)
ENTRY_SLACK = 5.0

# The checks' statements, built once (they run every few seconds: building them each time, and
# their cache keys, cost as much as running them). Deadlines take each phase's cut-off as
# ``_cut_<phase>``.
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
        #: the last deadline check: when (utcnow, monotonic), and the oldest status change of
        #: each phase then (absent: no session in it)
        self._deadlines_read: Any = None
        self._deadlines_at = float("-inf")
        self._oldest: dict[str, Any] = {}
        self._liveness_at = float("-inf")
        #: ``Store.listing_changes`` as the last deadline and idle checks began (SQLite: while
        #: it stays the same, no session changed since, see ``_unwritten_since``); the
        #: earliest moment a session the last idle check read may be idle (None: none)
        self._deadlines_changes = self._idle_changes = -1
        self._idle_next: Any = None

    def deadline_for(self, status: SessionStatus) -> float:
        return float(getattr(self.root.settings, f"deadline_{status.value.lower()}"))

    async def run(self) -> None:
        tick = 0
        idle_every = max(1, int(self.root.settings.idle_check_interval))
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            for name, check in (
                ("liveness", self._liveness_due() and self._check_liveness),
                ("deadlines", self._deadline_due() and self.check_deadlines),
            ):
                if not check:
                    continue
                try:
                    await check()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if _stopping():
                        raise
                    log.exception("%s check failed", name)
            if tick % idle_every == 0 and self._idle_due():
                try:
                    await self.check_idle()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if _stopping():
                        raise
                    log.exception("idle check failed")

    def _unwritten_since(self, changes: int) -> bool:
        """Whether no session was written since ``Store.listing_changes`` read ``changes``:
        on SQLite this manager is the only writer and counts its writes; elsewhere other
        replicas write unseen, so never."""
        store = self.root.store
        return store.is_sqlite and store.listing_changes == changes

    def _idle_due(self) -> bool:
        """Whether the idle check may find something: always, but on SQLite while no session
        was written since the last one (a session that starts, or whose activity moves, is a
        write) and none that it read may be idle yet."""
        if not self._unwritten_since(self._idle_changes):
            return True
        return self._idle_next is not None and utcnow() >= self._idle_next

    def _liveness_due(self) -> bool:
        """Whether an agent may be lost by now (or ``CHECK_MAX`` s went by)."""
        oldest = self.root.agents.oldest_heartbeat
        if oldest is None or time.monotonic() - self._liveness_at >= CHECK_MAX:
            return True
        return utcnow() >= oldest + timedelta(seconds=self.root.settings.heartbeat_timeout)

    async def _check_liveness(self) -> None:
        self._liveness_at = time.monotonic()
        await self.root.agents.check_liveness()

    def _deadline_due(self) -> bool:
        """Whether a session may be past its phase's deadline by now: the oldest one of a
        phase at the last check, or one that entered any phase since (``ENTRY_SLACK``)."""
        read = self._deadlines_read
        if read is None or (time.monotonic() - self._deadlines_at >= CHECK_MAX
                            and not self._unwritten_since(self._deadlines_changes)):
            return True  # the periodic check, unless (SQLite) no session changed since
        now = utcnow()
        since = read - timedelta(seconds=ENTRY_SLACK)
        for st in DEADLINE_PHASES:
            limit = timedelta(seconds=self.deadline_for(st))
            oldest = self._oldest.get(st.value)
            if now >= since + limit or (oldest is not None and now >= oldest + limit):
                return True
        return False

    async def check_deadlines(self) -> int:
        """End every session that stayed too long in a transitional phase."""
        now = utcnow()
        self._deadlines_read, self._deadlines_at = now, time.monotonic()
        self._deadlines_changes = self.root.store.listing_changes
        cuts = {f"_cut_{st.value}": now - timedelta(seconds=self.deadline_for(st))
                for st in DEADLINE_PHASES}
        async with self.root.store.connect() as conn:
            overdue = (await conn.execute(_OVERDUE, cuts)).all()
            self._oldest = dict((await conn.execute(_OLDEST_BY_PHASE)).all())
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
        self._idle_changes = self.root.store.listing_changes
        async with self.root.store.connect() as conn:
            rows = (await conn.execute(_IDLE_CANDIDATES)).all()
        ends = [r.last_activity_at + timedelta(seconds=r.idle_timeout) for r in rows]
        self._idle_next = min(ends, default=None)
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
