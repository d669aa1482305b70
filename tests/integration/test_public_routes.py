"""The routes anyone reaches without a signature, attacked as an anonymous caller and as a
normal user: the health probes, ``/openapi.json``, the GraphQL schema and the separate ops
listener tell nothing secret (keys, the cluster token, paths, the database's address, what a
failing dependency said), and the ops listener serves only ``/metrics`` and ``/health/*``.

One real manager app (``create_app``: every route, both middlewares, the ops listener on a free
port) on SQLite whose file and state folder carry recognisable names."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_support import Signed

from bai.manager.app import OPS, ROOT, create_app
from bai.manager.services.bootstrap import bootstrap
from bai.manager.settings import ManagerSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLUSTER_TOKEN = "cluster-token-must-not-leak-3141"
#: what a failing dependency's error says (an address with a password, a path)
LEAKY = "redis://:bus-password-2718@10.9.8.7:6379/0 in /srv/secret-state"
CHECK_WORDS = {"ok", "unreachable", "timed out", "not running"}


@pytest.fixture
async def env(tmp_path):
    state = tmp_path / "state-dir-must-not-leak"
    state.mkdir()
    settings = ManagerSettings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/db-file-must-not-leak.db",
        cluster_token=CLUSTER_TOKEN, state_dir=str(state), ops_port=0, schedule_interval=0.2)
    app = create_app(settings)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    keys = await bootstrap(app[ROOT].store, max_sessions=0)
    ops = app[OPS].bound
    secrets = [CLUSTER_TOKEN, str(tmp_path), "db-file-must-not-leak", "state-dir-must-not-leak",
               "bus-password-2718", "10.9.8.7", "/srv/secret-state",
               *(k[f] for k in keys.values() for f in ("access_key", "secret_key"))]
    async with aiohttp.ClientSession() as http:
        yield {"app": app, "client": client, "http": http, "ops": f"http://{ops[0]}:{ops[1]}",
               "user": Signed(client, (keys["user"]["access_key"], keys["user"]["secret_key"])),
               "admin": Signed(client, (keys["admin"]["access_key"],
                                        keys["admin"]["secret_key"])),
               "secrets": secrets}
    await client.close()


def assert_tells_nothing(text: str, secrets: list[str]) -> None:
    found = [s for s in secrets if s in text]
    assert not found, f"an unauthenticated answer holds {found}: {text[:500]}"


async def anonymous(env, url: str, method: str = "GET") -> tuple[int, str]:
    async with env["http"].request(method, url) as r:
        return r.status, await r.text()


async def test_health_says_only_its_checks_even_when_a_dependency_fails_loudly(env,
                                                                              monkeypatch):
    api = str(env["client"].make_url("")).rstrip("/")
    for base in (api, env["ops"]):
        status, text = await anonymous(env, f"{base}/health/live")
        assert (status, json.loads(text)) == (200, {"live": True})
        status, text = await anonymous(env, f"{base}/health/ready")
        body = json.loads(text)
        assert status == 200 and set(body) == {"ready", "checks"}, text
    # a failing event bus whose error names an address, a password and a path
    root = env["app"][ROOT]

    async def leaky_ping() -> None:
        raise ConnectionError(LEAKY)

    monkeypatch.setattr(root.bus, "ping", leaky_ping, raising=False)
    for base in (api, env["ops"]):
        status, text = await anonymous(env, f"{base}/health/ready")
        body = json.loads(text)
        assert status == 503 and body["checks"]["event_bus"] == "unreachable", text
        assert set(body["checks"].values()) <= CHECK_WORDS, text
        assert_tells_nothing(text, env["secrets"])
    # a normal user's signed request gets the same answer, no more
    resp = await env["user"].request("GET", "/health/ready")
    assert resp.status == 503 and await resp.text() == text


async def test_the_openapi_document_is_the_published_one_for_anyone(env):
    status, text = await anonymous(env, str(env["client"].make_url("/openapi.json")))
    assert status == 200
    assert json.loads(text) == json.loads((DOCS / "openapi.json").read_text())
    assert_tells_nothing(text, env["secrets"])
    resp = await env["user"].request("GET", "/openapi.json")
    assert resp.status == 200 and json.loads(await resp.text()) == json.loads(text)


async def test_the_graphql_schema_needs_a_signature_and_is_the_published_one(env):
    status, text = await anonymous(env, str(env["client"].make_url("/admin/gql/schema.graphql")))
    assert status == 401 and json.loads(text)["title"], text
    for who in ("user", "admin"):
        resp = await env[who].request("GET", "/admin/gql/schema.graphql")
        body = await resp.text()
        assert resp.status == 200, body
        assert body.strip() == (DOCS / "schema.graphql").read_text().strip()
        assert_tells_nothing(body, env["secrets"])


async def test_metrics_on_the_api_are_for_admins_only(env):
    status, text = await anonymous(env, str(env["client"].make_url("/metrics")))
    assert status == 401 and "bai_manager" not in text
    resp = await env["user"].request("GET", "/metrics")
    assert resp.status == 403 and "bai_manager" not in await resp.text()
    resp = await env["admin"].request("GET", "/metrics")
    assert resp.status == 200


async def test_the_ops_listener_serves_only_metrics_and_health(env):
    ops = env["ops"]
    status, text = await anonymous(env, f"{ops}/metrics")
    assert status == 200 and "bai_manager_sessions" in text
    assert_tells_nothing(text, env["secrets"])
    # everything else of the API is not there: not reachable unsigned through this door
    for method, path in [
        ("GET", "/"), ("GET", "/openapi.json"), ("GET", "/admin/gql/schema.graphql"),
        ("POST", "/admin/gql"), ("GET", "/session/s1"), ("POST", "/session"),
        ("GET", "/stream/session/s1/execute"), ("GET", "/events/session"),
        ("POST", "/internal/agents/heartbeat"), ("GET", "/folders"),
        ("GET", "/storage/download"), ("GET", "/admin/keypairs"), ("GET", "/metrics/../session"),
        ("GET", "/health/../admin/keypairs"), ("POST", "/metrics"), ("DELETE", "/health/ready"),
    ]:
        status, text = await anonymous(env, f"{ops}{path}", method)
        assert status in (404, 405), f"{method} {path} on the ops listener: {status} {text[:200]}"
        assert_tells_nothing(text, env["secrets"])
