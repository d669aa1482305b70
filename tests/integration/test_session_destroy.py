"""``destroy_many``: several sessions ended as one request (``rm A B``); a destroy answered
once the session is TERMINATING (``wait=False``, the run stream of ``run --rm``)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import sqlalchemy as sa
from test_manager_lifecycle import body, caller, history, manager, wait_status  # noqa: F401

from bai.common.errors import AgentError, SessionAlreadyExists
from bai.manager.store.tables import agents



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


def hold_destroys(fake) -> asyncio.Event:
    """The fake agent's destroys wait for the returned event (set it to let them go on)."""
    gate, destroy = asyncio.Event(), fake.destroy_kernel

    async def held(*args):
        await gate.wait()
        return await destroy(*args)

    fake.destroy_kernel = held
    return gate


async def occupied_cpu(root) -> str:
    async with root.store.connect() as conn:
        return (await conn.execute(sa.select(agents.c.occupied_slots))).scalar().get("cpu", "0")


async def test_a_destroy_answered_before_it_ended_still_ends_the_session(manager):  # noqa: F811
    """Without ``wait`` the answer comes while the agent still destroys the kernel: the session
    is TERMINATING then (its name still taken), and ends TERMINATED with its slots released
    once the agent is done. Fails when the answer waits for the agent (times out here)."""
    me = await caller(manager)
    made = await manager.sessions.create(me, body("early-end", resources={"cpu": "1"}))
    sid = uuid.UUID(made["sessionId"])
    assert made["status"] == "RUNNING" and await occupied_cpu(manager) == "1"
    gate = hold_destroys(manager.fake)
    answer = await asyncio.wait_for(
        manager.sessions.destroy_row(me, {"id": sid}, wait=False), 10)
    assert answer == {"stats": {"status": "terminating"}}
    assert (await wait_status(manager, sid, {"TERMINATING"}))["status"] == "TERMINATING"
    with pytest.raises(SessionAlreadyExists):  # the name is free once it has ended
        await manager.sessions.create(me, body("early-end", reuseIfExists=False))
    gate.set()
    await wait_status(manager, sid, {"TERMINATED"})
    assert await occupied_cpu(manager) == "0"
    assert [to for _, to, _ in await history(manager, sid)][-2:] == ["TERMINATING", "TERMINATED"]
    again = await manager.sessions.create(me, body("early-end", reuseIfExists=False))
    assert again["status"] == "RUNNING"
    assert (await manager.sessions.destroy(me, "early-end"))["stats"]["status"] == "terminated"


@pytest.mark.parametrize("failure", [AgentError("agent unreachable"), RuntimeError("bug")])
async def test_a_destroy_that_fails_after_its_answer_is_logged(manager, caplog,  # noqa: F811
                                                               failure):
    """What fails once the answer went is in the manager's log, and the session stays
    TERMINATING (its deadline ends it) rather than ending as if its kernel were gone. Fails
    without the log line (the exception lost in the task)."""
    me = await caller(manager)
    made = await manager.sessions.create(me, body(f"end-fails-{len(str(failure))}"))
    sid = uuid.UUID(made["sessionId"])
    ended = asyncio.Event()

    async def failing(*_args):
        ended.set()
        raise failure

    manager.fake.destroy_kernel = failing
    with caplog.at_level(logging.WARNING, logger="bai.manager.services.lifecycle"):
        answer = await asyncio.wait_for(
            manager.sessions.destroy_row(me, {"id": sid}, wait=False), 10)
        assert answer == {"stats": {"status": "terminating"}}
        await asyncio.wait_for(ended.wait(), 10)
        for _ in range(100):
            if any(str(failure) in r.getMessage() or (r.exc_info and r.exc_info[1] is failure)
                   for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    logged = [r for r in caplog.records if str(failure) in r.getMessage()
              or (r.exc_info and r.exc_info[1] is failure)]
    assert logged and logged[0].levelno >= logging.WARNING, caplog.text
    assert (await wait_status(manager, sid, {"TERMINATING"}))["status"] == "TERMINATING"


async def test_a_stopping_manager_finishes_the_destroys_it_answered(manager):  # noqa: F811
    """The manager's stop gives an answered destroy time to end (here the agent is done
    while the stop waits): fails when the stop cancels it (the session stays TERMINATING)."""
    me = await caller(manager)
    made = await manager.sessions.create(me, body("end-at-stop"))
    sid = uuid.UUID(made["sessionId"])
    gate = hold_destroys(manager.fake)
    await asyncio.wait_for(manager.sessions.destroy_row(me, {"id": sid}, wait=False), 10)
    closing = asyncio.create_task(manager.sessions.lifecycle.close())
    await asyncio.sleep(0.2)
    assert not closing.done()
    gate.set()
    await asyncio.wait_for(closing, 10)
    await wait_status(manager, sid, {"TERMINATED"}, timeout=0.5)
