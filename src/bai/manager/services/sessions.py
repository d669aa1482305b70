"""SessionService: the use cases behind ``/session`` (create, destroy, look up, history ...).

Creating validates everything before writing anything (image, slots, fit, policy, name), then
writes the session PENDING with its kernel and ``None -> PENDING`` history in one transaction,
publishes ``session_enqueued`` and kicks the scheduler (on SQLite, with the owner known from an
earlier create, the name is checked last, in the transaction, before its commit). Unless
``enqueueOnly``, it waits for RUNNING, ERROR, CANCELLED or TERMINATED (or answers ``TIMEOUT``
after ``maxWaitSeconds > 0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from bai.common import services
from bai.common.arrays import INDEX_VAR, element_name
from bai.common.errors import (
    BaiError,
    Forbidden,
    InvalidAPIParameters,
    InvalidResourceSpec,
    QuotaExceeded,
    SessionAlreadyExists,
    SessionNotFound,
)
from bai.common.ids import parse_uuid
from bai.common.resources import KNOWN_SLOTS, ResourceSlot, check_session_request
from bai.common.status import FINAL, TERMINAL, SessionStatus
from bai.manager.context import Caller
from bai.manager.scheduler.decision import fmt_amount
from bai.manager.services.images import DEFAULT_REQUEST, image_cache, resolve_image
from bai.manager.services.lifecycle import Lifecycle
from bai.manager.services.mounts import resolve as resolve_mounts
from bai.manager.services.scheduling import first_lines
from bai.manager.services.session_params import CreateRequest, check_name, parse_create
from bai.manager.services.transitions import in_lists, record_enqueued
from bai.manager.store.cached import Cached
from bai.manager.store.engine import LATER, AsyncConnection
from bai.manager.store.tables import (
    agents,
    domains,
    group_members,
    groups,
    kernels,
    keypair_resource_policies,
    keypairs,
    scaling_groups,
    session_dependencies,
    session_history,
    sessions,
    users,
    utcnow,
)

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

S = SessionStatus
#: Statuses the create call stops waiting at.
SETTLED = frozenset({S.RUNNING, S.ERROR, S.CANCELLED, S.TERMINATED})
_SETTLED_NAMES = frozenset(str(s) for s in SETTLED)
#: How long destroy waits for an agent that answered "terminating" to finish.
DESTROY_WAIT_SECONDS = 15.0
_FINAL_NAMES = [str(s) for s in FINAL]
_TERMINAL_NAMES = [str(s) for s in TERMINAL]
#: the same as literals in the SQL, for the create's reads: a list (an expanding parameter)
#: has SQLAlchemy rewrite the statement's text on every execution (~20 us)
_TERMINAL_SQL = [sa.literal_column(f"'{name}'") for name in sorted(_TERMINAL_NAMES)]

# The create path's reads, built once with bound parameters: building a statement and its
# cache key anew on every create cost more than running it.
#: the id of the owner's live session of a name (at most one: the live-name index)
_LIVE_ID = (
    sa.select(sessions.c.id).where(
        sessions.c.name == sa.bindparam("name"), sessions.c.access_key == keypairs.c.access_key,
        sessions.c.status.not_in(_TERMINAL_SQL),
    ).order_by(sessions.c.created_at.desc()).limit(1).correlate(keypairs).scalar_subquery()
)
#: the group's columns a create reads
_GROUP_COLS = (groups.c.id, groups.c.name, groups.c.is_active, groups.c.total_resource_slots)
#: the keypair, its user and policy, the policy's and domain's limits, the id of its live
#: session of the name asked for, and the group asked for in the user's domain with the user's
#: membership, in one query
_OWNER = (
    sa.select(keypairs.c.access_key, keypairs.c.resource_policy, users.c.id.label("user_id"),
              users.c.email, users.c.domain_name, keypair_resource_policies.c.idle_timeout,
              keypairs.c.is_active,
              keypair_resource_policies.c.total_resource_slots.label("policy_slots"),
              keypair_resource_policies.c.min_resource_slots.label("policy_min_slots"),
              domains.c.total_resource_slots.label("domain_slots"),
              _LIVE_ID.label("live_id"), *(c.label(f"group_{c.name}") for c in _GROUP_COLS),
              group_members.c.user_id.label("group_member"))
    .select_from(keypairs)
    .join(users, users.c.id == keypairs.c.user_id)
    .join(keypair_resource_policies,
          keypair_resource_policies.c.name == keypairs.c.resource_policy)
    .outerjoin(domains, domains.c.name == users.c.domain_name)
    .outerjoin(groups, sa.and_(groups.c.name == sa.bindparam("group"),
                               groups.c.domain_name == users.c.domain_name))
    .outerjoin(group_members, sa.and_(group_members.c.group_id == groups.c.id,
                                      group_members.c.user_id == users.c.id))
    .where(keypairs.c.access_key == sa.bindparam("ak"))
)
#: the same with the number of pending sessions, for a create whose sessions wait for a
#: ``starts_at`` ahead (their first lines, ``scheduling.first_lines``): on SQLite, read under
#: the write lock that the inserts are written under
_OWNER_AND_QUEUE = _OWNER.add_columns(
    sa.select(sa.func.count()).where(sessions.c.status == str(S.PENDING)).correlate(None)
    .scalar_subquery().label("pending"))
#: the id of the owner's live session of a name but ``sid``, read after ``sid`` was written
#: (``Store.commit_unless``): the name check of a create whose owner was not read
_LIVE_OTHER = (
    sa.select(sessions.c.id).where(
        sessions.c.name == sa.bindparam("name"), sessions.c.access_key == sa.bindparam("ak"),
        sessions.c.status.not_in(_TERMINAL_SQL), sessions.c.id != sa.bindparam("sid"),
    ).limit(1)
)
#: a create's ``live_id`` where its owner was not read (``SessionService._owner``)
_UNREAD = object()


class _NameSeen(Exception):
    """A create's name check after its writes found the name taken: done again, read first."""


