"""Administration use cases: images and aliases, users and keypairs, resource policies, agents.

Plain functions over an open connection (``store.begin()`` for writes); no HTTP types. Every
refusal is a ``BaiError`` whose message names what exists, so the CLI can print one clear line.
Records come back as JSON-ready dicts (times as ISO strings, slots as decimal strings).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from bai.common import services
from bai.common.auth import generate_keypair
from bai.common.errors import BaiError, InvalidAPIParameters, NotFound
from bai.common.resources import ResourceSlot, parse_request, parse_size
from bai.common.status import FINAL
from bai.manager.store import tables as t
from bai.manager.store.engine import AsyncConnection

ROLES = ("superadmin", "admin", "user")


class Conflict(BaiError):
    code = "conflict"
    status = 409
    title = "The request conflicts with existing records."


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, uuid.UUID):
            v = str(v)
        out[k] = v
    return out


def _slots(raw: Any, what: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidAPIParameters(f"{what} must be an object such as {{\"cpu\": \"4\", \"mem\": \"8g\"}}")
    return parse_request(raw).to_json()


def _text(body: Mapping[str, Any], key: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidAPIParameters(f"'{key}' is required")
        return default
    if not isinstance(value, str):
        raise InvalidAPIParameters(f"'{key}' must be a string")
    return value.strip()


def _int(body: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:  # absent or null: the default (a NULL would reach a NOT NULL column)
        value = default
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidAPIParameters(f"'{key}' must be a whole number, not {value!r}") from None
    if n < 0:
        raise InvalidAPIParameters(f"'{key}' must not be negative")
    if n > _MAX_INT:
        raise InvalidAPIParameters(f"'{key}' is too large: {value!r}")
    return n


#: the largest whole number a policy column holds (a BIGINT, also on PostgreSQL)
_MAX_INT = 2**31 - 1
_MAX_BYTES = 2**63 - 1


def _size(body: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    """Bytes from ``4294967296`` or ``"4g"``; 400 naming the key otherwise."""
    value = body.get(key)
    if value is None:
        value = default
    if value is None:
        return None
    try:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError
        n = int(parse_size(value))
    except (TypeError, ValueError, ArithmeticError):
        raise InvalidAPIParameters(
            f"'{key}' must be a size such as 4g or a number of bytes, not {value!r}") from None
    if n > _MAX_BYTES:
        raise InvalidAPIParameters(f"'{key}' is too large: {value!r}")
    return n


def parse_bool(body: Mapping[str, Any], key: str, default: bool | None = None) -> bool | None:
    value = body.get(key, default)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InvalidAPIParameters(f"'{key}' must be true or false, not {value!r}")


async def _names(conn: AsyncConnection, column) -> list[str]:
    return list((await conn.execute(sa.select(column).order_by(column))).scalars())


# ---------------------------------------------------------------- images and aliases


async def list_images(conn: AsyncConnection) -> list[dict[str, Any]]:
    aliases: dict[str, list[str]] = {}
    for alias, target in (await conn.execute(sa.select(t.image_aliases.c.alias, t.image_aliases.c.target))).all():
        aliases.setdefault(target, []).append(alias)
    rows = (await conn.execute(sa.select(t.images).order_by(t.images.c.name))).mappings().all()
    out = []
    for row in rows:
        item = _jsonable(row)
        item["runtimes"] = [r for r in (row["runtimes"] or "").split(",") if r]
        item["aliases"] = sorted(aliases.get(row["name"], []))
        out.append(item)
    return out


async def register_image(conn: AsyncConnection, body: Mapping[str, Any]) -> dict[str, Any]:
    name = _text(body, "name")
    if ":" not in name.rsplit("/", 1)[-1]:
        raise InvalidAPIParameters(f"image name {name!r} needs a tag, e.g. python:3.11-debian12")
    if (await conn.execute(sa.select(t.images.c.name).where(t.images.c.name == name))).first():
        raise Conflict(f"the image {name} is already registered")
    runtimes = body.get("runtimes") or ["process", "docker", "dummy"]
    if isinstance(runtimes, str):
        runtimes = [r.strip() for r in runtimes.split(",") if r.strip()]
    labels = body.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise InvalidAPIParameters("'labels' must be an object of strings")
    ports = _service_ports(body.get("service_ports") or [])
    values = dict(
        name=name,
        registry=_text(body, "registry", required=False, default=None)
        or (name.split("/", 1)[0] if "/" in name else "local"),
        runtimes=",".join(runtimes),
        architecture=_text(body, "architecture", required=False, default="x86_64"),
        labels={str(k): str(v) for k, v in labels.items()},
        min_slots=_slots(body.get("min_slots"), "min_slots"),
        service_ports=ports,
    )
    await conn.execute(t.images.insert().values(**values))
    return (await _image(conn, name))


def _service_ports(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidAPIParameters("'service_ports' must be a list of {name, protocol, ports}")
    try:
        return services.normalize_all(raw)
    except services.ServiceSpecError as e:
        raise InvalidAPIParameters(str(e), data={"field": "service_ports"}) from None


async def update_image(conn: AsyncConnection, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Change an image's labels (merged; an empty value removes one), minimum resources or
    service ports (replaced). Sessions created before keep what they had."""
    await _image(conn, name)
    row = (await conn.execute(sa.select(t.images).where(t.images.c.name == name))).mappings().one()
    values: dict[str, Any] = {}
    if body.get("labels") is not None:
        if not isinstance(body["labels"], Mapping):
            raise InvalidAPIParameters("'labels' must be an object of strings")
        labels = dict(row["labels"] or {})
        for k, v in body["labels"].items():
            if v in (None, ""):
                labels.pop(str(k), None)
            else:
                labels[str(k)] = str(v)
        values["labels"] = labels
    if body.get("min_slots") is not None:
        values["min_slots"] = _slots(body.get("min_slots"), "min_slots")
    if body.get("service_ports") is not None:
        values["service_ports"] = _service_ports(body["service_ports"])
    if not values:
        raise InvalidAPIParameters("nothing to change: give labels, min_slots or service_ports")
    await conn.execute(t.images.update().where(t.images.c.name == name).values(**values))
    return await _image(conn, name)


