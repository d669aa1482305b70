"""Helpers for the public-API tests: a real SQLite store with seeded users and keypairs, sessions
written straight into the tables, and an aiohttp test client that signs every request the way the
official client does (``bai.common.auth.make_headers``)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bai.common.auth import make_headers
from bai.manager.api import middleware
from bai.manager.app import ROOT
from bai.manager.services.auth import keypair_cache
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t
from bai.manager.store.engine import Store

ADMIN = ("AKIAADMIN00000000001", "admin-secret-key-000000000000000000000001")
USER = ("AKIAUSER000000000001", "user-secret-key-0000000000000000000000001")
OTHER = ("AKIAOTHER00000000001", "other-secret-key-000000000000000000000001")


@dataclass
class Seed:
    group_id: uuid.UUID
    users: dict[str, uuid.UUID] = field(default_factory=dict)  # access key -> user id


async def seed(store: Store) -> Seed:
    """Default domain, group and policy; an admin, a user and another user with keypairs."""
    async with store.engine.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    gid = uuid.uuid4()
    s = Seed(group_id=gid)
    async with store.begin() as conn:
        await conn.execute(t.domains.insert().values(name="default", total_resource_slots={}))
        await conn.execute(t.groups.insert().values(id=gid, name="default", domain_name="default",
                                                    total_resource_slots={}))
        await conn.execute(t.keypair_resource_policies.insert().values(
            name="default", max_concurrent_sessions=0, total_resource_slots={}, idle_timeout=1800))
        for (ak, sk), email, admin in (
            (ADMIN, "admin@example.org", True),
            (USER, "user@example.org", False),
            (OTHER, "other@example.org", False),
        ):
            uid = uuid.uuid4()
            s.users[ak] = uid
            await conn.execute(t.users.insert().values(
                id=uid, email=email, username=email.split("@")[0], domain_name="default",
                role="superadmin" if admin else "user"))
            await conn.execute(t.group_members.insert().values(group_id=gid, user_id=uid))
            await conn.execute(t.keypairs.insert().values(
                access_key=ak, secret_key=sk, user_id=uid, is_admin=admin,
                resource_policy="default"))
    return s


async def add_session(
    store: Store, s: Seed, *, access_key: str = USER[0], name: str = "s1", status: str = "RUNNING",
    changed: datetime | None = None, history: list[tuple[str | None, str, str]] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Insert a session with its main kernel and history; returns the session values."""
    now = changed or datetime.now(timezone.utc)
    sid, kid = uuid.uuid4(), uuid.uuid4()
    row: dict[str, Any] = dict(
        id=sid, name=name, image="python:3.11-debian12", registry="local", domain_name="default",
        group_id=s.group_id, user_id=s.users[access_key], access_key=access_key, status=status,
        status_info="scheduled" if status != "PENDING" else None, status_data={},
        status_changed=now, created_at=now - timedelta(seconds=30), main_kernel_id=kid,
        requested_slots={"cpu": "1", "mem": "268435456"},
        occupying_slots={"cpu": "1", "mem": "268435456"} if status == "RUNNING" else {},
        service_ports=[], mounts=[], environ={}, agent_ids=["agent-0"], resource_opts={},
        abusing_reports=[], last_activity_at=now, idle_timeout=1800,
    )
    row.update(values)
    async with store.begin() as conn:
        await conn.execute(t.sessions.insert().values(**row))
        await conn.execute(t.kernels.insert().values(
            id=kid, session_id=sid, agent_id="agent-0", agent_address="http://127.0.0.1:1",
            status=status, status_changed=now, image=row["image"],
            requested_slots=row["requested_slots"], occupied_slots=row["occupying_slots"],
            container_id="c-" + kid.hex[:8]))
        for i, (src, dst, reason) in enumerate(history or [(None, "PENDING", "enqueued")]):
            await conn.execute(t.session_history.insert().values(
                session_id=sid, from_status=src, to_status=dst, reason=reason, cause="test",
                at=now - timedelta(seconds=len(history or [1]) - i)))
    return row


class ApiRoot:
    """The parts of ``ManagerRoot`` the read-only API uses: settings and a real store."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self.keypairs = keypair_cache()


def make_app(root: Any, *modules: Any) -> web.Application:
    app = web.Application(middlewares=[middleware.error_middleware, middleware.auth_middleware])
    app[ROOT] = root
    for mod in modules:
        mod.setup(app)
    return app


class Signed:
    """A test client that signs its requests with one keypair."""

    def __init__(self, client: TestClient, keypair: tuple[str, str]) -> None:
        self.client = client
        self.access_key, self.secret_key = keypair

    @property
    def host(self) -> str:
        return f"{self.client.host}:{self.client.port}"

    def headers(self, method: str, path: str, content_type: str, **kw: Any) -> dict[str, str]:
        h = make_headers(self.access_key, self.secret_key, method, path, self.host, content_type, **kw)
        h["Content-Type"] = content_type
        return h

    async def request(self, method: str, path: str, body: Any = None, **kw: Any):
        if body is None:
            data, ctype = b"", "text/plain"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        return await self.client.request(method, path, data=data, headers=self.headers(method, path, ctype, **kw))

    async def gql(self, query: str, variables: dict | None = None) -> dict:
        resp = await self.request("POST", "/admin/gql", {"query": query, "variables": variables or {}})
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def call(c: Signed, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    """The JSON answer of a signed request, asserting its status."""
    resp = await c.request(method, path, body)
    data = await resp.json() if resp.content_type.endswith("json") else await resp.text()
    assert resp.status == status, data
    return data


async def start_client(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client
