"""What one scheduling pass reads: the pending queue, agents, limits and usage, in a few queries.

``load_input`` builds the ``SchedulingInput`` that ``bai.manager.scheduler.decide`` works on;
``release_time`` says when an occupying session is expected to give its slots back (the
estimates of when a waiting session will start).
"""

from __future__ import annotations

import functools
import json
import uuid
import weakref
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from sys import intern
from typing import Any

import sqlalchemy as sa

from bai.common.resources import ResourceSlot
from bai.common.status import OCCUPYING, SessionStatus
from bai.manager.scheduler.decision import (
    AgentView,
    DependencyView,
    KeypairLimits,
    PendingSession,
    SchedulingInput,
)
from bai.manager.store.cached import Cached
from bai.manager.store.engine import AsyncConnection
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

S = SessionStatus
_OCC = [str(s) for s in OCCUPYING]


class _QueueCache:
    """The parsed form of one database's pending queue, kept between passes.

    Content-addressed: each ``PendingSession`` is kept with the text of the columns it was made
    from (``_ROW_TEXT``), and used again only while that text is the same, so a row that
    changed in any of them is read and parsed again and nothing needs invalidating. Only the
    rows seen in the latest pass are kept.
    """

    def __init__(self) -> None:
        #: raw id -> the row's text / its parsed form
        self.texts: dict[Any, str] = {}
        self.parsed: dict[Any, PendingSession] = {}
        #: raw JSON text -> parsed slots (most sessions share a few shapes)
        self.slots: dict[str, ResourceSlot] = {}
        #: raw group id -> as its column's type reads it (a few groups)
        self.groups: dict[Any, Any] = {}
        #: the limits and policies a pass reads (SQLite: valid until a write to their tables)
        self.policies = Cached("policies", 64)


_caches: weakref.WeakKeyDictionary[Any, _QueueCache] = weakref.WeakKeyDictionary()


def _cache(conn: AsyncConnection) -> _QueueCache:
    """The cache of the database ``conn`` is connected to (one per engine)."""
    cache = _caches.get(conn.sync_engine)
    if cache is None:
        cache = _caches[conn.sync_engine] = _QueueCache()
    return cache


def _raw(col: sa.ColumnElement) -> sa.ColumnElement:
    """A column fetched as the driver returns it (no result processing: no UUID or JSON
    object made per row); JSON as its text, which can key a cache."""
    if isinstance(col.type, sa.JSON):
        return sa.cast(col, sa.Text)
    return sa.type_coerce(col, sa.types.NullType())


def _processor(col: sa.Column, dialect: Any) -> Callable[[Any], Any]:
    """What a normal read does to the column's raw value (its type's result processor)."""
    proc = col.type.dialect_impl(dialect).result_processor(dialect, None)
    return proc or (lambda v: v)


def _time_reader(col: sa.Column, dialect: Any) -> Callable[[Any], Any]:
    """What a normal read makes of a ``UTCDateTime`` column's raw value; SQLite's text is
    parsed by ``datetime.fromisoformat`` (the format SQLAlchemy writes) instead of a regular
    expression. That text carries no offset (it is UTC): parsed with one appended, which is
    several times quicker than setting ``tzinfo`` on the result."""
    slow = _processor(col, dialect)
    parse = datetime.fromisoformat

    def read(raw: Any) -> Any:
        if isinstance(raw, str):
            try:
                return parse(raw + "+00:00")
            except ValueError:  # it had an offset after all
                value = parse(raw)
                return value if value.tzinfo else value.replace(tzinfo=UTC)
        return slow(raw)

    return read


def parse_slots(text: str | None, cache: dict[str, ResourceSlot]) -> ResourceSlot:
    """``ResourceSlot.from_json`` of a JSON text, parsed once per distinct text. The returned
    slots are shared: callers must not change them in place."""
    slots = cache.get(text)  # type: ignore[arg-type]
    if slots is None:
        slots = cache[text] = ResourceSlot.from_json(  # type: ignore[index]
            json.loads(text) if text else None)
    return slots


_c = sessions.c
#: the columns a ``PendingSession`` is made of
_PENDING_COLS = (_c.id, _c.name, _c.access_key, _c.created_at, _c.scaling_group, _c.domain_name,
                 _c.starts_at, _c.type, _c.idle_timeout, _c.group_id)
#: all of them (and the requested slots) as one text, made by the database: one value per row
#: to compare with what the cache was made from
_ROW_TEXT = functools.reduce(
    lambda acc, col: acc + "\x1f" + sa.func.coalesce(sa.cast(col, sa.Text), ""),
    (*_PENDING_COLS[1:], _c.requested_slots),
    sa.cast(_c.id, sa.Text),
).label("row_text")
_RAW_ID = _raw(_c.id).label("raw_id")
#: pending sessions read again in one query rather than by id when this many changed
_REREAD_ALL = 500
#: a queue the last pass found shorter than this is read in full in one query (its rows parsed
#: only where their text changed): one trip instead of a short read and a read of what changed
_READ_ALL_UNDER = 64
_IS_PENDING = _c.status == str(S.PENDING)
# ids and times read raw and made here: SQLAlchemy's per-value readers (a regular expression
# per SQLite time) were half the CPU of a cold read of 10,000 sessions
_FULL_COLS = (_RAW_ID, _ROW_TEXT, _raw(_c.requested_slots), _c.name, _c.access_key,
              _raw(_c.created_at), _c.scaling_group, _c.domain_name, _raw(_c.starts_at), _c.type,
              _c.idle_timeout, _raw(_c.group_id))