#: the live session of a name (at most one: the live-name index)
_LIVE_BY_NAME = (
    sa.select(sessions).where(
        sessions.c.name == sa.bindparam("name"), sessions.c.access_key == sa.bindparam("ak"),
        sessions.c.status.not_in(_TERMINAL_SQL),
    ).order_by(sessions.c.created_at.desc()).limit(1)
)
# a create's writes, their results unread: on SQLite they go with its commit, in one trip
# (``store.engine.LATER``)
_INSERT_SESSIONS = sa.insert(sessions).execution_options(**LATER)
_INSERT_KERNELS = sa.insert(kernels).execution_options(**LATER)
_INSERT_DEPENDENCIES = sa.insert(session_dependencies).execution_options(**LATER)
#: the resource group (its scheduler too) with its live agents' capacities (one row per
#: agent, or one without)
_SCALING_GROUP = (
    sa.select(scaling_groups.c.is_active, scaling_groups.c.scheduler,
              agents.c.id.label("agent_id"), agents.c.available_slots)
    .select_from(scaling_groups.outerjoin(agents, sa.and_(
        agents.c.scaling_group == scaling_groups.c.name, agents.c.status == "ALIVE")))
    .where(scaling_groups.c.name == sa.bindparam("name"))
)


class _Group(NamedTuple):
    id: uuid.UUID
    name: str
    is_active: bool
    total_resource_slots: Any
    member: Any  # the owner's user id when a member, else None


class _Queue(NamedTuple):
    """What a create's first lines are made from (``scheduling.first_lines``)."""
    scheduler: str  # the resource group's policy
    pending: int | None  # sessions pending as the create read its owner (None: not read)


def name_taken(err: Exception) -> bool:
    """Whether an IntegrityError is the live-name index refusing a second session of a name."""
    text = str(err)
    return "ix_sessions_unique_live_name" in text or "sessions.access_key, sessions.name" in text


def _services(image: dict, req: CreateRequest) -> list[dict]:
    """The image's services plus the user's own (``--service``, ``--preopen``)."""
    try:
        return services.session_services(image.get("service_ports") or [], req.services,
                                         req.preopen_ports)
    except services.ServiceSpecError as e:
        raise InvalidAPIParameters(str(e), data={"field": "service_ports"}) from None


