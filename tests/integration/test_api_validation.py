"""Malformed request bodies get a 400 problem naming the field, never a 500 (issue 12, item 7).

Each case below got a 500 before the routes validated their bodies with declared models
(``bai.manager.api.models``); after each, nothing was written and the platform still works.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from api_support import Signed, make_app, start_client
from test_manager_lifecycle import manager  # noqa: F401

from bai.manager.api import admin, events, gql, internal, root, session, stream
from bai.manager.store.tables import keypair_resource_policies, sessions

DEEP = "[" * 100_000 + "]" * 100_000


def create(**over):
    body = {"name": "valid-1", "image": "python", "config": {"resources": {"cpu": "1"}},
            "enqueueOnly": True}
    config = over.pop("config", None)
    if config is not None:
        body["config"] = {**body["config"], **config}
    return {**body, **over}


# (method, path, body: a dict to send as JSON or raw bytes, the field the answer must name)
CASES = [
    ("POST", "/session", create(clusterSize="x"), "clusterSize"),
    ("POST", "/session", create(config={"resource_opts": "shmem=64m"}), "config.resource_opts"),
    ("POST", "/session", create(config={"mounts": 5}), "config.mounts"),
    ("POST", "/session", create(config={"environ": ["A=1"]}), "config.environ"),
    ("POST", "/session", create(starts_at="99999999999w"), "starts_at"),
    ("POST", "/session", create(starts_at="9999-12-31T23:59:59-05:00"), "starts_at"),
    ("POST", "/session", create(maxWaitSeconds=1e300), "maxWaitSeconds"),
    ("POST", "/session", create(name="bad\x00name"), "name"),
    ("POST", "/session", create(config={"resources": {"cpu": 2**70}}), None),
    ("POST", "/session", DEEP.encode(), ""),
    ("POST", "/session", b"\xff\xfe{}", ""),
    ("POST", "/session", b'{"name": NaN}', ""),
    ("PATCH", "/admin/resource-policies/default", {"max_concurrent_sessions": 2**63},
     "max_concurrent_sessions"),
    ("PATCH", "/admin/resource-policies/default", {"idle_timeout": -1}, "idle_timeout"),
    ("PATCH", "/admin/resource-policies/default", {"total_resource_slots": "cpu=1"},
     "total_resource_slots"),
    ("POST", "/admin/resource-policies", {"name": "p" * 65}, "name"),
    ("POST", "/admin/users", {"email": ["a@b.c"]}, "email"),
    ("PATCH", "/admin/keypairs/AKIA", {"is_admin": "maybe"}, "is_admin"),
    ("POST", "/admin/images", {"name": "x:1", "service_ports": [{"name": "j", "ports": ["p"]}]},
     "service_ports.0.ports.0"),
    ("POST", "/admin/gql", {"query": "{ x }", "variables": [1]}, "variables"),
    ("POST", "/admin/gql", {"query": ["{ x }"]}, "query"),
    ("POST", "/admin/gql", {"query": "{ x }", "variables": json.loads("{\"a\":" * 40 + "1" + "}" * 40)},
     "variables.a.a"),
]


@pytest.fixture
async def api(manager):  # noqa: F811
    app = make_app(manager, root, session, stream, events, gql, admin, internal)
    client = await start_client(app)
    yield manager, client
    await client.close()


async def send(c: Signed, method: str, path: str, body) -> tuple[int, dict]:
    if isinstance(body, bytes):
        resp = await c.client.request(method, path, data=body,
                                      headers=c.headers(method, path, "application/json"))
    else:
        resp = await c.request(method, path, body)
    return resp.status, await resp.json()


@pytest.mark.parametrize("method, path, body, field", CASES,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(CASES)])
async def test_a_malformed_body_is_a_400_naming_the_field(api, method, path, body, field):
    root_, client = api
    who = "user" if path == "/session" else "admin"
    c = Signed(client, (root_.keys[who]["access_key"], root_.keys[who]["secret_key"]))
    status, problem = await send(c, method, path, body)
    assert status == 400, problem
    assert problem["type"].endswith("/invalid-api-params") and problem["title"]
    if field is not None:
        assert problem["data"]["field"].startswith(field), problem
    async with root_.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() == 0
        policy = (await conn.execute(sa.select(keypair_resource_policies).where(
            keypair_resource_policies.c.name == "default"))).mappings().one()
    assert policy["max_concurrent_sessions"] < 2**31
    # and the platform still answers a good request
    status, answer = await send(c, "POST", "/session", create()) if who == "user" else \
        await send(c, "PATCH", "/admin/resource-policies/default", {"idle_timeout": 600})
    assert status in (200, 201), answer


async def test_every_field_the_official_client_sends_is_accepted(api):
    root_, client = api
    c = Signed(client, (root_.keys["user"]["access_key"], root_.keys["user"]["secret_key"]))
    # client-protocol §5.1, `run` at its defaults, then `start` with options
    body = {"tag": None, "name": "runcode01",
            "config": {"mounts": [], "environ": {}, "resources": {}, "resource_opts": {},
                       "scalingGroup": None, "mount_map": {}, "preopen_ports": []},
            "dependencies": None, "callback_url": None, "architecture": "x86_64",
            "clusterSize": 1, "clusterMode": "single-node", "starts_at": None,
            "bootstrap_script": None, "owner_access_key": None, "domain": "default",
            "group": "default", "type": "interactive", "enqueueOnly": True, "maxWaitSeconds": 0,
            "reuseIfExists": True, "startupCommand": None, "image": "python"}
    status, answer = await send(c, "POST", "/session", body)
    assert status == 201, answer
    body.update(name="startcode1", dependencies=[], tag="t1", starts_at="10m",
                config={**body["config"], "preopen_ports": None, "environ": {"B": "two=2"},
                        "resources": {"cpu": "1", "mem": "256m"},
                        "resource_opts": {"shmem": "64m"}, "agentList": ["agent-1"]})
    status, answer = await send(c, "POST", "/session", body)
    assert status == 201, answer
    row = await root_.sessions.resolve(await _caller(root_), "startcode1")
    assert row["tag"] == "t1" and row["environ"] == {"B": "two=2"} and row["starts_at"] is not None


async def _caller(root_):
    from test_manager_lifecycle import caller

    return await caller(root_)


async def test_a_body_past_the_json_limit_is_a_413(api):
    from bai.manager.api.params import MAX_JSON_BYTES

    root_, client = api
    c = Signed(client, (root_.keys["user"]["access_key"], root_.keys["user"]["secret_key"]))
    big = json.dumps(create(bootstrap_script="x" * MAX_JSON_BYTES)).encode()
    status, problem = await send(c, "POST", "/session", big)
    assert status == 413 and problem["type"].endswith("/request-too-large")


@pytest.mark.parametrize("filename", ["a\x00b.txt", "a\nb.txt", "x\r.txt", "%00.txt", "a%0Ab"])
async def test_an_upload_file_name_with_a_control_character_is_a_400(filename):
    from bai.common.errors import InvalidAPIParameters
    from bai.manager.api.stream import safe_relpath

    with pytest.raises(InvalidAPIParameters) as e:
        safe_relpath(filename)
    assert e.value.data == {"field": "filename"}
    assert safe_relpath("data%2Fin.txt") == "data/in.txt"


async def test_every_policy_field_reaches_the_policy(api):
    # the model declares each field the service takes: one it dropped would change nothing
    root_, client = api
    c = Signed(client, (root_.keys["admin"]["access_key"], root_.keys["admin"]["secret_key"]))
    change = {"max_concurrent_sessions": 3, "idle_timeout": 60, "pids_limit": 77,
              "disk_quota": "1g", "total_resource_slots": {"cpu": "9"},
              "min_resource_slots": {"cpu": "0.5"}}
    status, answer = await send(c, "PATCH", "/admin/resource-policies/default", change)
    assert status == 200, answer
    p = answer["resource_policy"]
    assert (p["max_concurrent_sessions"], p["idle_timeout"], p["pids_limit"], p["disk_quota"]) \
        == (3, 60, 77, 2**30)
    assert p["total_resource_slots"] == {"cpu": "9"} and p["min_resource_slots"] == {"cpu": "0.5"}
    status, answer = await send(c, "POST", "/admin/resource-policies",
                                {"name": "p2", "pids_limit": 5, "disk_quota": 4096})
    assert status == 201 and answer["resource_policy"]["pids_limit"] == 5, answer
    assert answer["resource_policy"]["disk_quota"] == 4096


async def test_bodies_signed_with_their_hash_reach_every_json_route(api):
    # the auth middleware reads a hashed body first: each route must still see it
    root_, client = api
    keys = root_.keys["user"]
    c = Signed(client, (keys["access_key"], keys["secret_key"]))

    async def hashed(method, path, payload):
        data = json.dumps(payload).encode()
        resp = await client.request(method, path, data=data, headers=c.headers(
            method, path, "application/json", body=data))
        return resp.status, await resp.json()

    status, answer = await hashed("POST", "/session", create(name="hashed-1"))
    assert status == 201, answer
    status, answer = await hashed("POST", "/admin/gql", {"query": "{ compute_session_list(limit: 5, offset: 0) { total_count } }"})
    assert status == 200 and "errors" not in answer, answer
    status, answer = await hashed("POST", "/session/_/destroy", {"names": ["hashed-1"]})
    assert status == 200 and answer["results"][0]["name"] == "hashed-1", answer
