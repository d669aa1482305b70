"""Admin REST API: images and aliases, users and keypairs, policies, agents; users are refused."""

from __future__ import annotations

import pytest
from api_support import ADMIN, USER, ApiRoot, Signed, add_session, make_app, seed, start_client

from bai.manager.api import admin, gql
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


@pytest.fixture
async def env(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")
    api_root = ApiRoot(settings)
    s = await seed(api_root.store)
    async with api_root.store.begin() as conn:
        await conn.execute(t.images.insert().values(name="python:3.11-debian12", labels={}, min_slots={},
                                                    service_ports=[]))
        await conn.execute(t.agents.insert().values(id="agent-0", address="http://127.0.0.1:1",
                                                    available_slots={"cpu": "4", "mem": "4294967296"},
                                                    occupied_slots={"cpu": "1"}, isolation={}))
    client = await start_client(make_app(api_root, admin, gql))
    yield api_root, s, client
    await client.close()
    await api_root.store.close()


async def call(c: Signed, method: str, path: str, body=None, status: int = 200):
    resp = await c.request(method, path, body)
    data = await resp.json()
    assert resp.status == status, data
    return data


async def test_user_keypair_is_refused_everywhere(env):
    _, _, client = env
    user = Signed(client, USER)
    for method, path in [("GET", "/admin/images"), ("POST", "/admin/aliases"), ("GET", "/admin/users"),
                         ("POST", "/admin/keypairs"), ("GET", "/admin/resource-policies"),
                         ("PATCH", "/admin/agents/agent-0")]:
        body = await call(user, method, path, {} if method != "GET" else None, status=403)
        assert body["type"].endswith("/forbidden") and body["title"] == "Admin privilege required."


async def test_images_and_aliases(env):
    _, _, client = env
    a = Signed(client, ADMIN)
    img = await call(a, "POST", "/admin/images", {"name": "cr.example/ml/torch:2.1-debian12",
                                                  "min_slots": {"cpu": "1", "mem": "1g"}}, status=201)
    assert img["image"]["registry"] == "cr.example" and img["image"]["min_slots"] == {"cpu": "1", "mem": "1073741824"}
    await call(a, "POST", "/admin/aliases", {"alias": "py", "target": "python:3.11-debian12"}, status=201)
    await call(a, "POST", "/admin/aliases", {"alias": "py3", "target": "py"}, status=201)
    aliases = (await call(a, "GET", "/admin/aliases"))["aliases"]
    assert aliases == [{"alias": "py", "target": "python:3.11-debian12"},
                       {"alias": "py3", "target": "python:3.11-debian12"}]
    images = (await call(a, "GET", "/admin/images"))["images"]
    assert [i["name"] for i in images] == ["cr.example/ml/torch:2.1-debian12", "python:3.11-debian12"]
    assert images[1]["aliases"] == ["py", "py3"]
    bad = await call(a, "POST", "/admin/aliases", {"alias": "x", "target": "nope:1"}, status=404)
    assert "python:3.11-debian12" in bad["msg"]
    await call(a, "DELETE", "/admin/aliases/py")
    gone = await call(a, "DELETE", "/admin/aliases/py", status=404)
    assert "py3" in gone["msg"]
    await call(a, "DELETE", "/admin/images/cr.example%2Fml%2Ftorch:2.1-debian12")  # as our SDK quotes it
    assert len((await call(a, "GET", "/admin/images"))["images"]) == 1


async def test_users_keypairs_and_policies(env):
    api_root, s, client = env
    a = Signed(client, ADMIN)
    user = (await call(a, "POST", "/admin/users", {"email": "new@example.org"}, status=201))["user"]
    assert user["groups"] == ["default"] and user["role"] == "user"
    await call(a, "POST", "/admin/users", {"email": "new@example.org"}, status=409)
    await call(a, "POST", "/admin/resource-policies",
               {"name": "one", "max_concurrent_sessions": 1, "total_resource_slots": {"cpu": "2"}}, status=201)
    kp = (await call(a, "POST", "/admin/keypairs", {"user": "new@example.org", "resource_policy": "one"},
                     status=201))["keypair"]
    assert kp["secret_key"] and kp["is_admin"] is False and kp["resource_policy"] == "one"
    listed = (await call(a, "GET", "/admin/keypairs?user=new@example.org"))["keypairs"]
    assert [k["access_key"] for k in listed] == [kp["access_key"]] and "secret_key" not in listed[0]

    # the new keypair works, then is refused once deactivated
    new = Signed(client, (kp["access_key"], kp["secret_key"]))
    assert (await new.gql("query { keypair { access_key is_admin } }"))["data"]["keypair"]["is_admin"] is False
    await call(a, "PATCH", f"/admin/keypairs/{kp['access_key']}", {"is_active": False})
    resp = await new.request("POST", "/admin/gql", {"query": "{ keypair { access_key } }", "variables": {}})
    assert resp.status == 401 and (await resp.json())["title"] == "Inactive keypair."

    policies = {p["name"]: p for p in (await call(a, "GET", "/admin/resource-policies"))["resource_policies"]}
    assert policies["one"]["keypairs"] == 1 and policies["one"]["total_resource_slots"] == {"cpu": "2"}
    changed = (await call(a, "PATCH", "/admin/resource-policies/one", {"idle_timeout": 60}))["resource_policy"]
    assert changed["idle_timeout"] == 60 and changed["max_concurrent_sessions"] == 1
    await call(a, "PATCH", f"/admin/keypairs/{USER[0]}", {"resource_policy": "missing"}, status=404)

    await call(a, "DELETE", f"/admin/keypairs/{ADMIN[0]}", status=403)
    await add_session(api_root.store, s, access_key=USER[0], status="RUNNING")
    busy = await call(a, "DELETE", f"/admin/keypairs/{USER[0]}", status=409)
    assert "deactivate" in busy["msg"]
    await call(a, "DELETE", f"/admin/keypairs/{kp['access_key']}")

    await call(a, "PATCH", "/admin/users/new@example.org", {"is_active": False})
    users = {u["email"]: u for u in (await call(a, "GET", "/admin/users"))["users"]}
    assert users["new@example.org"]["is_active"] is False


async def test_agents_list_and_drain(env):
    _, _, client = env
    a = Signed(client, ADMIN)
    (agent,) = (await call(a, "GET", "/admin/agents"))["agents"]
    assert agent["status"] == "ALIVE" and agent["schedulable"] is True
    assert agent["free_slots"] == {"cpu": "3", "mem": "4294967296"}
    drained = (await call(a, "PATCH", "/admin/agents/agent-0", {"schedulable": False}))["agent"]
    assert drained["schedulable"] is False
    missing = await call(a, "PATCH", "/admin/agents/nope", {"schedulable": True}, status=404)
    assert "agent-0" in missing["msg"]
