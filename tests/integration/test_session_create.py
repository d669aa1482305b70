"""The create call of SessionService: the limits it checks before writing anything (policy,
group, domain: read with the keypair and the group), and its wait for the session to settle."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from test_manager_lifecycle import body, caller, manager  # noqa: F401

from bai.common.errors import QuotaExceeded
from bai.manager.store.tables import (
    domains,
    groups,
    keypair_resource_policies,
    sessions,
)


async def _limit(root, table, slots) -> None:
    async with root.store.begin() as conn:
        await conn.execute(sa.update(table).values(total_resource_slots=slots))


@pytest.mark.parametrize("table, what", [
    (keypair_resource_policies, "keypair resource policy"),
    (groups, "group default"),
    (domains, "domain default"),
])
async def test_each_limit_refuses_a_larger_request_and_writes_nothing(
        manager, table, what):  # noqa: F811
    me = await caller(manager)
    await _limit(manager, table, {"cpu": "1"})
    with pytest.raises(QuotaExceeded) as e:
        await manager.sessions.create(me, body("over-1", resources={"cpu": "2"}, maxWaitSeconds=3))
    assert f"cpu requested 2, but {what}" in str(e.value) and "allows at most 1" in str(e.value)
    async with manager.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar() == 0
    ans = await manager.sessions.create(me, body("under-1", resources={"cpu": "1"}))
    assert ans["status"] == "RUNNING"


async def test_create_answers_from_the_events_and_with_the_row_it_wrote(manager):  # noqa: F811
    me = await caller(manager)
    ans = await manager.sessions.create(me, body("evented1"))
    row = await manager.sessions.resolve(me, "evented1")
    assert ans == {"sessionId": str(row["id"]), "sessionName": "evented1", "status": "RUNNING",
                   "servicePorts": list(row["service_ports"] or []), "created": True}
    assert row["status"] == "RUNNING"



async def test_a_gpu_slot_no_agent_offers_is_refused_naming_what_is_offered(
        manager):  # noqa: F811
    me = await caller(manager)
    with pytest.raises(QuotaExceeded) as e:
        await manager.sessions.create(me, body("gpu-1", resources={"cuda.shares": "1"}))
    assert "no agent offers cuda.shares" in str(e.value), str(e.value)
    assert "offered there: cpu, mem" in str(e.value)
    async with manager.store.begin() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(sessions))
                ).scalar() == 0