class SessionService:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self.lifecycle = Lifecycle(root)
        #: the images creates resolved (SQLite: valid until a write to the images)
        self.images = image_cache()
        #: the resource groups creates ran in, each with its live agents' capacities
        #: (SQLite: valid until a write to ``scaling_groups`` or ``agents``)
        self.scaling_groups = Cached("scaling_groups", 256)
        #: the number of sessions pending as the last create for later left it (SQLite: valid
        #: until a write to ``sessions``): the next one's first lines need no count
        self.pending = Cached("sessions", 1)
        #: the owners creates read, by access key and group (``_owner``; SQLite: valid until a
        #: write to their tables)
        self.owners = Cached("owners", 1024)

    async def close(self) -> None:
        await self.lifecycle.close()

    # -- create -------------------------------------------------------------------------------

    async def create(self, caller: Caller, params: dict) -> dict:
        return (await self.create_row(caller, params))[0]

    async def create_row(self, caller: Caller, params: dict, *, reread: bool = True,
                         sid: uuid.UUID | None = None) -> tuple[dict, dict | None]:
        """``create``'s answer and the session's row as it settled (None for an array).
        Without ``reread`` a session the events said is settled is not read again: its row is
        the one written, with the status the events told (the run stream needs no more).
        ``sid``: the new session's id (the run stream's, which watches its start)."""
        now = utcnow()
        req = parse_create(params, now)
        if req.array is not None:
            return await self._enqueue_array(caller, req, now), None
        sid = sid or uuid.uuid4()
        # only this session's events: the subscription exists before the row does (none for
        # an enqueue-only create, which answers without waiting for any)
        async with (contextlib.nullcontext() if req.enqueue_only
                    else self.root.bus.subscribe(str(sid))) as sub:
            # A create of the same name on another replica may commit between our check and our
            # insert: the unique index refuses ours, and the second try finds theirs.
            try:
                row, reused = await self._enqueue(caller, req, now, sid)
            except sa.exc.IntegrityError as e:
                if not name_taken(e):
                    raise
                row, reused = await self._enqueue(caller, req, now, sid, fresh=True)
            if reused is not None:
                return reused, row
            if req.enqueue_only:
                answer = self._answer(row, created=True)
                if row["status_data"]:  # the create wrote its queue line (``first_lines``):
                    # what a query would read now, so ``start --enqueue-only`` need not ask
                    answer.update(statusInfo=row["status_info"], statusData=row["status_data"])
                return answer, row
            return await self._wait(sub, row, req.max_wait, reread)

    async def _enqueue(self, caller: Caller, req: CreateRequest, now: datetime,
                       sid: uuid.UUID, fresh: bool = False) -> tuple[dict, dict | None]:
        """Validate and write the new session ``sid`` PENDING: (row, None); or (existing row,
        answer) when ``reuseIfExists`` finds a live session of that name and image.

        Where the owner is known without a read (``_owner``; not ``fresh``), the name is
        checked last, after the writes and with the commit (one trip on SQLite); a create
        that finds it taken, or fails a check, is done again as before (``fresh``: the owner
        and name read first), so that it answers as before, its name's session first."""
        unread = False
        try:
            async with self.lifecycle.tx() as (conn, outbox):
                owner = await self._owner(conn, caller, req, now, req.name, fresh)
                live_id = owner.pop("live_id")
                unread = live_id is _UNREAD
                existing = None if live_id is None or unread else await self._live_by_name(
                    conn, req.name, owner["access_key"])
                image = await resolve_image(conn, req.image, self.root.store, self.images)
                if existing is not None:
                    if req.reuse and existing["image"] == image["name"]:
                        return existing, self._answer(existing, created=False)
                    raise SessionAlreadyExists(
                        f"a session named {req.name!r} already exists "
                        f"({existing['status']}, image {existing['image']})",
                        data={"existingSessionId": str(existing["id"])},
                    )
                base, dep_ids, queue = await self._checked(conn, caller, req, now, owner, image)
                row = self._new_row(base, sid, req.name, req.environ)
                await self._write(conn, outbox, caller, [row], dep_ids, queue)
                if unread and await self.root.store.commit_unless(conn, _LIVE_OTHER, {
                        "name": req.name, "ak": owner["access_key"], "sid": sid}) is not None:
                    raise _NameSeen
        except (BaiError, _NameSeen):
            if not unread:
                raise
            return await self._enqueue(caller, req, now, sid, fresh=True)
        return row, None

    async def _enqueue_array(self, caller: Caller, req: CreateRequest, now: datetime) -> dict:
        """An array (``"array": "1-N"``): one session NAME-INDEX per index, with the index in
        ``BAI_ARRAY_INDEX``, all written in one transaction after the checks ran once; a
        refusal or a name already taken by a live session leaves nothing. Never waits."""
        indices = req.array or []
        names = [check_name(element_name(req.name, i)) for i in indices]
        async with self.lifecycle.tx() as (conn, outbox):
            owner = await self._owner(conn, caller, req, now)
            owner.pop("live_id")
            image = await resolve_image(conn, req.image, self.root.store, self.images)
            base, dep_ids, queue = await self._checked(conn, caller, req, now, owner, image)
            for chunk in in_lists(names):
                taken = (await conn.execute(
                    sa.select(sessions.c.name, sessions.c.status).where(
                        sessions.c.name.in_(chunk), sessions.c.access_key == owner["access_key"],
                        sessions.c.status.not_in([str(s) for s in TERMINAL])).limit(1)
                )).first()
                if taken is not None:
                    raise SessionAlreadyExists(
                        f"a session named {taken[0]!r} already exists ({taken[1]}): "
                        f"no element of the array was created", data={"name": taken[0]})
            rows = [self._new_row(base, uuid.uuid4(), name,
                                  {**req.environ, INDEX_VAR: str(i)})
                    for name, i in zip(names, indices)]
            await self._write(conn, outbox, caller, rows, dep_ids, queue)
        return {**self._answer(rows[0], created=True),
                "array": [{"sessionId": str(r["id"]), "sessionName": r["name"], "index": i}
                          for r, i in zip(rows, indices)]}

    async def _checked(self, conn: AsyncConnection, caller: Caller, req: CreateRequest,
                       now: datetime, owner: dict, image: dict,
                       ) -> tuple[dict, list[uuid.UUID], _Queue]:
        """Every check of a create after the name's: the columns all its sessions share, the
        dependencies' ids and what their first lines are made from."""
        if req.domain and req.domain != owner["domain_name"]:
            raise InvalidAPIParameters(
                f"user {owner['email']} belongs to domain {owner['domain_name']!r}, "
                f"not {req.domain!r}")
        group = self._group(owner, req.group, caller)
        sgroup, caps, scheduler = await self._scaling_group(conn, req.scaling_group)
        rare = set(req.resources) - set(KNOWN_SLOTS)  # only those need the agents' names
        check_session_request(req.resources,
                              await self._slot_names(conn) if rare else KNOWN_SLOTS)
        requested = self._requested_slots(req.resources, image, owner)
        self._check_fit(requested, sgroup, caps, owner, group)
        dep_ids = [await self._dependency(conn, d, owner["access_key"])
                   for d in req.dependencies]
        mounts = await resolve_mounts(conn, {**owner, "group_id": group.id}, req.mounts)
        base = {
            "tag": req.tag, "type": req.type.value,
            "image": image["name"], "registry": image["registry"],
            "architecture": image["architecture"], "domain_name": owner["domain_name"],
            "group_id": group.id, "user_id": owner["user_id"],
            "access_key": owner["access_key"], "status": str(S.PENDING),
            "status_info": "enqueued", "status_data": {},
            # the request arrived at ``now`` (created_at, what starts_at counts from)
            "created_at": now, "starts_at": req.starts_at,
            "startup_command": req.startup_command,
            "bootstrap_script": req.bootstrap_script,
            "resource_opts": req.resource_opts, "requested_slots": requested.to_json(),
            "occupying_slots": {}, "scaling_group": sgroup,
            "service_ports": _services(image, req), "mounts": mounts,
            "agent_ids": [], "callback_url": req.callback_url,
            "idle_timeout": owner["idle_timeout"], "abusing_reports": [], "attempt": 0,
        }
        return base, dep_ids, _Queue(scheduler, owner.pop("pending", None))

    @staticmethod
    def _new_row(base: dict, sid: uuid.UUID, name: str, environ: dict[str, str]) -> dict:
        return {**base, "id": sid, "name": name, "environ": environ,
                "main_kernel_id": uuid.uuid4()}

    async def _write(self, conn: AsyncConnection, outbox: Any, caller: Caller, rows: list[dict],
                     dep_ids: list[uuid.UUID], queue: _Queue) -> None:
        """Insert ``rows`` PENDING with their kernels, dependencies and first history entry;
        sessions that wait for a ``starts_at`` ahead with their first line where it is known
        now (``first_lines``): what the scheduler loop is told as they commit (in the same
        step as the commit is counted, before this task awaits anything: a look of the loop
        that reads them then finds them told, and runs no pass for them). Where the sessions
        pending were counted, their number once these committed is kept for the next create
        (``self.pending``)."""
        # the sessions become PENDING as they are written, after the checks
        at = utcnow()
        for row in rows:
            row.update(status_changed=at, last_activity_at=at)
        lined = first_lines(rows, at, self.root.scheduler.sole_group(rows[0]["scaling_group"]),
                            queue.scheduler, queue.pending)
        store = self.root.store
        await store.insert_later(conn, _INSERT_SESSIONS, rows)
        if queue.pending is not None and store.is_sqlite:
            pending, now_pending = self.pending, queue.pending + len(rows)
            store.after_commit(conn, lambda: pending.put(
                None, pending.generation(store), now_pending))
        await store.insert_later(conn, _INSERT_KERNELS, [dict(
            id=row["main_kernel_id"], session_id=row["id"], image=row["image"],
            status=str(S.PENDING), status_info="enqueued", status_changed=at,
            created_at=row["created_at"], requested_slots=row["requested_slots"],
            occupied_slots=row["requested_slots"]) for row in rows])
        deps = [dict(session_id=row["id"], depends_on=dep)
                for row in rows for dep in dict.fromkeys(dep_ids)]
        if deps:
            await store.insert_later(conn, _INSERT_DEPENDENCIES, deps)
        for row in rows:
            self.root.request_ids.note(row["id"])
        await record_enqueued(conn, rows, f"user:{caller.access_key}", outbox, at, store=store)
        if lined is not None:
            note = lined[0]
            outbox.events.extend(lined[1])  # session_pending after session_enqueued
            store.after_commit(conn, lambda: self.root.scheduler.appended(note))

    async def _wait(self, sub, row: dict, max_wait: float,
                    reread: bool = True) -> tuple[dict, dict]:
        """Until the session settles (or ``max_wait`` passes): the answer of the create call.

        Every transition's event carries the session's new status, so the wait follows the
        events and reads the row only when an event does not say (or none came for a
        second, e.g. one was lost), and once more when it settled, for what starting it
        wrote (the service ports the agent reported)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait if max_wait > 0 else None
        sid = row["id"]
        status = str(row["status"])
        stale = False  # the status came from an event: the row (service ports) is older
        while status not in _SETTLED_NAMES:
            timeout = 1.0
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return {**self._answer(row, created=True), "status": "TIMEOUT"}, row
                timeout = min(timeout, left)
            ev = await sub.get(timeout)  # (the subscription is this session's only)
            if ev is not None and ev.status is not None:
                status, stale = ev.status, True
                continue
            row, stale = await self._fresh(sid), False
            status = str(row["status"])
        if stale and reread:  # once, now that it has settled
            row = await self._fresh(sid)
            status = str(row["status"])
        row = {**row, "status": status}
        return {**self._answer(row, created=True), "status": status}, row

    async def _fresh(self, sid: uuid.UUID) -> dict:
        async with self.root.store.connect() as conn:
            row = await self._row(conn, sid)
        if row is None:
            raise SessionNotFound("the session disappeared while starting")
        return row

    @staticmethod
    def _answer(row: dict, *, created: bool) -> dict:
        return {
            "sessionId": str(row["id"]),
            "sessionName": row["name"],
            "status": str(row["status"]),
            "servicePorts": list(row.get("service_ports") or []),
            "created": created,
        }

    async def _owner(self, conn: AsyncConnection, caller: Caller, req: CreateRequest,
                     now: datetime, name: str | None = None, fresh: bool = False) -> dict:
        """The owner's keypair row; ``live_id``: the id of its live session named ``name``;
        ``group``: the group ``req`` names in the owner's domain (``_group``); ``pending``:
        the sessions pending, where the create's may get their first lines (they wait for a
        ``starts_at`` ahead, in the only group with sessions pending: ``first_lines``), counted
        unless the last such create's count still stands (``self.pending``: on SQLite, no write
        to ``sessions`` since it committed; this transaction holds the write lock).

        Unless ``fresh``, an owner read before whose tables are unchanged since (``owners``,
        SQLite) is not read again, where no count is needed: its ``live_id`` is then
        ``_UNREAD`` (the name not checked) for a ``name``."""
        ak = req.owner_access_key or caller.access_key
        if ak != caller.access_key and not caller.is_admin:
            raise Forbidden("only an admin may act for another keypair (owner_access_key)")
        store = self.root.store
        lines = (req.starts_at is not None and req.starts_at > now
                 and self.root.scheduler.sole_group(req.scaling_group or "default"))
        seen = self.pending.get(None, self.pending.generation(store)) if lines else None
        generation = self.owners.generation(store)
        if not fresh and not (lines and seen is None) and (
                known := self.owners.get((ak, req.group), generation)) is not None:
            owner = {**known, "live_id": None if name is None else _UNREAD}
        else:
            owner = await store.first(
                conn, _OWNER_AND_QUEUE if lines and seen is None else _OWNER,
                {"ak": ak, "name": name, "group": req.group})
            if owner is None or not owner["is_active"]:
                raise InvalidAPIParameters(f"unknown or inactive keypair {ak}")
            g = {c.name: owner.pop(f"group_{c.name}") for c in _GROUP_COLS}
            owner["group"] = (None if g["id"] is None else
                              _Group(**g, member=owner.pop("group_member")))
            owner.pop("group_member", None)
            self.owners.put((ak, req.group), generation, {
                k: v for k, v in owner.items() if k not in ("live_id", "pending")})
        if seen is not None:
            owner["pending"] = seen
        return owner

    @staticmethod
    def _group(owner: dict, name: str, caller: Caller) -> _Group:
        """The group the session runs in (read with the owner): refused unless it is active
        and, for a user who is not an admin, the user is a member."""
        g = owner.pop("group")
        if g is None or not g.is_active:
            raise InvalidAPIParameters(
                f"unknown group {name!r} in domain {owner['domain_name']!r}")
        if not caller.is_admin and g.member is None:
            raise Forbidden(f"user {owner['email']} is not a member of group {name!r}")
        return g

    async def _scaling_group(self, conn: AsyncConnection,
                             name: str | None) -> tuple[str, list[ResourceSlot], str]:
        """The resource group's name, the capacities of its live agents and its scheduler."""
        name = name or "default"
        cache = self.scaling_groups
        generation = cache.generation(self.root.store)
        found = cache.get(name, generation)
        if found is None:
            rows = (await conn.execute(_SCALING_GROUP, {"name": name})).all()
            if not rows or not rows[0].is_active:
                raise InvalidAPIParameters(f"unknown resource group (scaling group) {name!r}")
            found = (tuple(ResourceSlot.from_json(r.available_slots) for r in rows
                           if r.agent_id is not None), rows[0].scheduler)
            cache.put(name, generation, found)
        return name, list(found[0]), found[1]

    @staticmethod
    async def _slot_names(conn: AsyncConnection) -> set[str]:
        """The slot names any registered agent reports (KNOWN_SLOTS are always known)."""
        rows = (await conn.execute(sa.select(agents.c.available_slots))).all()
        return {k for r in rows for k in (r.available_slots or {})}

    @staticmethod
    def _requested_slots(resources: ResourceSlot, image: dict, owner: dict) -> ResourceSlot:
        mins = ResourceSlot.from_json(image.get("min_slots") or {})
        req = ResourceSlot({k: v for k, v in resources.items() if v != 0})
        for slot, default in DEFAULT_REQUEST.items():
            if req.get(slot, Decimal(0)) <= 0:
                req[slot] = max(Decimal(default), mins.get(slot, Decimal(0)))
        SessionService._check_minimum(req, owner)
        for slot, floor in mins.items():
            if 0 < req.get(slot, Decimal(0)) < floor:
                raise InvalidResourceSpec(
                    f"{slot} {fmt_amount(slot, req[slot])} is below the minimum "
                    f"{fmt_amount(slot, floor)} of image {image['name']}",
                    data={"slot": slot, "requested": str(req[slot]), "minimum": str(floor)},
                )
        return req

    @staticmethod
    def _check_minimum(req: ResourceSlot, owner: dict) -> None:
        """Refuse (400) a request below the keypair policy's ``min_resource_slots``."""
        for slot, floor in ResourceSlot.from_json(owner.get("policy_min_slots") or {}).items():
            want = req.get(slot, Decimal(0))
            if want < floor:
                raise InvalidResourceSpec(
                    f"{slot} {fmt_amount(slot, want)} is below the minimum "
                    f"{fmt_amount(slot, floor)} of keypair resource policy "
                    f"{owner['resource_policy']}",
                    data={"slot": slot, "requested": str(want), "minimum": str(floor),
                          "policy": owner["resource_policy"]},
                )

    @staticmethod
    def _check_fit(req: ResourceSlot, sgroup: str, caps: list[ResourceSlot], owner: dict,
                   group: Any) -> None:
        """Refuse a request that can never run: larger than every live agent of its resource
        group (``caps``), or than a policy."""
        if caps and not any(req.fits_in(c) for c in caps):
            for slot, want in sorted(req.items()):
                largest = max((c.get(slot, Decimal(0)) for c in caps), default=Decimal(0))
                if largest == 0:  # (a GPU slot on a cluster without GPUs, say)
                    offered = sorted({k for c in caps for k, v in c.items() if v > 0})
                    raise QuotaExceeded(
                        f"no agent offers {slot} in resource group {sgroup}; the slots "
                        f"offered there: {', '.join(offered) or 'none'}",
                        data={"slot": slot, "requested": str(want), "offered": offered},
                    )
                if want > largest:
                    raise QuotaExceeded(
                        f"{slot} requested {fmt_amount(slot, want)}, but the largest agent in "
                        f"resource group {sgroup} has {fmt_amount(slot, largest)}",
                        data={"slot": slot, "requested": str(want), "largest": str(largest)},
                    )
            raise QuotaExceeded(
                f"no single agent in resource group {sgroup} has all of "
                f"{', '.join(f'{k} {fmt_amount(k, v)}' for k, v in sorted(req.items()))}",
                data={"requested": req.to_json()},
            )
        limits = [(f"keypair resource policy {owner['resource_policy']}", owner["policy_slots"]),
                  (f"group {group.name}", group.total_resource_slots),
                  (f"domain {owner['domain_name']}", owner["domain_slots"])]
        for what, raw in limits:
            limit = ResourceSlot.from_json(raw or {})
            for slot, cap in limit.items():
                want = req.get(slot, Decimal(0))
                if want > cap:
                    raise QuotaExceeded(
                        f"{slot} requested {fmt_amount(slot, want)}, but {what} allows at most "
                        f"{fmt_amount(slot, cap)}",
                        data={"slot": slot, "requested": str(want), "limit": str(cap)},
                    )

    async def _dependency(self, conn: AsyncConnection, ref: str, access_key: str) -> uuid.UUID:
        uid = parse_uuid(ref)
        q = sa.select(sessions.c.id).where(sessions.c.access_key == access_key)
        q = q.where(sessions.c.id == uid) if uid else q.where(sessions.c.name == ref)
        found = (await conn.execute(q.order_by(sessions.c.created_at.desc()).limit(1))).scalar()
        if found is None:
            raise InvalidAPIParameters(f"unknown dependency {ref!r}", data={"dependency": ref})
        return found

    async def _live_by_name(self, conn: AsyncConnection, name: str, access_key: str) -> dict | None:
        row = (await conn.execute(_LIVE_BY_NAME, {"name": name, "ak": access_key})
               ).mappings().first()
        return dict(row) if row else None

    async def _row(self, conn: AsyncConnection, sid: uuid.UUID) -> dict | None:
        row = (await conn.execute(sa.select(sessions).where(sessions.c.id == sid))).mappings().first()
        return dict(row) if row else None

    # -- look-ups -----------------------------------------------------------------------------

    async def resolve(self, caller: Caller, name_or_id: str, owner_access_key: str | None = None) -> dict:
        """The session row by UUID or name; only the caller's own unless admin (+owner key)."""
        if owner_access_key and owner_access_key != caller.access_key and not caller.is_admin:
            raise Forbidden("only an admin may name another keypair (owner_access_key)")
        ak = owner_access_key or caller.access_key
        async with self.root.store.connect() as conn:
            uid = parse_uuid(name_or_id)
            if uid is not None:
                row = await self._row(conn, uid)
                if row is not None and caller.can_touch(row["access_key"]) and (
                    not owner_access_key or row["access_key"] == owner_access_key
                ):
                    return row
            rows = (await conn.execute(
                sa.select(sessions)
                .where(sessions.c.name == name_or_id, sessions.c.access_key == ak)
                .order_by(sessions.c.created_at.desc())
            )).mappings().all()
        if not rows:
            raise SessionNotFound(f"no such session: {name_or_id}", data={"session": name_or_id})
        for r in rows:
            if r["status"] not in _FINAL_NAMES:
                return dict(r)
        return dict(rows[0])

    async def history(self, caller: Caller, name_or_id: str,
                      owner_access_key: str | None = None) -> list[dict]:
        row = await self.resolve(caller, name_or_id, owner_access_key)
        h = session_history.c
        async with self.root.store.connect() as conn:
            items = (await conn.execute(
                sa.select(h.from_status, h.to_status, h.reason, h.cause, h.at)
                .where(h.session_id == row["id"]).order_by(h.id)
            )).all()
        return [{"from": r.from_status, "to": r.to_status, "reason": r.reason, "cause": r.cause,
                 "at": r.at.isoformat()} for r in items]

    async def status_history(self, caller: Caller, name_or_id: str,
                             owner_access_key: str | None = None) -> dict[str, str]:
        """``{STATUS: iso}`` of the last time the session entered each status."""
        out: dict[str, str] = {}
        for item in await self.history(caller, name_or_id, owner_access_key):
            out[item["to"]] = item["at"]
        return out

    async def touch(self, session_id) -> None:
        sid = session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id))
        async with self.root.store.begin() as conn:
            await conn.execute(
                sa.update(sessions).where(sessions.c.id == sid).values(last_activity_at=utcnow()))

    # -- changes ------------------------------------------------------------------------------

    async def destroy(self, caller: Caller, name_or_id: str, owner_access_key: str | None = None,
                      forced: bool = False, recursive: bool = False) -> dict:
        row = await self.resolve(caller, name_or_id, owner_access_key)
        return await self.destroy_row(caller, row, forced, recursive)

    async def destroy_row(self, caller: Caller, row: dict, forced: bool = False,
                          recursive: bool = False, wait: bool = True) -> dict:
        """``destroy`` of a session already looked up (``row``: at least its id). Without
        ``wait``, answered once the session is TERMINATING (``Lifecycle.terminate``)."""
        stats = await self._terminate(caller, row, forced, recursive, wait)
        if wait and stats.get("status") == "terminating":
            stats = await self._await_final(row["id"], stats)
        return {"stats": stats}

    async def destroy_many(self, caller: Caller, names: list[str],
                           owner_access_key: str | None = None, forced: bool = False,
                           recursive: bool = False) -> list[dict]:
        """``destroy`` of several sessions as one request: each answer is ``{"name", "stats"}``
        or ``{"name", "error"}`` (problem JSON), in the order asked.

        The sessions that have not started are cancelled first: terminating a running one frees
        slots that one of them may be waiting for, and the scheduler must not start it then.
        """
        answers: list[dict] = [{"name": n} for n in names]
        found: list[tuple[dict, dict]] = []
        for answer in answers:
            try:
                found.append((answer, await self.resolve(caller, answer["name"],
                                                         owner_access_key)))
            except BaiError as e:
                answer["error"] = {**e.to_problem(), "status": e.status}
        found.sort(key=lambda pair: pair[1]["status"] != str(S.PENDING))
        for answer, row in found:
            try:
                answer["stats"] = await self._terminate(caller, row, forced, recursive)
            except BaiError as e:
                answer["error"] = {**e.to_problem(), "status": e.status}

        async def settle(answer: dict, row: dict) -> None:
            if answer.get("stats", {}).get("status") == "terminating":
                answer["stats"] = await self._await_final(row["id"], answer["stats"])

        await asyncio.gather(*(settle(a, r) for a, r in found))
        return answers

    async def _terminate(self, caller: Caller, row: dict, forced: bool, recursive: bool,
                         wait: bool = True) -> dict:
        reason = "force-terminated" if forced else "user-requested"
        cause = f"user:{caller.access_key}"
        if recursive:
            for dep in await self._dependents(row["id"]):
                await self.lifecycle.terminate(dep, reason=reason, cause=cause, forced=forced)
        return await self.lifecycle.terminate(row["id"], reason=reason, cause=cause,
                                              forced=forced, wait=wait)

    async def _await_final(self, sid: uuid.UUID, stats: dict) -> dict:
        loop = asyncio.get_running_loop()
        end = loop.time() + DESTROY_WAIT_SECONDS
        async with self.root.bus.subscribe(str(sid)) as sub:
            while loop.time() < end:
                async with self.root.store.connect() as conn:
                    row = await self._row(conn, sid)
                if row is None or S(row["status"]) in FINAL:
                    return {**stats, "status": "terminated"}
                await sub.get(min(1.0, end - loop.time()))
        return stats

    async def _dependents(self, sid: uuid.UUID) -> list[uuid.UUID]:
        async with self.root.store.connect() as conn:
            return list((await conn.execute(
                sa.select(session_dependencies.c.session_id)
                .join(sessions, sessions.c.id == session_dependencies.c.session_id)
                .where(session_dependencies.c.depends_on == sid,
                       sessions.c.status.not_in(_FINAL_NAMES))
            )).scalars())

    async def restart(self, caller: Caller, name_or_id: str,
                      owner_access_key: str | None = None) -> None:
        row = await self.resolve(caller, name_or_id, owner_access_key)
        await self.lifecycle.restart(row["id"], f"user:{caller.access_key}")

    async def rename(self, caller: Caller, name_or_id: str, new_name: str) -> dict:
        check_name(new_name)
        row = await self.resolve(caller, name_or_id)
        if row["status"] in _FINAL_NAMES:
            raise InvalidAPIParameters(f"session {row['name']} has ended; it cannot be renamed")
        async with self.root.store.begin() as conn:
            clash = await self._live_by_name(conn, new_name, row["access_key"])
            if clash is not None and clash["id"] != row["id"]:
                raise SessionAlreadyExists(
                    f"a session named {new_name!r} already exists",
                    data={"existingSessionId": str(clash["id"])})
            await conn.execute(
                sa.update(sessions).where(sessions.c.id == row["id"]).values(name=new_name))
        return {**row, "name": new_name}

    async def dependencies_of(self, session_id: uuid.UUID) -> list[dict[str, Any]]:
        """The sessions this one depends on (id, name, status, result)."""
        d = session_dependencies.c
        async with self.root.store.connect() as conn:
            rows = (await conn.execute(
                sa.select(sessions.c.id, sessions.c.name, sessions.c.status, sessions.c.result)
                .join(sessions, sessions.c.id == d.depends_on)
                .where(d.session_id == session_id)
            )).all()
        return [{"id": str(r.id), "name": r.name, "status": r.status, "result": r.result}
                for r in rows]
