"""First-start data: default domain, group, scaling group, policy, users, keypairs, images.

Idempotent: running it again keeps what exists (and its keys) and only adds what is missing.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from bai.common.auth import generate_keypair
from bai.manager.services import passwords
from bai.manager.services.images import default_images
from bai.manager.store.engine import AsyncConnection, Store
from bai.manager.store.tables import (
    domains,
    group_members,
    groups,
    image_aliases,
    images,
    keypair_resource_policies,
    keypairs,
    scaling_groups,
    users,
)

#: The ``default`` keypair policy of a fresh install (docs/security.md, "Default limits"): an
#: admin raises any of them with ``backend.ai admin policy update default ...`` (0 = unlimited).
#: 8 sessions x 1,024 pids = 8,192, a quarter of the smallest pid_max (32,768); the agent's
#: parent cgroup caps all sessions together at half of pid_max.
DEFAULT_POLICY: dict[str, Any] = {
    "max_concurrent_sessions": 8,
    "pids_limit": 1024,
    "disk_quota": 4 * 1024**3,
    "min_resource_slots": {"cpu": "0.1", "mem": str(64 * 1024**2)},
    "total_resource_slots": {},
}

ADMIN_EMAIL = "admin@bai.local"
USER_EMAIL = "user@bai.local"


async def _ensure(conn: AsyncConnection, table: sa.Table, where, values: dict[str, Any]) -> bool:
    exists = (await conn.execute(sa.select(sa.literal(1)).select_from(table).where(where))).first()
    if exists is None:
        await conn.execute(sa.insert(table).values(**values))
        return True
    return False


async def _ensure_user(conn: AsyncConnection, email: str, username: str, role: str,
                       is_admin: bool, keys: tuple[str, str] | None, group_id) -> dict[str, str]:
    uid = (await conn.execute(sa.select(users.c.id).where(users.c.email == email))).scalar()
    if uid is None:
        uid = uuid.uuid4()
        await conn.execute(sa.insert(users).values(
            id=uid, email=email, username=username, domain_name="default", role=role))
    await _ensure(conn, group_members,
                  sa.and_(group_members.c.group_id == group_id, group_members.c.user_id == uid),
                  {"group_id": group_id, "user_id": uid})
    out: dict[str, str] = {}
    if (await conn.execute(sa.select(users.c.password_hash).where(users.c.id == uid))).scalar() is None:
        # a dashboard password for the fresh install's admin and user (server start says where
        # it is kept: <state>/keys.json); one set later (admin user set-password) is kept
        out["password"] = passwords.generate()
        await conn.execute(sa.update(users).where(users.c.id == uid).values(
            password_hash=passwords.hash_password(out["password"])))
    row = (await conn.execute(
        sa.select(keypairs.c.access_key, keypairs.c.secret_key)
        .where(keypairs.c.user_id == uid, keypairs.c.is_admin == is_admin)
        .order_by(keypairs.c.created_at)
    )).first()
    if row is None:
        ak, sk = keys or generate_keypair(admin=is_admin)
        await conn.execute(sa.insert(keypairs).values(
            access_key=ak, secret_key=sk, user_id=uid, is_admin=is_admin,
            resource_policy="default"))
        return {"access_key": ak, "secret_key": sk, **out}
    return {"access_key": row.access_key, "secret_key": row.secret_key, **out}


async def bootstrap(
    store: Store,
    *,
    idle_timeout: int = 1800,
    max_sessions: int = DEFAULT_POLICY["max_concurrent_sessions"],
    admin_keys: tuple[str, str] | None = None,
    user_keys: tuple[str, str] | None = None,
    image_list: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, str]]:
    """Create the defaults that are missing; returns the admin's and the user's keypairs (with
    a ``password`` for the dashboard where this call gave the user their first one).
    ``max_sessions`` is the default policy's concurrent sessions per keypair (0 = unlimited)."""
    async with store.begin() as conn:
        await _ensure(conn, domains, domains.c.name == "default",
                      {"name": "default", "description": "default domain", "total_resource_slots": {}})
        gid = (await conn.execute(sa.select(groups.c.id).where(
            groups.c.name == "default", groups.c.domain_name == "default"))).scalar()
        if gid is None:
            gid = uuid.uuid4()
            await conn.execute(sa.insert(groups).values(
                id=gid, name="default", domain_name="default", description="default group",
                total_resource_slots={}))
        await _ensure(conn, scaling_groups, scaling_groups.c.name == "default",
                      {"name": "default", "description": "default resource group"})
        await _ensure(conn, keypair_resource_policies, keypair_resource_policies.c.name == "default",
                      {"name": "default", **DEFAULT_POLICY, "idle_timeout": idle_timeout,
                       "max_concurrent_sessions": max_sessions})
        admin = await _ensure_user(conn, ADMIN_EMAIL, "admin", "superadmin", True, admin_keys, gid)
        user = await _ensure_user(conn, USER_EMAIL, "user", "user", False, user_keys, gid)
        for img in image_list if image_list is not None else default_images():
            img = dict(img)
            aliases = img.pop("aliases", [])
            await _ensure(conn, images, images.c.name == img["name"], img)
            for alias in aliases:
                await _ensure(conn, image_aliases, image_aliases.c.alias == alias,
                              {"alias": alias, "target": img["name"]})
    return {"admin": admin, "user": user}
