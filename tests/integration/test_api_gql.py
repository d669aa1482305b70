"""``POST /admin/gql`` with the exact query strings of the official client (client-protocol 3.2)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from api_support import ADMIN, OTHER, USER, ApiRoot, Signed, add_session, make_app, seed, start_client

from bai.manager.api import gql, root
from bai.manager.settings import ManagerSettings

KEYPAIR_Q = "query {  keypair {    user_id access_key secret_key is_active is_admin  }}"
LIST_Q = """query($limit:Int!, $offset:Int!, $status: String, $access_key: String, $filter: String, $order: String) {
  compute_session_list(
      limit:$limit, offset:$offset, status:$status, access_key:$access_key, filter:$filter, order:$order) {
    items { %s }
    total_count
  }
}"""
DETAIL_Q = (
    "query($id: UUID!) {  compute_session(id: $id) {    name id main_kernel_id image tag created_at "
    "terminated_at status status_info status_data occupying_slots idle_checks containers { id "
    "cluster_role cluster_idx cluster_hostname session_id image registry status status_info "
    "status_data status_changed agent container_id resource_opts occupied_slots preopen_ports "
    "live_stat last_stat id } dependencies { name id }  }}"
)
DEFAULT_FIELDS = "name access_key id group_name main_kernel_id image type status status_info status_changed result"
ALL_FIELDS = (
    "id main_kernel_id tag name type image registry cluster_template cluster_mode cluster_size "
    "domain_name group_name group_id agent_ids user_email user_id access_key status status_info "
    "status_data status_changed created_at terminated_at starts_at scheduled_at startup_command "
    "result resource_opts scaling_group service_ports mounts occupying_slots dependencies { name id } "
    "abusing_reports idle_checks created_user_email created_user_id"
)
DEFAULT_STATUS = "PENDING,SCHEDULED,PULLING,PREPARING,RUNNING,RUNNING_DEGRADED,TERMINATING,ERROR"


def list_vars(limit=20, offset=0, status=DEFAULT_STATUS, access_key=None, filter=None, order=None):
    return {"status": status, "access_key": access_key, "filter": filter, "order": order,
            "limit": limit, "offset": offset}


@pytest.fixture
async def env(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")
    api_root = ApiRoot(settings)
    s = await seed(api_root.store)
    client = await start_client(make_app(api_root, root, gql))
    yield api_root, s, client
    await client.close()
    await api_root.store.close()


async def test_keypair_query_reports_admin_flag(env):
    _, _, client = env
    admin = await Signed(client, ADMIN).gql(KEYPAIR_Q)
    user = await Signed(client, USER).gql(KEYPAIR_Q)
    assert list(admin["data"]["keypair"]) == ["user_id", "access_key", "secret_key", "is_active", "is_admin"]
    assert admin["data"]["keypair"]["is_admin"] is True
    assert user["data"]["keypair"] == {
        "user_id": "user@example.org", "access_key": USER[0], "secret_key": USER[1],
        "is_active": True, "is_admin": False,
    }


async def test_list_keys_in_request_order_and_most_recent_first(env):
    api_root, s, client = env
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(25):
        await add_session(api_root.store, s, name=f"sess-{i:02d}", changed=base + timedelta(minutes=i))
    page = (await Signed(client, ADMIN).gql(LIST_Q % DEFAULT_FIELDS, list_vars()))["data"]
    out = page["compute_session_list"]
    assert out["total_count"] == 25
    assert len(out["items"]) == 20
    assert [i["name"] for i in out["items"][:3]] == ["sess-24", "sess-23", "sess-22"]
    assert list(out["items"][0]) == DEFAULT_FIELDS.split()
    rest = (await Signed(client, ADMIN).gql(LIST_Q % "name", list_vars(offset=20)))["data"]
    assert [i["name"] for i in rest["compute_session_list"]["items"]] == [f"sess-{i:02d}" for i in range(4, -1, -1)]
    reversed_fields = " ".join(reversed(DEFAULT_FIELDS.split()))
    out = (await Signed(client, ADMIN).gql(LIST_Q % reversed_fields, list_vars(limit=1)))["data"]
    assert list(out["compute_session_list"]["items"][0]) == reversed_fields.split()


async def test_all_fields_hold_real_values_and_json_strings(env):
    api_root, s, client = env
    dep = await add_session(api_root.store, s, name="first", status="TERMINATED")
    row = await add_session(
        api_root.store, s, name="second", tag="t1", startup_command="echo hi",
        service_ports=[{"name": "jupyter", "protocol": "http", "ports": [8081]}],
        resource_opts={"shmem": 67108864},
    )
    from bai.manager.store import tables as t

    async with api_root.store.begin() as conn:
        await conn.execute(t.session_dependencies.insert().values(session_id=row["id"], depends_on=dep["id"]))
    data = await Signed(client, USER).gql(LIST_Q % ALL_FIELDS, list_vars(filter='name == "second"'))
    assert "errors" not in data, data
    item = data["data"]["compute_session_list"]["items"][0]
    assert item["id"] == str(row["id"])
    assert item["main_kernel_id"] == str(row["main_kernel_id"])
    assert item["cluster_template"] is None
    assert item["group_name"] == "default" and item["group_id"] == str(s.group_id)
    assert item["user_email"] == "user@example.org" and item["created_user_email"] == "user@example.org"
    assert item["user_id"] == str(s.users[USER[0]]) == item["created_user_id"]
    assert item["agent_ids"] == ["agent-0"]
    assert item["tag"] == "t1" and item["startup_command"] == "echo hi"
    assert item["result"] == "UNDEFINED" and item["type"] == "INTERACTIVE"
    for key in ("status_data", "resource_opts", "service_ports", "occupying_slots", "idle_checks"):
        assert isinstance(item[key], str), key
    assert json.loads(item["occupying_slots"]) == {"cpu": "1", "mem": "268435456"}
    assert json.loads(item["service_ports"]) == {"jupyter": {"protocol": "http", "ports": [8081]}}
    assert json.loads(item["resource_opts"]) == {"shmem": 67108864}
    checks = json.loads(item["idle_checks"])["network_timeout"]
    assert checks["remaining_time_type"] == "expire_after" and 1700 < checks["remaining"] <= 1800
    assert item["dependencies"] == [{"name": "first", "id": str(dep["id"])}]
    assert datetime.fromisoformat(item["status_changed"]).tzinfo is not None


async def test_user_sees_only_own_sessions_admin_filters_by_access_key(env):
    api_root, s, client = env
    await add_session(api_root.store, s, name="mine")
    await add_session(api_root.store, s, name="theirs", access_key=OTHER[0])
    user = (await Signed(client, USER).gql(LIST_Q % "name", list_vars()))["data"]["compute_session_list"]
    assert [i["name"] for i in user["items"]] == ["mine"] and user["total_count"] == 1
    refused = await Signed(client, USER).gql(LIST_Q % "name", list_vars(access_key=OTHER[0]))
    assert refused["errors"][0]["message"]
    assert refused["data"]["compute_session_list"] is None
    admin_all = (await Signed(client, ADMIN).gql(LIST_Q % "name", list_vars()))["data"]
    assert admin_all["compute_session_list"]["total_count"] == 2
    admin_one = (await Signed(client, ADMIN).gql(LIST_Q % "name access_key", list_vars(access_key=OTHER[0])))["data"]
    assert admin_one["compute_session_list"]["items"] == [{"name": "theirs", "access_key": OTHER[0]}]


async def test_status_sets_filter_and_order(env):
    api_root, s, client = env
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i, st in enumerate(["RUNNING", "PENDING", "TERMINATED", "CANCELLED", "ERROR", "RESTARTING"]):
        await add_session(api_root.store, s, name=f"x-{st.lower()}", status=st, changed=base + timedelta(minutes=i))
    c = Signed(client, USER)

    async def names(**kw):
        data = await c.gql(LIST_Q % "name", list_vars(**kw))
        assert "errors" not in data, data
        return [i["name"] for i in data["data"]["compute_session_list"]["items"]]

    assert await names() == ["x-error", "x-pending", "x-running"]
    assert await names(status="CANCELLED,TERMINATED") == ["x-cancelled", "x-terminated"]
    assert await names(status="RUNNING_DEGRADED") == []
    assert await names(status=None) == ["x-restarting", "x-error", "x-cancelled", "x-terminated", "x-pending", "x-running"]
    assert await names(status=None, filter='status == "running"') == ["x-running"]
    assert await names(status=None, filter='name ilike "%CANCEL%" | name == "x-error"') == ["x-error", "x-cancelled"]
    assert (await names(status=None, order="+name"))[:2] == ["x-cancelled", "x-error"]
    assert (await names(status=None, order="-created_at"))[0] == "x-restarting"
    bad = await c.gql(LIST_Q % "name", list_vars(filter="nonsense ~~ 3"))
    assert "filter" in bad["errors"][0]["message"]
    bad = await c.gql(LIST_Q % "name", list_vars(order="-secret"))
    assert "cannot order by 'secret'" in bad["errors"][0]["message"]


async def test_detail_query_with_duplicate_container_id(env):
    api_root, s, client = env
    row = await add_session(api_root.store, s, name="d1")
    data = await Signed(client, USER).gql(DETAIL_Q, {"id": str(row["id"])})
    assert "errors" not in data, data
    sess = data["data"]["compute_session"]
    assert list(sess)[:3] == ["name", "id", "main_kernel_id"]
    (kernel,) = sess["containers"]
    assert kernel["id"] == str(row["main_kernel_id"])
    assert kernel["agent"] == "agent-0" and kernel["cluster_role"] == "main"
    assert json.loads(kernel["occupied_slots"]) == {"cpu": "1", "mem": "268435456"}
    assert isinstance(kernel["status_data"], str) and kernel["live_stat"] is None
    assert sess["dependencies"] == []
    other = await Signed(client, OTHER).gql(DETAIL_Q, {"id": str(row["id"])})
    assert other["data"]["compute_session"] is None
    missing = await Signed(client, ADMIN).gql(DETAIL_Q, {"id": str(uuid.uuid4())})
    assert missing["data"]["compute_session"] is None
    bad = await Signed(client, ADMIN).gql(DETAIL_Q, {"id": "not-a-uuid"})
    assert bad["errors"]


async def test_version_probe_and_announcement(env):
    _, _, client = env
    resp = await client.get("/")
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == "v7.20230615" and body["manager"].startswith("bai ")
    resp = await Signed(client, USER).request("GET", "/manager/announcement")
    assert await resp.json() == {"enabled": False, "message": ""}
    resp = await Signed(client, USER).request("GET", "/")
    assert (await resp.json())["version"] == "v7.20230615"
