"""The reads every transition and kernel event makes (``transitions.load_session``,
``Lifecycle._kernel``, ``Lifecycle._agent_address``, and ``Lifecycle._kernel_at``: a kernel and
its agent's address in one read) run statements built once: the rows they find on SQLite and
PostgreSQL, and no select built per call (building one of the sessions table's ~40 columns,
with its cache key, cost more than running it)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from pg_support import private_store

from bai.manager.services import lifecycle as lifecycle_module
from bai.manager.services import transitions
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.lifecycle import Lifecycle
from bai.manager.services.transitions import load_session
from bai.manager.store.engine import Store
from bai.manager.store.tables import agents, groups, kernels, keypairs, sessions, utcnow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    if request.param == "postgres":
        async with private_store("lr") as s:
            await s.migrate()
            yield s
        return
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    await s.migrate()
    yield s
    await s.close()


class NoSelect:
    """``sa`` for a module whose reads must not build a select."""

    def __getattr__(self, name):
        if name == "select":
            raise AssertionError("a select was built per call")
        return getattr(sa, name)


async def test_a_session_its_kernel_and_agent_are_read_by_statements_built_once(
        store, monkeypatch):
    keys = await bootstrap(store, max_sessions=0)
    sid, kid = uuid.uuid4(), uuid.uuid4()
    async with store.begin() as conn:
        user = (await conn.execute(sa.select(keypairs.c.user_id, keypairs.c.access_key).where(
            keypairs.c.access_key == keys["user"]["access_key"]))).first()
        group = (await conn.execute(sa.select(groups.c.id).limit(1))).scalar()
        await conn.execute(sa.insert(agents).values(
            id="a-1", address="http://a-1:6001", status="ALIVE", available_slots={},
            occupied_slots={}, scaling_group="default", last_heartbeat=utcnow()))
        await conn.execute(sa.insert(sessions).values(
            id=sid, name="s-1", access_key=user.access_key, user_id=user.user_id,
            group_id=group, domain_name="default", image="python", type="interactive",
            status="RUNNING", main_kernel_id=kid, requested_slots={}, occupying_slots={},
            created_at=utcnow()))
        await conn.execute(sa.insert(kernels).values(
            id=kid, session_id=sid, agent_id="a-1", status="RUNNING", image="python",
            cluster_role="main",
            cluster_idx=0, created_at=utcnow()))
    monkeypatch.setattr(transitions, "sa", NoSelect())
    monkeypatch.setattr(lifecycle_module, "sa", NoSelect())
    lc = Lifecycle.__new__(Lifecycle)
    async with store.connect() as conn:
        row = await load_session(conn, sid)
        assert row is not None and (row["id"], row["name"], row["main_kernel_id"]) == \
            (sid, "s-1", kid)
        assert await load_session(conn, uuid.uuid4()) is None
        kernel = await lc._kernel(conn, kid)
        assert kernel is not None and (kernel["id"], kernel["agent_id"]) == (kid, "a-1")
        assert await lc._kernel(conn, uuid.uuid4()) is None
        assert await lc._agent_address(conn, "a-1") == "http://a-1:6001"
        assert await lc._agent_address(conn, "a-2") is None
        kernel, address = await lc._kernel_at(conn, kid)
        assert kernel == await lc._kernel(conn, kid) and address == "http://a-1:6001"
        assert await lc._kernel_at(conn, uuid.uuid4()) == (None, None)
        assert await lc._kernel_at(conn, None) == (None, None)
    async with store.begin() as conn:  # a kernel whose agent is unknown (gone): no address
        await conn.execute(sa.update(kernels).where(kernels.c.id == kid).values(agent_id="a-9"))
    async with store.connect() as conn:
        kernel, address = await lc._kernel_at(conn, kid)
        assert kernel is not None and kernel["agent_id"] == "a-9" and address is None
