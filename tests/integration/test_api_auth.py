"""The auth and error middlewares over HTTP: 401 problems, skipped routes, problem JSON for errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from api_support import ADMIN, USER, ApiRoot, Signed, make_app, seed, start_client
from aiohttp import web

from bai.common.auth import BODY_HASH_HEADER, make_headers
from bai.manager.api import gql, root
from bai.manager.services import auth
from bai.manager.services.auth import keypair_cache
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


class Boom:
    """A route module whose handlers fail in the ways the error middleware must cover."""

    @staticmethod
    def setup(app: web.Application) -> None:
        async def crash(request):
            raise RuntimeError("secret internals")

        async def internal(request):
            return web.json_response({"ok": True})

        app.router.add_get("/crash", crash)
        app.router.add_post("/internal/agents/heartbeat", internal)


@pytest.fixture
async def served(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db", clock_skew_seconds=900)
    api_root = ApiRoot(settings)
    await seed(api_root.store)
    client = await start_client(make_app(api_root, root, gql, Boom))
    yield client, api_root
    await client.close()
    await api_root.store.close()


@pytest.fixture
async def client(served):
    return served[0]


async def problem(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert isinstance(body, dict) and body["type"].startswith("https://") and body["title"]
    return body


async def test_unsigned_requests(client):
    assert (await client.get("/")).status == 200
    assert (await client.post("/internal/agents/heartbeat")).status == 200  # cluster token is its job
    body = await problem(await client.post("/admin/gql", json={"query": "{ keypair { access_key } }"}), 401)
    assert body["type"].endswith("/auth-failed") and body["title"] == "Authorization header missing."


async def test_wrong_secret_and_stale_date(client):
    wrong = Signed(client, (USER[0], "not-the-secret"))
    mismatch = await problem(await wrong.request("GET", "/manager/announcement"), 401)
    assert mismatch["title"] == "Credential/signature mismatch."
    stale = Signed(client, USER)
    old = datetime.now(timezone.utc) - timedelta(minutes=20)
    body = await problem(await stale.request("GET", "/manager/announcement", now=old), 401)
    assert body["title"] == "Request date outside the allowed window."
    unknown = Signed(client, ("AKIANOBODY0000000000", "x"))
    body = await problem(await unknown.request("GET", "/manager/announcement"), 401)
    assert body == mismatch  # nothing tells which access keys exist


async def test_a_captured_signature_cannot_carry_another_body(client):
    # our client signs the body's hash (X-BAI-Content-SHA256); a replay with another body, or
    # with the hash header stripped, is refused with the one mismatch answer
    c = Signed(client, ADMIN)
    query = json.dumps({"query": "{ keypair { access_key } }"}).encode()
    headers = c.headers("POST", "/admin/gql", "application/json", body=query)
    assert BODY_HASH_HEADER in headers
    resp = await client.post("/admin/gql", data=query, headers=headers)
    assert resp.status == 200, await resp.text()
    other = json.dumps({"query": "{ keypair_list { items { access_key } } }"}).encode()
    body = await problem(await client.post("/admin/gql", data=other, headers=headers), 401)
    assert body["title"] == "Credential/signature mismatch."
    stripped = {k: v for k, v in headers.items() if k != BODY_HASH_HEADER}
    await problem(await client.post("/admin/gql", data=query, headers=stripped), 401)
    forged = {**headers, BODY_HASH_HEADER: hashlib.sha256(other).hexdigest()}
    await problem(await client.post("/admin/gql", data=other, headers=forged), 401)
    # the official client's way (no hash header, hash of b"" signed) still works
    resp = await client.post("/admin/gql", data=query, headers=c.headers("POST", "/admin/gql",
                                                                          "application/json"))
    assert resp.status == 200, await resp.text()


async def test_same_date_is_accepted_again(client):
    # SSE reconnects re-send the same Date and signature (client-protocol 2.1).
    c = Signed(client, ADMIN)
    headers = c.headers("GET", "/manager/announcement", "text/plain")
    for _ in range(2):
        resp = await client.get("/manager/announcement", headers=headers)
        assert resp.status == 200


async def test_errors_are_problem_objects(client):
    c = Signed(client, ADMIN)
    body = await problem(await c.request("GET", "/crash"), 500)
    assert "secret internals" not in str(body)
    body = await problem(await c.request("GET", "/no/such/route"), 404)
    assert body["title"] == "Not found."
    body = await problem(await c.request("PUT", "/admin/gql"), 405)
    resp = await client.post("/admin/gql", data=b"{not json",
                             headers=c.headers("POST", "/admin/gql", "application/json"))
    body = await problem(resp, 400)
    assert "JSON" in body["msg"]


async def _write(store, statement) -> None:
    async with store.begin() as conn:
        await conn.execute(statement)


async def test_a_keypair_read_stands_until_keypairs_or_users_are_written(served):
    client, api_root = served
    store, c = api_root.store, Signed(client, USER)
    assert (await c.request("GET", "/manager/announcement")).status == 200
    before = store.statements
    assert (await c.request("GET", "/manager/announcement")).status == 200
    assert store.statements == before  # the keypair was not read again
    keypair = t.keypairs.c.access_key == USER[0]
    await _write(store, sa.update(t.keypairs).where(keypair).values(is_active=False))
    body = await problem(await c.request("GET", "/manager/announcement"), 401)
    assert body["title"] == "Inactive keypair."
    await _write(store, sa.update(t.keypairs).where(keypair).values(is_active=True))
    assert (await c.request("GET", "/manager/announcement")).status == 200
    await _write(store, sa.update(t.users).where(t.users.c.email == "user@example.org")
                 .values(is_active=False))
    body = await problem(await c.request("GET", "/manager/announcement"), 401)
    assert body["title"] == "Inactive user."
    await _write(store, sa.update(t.users).values(is_active=True))
    assert (await c.request("GET", "/manager/announcement")).status == 200
    await _write(store, sa.update(t.keypairs).where(keypair).values(secret_key="a-new-secret"))
    body = await problem(await c.request("GET", "/manager/announcement"), 401)
    assert body["title"] == "Credential/signature mismatch."
    assert (await Signed(client, (USER[0], "a-new-secret")).request(
        "GET", "/manager/announcement")).status == 200
    # a write outside ``Store.begin`` (its statement alone moves the count)
    async with store.connect() as conn:
        await conn.execute(sa.update(t.keypairs).where(keypair).values(secret_key=USER[1]))
        await conn.commit()
    assert (await c.request("GET", "/manager/announcement")).status == 200


async def test_a_keypair_read_while_a_write_is_open_is_read_again_after_its_commit(served):
    # the read sees the row as it was committed (WAL), after the write's statement moved the
    # count: only the count's move at the commit tells that what was read is out of date
    client, api_root = served
    c = Signed(client, USER)
    async with api_root.store.begin() as conn:
        await conn.execute(sa.update(t.keypairs).where(t.keypairs.c.access_key == USER[0])
                           .values(is_active=False))
        assert (await c.request("GET", "/manager/announcement")).status == 200
    body = await problem(await c.request("GET", "/manager/announcement"), 401)
    assert body["title"] == "Inactive keypair."


async def test_other_tables_written_keep_the_keypairs_read(served):
    client, api_root = served
    c = Signed(client, USER)
    assert (await c.request("GET", "/manager/announcement")).status == 200
    await _write(api_root.store, sa.update(t.groups).values(description="x"))
    before = api_root.store.statements
    assert (await c.request("GET", "/manager/announcement")).status == 200
    assert api_root.store.statements == before


async def test_without_sqlite_every_request_reads_its_keypair():
    # PostgreSQL: other replicas may write the keypairs, which this process would not see
    reads = []
    record = {"access_key": USER[0], "secret_key": USER[1], "is_active": True,
              "is_admin": False, "resource_policy": "default", "user_id": uuid.uuid4(),
              "email": "user@example.org", "user_active": True, "domain_name": "default",
              "role": "user"}

    class Conn:
        async def execute(self, *_args):
            reads.append(1)
            return SimpleNamespace(first=lambda: SimpleNamespace(**record))

    class Store:
        is_sqlite, cache_changes = False, {"keypairs": 0}

        @contextlib.asynccontextmanager
        async def connect(self):
            yield Conn()

    cache = keypair_cache()
    for n in (1, 2):
        now = datetime.now(timezone.utc)
        h = make_headers(USER[0], USER[1], "GET", "/", "h", "text/plain", now=now)
        req = auth.SignedRequest("GET", "/", "h", "text/plain", h["Authorization"], h["Date"],
                                 h["X-BackendAI-Version"], h.get(BODY_HASH_HEADER))
        caller = await auth.authenticate(Store(), req, skew_seconds=900, cache=cache)
        assert caller.access_key == USER[0] and len(reads) == n
