"""Session listings and details as the compatibility GraphQL serves them.

``list_sessions`` is one query for the page plus one count, both on indexed columns
(``status_changed``; ``access_key, status_changed``), so listing from 100,000 sessions stays cheap.
Visibility: an admin sees every session and may narrow to one ``access_key``; a user sees only
their own sessions, and asking for someone else's access key is refused.

Rows come back as plain dicts keyed by the GraphQL field names (``session_fields``); JSON-typed
values stay Python objects here and the GraphQL ``JSONString`` scalar encodes them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.common.status import TERMINAL, SessionStatus, parse_statuses
from bai.manager.context import Caller
from bai.manager.services.mounts import names as mount_names
from bai.manager.services.queryfilter import Field, parse_filter, parse_order
from bai.manager.store import tables as t
from bai.manager.store.engine import AsyncConnection

MAX_PAGE = 10_000
#: rows of one rendered table (``render=table``): its columns are as wide as its widest cell,
#: so ``ps --all`` asks for every row in one answer
MAX_TABLE = 100_000

_s = t.sessions
_g = t.groups
_u = t.users

#: Filterable fields (upstream's list, minus the ones we have no data for).
FILTER_FIELDS: dict[str, Field] = {
    "id": Field(_s.c.id, "uuid"),
    "session_id": Field(_s.c.id, "uuid"),
    "type": Field(_s.c.type, "enum"),
    "name": Field(_s.c.name),
    "session_name": Field(_s.c.name),
    "tag": Field(_s.c.tag),
    "image": Field(_s.c.image),
    "registry": Field(_s.c.registry),
    "domain_name": Field(_s.c.domain_name),
    "group_name": Field(_g.c.name),
    "group_id": Field(_s.c.group_id, "uuid"),
    "user_email": Field(_u.c.email),
    "user_id": Field(_s.c.user_id, "uuid"),
    "access_key": Field(_s.c.access_key),
    "scaling_group": Field(_s.c.scaling_group),
    "cluster_mode": Field(_s.c.cluster_mode),
    "cluster_size": Field(_s.c.cluster_size, "int"),
    "status": Field(_s.c.status, "enum"),
    "status_info": Field(_s.c.status_info),
    "result": Field(_s.c.result, "enum"),
    "created_at": Field(_s.c.created_at, "datetime"),
    "terminated_at": Field(_s.c.terminated_at, "datetime"),
    "starts_at": Field(_s.c.starts_at, "datetime"),
    "scheduled_at": Field(_s.c.scheduled_at, "datetime"),
    "status_changed": Field(_s.c.status_changed, "datetime"),
    "startup_command": Field(_s.c.startup_command),
}
ORDER_FIELDS = {k: v for k, v in FILTER_FIELDS.items() if k != "startup_command"}

_FROM = _s.outerjoin(_g, _g.c.id == _s.c.group_id).outerjoin(_u, _u.c.id == _s.c.user_id)
_COLUMNS = [*_s.c, _g.c.name.label("group_name"), _u.c.email.label("user_email")]


class _UUIDText(sa.types.TypeDecorator):
    """A UUID column read as its text (``8-4-4-4-12``) without making a ``uuid.UUID`` of it:
    the listing's rows are text on the wire anyway (a third of a 5,000-row page's time)."""

    impl = sa.String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str) and len(value) == 32:  # SQLite keeps the bare hex
            return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
        return str(value)  # a native uuid (PostgreSQL)


#: the joined columns as ``list_rows`` reads them
_AS_TEXT = {c.name: (sa.type_coerce(c, _UUIDText()).label(c.name) if isinstance(c.type, sa.Uuid)
                     else c) for c in _COLUMNS}


def _needs_join(texts: Iterable[str]) -> bool:
    """Whether column names (or an order expression) reach the group's or the user's table."""
    return any("group_name" in c or "user_email" in c for c in texts)


@dataclass
class SessionPage:
    items: list[dict[str, Any]]
    total_count: int


def visible_access_key(caller: Caller, access_key: str | None) -> str | None:
    """The access key a listing is restricted to (None = everyone's, admins only)."""
    if caller.is_admin:
        return access_key or None
    if access_key and access_key != caller.access_key:
        raise Forbidden(
            f"A user keypair lists only its own sessions; {access_key} is not {caller.access_key}.",
            title="Only admins can list other keypairs' sessions.",
        )
    return caller.access_key


def status_clause(status: str | Sequence[str] | None):
    """Filter by a comma list of statuses; unknown names (RUNNING_DEGRADED) are ignored."""
    if status is None or (isinstance(status, str) and not status.strip()):
        return sa.true()
    known, _unknown = parse_statuses(status)
    if not known:
        return sa.false()  # only names we do not have: nothing can match
    return _s.c.status.in_(sorted({s.value for s in known}))


@dataclass
class _Query:
    page_ids: Any  # the page's ids (a subquery)
    ordering: list[Any]
    count: Any


def _query(caller: Caller, *, limit: int, offset: int, status: str | None,
           access_key: str | None, filter: str | None, order: str | None,
           max_limit: int = MAX_PAGE) -> _Query:
    if limit < 0 or limit > max_limit:
        raise InvalidAPIParameters(f"limit must be between 0 and {max_limit}, not {limit}")
    if offset < 0:
        raise InvalidAPIParameters(f"offset must not be negative, not {offset}")
    where = [status_clause(status)]
    owner = visible_access_key(caller, access_key)
    if owner is not None:
        where.append(_s.c.access_key == owner)
    if filter:
        where.append(parse_filter(filter, FILTER_FIELDS))
    # ordering by the group's name or the user's email needs their tables as much as a filter
    needs_join = _needs_join([filter or "", order or ""])
    ordering = parse_order(order, ORDER_FIELDS) if order else [_s.c.status_changed.desc()]
    ordering.append(_s.c.id.desc())  # stable pages when times tie

    from_ = _FROM if needs_join else _s
    # Deferred join: the page's ids come from the covering (status|owner, status_changed, id)
    # indexes, and only those rows are read in full (sorting whole rows is what is slow).
    page_ids = (
        sa.select(_s.c.id).select_from(from_).where(*where).order_by(*ordering)
        .limit(limit).offset(offset)
    )
    count = sa.select(sa.func.count()).select_from(from_).where(*where)
    return _Query(page_ids, ordering, count)


async def list_sessions(
    conn: AsyncConnection,
    caller: Caller,
    *,
    limit: int,
    offset: int = 0,
    status: str | None = None,
    access_key: str | None = None,
    filter: str | None = None,
    order: str | None = None,
    now: datetime | None = None,
) -> SessionPage:
    """One page of sessions, most recently changed first unless ``order`` says otherwise."""
    q = _query(caller, limit=limit, offset=offset, status=status, access_key=access_key,
               filter=filter, order=order)
    page_q = (sa.select(*_COLUMNS).select_from(_FROM).where(_s.c.id.in_(q.page_ids))
              .order_by(*q.ordering))
    total = (await conn.execute(q.count)).scalar_one()
    rows = (await conn.execute(page_q)).mappings().all() if limit else []
    now = now or datetime.now(timezone.utc)
    return SessionPage([session_fields(r, now) for r in rows], int(total))


#: how the GraphQL scalars of ``ComputeSession`` go on the wire (the rest are JSON as they are)
_DATETIMES = frozenset({"status_changed", "created_at", "terminated_at", "starts_at",
                        "scheduled_at", "last_activity_at"})
_JSON_STRINGS = frozenset({"status_data", "resource_opts", "service_ports", "occupying_slots",
                           "requested_slots", "idle_checks"})


def _wire(name: str) -> Callable[[Any], Any]:
    """The encoder that gives field ``name`` the value GraphQL would answer for it."""
    if name in _DATETIMES:
        return lambda v: v if v is None else v.isoformat()
    if name in _JSON_STRINGS:
        return lambda v: v if v is None else json.dumps(v)
    if name == "abusing_reports":
        return lambda v: [None if x is None else json.dumps(x) for x in v]
    return lambda v: v


async def list_rows(
    conn: AsyncConnection,
    caller: Caller,
    fields: Sequence[str],
    *,
    limit: int,
    offset: int = 0,
    status: str | None = None,
    access_key: str | None = None,
    filter: str | None = None,
    order: str | None = None,
    now: datetime | None = None,
    max_limit: int = MAX_PAGE,
) -> tuple[list[list[Any]], int]:
    """One page as rows of ``fields`` (in that order), each value what GraphQL's
    ``compute_session_list`` would answer for it (DateTime as ISO text, JSONString as JSON text),
    and the total count: read in one statement (the count rides along as a column), only the
    columns those fields need, no per-field resolution. ``dependencies`` come from one more query.
    """
    unknown = [f for f in fields if f not in LISTED_FIELDS and f != "dependencies"]
    if unknown:
        raise InvalidAPIParameters(
            f"unknown field {unknown[0]!r}; known: {', '.join(LISTED_FIELDS)}, dependencies")
    q = _query(caller, limit=limit, offset=offset, status=status, access_key=access_key,
               filter=filter, order=order, max_limit=max_limit)
    plain = [f for f in fields if f != "dependencies"]
    names = sorted({c for f in plain for c in ROW_FIELDS[f][0]} | {"id"})
    cols = [_AS_TEXT[n] for n in names]
    total_col = q.count.correlate(None).scalar_subquery().label("_total")
    joined = _needs_join(names) or _needs_join([order or ""])
    page_q = (sa.select(*cols, total_col).select_from(_FROM if joined else _s)
              .where(_s.c.id.in_(q.page_ids)).order_by(*q.ordering))
    rows = (await conn.execute(page_q)).mappings().all() if limit else []
    if rows:
        total = int(rows[0]["_total"])
    elif offset == 0 and limit:
        total = 0
    else:
        total = int((await conn.execute(q.count)).scalar_one())
    now = now or datetime.now(timezone.utc)
    makers = [(ROW_FIELDS[f][1], _wire(f)) for f in plain]
    out = [[enc(make(r, now)) for make, enc in makers] for r in rows]
    if "dependencies" in fields:
        at = fields.index("dependencies")
        ids = [uuid.UUID(r["id"]) for r in rows]
        deps = await load_dependencies(conn, ids)
        for sid, item in zip(ids, out, strict=True):
            item.insert(at, deps[sid])
    return out, total


async def get_session(
    conn: AsyncConnection, caller: Caller, session_id: uuid.UUID, now: datetime | None = None
) -> dict[str, Any] | None:
    """One session by id, or None when it does not exist or the caller may not see it."""
    q = sa.select(*_COLUMNS).select_from(_FROM).where(_s.c.id == session_id)
    if not caller.is_admin:
        q = q.where(_s.c.access_key == caller.access_key)
    row = (await conn.execute(q)).mappings().first()
    return session_fields(row, now or datetime.now(timezone.utc)) if row else None


async def load_dependencies(
    conn: AsyncConnection, session_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """``{session_id: [{"name", "id"}, ...]}`` for the sessions each one waits for."""
    ids = list(session_ids)
    out: dict[uuid.UUID, list[dict[str, Any]]] = {sid: [] for sid in ids}
    if not ids:
        return out
    d = t.session_dependencies
    q = (
        sa.select(d.c.session_id, _s.c.id, _s.c.name)
        .select_from(d.join(_s, _s.c.id == d.c.depends_on))
        .where(d.c.session_id.in_(ids))
        .order_by(_s.c.created_at)
    )
    for row in (await conn.execute(q)).all():
        out[row.session_id].append({"name": row.name, "id": str(row.id)})
    return out


async def load_kernels(
    conn: AsyncConnection, session_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """``{session_id: [kernel row mapping, ...]}`` ordered by cluster index."""
    ids = list(session_ids)
    out: dict[uuid.UUID, list[dict[str, Any]]] = {sid: [] for sid in ids}
    if not ids:
        return out
    k = t.kernels
    q = sa.select(k).where(k.c.session_id.in_(ids)).order_by(k.c.session_id, k.c.cluster_idx)
    for row in (await conn.execute(q)).mappings().all():
        out[row["session_id"]].append(dict(row))
    return out


def service_ports_mapping(ports: Any) -> dict[str, Any]:
    """Images store service ports as a list; the official client renders a mapping."""
    if isinstance(ports, dict):
        return ports
    out: dict[str, Any] = {}
    for entry in ports or []:
        if isinstance(entry, dict) and entry.get("name"):
            rest = {k: v for k, v in entry.items() if k != "name"}
            out[str(entry["name"])] = rest
    return out


def idle_checks(row: Any, now: datetime) -> dict[str, Any]:
    """The network-timeout checker's report: seconds left before an idle session is ended.

    ``remaining`` is null while the timer does not run (the session is not RUNNING) and -1 once it
    has expired. An idle timeout of 0 disables the checker, and batch sessions are exempt (they
    end with their command): both get an empty report.
    """
    timeout = row["idle_timeout"] or 0
    if timeout <= 0 or row["type"] != "INTERACTIVE":
        return {}
    remaining: float | None = None
    if row["status"] == SessionStatus.RUNNING.value and row["last_activity_at"] is not None:
        left = (row["last_activity_at"] - now).total_seconds() + timeout
        remaining = round(left, 1) if left > 0 else -1
    return {
        "network_timeout": {
            "remaining": remaining,
            "remaining_time_type": "expire_after",
            "extra": None,
        }
    }


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


_ENDED = frozenset(str(s) for s in TERMINAL)


def shown_occupying(row: Any) -> dict[str, Any]:
    """``occupying_slots`` as listed: what a live session holds; for an ended one, what it held
    (a placement holds exactly the requested slots), or nothing if it was never placed. The row
    itself holds nothing once the session ended (its slots went back to the agent)."""
    if row["status"] in _ENDED and row["scheduled_at"] is not None:
        return row["requested_slots"] or {}
    return row["occupying_slots"] or {}


def _col(name: str) -> Callable[[Any, datetime], Any]:
    return lambda row, _now: row[name]


def _id_col(name: str) -> Callable[[Any, datetime], Any]:
    return lambda row, _now: _str(row[name])


def _or_empty(name: str, empty: Callable[[], Any]) -> Callable[[Any, datetime], Any]:
    return lambda row, _now: row[name] or empty()


#: ``ComputeSession`` field -> (the columns of the joined row it reads, how it is made)
ROW_FIELDS: dict[str, tuple[tuple[str, ...], Callable[[Any, datetime], Any]]] = {
    "id": (("id",), _id_col("id")),
    "session_id": (("id",), _id_col("id")),
    "main_kernel_id": (("main_kernel_id",), _id_col("main_kernel_id")),
    "tag": (("tag",), _col("tag")),
    "name": (("name",), _col("name")),
    "type": (("type",), _col("type")),
    "image": (("image",), _col("image")),
    "architecture": (("architecture",), _col("architecture")),
    "registry": (("registry",), _col("registry")),
    "cluster_template": ((), lambda _row, _now: None),  # never created from cluster templates
    "cluster_mode": (("cluster_mode",), _col("cluster_mode")),
    "cluster_size": (("cluster_size",), _col("cluster_size")),
    "domain_name": (("domain_name",), _col("domain_name")),
    "group_name": (("group_name",), _col("group_name")),
    "group_id": (("group_id",), _id_col("group_id")),
    "agent_ids": (("agent_ids",), lambda row, _now: list(row["agent_ids"] or [])),
    "user_email": (("user_email",), _col("user_email")),
    "user_id": (("user_id",), _id_col("user_id")),
    "access_key": (("access_key",), _col("access_key")),
    # A session is always created by (or on behalf of) its owner.
    "created_user_email": (("user_email",), _col("user_email")),
    "created_user_id": (("user_id",), _id_col("user_id")),
    "status": (("status",), _col("status")),
    "status_info": (("status_info",), _col("status_info")),
    "status_data": (("status_data",), _or_empty("status_data", dict)),
    "status_changed": (("status_changed",), _col("status_changed")),
    "created_at": (("created_at",), _col("created_at")),
    "terminated_at": (("terminated_at",), _col("terminated_at")),
    "starts_at": (("starts_at",), _col("starts_at")),
    "scheduled_at": (("scheduled_at",), _col("scheduled_at")),
    "startup_command": (("startup_command",), _col("startup_command")),
    "result": (("result",), _col("result")),
    "resource_opts": (("resource_opts",), _or_empty("resource_opts", dict)),
    "scaling_group": (("scaling_group",), _col("scaling_group")),
    "service_ports": (("service_ports",),
                      lambda row, _now: service_ports_mapping(row["service_ports"])),
    "mounts": (("mounts",), lambda row, _now: mount_names(row["mounts"])),
    "occupying_slots": (("status", "scheduled_at", "requested_slots", "occupying_slots"),
                        lambda row, _now: shown_occupying(row)),
    "requested_slots": (("requested_slots",), _or_empty("requested_slots", dict)),
    "abusing_reports": (("abusing_reports",), lambda row, _now: list(row["abusing_reports"] or [])),
    "idle_checks": (("idle_timeout", "type", "status", "last_activity_at"), idle_checks),
    "idle_timeout": (("idle_timeout",), _col("idle_timeout")),
    "last_activity_at": (("last_activity_at",), _col("last_activity_at")),
}


#: what ``GET /session/_/list`` serves: the schema's scalar fields (relations but
#: ``dependencies`` are GraphQL's)
LISTED_FIELDS = tuple(f for f in ROW_FIELDS if f not in ("idle_timeout", "last_activity_at"))


def session_fields(row: Any, now: datetime) -> dict[str, Any]:
    """A session row (joined with group and user) as GraphQL ``ComputeSession`` values."""
    return {name: make(row, now) for name, (_cols, make) in ROW_FIELDS.items()}


def container_fields(kernel: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    """A kernel row as GraphQL ``ComputeContainer`` values (``live_stat`` is filled by the API)."""
    status_data: dict[str, Any] = {}
    if kernel.get("exit_code") is not None:
        status_data = {"kernel": {"exit_code": kernel["exit_code"]}}
    return {
        "id": _str(kernel["id"]),
        "kernel_id": _str(kernel["id"]),
        "cluster_role": kernel["cluster_role"],
        "cluster_idx": kernel["cluster_idx"],
        "cluster_hostname": kernel["cluster_hostname"],
        "session_id": _str(kernel["session_id"]),
        "image": kernel["image"],
        "registry": session.get("registry"),
        "status": kernel["status"],
        "status_info": kernel["status_info"],
        "status_data": status_data,
        "status_changed": kernel["status_changed"],
        "created_at": kernel["created_at"],
        "terminated_at": kernel["terminated_at"],
        "agent": kernel["agent_id"],
        "agent_addr": kernel["agent_address"],
        "container_id": kernel["container_id"],
        "resource_opts": session.get("resource_opts") or {},
        "occupied_slots": kernel["occupied_slots"] or {},
        "requested_slots": kernel["requested_slots"] or {},
        "preopen_ports": [],
        "exit_code": kernel["exit_code"],
        "live_stat": None,
        "last_stat": kernel["last_stat"],
    }


# -- GET /session/_/list: answers as ready bytes, cached while nothing they read changed ------------

#: fields whose value depends on the time of the request: never cached
_NOW_FIELDS = frozenset({"idle_checks"})


@dataclass(frozen=True)
class ListQuery:
    """What ``GET /session/_/list`` was asked. ``render="table"``: ``ps``'s plain table as
    text (``bai.common.sessionfields.table_of`` + ``bai.common.texttable.plain_table``, the
    CLI's own code, so the bytes are those it would print), with ``user_drops`` (the owner
    column) left out for callers who are not admins."""

    fields: tuple[str, ...]
    limit: int
    offset: int = 0
    status: str | None = None
    access_key: str | None = None
    filter: str | None = None
    order: str | None = None
    render: str | None = None
    user_drops: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListAnswer:
    body: bytes
    content_type: str
    headers: dict[str, str]


class ListingCache:
    """The latest answers of ``GET /session/_/list`` as the bytes sent, each valid while
    ``Store.listing_changes`` is what it was when its query began (any write to a table the
    listing reads, by this process, moves it). Keyed by the whole query and by whose sessions
    it shows (the caller's own for a user), so an answer never reaches another caller than
    the one it was made for. Only on SQLite: there this process is the only writer; PostgreSQL
    may have other manager replicas writing, whose changes it would not see. Least recently
    used answers go first past ``max_entries`` or ``max_bytes``."""

    def __init__(self, max_entries: int = 16, max_bytes: int = 64 << 20) -> None:
        from collections import OrderedDict

        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[int, ListAnswer]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, generation: int) -> ListAnswer | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != generation:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: tuple, generation: int, answer: ListAnswer) -> None:
        self._drop(key)
        if len(answer.body) > self.max_bytes:
            return
        self._entries[key] = (generation, answer)
        self._bytes += len(answer.body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1].body)


def render_table(fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """``ps``'s plain table of ``rows`` (as ``list_rows`` makes them) with its last newline;
    empty for no rows (the CLI then says so on stderr)."""
    if not rows:
        return b""
    from bai.common.sessionfields import table_of
    from bai.common.texttable import plain_table

    headers, cells = table_of(list(fields), [dict(zip(fields, r, strict=True)) for r in rows])
    return (plain_table(headers, cells) + "\n").encode("utf-8")


async def list_answer(store: Any, caller: Caller, q: ListQuery,
                      cache: ListingCache | None = None) -> ListAnswer:
    """The answer of ``GET /session/_/list`` for ``q``: rows as JSON (``{"fields", "items",
    "total_count", "is_admin"}``) or, with ``render="table"``, the table as text with its
    counts in ``X-BAI-Count`` and ``X-BAI-Total-Count``."""
    fields = [f for f in q.fields if caller.is_admin or f not in q.user_drops] \
        if q.render == "table" else list(q.fields)
    if q.render == "table":
        from bai.common.sessionfields import FIELDS as COLUMNS

        unknown = [f for f in fields if f not in COLUMNS]
        if unknown or not fields:
            raise InvalidAPIParameters(
                f"no column for field {unknown[0]!r} in a rendered table; known: "
                f"{', '.join(COLUMNS)}" if unknown else "no field left to show")
    owner = visible_access_key(caller, q.access_key)  # refused before any cached answer
    key = (q.render, tuple(fields), q.limit, q.offset, q.status, owner, caller.is_admin,
           q.filter, q.order)
    if _NOW_FIELDS.intersection(fields) or not getattr(store, "is_sqlite", False):
        cache = None
    generation = store.listing_changes  # before the query: a change after it voids the answer
    if cache is not None:
        hit = cache.get(key, generation)
        if hit is not None:
            return hit
    async with store.connect() as conn:
        rows, total = await list_rows(
            conn, caller, fields, limit=q.limit, offset=q.offset, status=q.status,
            access_key=q.access_key, filter=q.filter, order=q.order,
            max_limit=MAX_TABLE if q.render == "table" else MAX_PAGE)
    if q.render == "table":
        answer = ListAnswer(render_table(fields, rows), "text/plain; charset=utf-8",
                            {"X-BAI-Count": str(len(rows)), "X-BAI-Total-Count": str(total)})
    else:
        body = {"fields": fields, "items": rows, "total_count": total,
                "is_admin": caller.is_admin}
        answer = ListAnswer(json.dumps(body, separators=(",", ":")).encode("utf-8"),
                            "application/json; charset=utf-8", {})
    if cache is not None:
        cache.put(key, generation, answer)
    return answer
