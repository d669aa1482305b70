"""Session lifecycle orchestration: starting kernels, terminating sessions, agent events.

Everything here decides *what* transition to make and calls ``transitions.transit``; the agent
RPCs happen outside transactions. What an agent's kernel event means is decided by the pure
``kernel_events.decide`` (tested without a database); ``_apply_once`` carries it out. Decisions re-read the session and retry when a concurrent
writer won the compare-and-set (``MAX_RACE_RETRIES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import sqlalchemy as sa

from bai.common.errors import AgentError, BaiError, SessionNotRunning
from bai.common.events import KernelEvent, SessionEvent
from bai.common.resources import ResourceSlot
from bai.common.status import FINAL, SessionStatus, SessionType
from bai.manager.services import callbacks
from bai.manager.services.kernel_events import (
    EVENT_TARGET,
    Decision,
    decide,
    next_step,
    walk,
)
from bai.manager.services.mounts import kernel_mounts
from bai.manager.services.transitions import (
    Outbox,
    in_lists,
    load_session,
    replace_kernel,
    transit,
    transit_many,
)
from bai.manager.store.cached import Cached
from bai.manager.store.engine import LATER, AsyncConnection
from bai.manager.store.tables import (
    agents,
    images,
    keypair_resource_policies,
    keypairs,
    kernels,
    sessions,
    utcnow,
)

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)
S = SessionStatus
MAX_RACE_RETRIES = 8
#: A failed create RPC (agent unreachable) requeues the session this many times before ERROR.
MAX_START_ATTEMPTS = 3
#: seconds a manager that stops waits for the destroys it answered before they ended
ENDING_GRACE_SECONDS = 10.0

#: what applying progress events reads of each session (``service_ports``: written only when
#: the agent reports other ports)
WALK_COLUMNS = tuple(sessions.c[name] for name in (
    "id", "name", "access_key", "status", "main_kernel_id", "callback_url", "service_ports"))
#: statuses a starting session walks through on progress events (RUNNING is the end)
_WALKING = (S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING)
#: where a kernel's end may be one walk (``_apply_ends``)
_ENDING = tuple(st for st in S if st not in FINAL)
#: a kernel's row and an agent's address by id, built once (a terminate and each kernel event
#: read them; building the select anew, with its cache key, cost more than running it)
_KERNEL_BY_ID = sa.select(kernels).where(kernels.c.id == sa.bindparam("_kid"))
_AGENT_ADDRESS = sa.select(agents.c.address).where(agents.c.id == sa.bindparam("_aid"))
#: ... and both in one read, for what asks its agent to act on the kernel (``_kernel_at``)
_KERNEL_AT = (sa.select(kernels, agents.c.address.label("_at_address"))
              .select_from(kernels.outerjoin(agents, agents.c.id == kernels.c.agent_id))
              .where(kernels.c.id == sa.bindparam("_kid")))


def stats_reply(status: str, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``stats`` object of a destroy answer: always carries ``status`` (client-protocol §6.4)."""
    out = dict(stats or {})
    out["status"] = status
    return out



async def policy_limits(conn: AsyncConnection, access_keys: set[str]) -> dict[str, dict[str, int]]:
    """``{access_key: {"pids_limit", "disk_quota", "allow_outbound"}}`` from each keypair's
    resource policy."""
    if not access_keys:
        return {}
    kp, pol = keypairs, keypair_resource_policies
    rows = (await conn.execute(
        sa.select(kp.c.access_key, pol.c.pids_limit, pol.c.disk_quota, pol.c.allow_outbound)
        .join(pol, pol.c.name == kp.c.resource_policy)
        .where(kp.c.access_key.in_(sorted(access_keys)))
    )).all()
    return {r.access_key: {"pids_limit": r.pids_limit, "disk_quota": r.disk_quota,
                           "allow_outbound": int(bool(r.allow_outbound))} for r in rows}


def _by_kernel(run: list[KernelEvent]) -> dict[uuid.UUID, KernelEvent]:
    """The events of a run by kernel id (ids that are not UUIDs left out)."""
    by_kid: dict[uuid.UUID, KernelEvent] = {}
    for ev in run:
        try:
            by_kid[uuid.UUID(str(ev.kernel_id))] = ev
        except ValueError:
            continue
    return by_kid


def _sessions_of_kernels(statuses: Any, columns: Any) -> sa.Select:
    """The select of ``_kernel_sessions``: ``columns`` of the sessions in ``statuses`` of the
    kernels ``_kids`` (an expanding parameter), each row with its kernel's id as ``_kid``,
    the sessions' rows locked (PostgreSQL)."""
    return (sa.select(kernels.c.id.label("_kid"), *columns)
            .join_from(kernels, sessions, sessions.c.id == kernels.c.session_id)
            .where(kernels.c.id.in_(sa.bindparam("_kids", expanding=True)),
                   sessions.c.status.in_([str(st) for st in statuses]))
            .with_for_update(of=sessions))