def _named(items: list[dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, str]:
    """The item called ``name`` (or None) and the names there are, for the error."""
    found = next((item for item in items if item["name"] == name), None)
    return found, ", ".join(item["name"] for item in items) or "none"


async def _image(conn: AsyncConnection, name: str) -> dict[str, Any]:
    item, known = _named(await list_images(conn), name)
    if item is None:
        raise NotFound(f"no image named {name!r}; registered: {known}", title="Unknown image.")
    return item


async def forget_image(conn: AsyncConnection, name: str) -> dict[str, Any]:
    item = await _image(conn, name)
    await conn.execute(t.image_aliases.delete().where(t.image_aliases.c.target == name))
    await conn.execute(t.images.delete().where(t.images.c.name == name))
    return item


async def list_aliases(conn: AsyncConnection) -> list[dict[str, str]]:
    rows = (await conn.execute(sa.select(t.image_aliases).order_by(t.image_aliases.c.alias))).all()
    return [{"alias": r.alias, "target": r.target} for r in rows]


async def set_alias(conn: AsyncConnection, body: Mapping[str, Any]) -> dict[str, str]:
    alias, target = _text(body, "alias"), _text(body, "target")
    if (await conn.execute(sa.select(t.images.c.name).where(t.images.c.name == alias))).first():
        raise Conflict(f"{alias!r} is the name of an image; an alias must not shadow it")
    # An alias of an alias points at the final image.
    chained = (await conn.execute(sa.select(t.image_aliases.c.target).where(t.image_aliases.c.alias == target))).scalar()
    target = chained or target
    await _image(conn, target)
    await conn.execute(t.image_aliases.delete().where(t.image_aliases.c.alias == alias))
    await conn.execute(t.image_aliases.insert().values(alias=alias, target=target))
    return {"alias": alias, "target": target}


async def remove_alias(conn: AsyncConnection, alias: str) -> dict[str, str]:
    row = (await conn.execute(sa.select(t.image_aliases).where(t.image_aliases.c.alias == alias))).first()
    if row is None:
        known = ", ".join(await _names(conn, t.image_aliases.c.alias)) or "none"
        raise NotFound(f"no alias named {alias!r}; aliases: {known}", title="Unknown alias.")
    await conn.execute(t.image_aliases.delete().where(t.image_aliases.c.alias == alias))
    return {"alias": row.alias, "target": row.target}


# ---------------------------------------------------------------- users and keypairs


async def list_users(conn: AsyncConnection) -> list[dict[str, Any]]:
    u, g, m = t.users, t.groups, t.group_members
    rows = (await conn.execute(sa.select(u).order_by(u.c.created_at, u.c.email))).mappings().all()
    groups: dict[uuid.UUID, list[str]] = {}
    memberships = sa.select(m.c.user_id, g.c.name).select_from(m.join(g, g.c.id == m.c.group_id))
    for uid, gname in (await conn.execute(memberships)).all():
        groups.setdefault(uid, []).append(gname)
    counts = dict((await conn.execute(
        sa.select(t.keypairs.c.user_id, sa.func.count()).group_by(t.keypairs.c.user_id))).all())
    out = []
    for row in rows:
        item = _jsonable(row)
        item["has_password"] = item.pop("password_hash", None) is not None  # never the hash
        item["groups"] = sorted(groups.get(row["id"], []))
        item["keypairs"] = int(counts.get(row["id"], 0))
        out.append(item)
    return out


async def _user(conn: AsyncConnection, email: str) -> Mapping[str, Any]:
    row = (await conn.execute(sa.select(t.users).where(t.users.c.email == email))).mappings().first()
    if row is None:
        raise NotFound(f"no user with the email {email!r}", title="Unknown user.")
    return row


async def create_user(conn: AsyncConnection, body: Mapping[str, Any]) -> dict[str, Any]:
    email = _text(body, "email")
    if "@" not in email:
        raise InvalidAPIParameters(f"{email!r} is not an email address")
    domain = _text(body, "domain", required=False, default="default")
    group = _text(body, "group", required=False, default="default")
    role = _text(body, "role", required=False, default="user")
    if role not in ROLES:
        raise InvalidAPIParameters(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if (await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == email))).first():
        raise Conflict(f"a user with the email {email} already exists")
    if not (await conn.execute(sa.select(t.domains.c.name).where(t.domains.c.name == domain))).first():
        raise NotFound(f"no domain {domain!r}; domains: {', '.join(await _names(conn, t.domains.c.name))}",
                       title="Unknown domain.")
    gid = (await conn.execute(sa.select(t.groups.c.id).where(
        t.groups.c.domain_name == domain, t.groups.c.name == group))).scalar()
    if gid is None:
        known = await _names(conn, t.groups.c.name)
        raise NotFound(f"no group {group!r} in domain {domain!r}; groups: {', '.join(known) or 'none'}",
                       title="Unknown group.")
    uid = uuid.uuid4()
    username = _text(body, "username", required=False, default=email.split("@", 1)[0])
    await conn.execute(t.users.insert().values(id=uid, email=email, username=username,
                                               domain_name=domain, role=role))
    await conn.execute(t.group_members.insert().values(group_id=gid, user_id=uid))
    return next(u for u in await list_users(conn) if u["email"] == email)