#: whether a pending session depends on any (the dependencies are read only if one does)
_HAS_DEPS = sa.exists().where(session_dependencies.c.session_id == _c.id).label("has_deps")
_READ_SHORT = sa.select(_RAW_ID, _c.status_info, _ROW_TEXT, _HAS_DEPS).where(_IS_PENDING)
_READ_FULL = sa.select(_c.status_info, _HAS_DEPS, *_FULL_COLS).where(_IS_PENDING)
_d = session_dependencies.c
_READ_DEPS = (
    sa.select(_d.session_id, _d.depends_on, _c.name, _c.status, _c.result, _c.type)
    .join(sessions, _c.id == _d.depends_on)
    .where(_d.session_id.in_(sa.select(_c.id).where(_IS_PENDING).scalar_subquery()))
)
del _d


async def _pending(conn: AsyncConnection) -> tuple[
        list[PendingSession], dict[Any, str | None], dict[uuid.UUID, DependencyView]]:
    """The pending queue (dependencies attached), each session's ``status_info``, and the
    sessions they depend on.

    Each pass reads four values per pending session (its raw id, status_info, row text and
    whether it depends on any); only sessions that are new or changed are read in full and
    parsed (``_QueueCache``). A short queue (``_READ_ALL_UNDER``) is read in full in one
    query, and parsed likewise only where it changed. The dependencies are read only where a
    pending session has some.
    """
    c = sessions.c
    cache = _cache(conn)
    texts, parsed = cache.texts, cache.parsed
    changed = None
    if len(texts) < _READ_ALL_UNDER:
        full = (await conn.execute(_READ_FULL)).all()
        rows = [(r[2], r[0], r[3], r[1]) for r in full]
        changed = [r[2:] for r in full]
    else:
        rows = (await conn.execute(_READ_SHORT)).all()
    deps: dict[uuid.UUID, list[uuid.UUID]] = {}
    dep_views: dict[uuid.UUID, DependencyView] = {}
    if any(r[3] for r in rows):
        for r in (await conn.execute(_READ_DEPS)).all():
            deps.setdefault(r.session_id, []).append(r.depends_on)
            dep_views[r.depends_on] = DependencyView(r.depends_on, r.name, r.status, r.result,
                                                     r.type)
    new_texts: dict[Any, str] = {}
    new_parsed: dict[Any, PendingSession] = {}
    pending: list[PendingSession] = []  # in no particular order (decide sorts)
    current_info: dict[Any, str | None] = {}
    missing: dict[Any, str | None] = {}
    for rid, info, text, _deps in rows:
        if texts.get(rid) == text:
            new_texts[rid] = text
            new_parsed[rid] = p = parsed[rid]
            if deps and p.id in deps:
                p = replace(p, dependencies=tuple(deps[p.id]))
            pending.append(p)
            current_info[p.id] = info
        else:
            missing[rid] = info
    if missing and changed is None:  # read the new or changed ones in full
        if len(missing) >= _REREAD_ALL:
            changed = (await conn.execute(sa.select(*_FULL_COLS).where(_IS_PENDING))).all()
        else:
            changed = (await conn.execute(
                sa.select(*_FULL_COLS).where(_IS_PENDING, _RAW_ID.in_(list(missing))))).all()
    if changed:
        groups_seen = cache.groups
        to_group = None
        read_time = _time_reader(c.created_at, conn.dialect)
        read_id = _processor(c.id, conn.dialect)
        for (rid, text, requested, name, access_key, created_at, sgroup, domain, starts_at,
             kind, idle_timeout, raw_gid) in changed:
            info = missing.get(rid, missing)
            if info is missing:
                continue  # new since the first read: the next pass sees it
            # (a session that left PENDING since the first read is simply not in the queue)
            gid = groups_seen.get(raw_gid)
            if gid is None:  # a group id as the column's type reads it (a few distinct)
                to_group = to_group or _processor(c.group_id, conn.dialect)
                gid = groups_seen[raw_gid] = to_group(raw_gid)
            new_texts[rid] = text
            sid = read_id(rid)
            # the owner, group, domain and type are a few values shared by thousands of kept
            # sessions: one string each instead of a copy per row (~0.2 kB a session)
            new_parsed[rid] = p = PendingSession(
                id=sid, name=name, access_key=intern(access_key), user_id=None,
                created_at=read_time(created_at),
                requested=parse_slots(requested, cache.slots), scaling_group=intern(sgroup),
                group_id=gid, domain_name=intern(domain),
                starts_at=read_time(starts_at) if starts_at is not None else None,
                kind=intern(kind), idle_timeout=idle_timeout or 0,
            )
            if deps and sid in deps:
                p = replace(p, dependencies=tuple(deps[sid]))
            pending.append(p)
            current_info[sid] = info
    cache.texts, cache.parsed = new_texts, new_parsed
    if len(cache.slots) > 4096 or len(cache.groups) > 4096:  # many one-offs: start over
        cache.slots, cache.groups = {}, {}
    return pending, current_info, dep_views