async def _kernel_sessions(conn: AsyncConnection, by_kid: Mapping[uuid.UUID, Any],
                           select: sa.Select
                           ) -> tuple[dict[uuid.UUID, uuid.UUID], dict[uuid.UUID, dict]]:
    """({kernel id: session id}, {session id: its row, locked}) for the kernels of a run whose
    sessions are in the statuses of ``select`` (``_sessions_of_kernels``, built once): one
    statement per ``in_lists`` chunk."""
    kernel_rows: dict[uuid.UUID, uuid.UUID] = {}
    rows: dict[uuid.UUID, dict] = {}
    for chunk in in_lists(list(by_kid)):
        for r in (await conn.execute(select, {"_kids": chunk})).mappings():
            row = dict(r)
            kernel_rows[row.pop("_kid")] = row["id"]
            rows[row["id"]] = row
    return kernel_rows, rows


#: what a run of progress events reads, what a run of ends reads (``_kernel_sessions``)
_WALK_SELECT = _sessions_of_kernels(_WALKING, WALK_COLUMNS)
_END_SELECT = _sessions_of_kernels(_ENDING, tuple(sessions.c))


def _one_walk(d: Decision, row: Mapping[str, Any], kid: uuid.UUID
              ) -> list[tuple[SessionStatus, str]] | None:
    """``d``'s moves as one walk for ``transit_many`` when that writes exactly what the moves
    one by one would: a chain from the session's status, of the main kernel, each with the
    kernel's exit code and no info or status data of its own, nothing else to do. Else None."""
    moves = d.moves
    if (not moves or d.walk or d.destroy_orphan is not None or row["main_kernel_id"] != kid
            or moves[0].src != S(row["status"])):
        return None
    src = moves[0].src
    for m in moves:
        if (m.src != src or m.info is not None or m.status_data is not None
                or m.exit_code != d.kernel_exit_code):
            return None
        src = m.to
    return [(m.to, m.reason) for m in moves]

#: the kinds of runs ``runs`` makes, in the order it cycles through them
_RUN_KINDS = ("progress", "terminated", "other")


def _run_kind(ev: KernelEvent) -> int:
    return 0 if ev.name in EVENT_TARGET else 1 if ev.name == "kernel_terminated" else 2


def runs(events: list[KernelEvent]) -> list[tuple[str, list[KernelEvent]]]:
    """The batch as runs (kind, events) to apply one after the other, each run of one kind
    (``_RUN_KINDS``) and at most one event per kernel: each event goes to the first run of
    its kind after the run of its kernel's previous event. A kernel's events keep their order
    and those of distinct kernels commute (each decides about its own kernel's session only),
    so this applies what the batch in its order would, in as few runs, each a transaction,
    as the order of each kernel allows: an agent's report interleaves its kernels' starts and
    ends (start a, end b, start c, end a, ...), which taken in turn were a run each."""
    slots: dict[int, list[KernelEvent]] = {}
    last: dict[str, int] = {}  # kernel -> the run of its latest event
    for ev in events:
        kind = _run_kind(ev)
        after = last.get(ev.kernel_id, -1)
        i = after + 1 + (kind - after - 1) % len(_RUN_KINDS)
        slots.setdefault(i, []).append(ev)
        last[ev.kernel_id] = i
    return [(_RUN_KINDS[i % len(_RUN_KINDS)], slots[i]) for i in sorted(slots)]