async def set_user_active(conn: AsyncConnection, email: str, active: bool) -> dict[str, Any]:
    user = await _user(conn, email)
    await conn.execute(t.users.update().where(t.users.c.id == user["id"]).values(is_active=active))
    return next(u for u in await list_users(conn) if u["email"] == email)


async def _live_sessions(conn: AsyncConnection, which: Any) -> int:
    """How many sessions matching ``which`` have not ended."""
    s = t.sessions
    return (await conn.execute(sa.select(sa.func.count()).select_from(s).where(
        which, s.c.status.not_in([str(x) for x in FINAL])))).scalar_one()


async def delete_user(conn: AsyncConnection, email: str, folders: Any
                      ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Delete a user with their keypairs, browser logins, group memberships, the shares they
    were given, the records of their ended sessions and the folders they own (refused while
    they have a session that has not ended, or one of their folders is mounted in one).
    Returns the user and the (host, relpath) of their folders, whose directories the caller
    removes once this transaction committed (``folders.remove_directories``)."""
    user = await _user(conn, email)
    uid = user["id"]
    s = t.sessions
    live = await _live_sessions(conn, s.c.user_id == uid)
    if live:
        raise Conflict(f"the user {email} has {live} session(s) that have not ended; "
                       "remove them or deactivate the user instead")
    shown = next(u for u in await list_users(conn) if u["email"] == email)
    places = await folders.take_user_folders(conn, uid)
    await conn.execute(s.delete().where(s.c.user_id == uid))
    await conn.execute(t.vfolder_permissions.delete().where(t.vfolder_permissions.c.user_id == uid))
    await conn.execute(t.web_sessions.delete().where(t.web_sessions.c.user_id == uid))
    await conn.execute(t.keypairs.delete().where(t.keypairs.c.user_id == uid))
    await conn.execute(t.group_members.delete().where(t.group_members.c.user_id == uid))
    await conn.execute(t.users.delete().where(t.users.c.id == uid))
    return shown, places


_KEYPAIR_COLUMNS = [
    t.keypairs.c.access_key, t.keypairs.c.is_admin, t.keypairs.c.is_active,
    t.keypairs.c.resource_policy, t.keypairs.c.created_at, t.keypairs.c.last_used,
    t.users.c.email.label("user_email"), t.users.c.id.label("user_id"),
]


async def list_keypairs(conn: AsyncConnection, user_email: str | None = None) -> list[dict[str, Any]]:
    q = (sa.select(*_KEYPAIR_COLUMNS)
         .select_from(t.keypairs.join(t.users, t.users.c.id == t.keypairs.c.user_id))
         .order_by(t.keypairs.c.created_at, t.keypairs.c.access_key))
    if user_email:
        q = q.where(t.users.c.email == user_email)
    return [_jsonable(r) for r in (await conn.execute(q)).mappings().all()]


async def _keypair(conn: AsyncConnection, access_key: str) -> dict[str, Any]:
    for kp in await list_keypairs(conn):
        if kp["access_key"] == access_key:
            return kp
    raise NotFound(f"no keypair with the access key {access_key!r}", title="Unknown keypair.")


async def _check_policy(conn: AsyncConnection, name: str) -> None:
    if not (await conn.execute(sa.select(t.keypair_resource_policies.c.name).where(
            t.keypair_resource_policies.c.name == name))).first():
        known = ", ".join(await _names(conn, t.keypair_resource_policies.c.name)) or "none"
        raise NotFound(f"no resource policy {name!r}; policies: {known}", title="Unknown resource policy.")


async def create_keypair(conn: AsyncConnection, body: Mapping[str, Any]) -> dict[str, Any]:
    """A new keypair for a user; the answer is the only place its secret key is ever shown."""
    user = await _user(conn, _text(body, "user"))
    policy = _text(body, "resource_policy", required=False, default="default")
    await _check_policy(conn, policy)
    ak, sk = generate_keypair()
    await conn.execute(t.keypairs.insert().values(
        access_key=ak, secret_key=sk, user_id=user["id"], is_admin=bool(parse_bool(body, "is_admin", False)),
        is_active=True, resource_policy=policy))
    return {**await _keypair(conn, ak), "secret_key": sk}


async def update_keypair(conn: AsyncConnection, access_key: str, body: Mapping[str, Any]) -> dict[str, Any]:
    await _keypair(conn, access_key)
    values: dict[str, Any] = {}
    for key in ("is_active", "is_admin"):
        if key in body:
            values[key] = parse_bool(body, key)
    if body.get("resource_policy") is not None:
        values["resource_policy"] = _text(body, "resource_policy")
        await _check_policy(conn, values["resource_policy"])
    if not values:
        raise InvalidAPIParameters("nothing to change: give is_active, is_admin or resource_policy")
    await conn.execute(t.keypairs.update().where(t.keypairs.c.access_key == access_key).values(**values))
    return await _keypair(conn, access_key)


async def delete_keypair(conn: AsyncConnection, access_key: str) -> dict[str, Any]:
    kp = await _keypair(conn, access_key)
    s = t.sessions
    live = await _live_sessions(conn, s.c.access_key == access_key)
    if live:
        raise Conflict(f"the keypair {access_key} has {live} session(s) that have not ended; "
                       "remove them or deactivate the keypair instead")
    # Ended sessions keep their records for the listing; their history goes with the keypair.
    await conn.execute(s.delete().where(s.c.access_key == access_key))
    await conn.execute(t.keypairs.delete().where(t.keypairs.c.access_key == access_key))
    return kp


# ---------------------------------------------------------------- resource policies


async def list_policies(conn: AsyncConnection) -> list[dict[str, Any]]:
    p = t.keypair_resource_policies
    counts = dict((await conn.execute(
        sa.select(t.keypairs.c.resource_policy, sa.func.count()).group_by(t.keypairs.c.resource_policy))).all())
    rows = (await conn.execute(sa.select(p).order_by(p.c.name))).mappings().all()
    return [{**_jsonable(r), "keypairs": int(counts.get(r["name"], 0))} for r in rows]


async def _policy(conn: AsyncConnection, name: str) -> dict[str, Any]:
    await _check_policy(conn, name)
    return next(p for p in await list_policies(conn) if p["name"] == name)


async def create_policy(conn: AsyncConnection, body: Mapping[str, Any], default_idle: int) -> dict[str, Any]:
    name = _text(body, "name")
    p = t.keypair_resource_policies
    if (await conn.execute(sa.select(p.c.name).where(p.c.name == name))).first():
        raise Conflict(f"a resource policy named {name} already exists")
    await conn.execute(p.insert().values(
        name=name,
        max_concurrent_sessions=_int(body, "max_concurrent_sessions", 0),
        total_resource_slots=_slots(body.get("total_resource_slots"), "total_resource_slots"),
        idle_timeout=_int(body, "idle_timeout", default_idle),
        pids_limit=_int(body, "pids_limit", 0),
        disk_quota=_size(body, "disk_quota", 0),
        min_resource_slots=_slots(body.get("min_resource_slots"), "min_resource_slots"),
        allow_outbound=bool(body.get("allow_outbound") or False),
    ))
    return await _policy(conn, name)


async def update_policy(conn: AsyncConnection, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    await _check_policy(conn, name)
    values: dict[str, Any] = {}
    for key in ("max_concurrent_sessions", "idle_timeout", "pids_limit"):
        if body.get(key) is not None:
            values[key] = _int(body, key)
    if body.get("disk_quota") is not None:
        values["disk_quota"] = _size(body, "disk_quota")
    for key in ("total_resource_slots", "min_resource_slots"):
        if body.get(key) is not None:
            values[key] = _slots(body[key], key)
    if body.get("allow_outbound") is not None:
        values["allow_outbound"] = bool(body["allow_outbound"])
    if not values:
        raise InvalidAPIParameters(
            "nothing to change: give max_concurrent_sessions, total_resource_slots, "
            "idle_timeout, pids_limit, disk_quota, min_resource_slots or allow_outbound")
    p = t.keypair_resource_policies
    await conn.execute(p.update().where(p.c.name == name).values(**values))
    if "idle_timeout" in values:
        # Live sessions of the policy's keypairs follow the new idle timeout.
        kps = sa.select(t.keypairs.c.access_key).where(t.keypairs.c.resource_policy == name)
        await conn.execute(t.sessions.update().where(
            t.sessions.c.access_key.in_(kps), t.sessions.c.status.not_in([str(x) for x in FINAL])
        ).values(idle_timeout=values["idle_timeout"]))
    return await _policy(conn, name)


# ---------------------------------------------------------------- resource groups

SCHEDULERS = ("fifo", "lifo", "drf")
AGENT_SELECTIONS = ("concentrated", "dispersed")


def _choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in allowed:
        raise InvalidAPIParameters(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return value.lower()


async def list_scaling_groups(conn: AsyncConnection) -> list[dict[str, Any]]:
    g, a = t.scaling_groups, t.agents
    counts = dict((await conn.execute(
        sa.select(a.c.scaling_group, sa.func.count()).where(a.c.status == "ALIVE")
        .group_by(a.c.scaling_group))).all())
    rows = (await conn.execute(sa.select(g).order_by(g.c.name))).mappings().all()
    return [{**_jsonable(row), "alive_agents": counts.get(row["name"], 0)} for row in rows]


async def _scaling_group(conn: AsyncConnection, name: str) -> dict[str, Any]:
    item, known = _named(await list_scaling_groups(conn), name)
    if item is None:
        raise NotFound(f"no resource group {name!r}; groups: {known}",
                       title="No such resource group.")
    return item


async def create_scaling_group(conn: AsyncConnection, body: Mapping[str, Any]) -> dict[str, Any]:
    name = _text(body, "name")
    g = t.scaling_groups
    if (await conn.execute(sa.select(g.c.name).where(g.c.name == name))).first():
        raise Conflict(f"a resource group named {name} already exists")
    await conn.execute(g.insert().values(
        name=name, description=_text(body, "description", required=False, default=""),
        scheduler=_choice(body, "scheduler", SCHEDULERS) or "fifo",
        agent_selection=_choice(body, "agent_selection", AGENT_SELECTIONS) or "concentrated"))
    return await _scaling_group(conn, name)


async def update_scaling_group(conn: AsyncConnection, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    await _scaling_group(conn, name)
    values = {k: v for k, v in (
        ("scheduler", _choice(body, "scheduler", SCHEDULERS)),
        ("agent_selection", _choice(body, "agent_selection", AGENT_SELECTIONS)),
        ("is_active", parse_bool(body, "is_active")),
    ) if v is not None}
    if not values:
        raise InvalidAPIParameters("nothing to change: give scheduler, agent_selection or is_active")
    g = t.scaling_groups
    await conn.execute(g.update().where(g.c.name == name).values(**values))
    return await _scaling_group(conn, name)


# ---------------------------------------------------------------- agents


async def list_agents(conn: AsyncConnection) -> list[dict[str, Any]]:
    a = t.agents
    rows = (await conn.execute(sa.select(a).order_by(a.c.id))).mappings().all()
    out = []
    for row in rows:
        item = _jsonable(row)
        capacity = ResourceSlot.from_json(row["available_slots"])
        used = ResourceSlot.from_json(row["occupied_slots"])
        item["free_slots"] = (capacity - used).to_json()
        out.append(item)
    return out


async def set_agent_schedulable(conn: AsyncConnection, agent_id: str, schedulable: bool) -> dict[str, Any]:
    a = t.agents
    result = await conn.execute(a.update().where(a.c.id == agent_id).values(schedulable=schedulable))
    if result.rowcount == 0:
        known = ", ".join(await _names(conn, a.c.id)) or "none"
        raise NotFound(f"no agent {agent_id!r}; agents: {known}", title="No such agent.")
    return next(x for x in await list_agents(conn) if x["id"] == agent_id)
