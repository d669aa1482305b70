"""``GET /session/_/list``: the pre-serialised listing ``backend.ai ps`` uses. It must answer
exactly what ``compute_session_list`` answers (same values for every field, same order, same
total, same visibility), on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
from urllib.parse import quote
from datetime import datetime, timedelta, timezone

import pytest
from api_support import ADMIN, OTHER, USER, ApiRoot, Signed, add_session, call, make_app, seed, \
    start_client
from pg_support import private_store

from bai.manager.api import gql, session
from bai.manager.services.listing import LISTED_FIELDS
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t

LIST_Q = """query($limit:Int!, $offset:Int!, $status: String, $access_key: String, $filter: String,
 $order: String) { compute_session_list(limit:$limit, offset:$offset, status:$status,
 access_key:$access_key, filter:$filter, order:$order) { items { %s } total_count } }"""
FIELDS = [*LISTED_FIELDS, "dependencies"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request, tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with contextlib.AsyncExitStack() as stack:
        root = ApiRoot(settings)
        if request.param == "postgres":
            await root.store.close()
            root.store = await stack.enter_async_context(private_store("sl"))
        s = await seed(root.store)
        client = await start_client(make_app(root, gql, session))
        yield root, s, client
        await client.close()
        await root.store.close()


async def _sessions(root, s) -> None:
    base = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    a = await add_session(root.store, s, name="first", changed=base, status="PENDING",
                          status_data={"scheduler": {"retries": 2}}, starts_at=base,
                          resource_opts={"shmem": "64m"}, mounts=[{"name": "data"}, "old"],
                          service_ports=[{"name": "jupyter", "protocol": "http",
                                          "ports": [8081]}], abusing_reports=[{"x": 1}])
    b = await add_session(root.store, s, name="second", changed=base + timedelta(seconds=1),
                          status="RUNNING", scheduled_at=base, tag="t1", type="INTERACTIVE")
    await add_session(root.store, s, name="theirs", access_key=OTHER[0],
                      changed=base + timedelta(seconds=3), status="PENDING")
    await add_session(root.store, s, name="ended", changed=base.replace(microsecond=250),
                      status="TERMINATED", scheduled_at=base, terminated_at=base,
                      result="SUCCESS", type="BATCH", startup_command="true")
    async with root.store.begin() as conn:
        await conn.execute(t.session_dependencies.insert().values(session_id=b["id"],
                                                                  depends_on=a["id"]))


async def _both(who: Signed, fields: list[str], **params):
    gql_fields = " ".join("dependencies { name id }" if f == "dependencies" else f
                          for f in fields)
    variables = {"limit": params.get("limit", 20), "offset": params.get("offset", 0),
                 "status": params.get("status"), "access_key": params.get("access_key"),
                 "filter": params.get("filter"), "order": params.get("order")}
    graph = (await who.gql(LIST_Q % gql_fields, variables))["data"]["compute_session_list"]
    pairs = {"fields": ",".join(fields), **{k: v for k, v in params.items() if v is not None}}
    # as the test client sends it (it would unquote a quoted comma after signing)
    query = "&".join(f"{k}={quote(str(v), safe=',')}" for k, v in pairs.items())
    rows = await call(who, "GET", f"/session/_/list?{query}")
    return graph, rows


@pytest.mark.parametrize("params", [
    {"status": "PENDING,RUNNING,TERMINATED"},
    {"status": "TERMINATED,PENDING,RUNNING", "order": "name", "limit": 2, "offset": 1},
    {"filter": 'name ilike "%d"', "order": "-group_name"},
    {"access_key": USER[0]},
])
async def test_rows_are_what_graphql_answers_field_for_field(env, params):
    root, s, client = env
    await _sessions(root, s)
    graph, rows = await _both(Signed(client, ADMIN), FIELDS, **params)
    assert rows["fields"] == FIELDS and rows["is_admin"] is True
    assert rows["total_count"] == graph["total_count"]
    assert graph["items"], "the case lists something"
    assert [dict(zip(FIELDS, r, strict=True)) for r in rows["items"]] == graph["items"]


async def test_a_user_sees_only_their_own_and_never_anothers(env):
    root, s, client = env
    await _sessions(root, s)
    user = Signed(client, USER)
    graph, rows = await _both(user, ["name", "access_key"], status="PENDING,RUNNING,TERMINATED")
    assert rows["is_admin"] is False
    assert sorted(r[0] for r in rows["items"]) == ["ended", "first", "second"]
    assert [dict(zip(["name", "access_key"], r, strict=True)) for r in rows["items"]] \
        == graph["items"]
    denied = await call(user, "GET", f"/session/_/list?fields=name&access_key={OTHER[0]}",
                        status=403)
    assert denied["title"] and "theirs" not in json.dumps(denied)


async def test_counts_past_the_end_and_refuses_what_it_does_not_know(env):
    root, s, client = env
    await _sessions(root, s)
    admin = Signed(client, ADMIN)
    past = await call(admin, "GET", "/session/_/list?fields=name&status=PENDING&offset=10")
    assert past["items"] == [] and past["total_count"] == 2
    none = await call(admin, "GET", "/session/_/list?fields=name&status=SUSPENDED")
    assert none["items"] == [] and none["total_count"] == 0
    for query, word in (("fields=name,secret_key", "secret_key"), ("fields=name&limit=x", "limit"),
                        ("fields=name&limit=10001", "limit"), ("fields=name&offset=-1", "offset"),
                        ("fields=name&filter=name%20~~", "filter")):
        problem = await call(admin, "GET", f"/session/_/list?{query}", status=400)
        assert problem["type"] and problem["title"], problem
        assert word in json.dumps(problem).lower(), (query, problem)


# -- render=table: ps's table made by the manager, kept as bytes until a session changes ----------

def _table_query(fields, **params) -> str:
    pairs = {"fields": ",".join(fields), "render": "table", **params}
    return "&".join(f"{k}={quote(str(v), safe=',')}" for k, v in pairs.items())


async def _table(who: Signed, fields, expect: int = 200, **params):
    resp = await who.request("GET", f"/session/_/list?{_table_query(fields, **params)}", None)
    text = await resp.text()
    assert resp.status == expect, text
    return resp, text


@pytest.mark.parametrize("keypair", [ADMIN, USER])
async def test_the_rendered_table_is_the_one_the_cli_makes_of_the_rows(env, keypair):
    from bai.common.sessionfields import table_of
    from bai.common.texttable import plain_table

    root, s, client = env
    await _sessions(root, s)
    who = Signed(client, keypair)
    from bai.common.sessionfields import FIELDS as COLUMNS

    # every column ps shows (not idle_checks: its seconds left move between the two calls)
    shown = [f for f in FIELDS if f in COLUMNS and f != "idle_checks"]
    for fields in (shown, ["name", "access_key", "status"]):
        status = "PENDING,RUNNING,TERMINATED"
        rows = await call(who, "GET", f"/session/_/list?{_table_query(fields, status=status)}"
                          .replace("&render=table", ""))
        resp, text = await _table(who, fields, status=status, user_drops="access_key")
        kept = [f for f in fields if keypair == ADMIN or f != "access_key"]
        items = [{f: v for f, v in zip(fields, r, strict=True) if f in kept}
                 for r in rows["items"]]
        assert text == plain_table(*table_of(kept, items)) + "\n"
        assert resp.headers["X-BAI-Count"] == str(len(items))
        assert resp.headers["X-BAI-Total-Count"] == str(rows["total_count"])
        assert (keypair == ADMIN) == ("Owner Access Key" in text)


async def test_a_new_changed_or_ended_session_shows_in_the_very_next_table(env):
    root, s, client = env
    await _sessions(root, s)
    admin = Signed(client, ADMIN)
    fields, status = ["name", "status"], "PENDING,RUNNING"
    cache = client.app.get(session.LISTING_CACHE)
    _, before = await _table(admin, fields, status=status)
    hits = cache.hits
    assert (await _table(admin, fields, status=status))[1] == before
    if root.store.is_sqlite:
        assert cache.hits == hits + 1  # the second answer came from the cache
    await add_session(root.store, s, name="newcomer", status="PENDING")
    _, after = await _table(admin, fields, status=status)
    assert "newcomer" in after and "newcomer" not in before
    async with root.store.begin() as conn:
        await conn.execute(t.sessions.update().where(t.sessions.c.name == "newcomer")
                           .values(status="TERMINATED"))
    _, ended = await _table(admin, fields, status=status)
    assert "newcomer" not in ended
    async with root.store.begin() as conn:
        await conn.execute(t.sessions.update().where(t.sessions.c.name == "second")
                           .values(name="renamed"))
    assert "renamed" in (await _table(admin, fields, status=status))[1]


async def test_a_cached_table_never_reaches_another_caller(env):
    root, s, client = env
    await _sessions(root, s)
    admin, user, other = Signed(client, ADMIN), Signed(client, USER), Signed(client, OTHER)
    status = "PENDING,RUNNING,TERMINATED"
    _, everyone = await _table(admin, ["name"], status=status)
    assert "theirs" in everyone and "first" in everyone
    _, mine = await _table(user, ["name"], status=status)
    assert "theirs" not in mine and "first" in mine
    _, theirs = await _table(other, ["name"], status=status)
    assert "theirs" in theirs and "first" not in theirs
    # an admin's table of another keypair, then that keypair asked by a user: refused
    await _table(admin, ["name"], status=status, access_key=OTHER[0])
    resp, text = await _table(user, ["name"], 403, status=status, access_key=OTHER[0])
    assert "theirs" not in text


async def test_a_table_takes_up_to_max_table_rows_and_refuses_bad_renders(env):
    from bai.manager.services.listing import MAX_TABLE

    root, s, client = env
    await _sessions(root, s)
    admin = Signed(client, ADMIN)
    resp, text = await _table(admin, ["name"], status="PENDING", limit=MAX_TABLE)
    assert resp.headers["X-BAI-Count"] == "2" and "first" in text
    await _table(admin, ["name"], 400, limit=MAX_TABLE + 1)
    await _table(admin, ["name", "session_id"], 400)
    _, none = await _table(admin, ["name"], status="SUSPENDED")
    assert none == ""
    problem = await call(admin, "GET", "/session/_/list?fields=name&render=html", status=400)
    assert problem["type"] and "render" in problem["msg"]
