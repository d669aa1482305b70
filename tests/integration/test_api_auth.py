"""The auth and error middlewares over HTTP: 401 problems, skipped routes, problem JSON for errors."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from api_support import ADMIN, USER, ApiRoot, Signed, make_app, seed, start_client
from aiohttp import web

from bai.common.auth import BODY_HASH_HEADER
from bai.manager.api import gql, root
from bai.manager.settings import ManagerSettings


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
async def client(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db", clock_skew_seconds=900)
    api_root = ApiRoot(settings)
    await seed(api_root.store)
    client = await start_client(make_app(api_root, root, gql, Boom))
    yield client
    await client.close()
    await api_root.store.close()


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
