"""The scheduler's I/O loop: load once, ``decide`` in memory, write in batches.

A pass runs when kicked (enqueue, termination, agent change) and on a timer. Kicks that arrive
during a pass coalesce into one more pass. The timer (``SchedulerLoop._timer``) fires every
``settings.schedule_interval`` while the last pass did not settle; once it did, it sleeps until
something may be due: the next look (below) or the earliest ``starts_at`` of a waiting session. A
timer pass is skipped while it would find what the last one found (``_quiet``): nothing kicked
since, the last pass placed and cancelled nothing, no waiting session's ``starts_at`` has come.
Every ``QUIET_MAX`` s the loop reads a fingerprint of what a pass decides on (``fingerprint``: the
pending queue's size and latest change, what occupies slots, the agents' rows, the policies) and
runs a pass only if it differs from the one the last timer pass read (a change nothing kicked:
another replica, the database edited by hand); at least every ``FULL_MAX`` s one runs all the same
(lines and estimates, which move with time), unless every session the last pass left waiting
waits for its ``starts_at`` (``_timeless``: its line, position and estimate stay as they are
until the earliest ``starts_at``, which the timer wakes for). On SQLite, where this manager is
the only writer, a look reads nothing while no transaction but heartbeats' ended since the last
read (``Store.changes``), but for one every ``FULL_MAX`` s (an edit by hand). 5,200 sessions
waiting for later then cost a wake-up every 10 s (PostgreSQL: and one small read) instead of a
pass over all of them (one every 5 minutes took ~80 ms: ~16 ms of CPU a minute). Sessions
created for later in a ``fifo`` group get their first line from their create (``first_lines``: behind the whole queue), and a look that
finds the fingerprint changed by such creates alone (``SchedulerLoop._absorb``) runs no pass:
an array of 5,000 for later costs no pass over the queue, nor a line and an event each from one.
Placements are written in chunks (``PLACE_CHUNK``), set-based: each chunk's sessions and agents are
locked, each agent takes what still fits it (a placement another replica won is refused and
retried by the next pass), PENDING -> SCHEDULED -> PREPARING in one transaction, then one create
request per agent for the chunk while the next chunk is written. The reasons of sessions that stay
PENDING are written with one ``executemany``, only where they changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from bai.common.events import SessionEvent
from bai.common.status import OCCUPYING, SessionStatus
from bai.manager.scheduler.decision import Decision, SchedulingInput, decide, starts_at_wait
from bai.manager.services.loops import stopping as _stopping
from bai.manager.services.schedule_input import RELEASE_ALLOWANCE, load_input
from bai.manager.services.transitions import Outbox, place_many, transit
from bai.manager.store.tables import (
    agents,
    keypair_resource_policies,
    scaling_groups,
    sessions,
    utcnow,
)

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)
S = SessionStatus
#: create requests (one per agent and placement chunk) in flight at one time
START_CONCURRENCY = 32
#: placements written (and their kernels started) per transaction
PLACE_CHUNK = 500


#: queue positions up to which every change of a waiting session's line is an event and written
#: by the pass itself. Deeper in the queue lines are written in the background within
#: ``REFRESH_DEEP`` s (a placement shifts every position behind it; a burst of new sessions
#: needs a line each), and only a new reason code is an event, sent when its line is written.
EVENT_POSITIONS = 100
REFRESH_DEEP = 2.0
#: not a session of the queue the pass read (one that arrived since)
_ABSENT = object()
#: seconds a quiet queue goes without a look at its fingerprint (see ``SchedulerLoop._quiet``)
QUIET_MAX = 10.0
#: seconds a quiet queue goes without a timer pass at most, fingerprint unchanged or not
FULL_MAX = 300.0
#: seconds the loop's timer waits past what is due (a timer may fire a little early)
TIMER_MARGIN = 0.01

_OCC = [str(s) for s in OCCUPYING]


async def fingerprint(conn) -> tuple[Any, ...]:
    """What a pass decides on, in a few small reads: equal fingerprints, equal decisions (but
    for the time: ``starts_at`` and estimates). The pending queue by its size and latest status
    change (a session that joins, leaves or comes back changes them; its line does not), what
    occupies slots likewise (and its latest activity: the estimates), the agents' rows but for
    their heartbeat, the keypair policies and the scaling groups."""
    sums = (await conn.execute(_FP_SUMS)).one()
    agent_rows = (await conn.execute(_FP_AGENTS)).all()
    policies = (await conn.execute(_FP_POLICIES)).all()
    groups = (await conn.execute(_FP_GROUPS)).all()
    return tuple(sums), tuple(map(tuple, agent_rows)), tuple(map(tuple, policies)), \
        tuple(map(tuple, groups))


# The fingerprint's statements, built once (a look every QUIET_MAX s: building them each time,
# and their cache keys, cost as much as running them)
_c = sessions.c
_pending = _c.status == str(S.PENDING)
_occupying = _c.status.in_(_OCC)
_FP_SUMS = sa.select(
    sa.select(sa.func.count()).where(_pending).scalar_subquery(),
    sa.select(sa.func.max(_c.status_changed)).where(_pending).scalar_subquery(),
    sa.select(sa.func.count()).where(_occupying).scalar_subquery(),
    sa.select(sa.func.max(_c.status_changed)).where(_occupying).scalar_subquery(),
    sa.select(sa.func.max(_c.last_activity_at)).where(_occupying).scalar_subquery(),
)
_a = agents.c
_FP_AGENTS = (sa.select(_a.id, _a.status, _a.schedulable, _a.address, _a.scaling_group,
                        sa.cast(_a.available_slots, sa.Text), sa.cast(_a.occupied_slots, sa.Text))
              .order_by(_a.id))
_FP_POLICIES = sa.select(keypair_resource_policies).order_by(keypair_resource_policies.c.name)
_FP_GROUPS = sa.select(scaling_groups).order_by(scaling_groups.c.name)
del _c, _pending, _occupying, _a


def pending_event(sid: Any, name: str, access_key: str, info: str,
                  sched: dict[str, Any]) -> SessionEvent:
    """The ``session_pending`` event that tells why a session waits (also replayed by SSE)."""
    return SessionEvent(
        "session_pending", str(sid), name, access_key, reason=str(sched.get("reason") or ""),
        status=str(S.PENDING),
        extra={"statusInfo": info, "queuePosition": sched.get("position"),
               "estimatedStart": sched.get("estimated_start"), "scheduler": sched},
    )


@dataclass(frozen=True)
class Appended:
    """Sessions a create wrote with their first line (``first_lines``), as the scheduler loop
    is told once they committed: ``count`` sessions of ``scaling_group`` behind the ``seen``
    that were pending (in any group), created at ``created_at``, PENDING since ``at``, the
    earliest to start at ``due``."""

    scaling_group: str
    seen: int
    count: int
    created_at: datetime
    at: datetime
    due: datetime


def first_lines(rows: list[dict[str, Any]], at: datetime, sole_group: bool, policy: str,
                seen: int | None) -> tuple[Appended, list[SessionEvent]] | None:
    """The line a pass would make for each of ``rows`` (sessions of one create, about to be
    written PENDING at ``at`` in a group whose scheduler is ``policy``, behind the ``seen``
    sessions pending), set on the rows, when all of them wait for a ``starts_at`` ahead in a
    ``fifo`` group that, as far as the scheduler loop knows, holds every pending session
    (``sole_group``; ``SchedulerLoop.sole_group``): behind all of them (they were created
    earlier), in the order a pass takes them, with one ``session_pending`` event each. The pass
    after such creates then finds each line standing, and the loop's look skips it altogether
    (``SchedulerLoop.appended``): 5,000 sessions queued for later (an array) cost no pass over
    the queue, nor a line and an event each from it. None (the rows untouched) otherwise, or
    where ``seen`` was not read: a pass makes their lines."""
    if seen is None or not sole_group or not rows or any(
            r["starts_at"] is None or r["starts_at"] <= at for r in rows):
        return None
    sgroup = rows[0]["scaling_group"]
    if policy != "fifo":  # lifo puts them first, drf anywhere: a pass places them
        return None
    events = []
    # a pass's fifo order: oldest first, then by id (one create's sessions share created_at)
    for i, row in enumerate(sorted(rows, key=lambda r: r["id"].int)):
        w = starts_at_wait(row["id"], row["starts_at"].astimezone(UTC), seen + 1 + i)
        data = w.status_data()
        row["status_info"], row["status_data"] = w.info, data
        events.append(pending_event(row["id"], row["name"], row["access_key"], w.info,
                                    data["scheduler"]))
    note = Appended(sgroup, seen, len(rows), rows[0]["created_at"], at,
                    min(r["starts_at"] for r in rows))
    return note, events


def _only_group(counts: dict[str, int], name: str) -> bool:
    """Whether ``counts`` (pending sessions per scaling group) has none outside ``name``."""
    return all(g == name for g, n in counts.items() if n)


class SchedulerLoop:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self._wake = asyncio.Event()
        self._starts = asyncio.Semaphore(START_CONCURRENCY)
        self.passes = 0
        self.last_pass_seconds = 0.0
        #: time.monotonic() when the loop last woke (readiness: is it stuck in a pass), and
        #: while it waits, when its timer ends (None: it does not wait)
        self.last_tick = time.monotonic()
        self.sleeping_until: float | None = None
        #: waiting sessions deep in the queue whose new line is written in the background:
        #: id -> (its wait, the session if the reason code is new: its event goes out then)
        self._deep: dict[uuid.UUID, tuple[Any, Any]] = {}
        self._deep_task: asyncio.Task | None = None
        #: seconds between those background writes
        self.refresh_deep = REFRESH_DEEP
        #: what the last pass found: time.monotonic() at its start, whether it changed
        #: nothing, the earliest ``starts_at`` still ahead (see ``_quiet``)
        self._last_pass_at = float("-inf")
        self._settled = False
        self._next_due: Any = None
        #: the fingerprint the last timer pass read before its queue (None: a kicked pass or
        #: none), when the last pass ran over the queue, and how many looks found nothing new
        self._fingerprint: tuple[Any, ...] | None = None
        #: ``Store.changes`` as the fingerprint was last read (on SQLite, where this manager
        #: is the only writer, a look while it is the same reads nothing)
        self._read_at_changes = -1
        self._last_full_at = float("-inf")
        #: whether every session the last pass left waiting waits for its ``starts_at`` alone
        #: (then a pass changes nothing while no ``starts_at`` came: no full pass is due)
        self._timeless = False
        self.skipped = 0
        #: each waiting session's line as the last pass made it: id -> ((code, msg, position,
        #: estimated start), the line) (see ``_write``)
        self._lines: dict[uuid.UUID, tuple[tuple[Any, ...], str]] = {}
        #: creates that wrote their sessions' first lines since the last pass (``appended``),
        #: and the queue the last pass read, once the looks need it: pending sessions per
        #: scaling group and the latest created_at (``_absorb``)
        self._appended: list[Appended] = []
        self._queue: Any = None
        self.absorbed = 0

    def kick(self) -> None:
        """Ask for a pass soon (coalesced)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as
            # the kick does, and this loop then never stopped (ManagerRoot.stop hung)
            timeout = self._timer()
            self.sleeping_until = time.monotonic() + timeout
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self.sleeping_until = None
            kicked = self._wake.is_set()
            self._wake.clear()
            self.last_tick = time.monotonic()
            if not kicked and self._quiet():
                continue
            try:
                if not kicked and await self._unchanged():
                    continue
                await self.run_pass(look=not kicked)
            except asyncio.CancelledError:
                raise
            except Exception:
                if _stopping():
                    raise
                log.exception("scheduling pass failed")
                await asyncio.sleep(0.5)

    def _timer(self) -> float:
        """Seconds until the loop looks again unless kicked: ``schedule_interval`` while the
        last pass did not settle (it placed or cancelled something, it failed, or no look
        followed it yet); else until the next look at the fingerprint (``QUIET_MAX`` after the
        last pass or look) or the earliest ``starts_at`` of a waiting session, whichever comes
        first. A quiet queue then wakes the loop every ``QUIET_MAX`` s, not every interval."""
        if not self._settled or self._fingerprint is None:
            return self.root.settings.schedule_interval
        # (just after either: a timer may fire a little early)
        left = self._last_pass_at + QUIET_MAX - time.monotonic()
        if self._next_due is not None:
            left = min(left, (self._next_due - utcnow()).total_seconds())
        return max(left, 0.0) + TIMER_MARGIN

    def _quiet(self) -> bool:
        """Whether a timer pass now would decide what the last one did: it placed and
        cancelled nothing, nothing kicked since (the caller knows), no waiting session's
        ``starts_at`` has come, and it began less than ``QUIET_MAX`` s ago. (5,000 sessions
        queued for later then cost no pass over them.) After a kicked pass, the first quiet
        tick runs one that reads the fingerprint: the looks that follow compare with it, and
        creates of sessions for later need no pass (``_absorb``)."""
        if (not self._settled or self._fingerprint is None
                or time.monotonic() - self._last_pass_at > QUIET_MAX):
            return False
        return self._next_due is None or utcnow() < self._next_due

    async def _unchanged(self) -> bool:
        """Whether a timer pass now may be skipped: the last pass settled, its fingerprint is
        known, read again it is the same, no waiting session's ``starts_at`` has come, and a full
        pass ran within ``FULL_MAX`` s or none is needed (``_timeless``: then the look reads the
        fingerprint even on SQLite, and stands for the full pass)."""
        full_due = time.monotonic() - self._last_full_at > FULL_MAX
        if not self._settled or self._fingerprint is None or (full_due and not self._timeless):
            return False
        if self._next_due is not None and utcnow() >= self._next_due:
            return False  # a waiting session's starts_at has come: the fingerprint cannot tell
        store = self.root.store
        if store.is_sqlite and store.changes == self._read_at_changes and not full_due:
            seen = self._fingerprint  # nothing written since it was read: the same
        else:
            self._read_at_changes = store.changes
            async with store.connect() as conn:
                seen = await fingerprint(conn)
        if seen != self._fingerprint and not self._absorb(seen):
            return False
        self._last_pass_at = time.monotonic()  # the next look in QUIET_MAX s
        if full_due:
            self._last_full_at = self._last_pass_at
        self.skipped += 1
        return True

    def sole_group(self, name: str) -> bool:
        """Whether the queue as the loop knows it (the last pass's, and the creates it absorbed
        since) has no session pending in another group than ``name``."""
        return self._queue is not None and _only_group(self._queue[0], name)

    def appended(self, note: Appended) -> None:
        """A create committed sessions with their first lines (``first_lines``)."""
        self._appended.append(note)

    def _absorb(self, seen: tuple[Any, ...]) -> bool:
        """Whether the fingerprint ``seen`` differs from the last pass's only by the sessions
        that creates wrote with their lines since (``appended``), each behind the whole queue
        of its group as it stood when it committed: then a pass now would make the lines they
        have and change nothing else, and need not run. Anything else (a session of another
        replica, one that left, creates that overlapped) and a pass runs. The look may have
        read the fingerprint before the last of those creates committed (they tell the loop as
        they commit, while the look awaits its read): the first ones that explain it are
        absorbed, and the later ones are left to the next look."""
        notes, self._appended = self._appended, []
        old = self._fingerprint
        if not notes or old is None or self._queue is None:
            return False
        counts, newest = dict(self._queue[0]), self._queue[1]
        sums = old[0]
        added, latest = 0, sums[1]
        for k, n in enumerate(notes, 1):
            if n.seen != sum(counts.values()) or not _only_group(counts, n.scaling_group) or (
                    newest is not None and n.created_at <= newest):
                return False
            counts[n.scaling_group] = n.seen + n.count
            newest = n.created_at
            added += n.count
            latest = n.at if latest is None else max(latest, n.at)
            if seen == ((sums[0] + added, latest, *sums[2:]), *old[1:]):
                self._fingerprint, self._queue = seen, (counts, newest)
                self._appended = notes[k:]
                due = min(m.due for m in notes[:k])
                self._next_due = due if self._next_due is None else min(self._next_due, due)
                self.absorbed += k
                return True
        return False

    async def run_pass(self, look: bool = False) -> Decision:
        """One pass: decide, write placements and reasons, start the placed kernels. ``look``:
        read the fingerprint first (a timer pass), which lets the loop skip the next ones while
        it stays the same; a kicked pass (busy times) reads none."""
        t0 = time.perf_counter()
        self._last_pass_at = self._last_full_at = time.monotonic()
        self._settled, self._fingerprint = False, None
        self._appended, self._queue = [], None
        async with self.root.store.connect() as conn:
            # read before the queue: a change between the two shows as a new fingerprint
            self._read_at_changes = self.root.store.changes
            seen = await fingerprint(conn) if look else None
            inp = await load_input(
                conn, idle_slack=self.root.settings.idle_check_interval + RELEASE_ALLOWANCE,
                store=self.root.store)
        decision = decide(inp) if inp.pending else Decision()
        self._next_due = min((p.starts_at for p in inp.pending
                              if p.starts_at is not None and p.starts_at > inp.now), default=None)
        self._settled = not decision.assignments and not decision.cancels
        self._timeless = all(w.code == "starts-at" for w in decision.waits.values())
        await self._write(inp, decision)
        self._fingerprint = seen if self._settled else None
        if self._settled:
            counts: dict[str, int] = {}
            for p in inp.pending:
                counts[p.scaling_group] = counts.get(p.scaling_group, 0) + 1
            self._queue = (counts, max((p.created_at for p in inp.pending), default=None))
        self.passes += 1
        self.last_pass_seconds = time.perf_counter() - t0
        self.root.metrics.pass_done(self.last_pass_seconds, len(decision.assignments))
        return decision

    async def _place(self, chunk: list[tuple[uuid.UUID, str, str]]) -> int:
        """Place one chunk and move it on to PREPARING in one transaction; once committed, the
        kernels are created on their agents (one request per agent) while the next chunk is
        written. Returns how many placements were refused."""
        lifecycle = self.root.sessions.lifecycle
        async with lifecycle.tx() as (conn, outbox):
            # placed and, in the same compare-and-set, on to PREPARING: the create request
            # leaves as soon as this commits
            placed, refused = await place_many(conn, chunk, outbox=outbox,
                                               then=[(S.PREPARING, "preparing")])
            starts = await lifecycle.kernel_specs(conn, placed) if placed else []
        for address, specs in starts:
            for spec in specs:  # the create request's id goes on with the session to its agent
                self.root.agents.placed(spec["kernel_id"], address)
                rid = self.root.request_ids.pop(spec["session_id"])
                spec["request_id"] = rid
                log.info("session %s placed on %s (kernel %s)", spec["session_id"], address,
                         spec["kernel_id"], extra={"request_id": rid})
            lifecycle.spawn(self._create(address, specs), f"create-{address}")
        return refused

    async def _write_reasons(self, rows: list[dict[str, Any]]) -> None:
        stmt = (
            sa.update(sessions)
            .where(sessions.c.id == sa.bindparam("_id"), sessions.c.status == str(S.PENDING))
            .values(status_info=sa.bindparam("_info"), status_data=sa.bindparam("_data"))
        )
        async with self.root.store.begin() as conn:
            for i in range(0, len(rows), 2000):
                await conn.execute(stmt, rows[i:i + 2000])

    async def _refresh_deep(self) -> None:
        """Write the lines deferred by passes, the newest pass's, every ``refresh_deep`` s."""
        while self._deep:
            await asyncio.sleep(self.refresh_deep)
            await self.flush_deep()

    async def flush_deep(self) -> None:
        """Write the deferred lines now (and the events of those with a new reason code)."""
        deep, self._deep = self._deep, {}
        if not deep:
            return
        outbox = Outbox()
        try:
            await self._write_reasons(self._reason_rows(deep.values(), outbox))
        except Exception:  # the next pass finds the lines still old and defers them again
            log.exception("refreshing %d waiting sessions' lines failed", len(deep))
            return
        await self.root.sessions.lifecycle.flush(outbox)

    @staticmethod
    def _reason_rows(waits, outbox: Outbox) -> list[dict[str, Any]]:
        """The rows ``_write_reasons`` writes for ``(wait, session or None)`` pairs; with a
        session, its ``session_pending`` event (reason code, ``statusInfo``, ``queuePosition``,
        ``estimatedStart`` and the scheduler's details) goes in ``outbox``."""
        rows = []
        for w, p in waits:
            data = w.status_data()
            rows.append({"_id": w.session_id, "_info": w.info, "_data": data})
            if p is not None:
                outbox.events.append(
                    pending_event(p.id, p.name, p.access_key, w.info, data["scheduler"]))
        return rows

    async def close(self) -> None:
        if self._deep_task is not None:
            self._deep_task.cancel()
            await asyncio.gather(self._deep_task, return_exceptions=True)

    async def _create(self, address: str, specs: list[dict[str, Any]]) -> None:
        async with self._starts:
            await self.root.sessions.lifecycle.create_kernels(address, specs)

    async def _write(self, inp: SchedulingInput, decision: Decision) -> None:
        lifecycle = self.root.sessions.lifecycle
        outbox = Outbox()
        refused = 0
        now = utcnow()
        placements = [(a.session_id, a.agent_id, a.address) for a in decision.assignments]
        for i in range(0, len(placements), PLACE_CHUNK):
            refused += await self._place(placements[i:i + PLACE_CHUNK])
        if decision.cancels:
            async with self.root.store.begin() as conn:
                for sid, reason in decision.cancels:
                    w = decision.waits.get(sid)
                    await transit(
                        conn, sid, S.PENDING, S.CANCELLED, reason=reason, cause="scheduler",
                        outbox=outbox, info=f"{reason}: {w.msg}" if w else reason,
                        status_data=w.status_data() if w else None, now=now,
                    )
        # Reasons of sessions that stay pending: only rows whose line changed. Near the head
        # each is written now, with its event. Deeper, lines are written in the background
        # (``_refresh_deep``), so that a pass need not rewrite the whole queue when one placement
        # shifts every position or a burst of sessions arrives; only a new reason code there is
        # an event.
        cancelled = {sid for sid, _ in decision.cancels}
        current = inp.current_info
        by_id: dict[uuid.UUID, Any] = {}  # made when a first event needs its session
        urgent, deep = [], {}
        # A line is made of (code, msg, position, estimated start): where those are what the
        # last pass found and the stored line is the one they made then, the line stands and
        # is not made again (a pass over 5,200 sessions waiting for their starts_at made each
        # one's line, an isoformat and an f-string, to find them all unchanged)
        last, lines = self._lines, {}
        for sid, w in decision.waits.items():  # one lookup each: 10,000 of them a pass
            old = current.get(sid, _ABSENT)
            if old is _ABSENT or (cancelled and sid in cancelled):
                continue
            parts = (w.code, w.msg, w.position, w.estimated_start)
            seen = last.get(sid)
            if seen is not None and seen[0] == parts and seen[1] == old:
                lines[sid] = seen
                continue
            info = w.info
            lines[sid] = (parts, info)
            if old == info:
                continue
            if w.position > EVENT_POSITIONS and (old or "").split(":", 1)[0] == w.code:
                deep[sid] = (w, None)  # moved only: no event
                continue
            by_id = by_id or {p.id: p for p in inp.pending}
            if w.position <= EVENT_POSITIONS:
                urgent.append((w, by_id[sid]))
            else:
                deep[sid] = (w, by_id[sid])
        # this pass's view replaces the last one's: a line it did not find changed must not be
        # written from an older pass
        self._deep = deep
        self._lines = lines
        if deep and (self._deep_task is None or self._deep_task.done()):
            self._deep_task = asyncio.create_task(self._refresh_deep())
        if urgent:
            await self._write_reasons(self._reason_rows(urgent, outbox))
        # This pass already reacted to what it changed; only a lost placement needs another.
        outbox.kick_scheduler = refused > 0
        await lifecycle.flush(outbox)