async def _rows(conn: AsyncConnection, store: Any, key: Any, stmt: Any,
                params: dict[str, Any] | None = None) -> list[Any]:
    """The rows of ``stmt`` (with ``params``), a read of the limits' and policies' tables:
    kept between passes where ``store`` says nothing wrote them since (``Cached``)."""
    async def read() -> list[Any]:
        return (await conn.execute(stmt, params)).all()

    return await _cache(conn).policies.read(store, key, read)


_GROUP_LIMITS = sa.select(groups.c.id, groups.c.total_resource_slots)
_DOMAIN_LIMITS = sa.select(domains.c.name, domains.c.total_resource_slots)
_SCALING_GROUPS = sa.select(scaling_groups)
# a pass's other statements, built once too (building one cost 0.1-0.2 ms, and its cache key)
_KEYPAIR_LIMITS = (
    sa.select(keypairs.c.access_key, keypair_resource_policies)
    .join(keypair_resource_policies,
          keypair_resource_policies.c.name == keypairs.c.resource_policy)
    .where(keypairs.c.access_key.in_(sa.bindparam("keys", expanding=True))))
_USAGE = (
    sa.select(_c.access_key, _c.group_id, _c.domain_name,
              _raw(_c.occupying_slots).label("occupying_slots"), _c.agent_ids,
              _c.status, _c.type, _c.idle_timeout, _c.last_activity_at, _c.status_changed)
    .where(_c.status.in_(_OCC)))


async def load_input(conn: AsyncConnection, now=None, idle_slack: float = 0,
                     store: Any = None) -> SchedulingInput:
    """Everything one pass needs, in a handful of queries.

    ``inp.current_info`` maps each pending session to its ``status_info`` now, so that the
    writer only touches rows whose line changes. ``inp.releases`` lists, per agent, when its
    occupying sessions are expected to give their slots back (see ``release_time``);
    ``idle_slack`` is how late the idle checker may notice an expired idle timeout.

    The pending queue's parsed form is kept between passes (``_QueueCache``): a pass parses
    only the rows that are new or changed. With ``store`` (SQLite), the groups', domains' and
    resource groups' rows and the keypairs' policies are read again only after a write to
    their tables (a hello world's pass: 4 statements of 7).
    """
    now = now or utcnow()
    group_limit_rows = [g for g in await _rows(conn, store, "groups", _GROUP_LIMITS)
                        if g.total_resource_slots]
    pending, current_info, dep_views = await _pending(conn)
    agent_views = [
        AgentView(
            id=r.id, capacity=ResourceSlot.from_json(r.available_slots),
            occupied=ResourceSlot.from_json(r.occupied_slots), scaling_group=r.scaling_group,
            alive=r.status == "ALIVE", schedulable=r.schedulable, address=r.address,
        )
        for r in (await conn.execute(sa.select(agents))).all()
    ]
    sgroups = await _rows(conn, store, "scaling_groups", _SCALING_GROUPS)
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
    usage_rows = (await conn.execute(_USAGE)).all()
    by_key: dict[str, tuple[int, ResourceSlot]] = {}
    by_group: dict[Any, ResourceSlot] = {}
    by_domain: dict[str, ResourceSlot] = {}
    releases: dict[str, list[tuple[datetime, ResourceSlot]]] = {}
    slot_texts = _cache(conn).slots
    for r in usage_rows:
        slots = parse_slots(r.occupying_slots, slot_texts)
        at = release_time(r, idle_slack)
        if at is not None and r.agent_ids:
            releases.setdefault(r.agent_ids[0], []).append((at, slots))
        n, acc = by_key.get(r.access_key, (0, ResourceSlot()))
        by_key[r.access_key] = (n + 1, acc + slots)
        by_group[r.group_id] = by_group.get(r.group_id, ResourceSlot()) + slots
        by_domain[r.domain_name] = by_domain.get(r.domain_name, ResourceSlot()) + slots
    keys = frozenset(p.access_key for p in pending)
    kp_rows = await _rows(conn, store, ("keypairs", keys), _KEYPAIR_LIMITS,
                          {"keys": sorted(keys)})
    kps = {}
    for row in kp_rows:
        r = row._mapping
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
        for d in await _rows(conn, store, "domains", _DOMAIN_LIMITS)
        if d.total_resource_slots
    }
    return inp


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
