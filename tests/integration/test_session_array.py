"""``POST /session`` with bai's ``array`` field: one request, one transaction, all or nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from api_support import Signed, make_app, start_client
from test_manager_lifecycle import manager  # noqa: F401

from bai.manager.api import root, session
from bai.manager.store.tables import kernels, session_history, sessions


@pytest.fixture
async def api(manager):  # noqa: F811
    client = await start_client(make_app(manager, root, session))
    yield manager, Signed(client, (manager.keys["user"]["access_key"],
                                   manager.keys["user"]["secret_key"]))
    await client.close()


def array_body(name: str, spec, **over) -> dict:
    return {"name": name, "image": "python", "type": "batch", "startupCommand": "true",
            "starts_at": "1h", "config": {"resources": {"cpu": "1"}, "environ": {"A": "1"}},
            "array": spec, **over}


async def counts(root_) -> tuple[int, int, int]:
    async with root_.store.connect() as conn:
        return tuple([(await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar()
                      for t in (sessions, kernels, session_history)])


async def test_one_request_creates_every_element_with_its_index(api):
    root_, c = api
    resp = await c.request("POST", "/session", array_body("arr1", "1-3,10-20:5"))
    answer = await resp.json()
    assert resp.status == 201, answer
    assert [(e["sessionName"], e["index"]) for e in answer["array"]] == [
        ("arr1-1", 1), ("arr1-2", 2), ("arr1-3", 3), ("arr1-10", 10), ("arr1-15", 15),
        ("arr1-20", 20)]
    assert answer["sessionName"] == "arr1-1" and answer["status"] == "PENDING"
    async with root_.store.connect() as conn:
        rows = (await conn.execute(sa.select(sessions.c.name, sessions.c.environ,
                                             sessions.c.status, sessions.c.main_kernel_id)
                                   )).all()
        kernel_ids = set((await conn.execute(sa.select(kernels.c.id))).scalars())
    got = {r.name: r.environ for r in rows}
    assert got == {f"arr1-{i}": {"A": "1", "BAI_ARRAY_INDEX": str(i)} for i in (1, 2, 3, 10, 15, 20)}
    assert {r.status for r in rows} == {"PENDING"}
    assert {r.main_kernel_id for r in rows} == kernel_ids  # one kernel each
    assert await counts(root_) == (6, 6, 6)


async def test_a_taken_name_leaves_nothing_of_the_array(api):
    root_, c = api
    resp = await c.request("POST", "/session", array_body("dup1", "5"))
    assert resp.status == 201, await resp.text()
    before = await counts(root_)
    resp = await c.request("POST", "/session", array_body("dup1", "1-9"))
    problem = await resp.json()
    assert resp.status == 400 and "dup1-5" in problem["msg"], problem
    assert problem["type"].endswith("/session-already-exists")
    assert await counts(root_) == before == (1, 1, 1)


async def test_a_refused_check_leaves_nothing(api):
    root_, c = api
    body = array_body("big1", "1-50", config={"resources": {"cpu": "100000"}})
    resp = await c.request("POST", "/session", body)
    problem = await resp.json()
    assert 400 <= resp.status < 500 and problem["title"], problem
    resp = await c.request("POST", "/session", array_body("dep1", "1-50", dependencies=["nope"]))
    problem = await resp.json()
    assert resp.status == 400 and "nope" in str(problem), problem
    assert await counts(root_) == (0, 0, 0)


@pytest.mark.parametrize("spec", ["1-", "3-1", "1-20000", "x", ""])
async def test_a_bad_spec_is_a_400_problem(api, spec):
    root_, c = api
    resp = await c.request("POST", "/session", array_body("bad1", spec))
    problem = await resp.json()
    assert resp.status == 400, problem
    assert problem["type"].endswith("/invalid-api-params") and problem["title"]
    assert problem["data"]["field"] == "array"
    assert await counts(root_) == (0, 0, 0)


async def test_an_element_name_too_long_is_refused_and_nothing_written(api):
    root_, c = api
    resp = await c.request("POST", "/session", array_body("n" * 60, "1-9,100"))  # n...n-100: 64
    assert resp.status == 201, resp.status
    resp = await c.request("POST", "/session", array_body("m" * 60, "1-9,1000"))  # m...m-1000: 65
    problem = await resp.json()
    assert resp.status == 400 and problem["data"]["name"].startswith("m" * 60 + "-100"), problem
    async with root_.store.connect() as conn:
        names = set((await conn.execute(sa.select(sessions.c.name))).scalars())
    assert len(names) == 10 and not any(n.startswith("m") for n in names)