class Lifecycle:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self._bg: set[asyncio.Task] = set()
        #: destroys answered before they ended (``terminate(wait=False)``)
        self._ending: set[asyncio.Task] = set()
        #: what ``kernel_specs`` read of the placed sessions' images and keypairs' policies
        self._images = Cached("images", 64)
        self._limits = Cached("policies", 256)
        self._callbacks: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self._callback_worker: asyncio.Task | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[tuple[AsyncConnection, Outbox]]:
        """A write transaction whose outbox is flushed once it has committed."""
        outbox = Outbox()
        async with self.root.store.begin() as conn:
            yield conn, outbox
        await self.flush(outbox)

    async def flush(self, outbox: Outbox) -> None:
        # the callbacks are queued before the first await, in the order the transactions
        # committed: a later transaction's flush must not queue its callbacks first
        if outbox.callbacks:
            for item in outbox.callbacks:
                self._callbacks.put_nowait(item)
            if self._callback_worker is None or self._callback_worker.done():
                self._callback_worker = asyncio.create_task(self._deliver_callbacks())
                self._bg.add(self._callback_worker)
                self._callback_worker.add_done_callback(self._bg.discard)
        if outbox.events:
            try:
                await self.root.bus.publish_many(outbox.events)
            except Exception:  # the database already has the truth; clients may miss events
                log.exception("publishing %d events failed", len(outbox.events))
        if outbox.kick_scheduler:
            self.root.scheduler.kick()

    async def _deliver_callbacks(self) -> None:
        """POST lifecycle notifications one at a time, in order, only to allowed destinations
        (``services/callbacks.py``); failures and refusals are only logged. The queue is looked
        at last with no await before the return: what ``flush`` queued while the HTTP session
        closed is delivered too, not left until the next flush."""
        while not self._callbacks.empty():
            allow = callbacks.parse_networks(self.root.settings.callback_allow)
            async with self.root.store.connect() as conn:
                agent_ips = callbacks.agent_ips(
                    (await conn.execute(sa.select(agents.c.address))).scalars())
            async with callbacks.session(allow, agent_ips) as http:
                while not self._callbacks.empty():
                    url, body = self._callbacks.get_nowait()
                    try:
                        status = await callbacks.post(http, url, body, allow, agent_ips)
                        if status >= 400:
                            log.warning("session callback %s answered %s", url, status)
                    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                        log.warning("session callback %s failed: %s", url, e)

    def spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def close(self) -> None:
        if self._ending:  # answered as done: given the time a destroy that waits would have
            await asyncio.wait(list(self._ending), timeout=ENDING_GRACE_SECONDS)
        for task in [*self._bg, *self._ending]:
            task.cancel()
        for task in [*self._bg, *self._ending]:
            with contextlib.suppress(BaseException):
                await task

    async def _kernel(self, conn: AsyncConnection, kernel_id) -> dict | None:
        if kernel_id is None:
            return None
        row = (await conn.execute(_KERNEL_BY_ID, {"_kid": kernel_id})).mappings().first()
        return dict(row) if row else None

    async def _kernel_at(self, conn: AsyncConnection, kernel_id
                         ) -> tuple[dict | None, str | None]:
        """``_kernel`` and the address of its agent (None: no such kernel, or agent), one read."""
        if kernel_id is None:
            return None, None
        row = (await conn.execute(_KERNEL_AT, {"_kid": kernel_id})).mappings().first()
        if row is None:
            return None, None
        kernel = dict(row)
        return kernel, kernel.pop("_at_address")

    async def _agent_address(self, conn: AsyncConnection, agent_id: str | None) -> str | None:
        if not agent_id:
            return None
        return (await conn.execute(_AGENT_ADDRESS, {"_aid": agent_id})).scalar()

    # -- starting -----------------------------------------------------------------------------

    async def kernel_specs(self, conn: AsyncConnection, placed: list[dict[str, Any]]
                           ) -> list[tuple[str, list[dict[str, Any]]]]:
        """The kernel specs of sessions just placed (``place_many``), grouped by agent address,
        for ``create_kernels`` once the transaction has committed."""
        names = tuple(sorted({r["image"] for r in placed}))
        keys = frozenset(r["access_key"] for r in placed)

        async def read_images() -> dict[str, dict[str, Any]]:
            return {r["name"]: dict(r) for r in (await conn.execute(
                sa.select(images).where(images.c.name.in_(names)))).mappings()}

        async def read_limits() -> dict[str, dict[str, int]]:
            return await policy_limits(conn, set(keys))

        # kept between placements while their tables are not written (SQLite, ``Cached``)
        store = self.root.store
        image_rows = await self._images.read(store, names, read_images) if names else {}
        limits = await self._limits.read(store, keys, read_limits)
        by_address: dict[str, list[dict[str, Any]]] = {}
        for r in placed:
            kid = r.get("main_kernel_id")
            if kid is None:
                continue
            spec = self.kernel_spec(r, {"id": kid}, image_rows.get(r["image"], {}),
                                    limits.get(r["access_key"], {}))
            by_address.setdefault(r["_address"], []).append(spec)
        return list(by_address.items())

    async def create_kernels(self, address: str, specs: list[dict[str, Any]]) -> None:
        """Ask one agent to create many kernels; a refused or unreachable start is handled as
        an unreachable agent requeues the session (``MAX_START_ATTEMPTS``), anything else is ERROR."""
        try:
            answer = await self.root.agents.rpc.create_kernels(address, specs)
            refused = {str(r.get("kernel_id")): r for r in answer.get("refused") or []}
        except BaiError as e:
            refused = {spec["kernel_id"]: e for spec in specs}
        for spec in specs:
            err = refused.get(spec["kernel_id"])
            if err is None:
                self.root.agents.start_accepted(spec["session_id"], address, spec["kernel_id"])
                continue
            if not isinstance(err, BaiError):
                err = AgentError(str(err.get("title") or "the agent refused the kernel"))
            await self._start_failed(uuid.UUID(spec["session_id"]), uuid.UUID(spec["kernel_id"]), err)

    def kernel_spec(self, row: Mapping[str, Any], kernel: Mapping[str, Any], image: Mapping,
                    limits: Mapping[str, int] | None = None) -> dict:
        """What the agent needs to start ``kernel``; ``limits`` (``policy_limits``) are the
        owner's policy bounds the agent enforces: ``pids_limit`` and ``disk_quota`` (0 = its
        own default / none)."""
        environ = {str(k): str(v) for k, v in (row.get("environ") or {}).items()}
        environ.update(
            BACKENDAI_SESSION_ID=str(row["id"]),
            BACKENDAI_SESSION_NAME=row["name"],
            BACKENDAI_KERNEL_ID=str(kernel["id"]),
            BACKENDAI_KERNEL_IMAGE=row["image"],
            BACKENDAI_ACCESS_KEY=row["access_key"],
            BACKENDAI_CLUSTER_SIZE="1",
            BACKENDAI_CLUSTER_ROLE="main",
            BACKENDAI_CLUSTER_IDX="0",
        )
        return {
            "kernel_id": str(kernel["id"]),
            "session_id": str(row["id"]),
            "session_name": row["name"],
            "session_type": row["type"],
            "image": row["image"],
            "image_labels": dict(image.get("labels") or {}),
            "slots": ResourceSlot.from_json(row["requested_slots"]).to_json(),
            "environ": environ,
            "startup_command": row.get("startup_command"),
            "bootstrap_script": row.get("bootstrap_script"),
            # outbound network (the policy's allow_outbound; agent: backends/outbound.py)
            "network": bool((limits or {}).get("allow_outbound")),
            "cluster_role": kernel.get("cluster_role") or "main",
            "cluster_idx": kernel.get("cluster_idx") or 0,
            "pids_limit": int((limits or {}).get("pids_limit") or 0),
            "disk_quota": int((limits or {}).get("disk_quota") or 0),
            "mounts": kernel_mounts(row.get("mounts")),
        }

    async def _start_failed(self, session_id: uuid.UUID, kernel_id, err: BaiError) -> None:
        unreachable = isinstance(err, AgentError) and "unreachable" in str(err)
        data = {"error": {"src": "agent", "name": type(err).__name__, "repr": str(err)}}
        for _ in range(MAX_RACE_RETRIES):
            async with self.tx() as (conn, outbox):
                row = await load_session(conn, session_id)
                if row is None or row["main_kernel_id"] != kernel_id:
                    return
                status = S(row["status"])
                if status not in (S.PREPARING, S.PULLING, S.PREPARED, S.CREATING):
                    return
                if unreachable and row["attempt"] + 1 < MAX_START_ATTEMPTS:
                    new = await transit(
                        conn, session_id, status, S.PENDING, reason="agent-unreachable",
                        cause="manager", outbox=outbox, row=row, status_data=data,
                        values={"agent_ids": []},
                    )
                    if new is not None:
                        await replace_kernel(conn, new, "agent-unreachable")
                        return
                else:
                    new = await transit(
                        conn, session_id, status, S.ERROR, reason="failed-to-start",
                        cause="manager", outbox=outbox, row=row, status_data=data,
                    )
                    if new is not None:
                        return

    # -- terminating --------------------------------------------------------------------------

    async def terminate(
        self, session_id: uuid.UUID, *, reason: str, cause: str, forced: bool = False,
        wait: bool = True,
    ) -> dict[str, Any]:
        """End a session whatever its status; returns the destroy answer's ``stats``.

        PENDING -> CANCELLED. ERROR -> TERMINATED. Anything else -> TERMINATING, the agent
        destroys the kernel, -> TERMINATED with the slots released. An unreachable agent leaves
        the session TERMINATING (the deadline ends it) unless ``forced``.

        Without ``wait`` the answer comes once the session is TERMINATING (committed): the
        agent's destroy and the move to TERMINATED go on in the background (``_ending``), as
        they would after a destroy that waited; what fails there is logged, and the session
        stays TERMINATING until its deadline ends it, as after a destroy that waited in vain.
        """
        for _ in range(MAX_RACE_RETRIES):
            async with self.tx() as (conn, outbox):
                row = await load_session(conn, session_id)
                if row is None:
                    raise SessionNotRunning("no such session")
                status = S(row["status"])
                if status in FINAL:
                    return stats_reply(status.value.lower())
                if status is S.PENDING:
                    if await transit(conn, session_id, S.PENDING, S.CANCELLED, reason=reason,
                                     cause=cause, outbox=outbox, row=row):
                        return stats_reply("cancelled")
                    continue
                kernel, address = await self._kernel_at(conn, row["main_kernel_id"])
                if status is S.TERMINATING and not forced:
                    pass  # someone else is terminating it: help by asking the agent again
                elif status is S.ERROR:
                    pass  # kernel may linger on the agent: destroy it first, then TERMINATED
                elif status is not S.TERMINATING:
                    if not await transit(conn, session_id, status, S.TERMINATING, reason=reason,
                                         cause=cause, outbox=outbox, row=row):
                        continue
            ending = self._destroy_on_agent(
                session_id, kernel, address, reason=reason, cause=cause, forced=forced)
            if wait:
                return await ending
            task = asyncio.create_task(self._logged(ending, session_id), name=f"end-{session_id}")
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            return stats_reply("terminating")
        raise SessionNotRunning("the session changed too often while terminating it; try again")

    @staticmethod
    async def _logged(ending, session_id: uuid.UUID) -> None:
        """A destroy that goes on after its answer: a failure goes to the log (the session
        stays TERMINATING; its deadline ends it)."""
        try:
            await ending
        except Exception:
            log.exception("ending session %s after its destroy was answered failed", session_id)

    async def _destroy_on_agent(
        self, session_id, kernel, address, *, reason: str, cause: str, forced: bool
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {}
        reached = True
        if kernel is not None and address:
            try:
                reply = await self.root.agents.rpc.destroy_kernel(address, str(kernel["id"]), reason)
            except BaiError as e:
                log.warning("destroying kernel %s on %s failed: %s", kernel["id"], address, e)
                reached = False
        if not reached and not forced:
            return stats_reply("terminating")
        return await self.finish_termination(
            session_id, kernel["id"] if kernel else None,
            reason=reason if reached else "force-terminated", cause=cause,
            exit_code=reply.get("exit_code"), stats=reply.get("stats"),
            ended_by="oom-killed" if reply.get("exit_reason") == "oom-killed" else None,
        )

    async def finish_termination(
        self, session_id, kernel_id, *, reason: str, cause: str,
        exit_code: int | None = None, stats: Mapping | None = None,
        ended_by: str | None = None,
    ) -> dict[str, Any]:
        """TERMINATING/ERROR -> TERMINATED once the kernel is gone (idempotent).

        ``ended_by`` is what the agent saw end the kernel when that says more than the request
        did (``oom-killed``): it becomes the session's ``status_info``.
        """
        for _ in range(MAX_RACE_RETRIES):
            async with self.tx() as (conn, outbox):
                row = await load_session(conn, session_id)
                if row is None:
                    return stats_reply("terminated")
                status = S(row["status"])
                if status in FINAL:
                    return stats_reply(status.value.lower(), stats)
                if kernel_id is not None and row["main_kernel_id"] != kernel_id:
                    return stats_reply(status.value.lower())
                if status not in (S.TERMINATING, S.ERROR):
                    # forced while still starting: pass through TERMINATING so the table holds
                    if not await transit(conn, session_id, status, S.TERMINATING, reason=reason,
                                         cause=cause, outbox=outbox, row=row):
                        continue
                    row = await load_session(conn, session_id)
                    status = S.TERMINATING
                # the reason it ended stays readable: a TERMINATING session keeps the reason it
                # was terminated for, an ERROR one its error ("oom-killed") when it is removed
                info = row.get("status_info") if status in (S.TERMINATING, S.ERROR) else reason
                info = ended_by or info
                kept = dict(row.get("status_data") or {}) if status is S.ERROR else None
                if stats and kernel_id is not None:
                    await conn.execute(
                        sa.update(kernels).where(kernels.c.id == kernel_id).values(last_stat=dict(stats))
                    )
                new = await transit(
                    conn, session_id, status, S.TERMINATED, reason=ended_by or reason, cause=cause,
                    outbox=outbox, row=row, info=info or reason, exit_code=exit_code,
                    status_data=kept,
                )
                if new is not None:
                    return stats_reply("terminated", stats)
        return stats_reply("terminating")

    # -- agent events -------------------------------------------------------------------------

    async def apply_kernel_events(self, events: list[KernelEvent]) -> None:
        """Apply a batch of agent events (``coalesce_progress`` already applied) in ``runs``:
        each run of progress events of distinct kernels is applied together, set-based, in one
        transaction (``_apply_progress``), so is each run of ``kernel_terminated``
        (``_apply_ends``); any other event one by one, in its place."""
        for kind, run in runs(events):
            if kind == "progress":
                await self._apply_progress(run)
            elif kind == "terminated":
                await self._apply_ends(run)
            else:
                for ev in run:
                    await self._apply_logged(ev)

    async def _apply_logged(self, ev: KernelEvent) -> None:
        try:
            await self.apply_kernel_event(ev)
        except Exception:
            log.exception("handling %s for kernel %s failed", ev.name, ev.kernel_id)

    async def _apply_progress(self, run: list[KernelEvent]) -> None:
        """Progress events of distinct kernels: the sessions on the healthy path walk to their
        target in one compare-and-set per (from, to) group; the rest go one by one."""
        if len(run) == 1:
            await self._apply_logged(run[0])
            return
        by_kid = _by_kernel(run)
        rest: list[KernelEvent] = []
        try:
            async with self.tx() as (conn, outbox):
                kernel_rows, rows = await _kernel_sessions(conn, by_kid, _WALK_SELECT)
                groups: dict[tuple[SessionStatus, SessionStatus, str], list[dict]] = {}
                seen: set[uuid.UUID] = set()
                for kid, ev in by_kid.items():
                    row = rows.get(kernel_rows.get(kid))
                    target = EVENT_TARGET[ev.name]
                    if row is None or row["main_kernel_id"] != kid or row["id"] in seen:
                        rest.append(ev)
                        continue
                    if next_step(S(row["status"]), target) is None:
                        # already there or past it (a placement moves straight on to
                        # PREPARING, so every kernel_preparing lands here): nothing to do
                        continue
                    seen.add(row["id"])
                    key = (S(row["status"]), target, ev.agent_id)
                    groups.setdefault(key, []).append({**row, "_event": ev})
                for (src, target, agent_id), group in groups.items():
                    moved = await transit_many(conn, group, src, walk(src, target),
                                               outbox=outbox, cause=f"agent:{agent_id}")
                    moved_ids = {r["id"] for r in moved}
                    rest.extend(r["_event"] for r in group if r["id"] not in moved_ids)
                    if target is S.RUNNING:
                        await self._started_details(conn, moved)
        except Exception:
            log.exception("applying %d progress events together failed; one by one", len(run))
            rest = list(run)
        for ev in rest:
            await self._apply_logged(ev)

    async def _apply_ends(self, run: list[KernelEvent]) -> None:
        """``kernel_terminated`` of distinct kernels: the ends that are one walk each
        (``_one_walk``: a batch job's RUNNING -> TERMINATING -> TERMINATED) move together, one
        compare-and-set per (walk, exit code, result, agent), in one transaction; the rest (and
        sessions with a webhook, whose calls keep their order) go one by one."""
        if len(run) == 1:
            await self._apply_logged(run[0])
            return
        by_kid = _by_kernel(run)
        rest: list[KernelEvent] = []
        try:
            async with self.tx() as (conn, outbox):
                kernel_rows, rows = await _kernel_sessions(conn, by_kid, _END_SELECT)
                groups: dict[tuple, list[tuple[dict[str, Any], Decision]]] = {}
                for kid, ev in by_kid.items():
                    row = rows.get(kernel_rows.get(kid))
                    d = decide(ev, row, row["main_kernel_id"] == kid) if row is not None else None
                    path = _one_walk(d, row, kid) if d is not None else None
                    if path is None or row.get("callback_url"):
                        rest.append(ev)
                        continue
                    res_key = (d.result.result, d.result.event, d.result.reason,
                               d.result.exit_code) if d.result is not None else None
                    key = (d.moves[0].src, tuple(path), d.kernel_exit_code, res_key, ev.agent_id)
                    groups.setdefault(key, []).append(({**row, "_event": ev}, d))
                for (src, path, exit_code, _res, agent_id), group in groups.items():
                    d0 = group[0][1]
                    values = {"result": d0.result.result.value} if d0.result is not None else None
                    first = len(outbox.events)
                    moved = await transit_many(conn, [r for r, _ in group], src, list(path),
                                               cause=f"agent:{agent_id}", outbox=outbox,
                                               exit_code=exit_code, values=values)
                    moved_ids = {r["id"] for r in moved}
                    rest.extend(r["_event"] for r, _ in group if r["id"] not in moved_ids)
                    if d0.result is not None:  # each session's result before its steps
                        outbox.events[first:first] = [
                            SessionEvent(d.result.event, str(r["id"]), r["name"], r["access_key"],
                                         reason=d.result.reason, exit_code=d.result.exit_code)
                            for r, d in group if r["id"] in moved_ids]
        except Exception:
            log.exception("applying %d kernel ends together failed; one by one", len(run))
            rest = list(run)
        for ev in rest:
            await self._apply_logged(ev)

    async def _started_details(self, conn: AsyncConnection, moved: list[dict[str, Any]]) -> None:
        """What a ``kernel_started`` tells besides the status: service ports, container id."""
        ports = [{"_id": r["id"], "_ports": r["_event"].data["service_ports"]} for r in moved
                 if r["_event"].data.get("service_ports") is not None
                 and r["_event"].data["service_ports"] != r.get("service_ports")]
        if ports:
            await conn.execute(
                sa.update(sessions).where(sessions.c.id == sa.bindparam("_id"))
                .values(service_ports=sa.bindparam("_ports", type_=sa.JSON))
                .execution_options(**LATER), ports)
        containers = {r["main_kernel_id"]: str(r["_event"].data["container_id"])
                      for r in moved if r["_event"].data.get("container_id")}
        for chunk in in_lists(list(containers)):  # one statement per chunk, not per kernel
            await conn.execute(
                sa.update(kernels).where(kernels.c.id.in_(chunk))
                .values(container_id=sa.case({k: containers[k] for k in chunk},
                                             value=kernels.c.id)).execution_options(**LATER))

    async def apply_kernel_event(self, ev: KernelEvent) -> None:
        """Turn one agent observation into transitions (idempotent: repeats are skipped)."""
        try:
            kid = uuid.UUID(str(ev.kernel_id))
        except ValueError:
            return
        for _ in range(MAX_RACE_RETRIES):
            done = await self._apply_once(ev, kid)
            if done:
                return
        log.warning("gave up applying %s for kernel %s after repeated races", ev.name, kid)

    async def _apply_once(self, ev: KernelEvent, kid: uuid.UUID) -> bool:
        """Load, ``kernel_events.decide``, carry the decision out; False on a lost race."""
        cause = f"agent:{ev.agent_id}"
        async with self.tx() as (conn, outbox):
            kernel = await self._kernel(conn, kid)
            if kernel is None:
                return True
            row = await load_session(conn, kernel["session_id"])
            if row is None:
                return True
            d = decide(ev, row, row["main_kernel_id"] == kid)
            chain = _one_walk(d, row, kid)
            if chain is not None:  # e.g. a batch job's end: 6 statements instead of 13
                return await self._walk_moves(conn, outbox, d, row, chain, cause)
            if d.destroy_orphan is not None:
                self._destroy_orphan(kernel, ev, d.destroy_orphan)
            if d.walk:
                # the whole walk is one compare-and-set (a history row and events per step)
                moved = await transit_many(conn, [{**row, "_event": ev}], d.walk_from, d.walk,
                                           cause=cause, outbox=outbox)
                if not moved:
                    return False
                if d.started:
                    await self._started_details(conn, moved)
            if d.result is not None:
                await conn.execute(
                    sa.update(sessions).where(sessions.c.id == row["id"])
                    .values(result=d.result.result.value)
                )
                result_ev = SessionEvent(d.result.event, str(row["id"]), row["name"],
                                         row["access_key"], reason=d.result.reason,
                                         exit_code=d.result.exit_code)
                outbox.events.append(result_ev)
                outbox.notify(row, [result_ev])
            for move in d.moves:
                row = await transit(conn, row["id"], move.src, move.to, reason=move.reason,
                                    cause=cause, outbox=outbox, row=row, info=move.info,
                                    status_data=move.status_data, exit_code=move.exit_code)
                if row is None:
                    return False
            if d.kernel_exit_code is not None:
                # after the session's row (as every transition locks them: the session, then
                # its kernel), so that it cannot deadlock with one (PostgreSQL)
                await conn.execute(
                    sa.update(kernels).where(kernels.c.id == kid).values(exit_code=d.kernel_exit_code)
                )
            return True

    async def _walk_moves(self, conn: AsyncConnection, outbox: Outbox, d: Decision,
                          row: dict[str, Any], path: list[tuple[SessionStatus, str]],
                          cause: str) -> bool:
        """``d``'s moves as one compare-and-set along ``path`` (``_one_walk``), the batch
        result and the kernel's exit code in the same statements; False on a lost race."""
        values = {"result": d.result.result.value} if d.result is not None else None
        if d.result is not None:
            result_ev = SessionEvent(d.result.event, str(row["id"]), row["name"],
                                     row["access_key"], reason=d.result.reason,
                                     exit_code=d.result.exit_code)
            outbox.events.append(result_ev)
            outbox.notify(row, [result_ev])
        moved = await transit_many(conn, [row], d.moves[0].src, path, cause=cause,
                                   outbox=outbox, exit_code=d.kernel_exit_code, values=values)
        return bool(moved)

    async def destroy_kernel_quietly(self, session_id, reason: str) -> None:
        """Ask the agent to drop the session's kernel, without any status change."""
        async with self.root.store.connect() as conn:
            row = await load_session(conn, session_id)
            kernel, address = await self._kernel_at(conn, row and row["main_kernel_id"])
        if kernel is not None and address:
            with contextlib.suppress(BaiError):
                await self.root.agents.rpc.destroy_kernel(address, str(kernel["id"]), reason)

    def _destroy_orphan(self, kernel: Mapping, ev: KernelEvent, reason: str) -> None:
        """A kernel started that nobody wants any more (destroyed or replaced meanwhile)."""
        async def _go():
            async with self.root.store.connect() as conn:
                address = await self._agent_address(conn, ev.agent_id) or kernel.get("agent_address")
            if address:
                with contextlib.suppress(BaiError):
                    await self.root.agents.rpc.destroy_kernel(address, str(kernel["id"]), reason)

        self.spawn(_go(), f"destroy-orphan-{kernel['id']}")

    # -- agent lost ---------------------------------------------------------------------------

    async def agent_lost(self, agent_id: str) -> int:
        """Sessions on a lost agent: interactive -> ERROR (agent-lost), batch -> PENDING again."""
        async with self.root.store.connect() as conn:
            ids = (
                await conn.execute(
                    sa.select(sessions.c.id)
                    .join(kernels, kernels.c.id == sessions.c.main_kernel_id)
                    .where(
                        kernels.c.agent_id == agent_id,
                        sessions.c.status.not_in([str(s) for s in (*FINAL, S.PENDING, S.ERROR)]),
                    )
                )
            ).scalars().all()
        for sid in ids:
            for _ in range(MAX_RACE_RETRIES):
                if await self._lose_one(sid, agent_id):
                    break
        return len(ids)

    async def _lose_one(self, sid, agent_id: str) -> bool:
        cause = f"agent:{agent_id}"
        async with self.tx() as (conn, outbox):
            row = await load_session(conn, sid)
            if row is None:
                return True
            status = S(row["status"])
            if status in FINAL or status in (S.PENDING, S.ERROR):
                return True
            if status is S.TERMINATING:
                return await transit(conn, sid, status, S.TERMINATED, reason="agent-lost",
                                     cause=cause, outbox=outbox, row=row,
                                     info=row.get("status_info") or "agent-lost") is not None
            requeue = row["type"] == SessionType.BATCH and S.PENDING in _targets(status)
            if requeue:
                new = await transit(conn, sid, status, S.PENDING, reason="agent-lost", cause=cause,
                                    outbox=outbox, row=row, values={"agent_ids": [], "result": "UNDEFINED"})
                if new is None:
                    return False
                await replace_kernel(conn, new, "agent-lost")
                return True
            return await transit(conn, sid, status, S.ERROR, reason="agent-lost", cause=cause,
                                 outbox=outbox, row=row,
                                 status_data={"error": {"src": "agent", "agent_id": agent_id,
                                                        "repr": "agent stopped sending heartbeats"}}
                                 ) is not None

    # -- restart ------------------------------------------------------------------------------

    async def restart(self, session_id: uuid.UUID, cause: str) -> None:
        """RUNNING -> RESTARTING; the kernel is replaced by a fresh one; -> RUNNING on start."""
        async with self.tx() as (conn, outbox):
            row = await load_session(conn, session_id)
            if row is None or row["status"] != S.RUNNING:
                raise SessionNotRunning(
                    f"session {row['name'] if row else session_id} is "
                    f"{row['status'] if row else 'gone'}; only a RUNNING session can restart"
                )
            old, address = await self._kernel_at(conn, row["main_kernel_id"])
            new = await transit(conn, session_id, S.RUNNING, S.RESTARTING, reason="restarting",
                                cause=cause, outbox=outbox, row=row)
            if new is None:
                raise SessionNotRunning("the session changed while restarting it; try again")
            new_kid = await replace_kernel(conn, new, "restarting")
            image = (await conn.execute(sa.select(images).where(images.c.name == row["image"]))).mappings().first()
            kernel = await self._kernel(conn, new_kid)
            limits = (await policy_limits(conn, {row["access_key"]})).get(row["access_key"], {})
        if old is not None and address:
            with contextlib.suppress(BaiError):
                await self.root.agents.rpc.destroy_kernel(address, str(old["id"]), "restarting")
        try:
            await self.root.agents.rpc.create_kernel(
                address, self.kernel_spec(new, kernel, dict(image or {}), limits))
        except BaiError as e:
            async with self.tx() as (conn, outbox):
                await transit(conn, session_id, S.RESTARTING, S.ERROR, reason="restart-failed",
                              cause="manager", outbox=outbox,
                              status_data={"error": {"src": "agent", "repr": str(e)}})


def _targets(status: SessionStatus):
    from bai.common.status import TRANSITIONS

    return TRANSITIONS[status]


async def kernel_ids_on_agent(conn: AsyncConnection, agent_id: str) -> list[uuid.UUID]:
    return list(
        (await conn.execute(sa.select(kernels.c.id).where(kernels.c.agent_id == agent_id))).scalars()
    )


__all__ = ["Lifecycle", "next_step", "stats_reply", "utcnow"]
