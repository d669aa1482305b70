"""``destroy_many``: several sessions ended as one request (``rm A B``)."""

from __future__ import annotations

import uuid

import pytest
from test_manager_lifecycle import body, caller, history, manager, wait_status  # noqa: F401



async def test_the_queued_one_is_cancelled_even_when_the_scheduler_races(manager):  # noqa: F811
    me = await caller(manager)
    a = await manager.sessions.create(me, body("holder-a", resources={"cpu": "2"}))
    b = await manager.sessions.create(me, body("waiter-b", resources={"cpu": "2"},
                                              enqueueOnly=True))
    a_id, b_id = uuid.UUID(a["sessionId"]), uuid.UUID(b["sessionId"])
    assert b["status"] == "PENDING"
    terminate = manager.sessions.lifecycle.terminate

    async def terminate_then_schedule(sid, **kw):
        # the worst case: each session ends at once and a scheduling pass runs right after
        stats = await terminate(sid, **kw)
        if sid == a_id:
            await wait_status(manager, a_id, {"TERMINATED"})
        await manager.scheduler.run_pass()
        return stats

    manager.sessions.lifecycle.terminate = terminate_then_schedule
    answers = await manager.sessions.destroy_many(me, ["holder-a", "no-such-1", "waiter-b"])
    assert [x["name"] for x in answers] == ["holder-a", "no-such-1", "waiter-b"]
    assert answers[1]["error"]["status"] == 404 and "no-such-1" in answers[1]["error"]["msg"]
    assert answers[2]["stats"]["status"] == "cancelled"
    await wait_status(manager, b_id, {"CANCELLED"})
    assert [to for _, to, _ in await history(manager, b_id)] == ["PENDING", "CANCELLED"]
    await wait_status(manager, a_id, {"TERMINATED"})


@pytest.mark.parametrize("payload", [
    {}, {"names": []}, {"names": "abcd"}, {"names": [1]}, [], {"names": ["abcd"], "forced": "yes"},
    {"names": ["abcd"], "owner_access_key": 3}, {"names": ["abcd"] * 1001},
])
async def test_destroy_many_refuses_what_is_not_a_list_of_names(manager, payload):  # noqa: F811
    from api_support import Signed, make_app, start_client

    from bai.manager.api import session

    client = await start_client(make_app(manager, session))
    try:
        keys = manager.keys["user"]
        api = Signed(client, (keys["access_key"], keys["secret_key"]))
        resp = await api.request("POST", "/session/_/destroy", payload)
        problem = await resp.json()
        assert resp.status == 400 and problem["type"] and problem["title"], problem
    finally:
        await client.close()
