"""Session listings and details as the compatibility GraphQL serves them.

``list_sessions`` is one query for the page plus one count, both on indexed columns
(``status_changed``; ``access_key, status_changed``), so listing from 100,000 sessions stays cheap.
Visibility: an admin sees every session and may narrow to one ``access_key``; a user sees only
their own sessions, and asking for someone else's access key is refused.

Rows come back as plain dicts keyed by the GraphQL field names (``session_fields``); JSON-typed
values stay Python objects here and the GraphQL ``JSONString`` scalar encodes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.common.status import TERMINAL, SessionStatus, parse_statuses
from bai.manager.context import Caller
from bai.manager.services.mounts import names as mount_names
from bai.manager.services.queryfilter import Field, parse_filter, parse_order
from bai.manager.store import tables as t

MAX_PAGE = 10_000

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
    if limit < 0 or limit > MAX_PAGE:
        raise InvalidAPIParameters(f"limit must be between 0 and {MAX_PAGE}, not {limit}")
    if offset < 0:
        raise InvalidAPIParameters(f"offset must not be negative, not {offset}")
    where = [status_clause(status)]
    owner = visible_access_key(caller, access_key)
    if owner is not None:
        where.append(_s.c.access_key == owner)
    needs_join = False
    if filter:
        where.append(parse_filter(filter, FILTER_FIELDS))
        needs_join = "group_name" in filter or "user_email" in filter
    ordering = parse_order(order, ORDER_FIELDS) if order else [_s.c.status_changed.desc()]
    ordering.append(_s.c.id.desc())  # stable pages when times tie

    from_ = _FROM if needs_join else _s
    # Deferred join: the page's ids come from the covering (status|owner, status_changed, id)
    # indexes, and only those 20-odd rows are read in full (sorting whole rows is what is slow).
    page_ids = (
        sa.select(_s.c.id).select_from(from_).where(*where).order_by(*ordering)
        .limit(limit).offset(offset)
    )
    page_q = sa.select(*_COLUMNS).select_from(_FROM).where(_s.c.id.in_(page_ids)).order_by(*ordering)
    count_q = sa.select(sa.func.count()).select_from(from_).where(*where)
    total = (await conn.execute(count_q)).scalar_one()
    rows = (await conn.execute(page_q)).mappings().all() if limit else []
    now = now or datetime.now(timezone.utc)
    return SessionPage([session_fields(r, now) for r in rows], int(total))


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


def session_fields(row: Any, now: datetime) -> dict[str, Any]:
    """A session row (joined with group and user) as GraphQL ``ComputeSession`` values."""
    return {
        "id": _str(row["id"]),
        "session_id": _str(row["id"]),
        "main_kernel_id": _str(row["main_kernel_id"]),
        "tag": row["tag"],
        "name": row["name"],
        "type": row["type"],
        "image": row["image"],
        "architecture": row["architecture"],
        "registry": row["registry"],
        "cluster_template": None,  # sessions are not created from cluster templates
        "cluster_mode": row["cluster_mode"],
        "cluster_size": row["cluster_size"],
        "domain_name": row["domain_name"],
        "group_name": row["group_name"],
        "group_id": _str(row["group_id"]),
        "agent_ids": list(row["agent_ids"] or []),
        "user_email": row["user_email"],
        "user_id": _str(row["user_id"]),
        "access_key": row["access_key"],
        # A session is always created by (or on behalf of) its owner.
        "created_user_email": row["user_email"],
        "created_user_id": _str(row["user_id"]),
        "status": row["status"],
        "status_info": row["status_info"],
        "status_data": row["status_data"] or {},
        "status_changed": row["status_changed"],
        "created_at": row["created_at"],
        "terminated_at": row["terminated_at"],
        "starts_at": row["starts_at"],
        "scheduled_at": row["scheduled_at"],
        "startup_command": row["startup_command"],
        "result": row["result"],
        "resource_opts": row["resource_opts"] or {},
        "scaling_group": row["scaling_group"],
        "service_ports": service_ports_mapping(row["service_ports"]),
        "mounts": mount_names(row["mounts"]),
        "occupying_slots": shown_occupying(row),
        "requested_slots": row["requested_slots"] or {},
        "abusing_reports": list(row["abusing_reports"] or []),
        "idle_checks": idle_checks(row, now),
        "idle_timeout": row["idle_timeout"],
        "last_activity_at": row["last_activity_at"],
    }


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
