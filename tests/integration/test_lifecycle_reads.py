"""The reads every transition and kernel event makes (``transitions.load_session``,
``Lifecycle._kernel``, ``Lifecycle._agent_address``, and ``Lifecycle._kernel_at``: a kernel and
its agent's address in one read; a run of agent events' sessions, ``_kernel_sessions``) run
statements built once: the rows they find on SQLite and PostgreSQL, and no select built per
call (building one of the sessions table's ~40 columns, with its cache key, cost more than
running it). The writes of a move whose results nobody reads (the kernel's mirror, the
history) go with the transaction's commit on SQLite."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from pg_support import private_store

from bai.manager.services import lifecycle as lifecycle_module
from bai.manager.services import transitions
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.lifecycle import (
    _END_SELECT,
    _WALK_SELECT,
    Lifecycle,
    _kernel_sessions,
)
from bai.manager.services.transitions import (
    Outbox,
    load_session,
    place_many,
    transit,
    transit_many,
)
from bai.manager.store.engine import Store
from bai.manager.store.tables import (
    agents,
    groups,
    kernels,
    keypairs,
    session_history,
    sessions,
    utcnow,
)


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


class Counted:
    """A connection that counts the statements run through it."""

    def __init__(self, conn) -> None:
        self.conn, self.statements = conn, 0

    async def execute(self, *args, **kw):
        self.statements += 1
        return await self.conn.execute(*args, **kw)


async def sessions_with_kernels(store, statuses):
    """A session with a main kernel in each of ``statuses``: {status: (session id, kernel id)}."""
    keys = await bootstrap(store, max_sessions=0)
    made = {}
    async with store.begin() as conn:
        user = (await conn.execute(sa.select(keypairs.c.user_id, keypairs.c.access_key).where(
            keypairs.c.access_key == keys["user"]["access_key"]))).first()
        group = (await conn.execute(sa.select(groups.c.id).limit(1))).scalar()
        for i, status in enumerate(statuses):
            sid, kid = uuid.uuid4(), uuid.uuid4()
            await conn.execute(sa.insert(sessions).values(
                id=sid, name=f"s-{i}", access_key=user.access_key, user_id=user.user_id,
                group_id=group, domain_name="default", image="python", type="BATCH",
                status=status, main_kernel_id=kid, requested_slots={}, occupying_slots={},
                created_at=utcnow()))
            await conn.execute(sa.insert(kernels).values(
                id=kid, session_id=sid, status=status, image="python", cluster_role="main",
                cluster_idx=0, created_at=utcnow()))
            made[status] = (sid, kid)
    return made


async def test_a_runs_sessions_are_one_statement_built_once(store, monkeypatch):
    made = await sessions_with_kernels(store, ("CREATING", "RUNNING", "TERMINATED"))
    by_kid = {kid: None for _, kid in made.values()} | {uuid.uuid4(): None}
    monkeypatch.setattr(lifecycle_module, "sa", NoSelect())
    async with store.connect() as conn:
        counted = Counted(conn)
        kernel_rows, rows = await _kernel_sessions(counted, by_kid, _END_SELECT)
        assert counted.statements == 1
        assert kernel_rows == {kid: sid for st, (sid, kid) in made.items() if st != "TERMINATED"}
        assert {sid: (r["status"], r["main_kernel_id"], r["type"]) for sid, r in rows.items()} \
            == {sid: (st, kid, "BATCH") for st, (sid, kid) in made.items() if st != "TERMINATED"}
        kernel_rows, rows = await _kernel_sessions(counted, by_kid, _WALK_SELECT)
        assert counted.statements == 2
        sid, kid = made["CREATING"]
        assert kernel_rows == {kid: sid} and list(rows) == [sid]
        assert "_kid" not in rows[sid] and rows[sid]["name"] == "s-0"


async def test_a_moves_unread_writes_go_with_its_commit(store, trips):
    """``transit`` and ``transit_many`` read back only their compare-and-set: on SQLite the
    kernel's mirror and the history rows go with the commit (one trip to the thread a move,
    and the commit: 3 trips here where they were 7), and on both databases they are written."""
    made = await sessions_with_kernels(store, ("RUNNING", "CREATING"))
    (ended, ended_kid), (started, started_kid) = made["RUNNING"], made["CREATING"]
    async with store.begin() as conn:
        rows = {sid: await load_session(conn, sid) for sid in (ended, started)}
        trips[0] = 0
        assert await transit(conn, ended, "RUNNING", "TERMINATING", reason="user-requested",
                             cause="test", outbox=Outbox(), row=rows[ended]) is not None
        moved = await transit_many(conn, [rows[started]], "CREATING",
                                   [("RUNNING", "started")], cause="test", outbox=Outbox())
        assert [r["id"] for r in moved] == [started]
    if store.is_sqlite:
        assert trips[0] == 3
    async with store.connect() as conn:
        kernel_status = dict((await conn.execute(sa.select(kernels.c.id, kernels.c.status)))
                             .all())
        history = (await conn.execute(
            sa.select(session_history.c.session_id, session_history.c.from_status,
                      session_history.c.to_status, session_history.c.reason)
            .order_by(session_history.c.id))).all()
    assert kernel_status == {ended_kid: "TERMINATING", started_kid: "RUNNING"}
    assert [tuple(h) for h in history] == [
        (ended, "RUNNING", "TERMINATING", "user-requested"),
        (started, "CREATING", "RUNNING", "started")]


async def test_a_placement_writes_the_sessions_with_its_commit(store, trips):
    """``place_many`` reads the sessions and agents it places on; on SQLite, where its write
    transaction holds the database from the first read, the sessions' update goes with the
    commit (3 trips to the thread: the two reads and the commit; 4 with the update sent on its
    own), and on both databases the sessions, kernels and agents are written."""
    made = await sessions_with_kernels(store, ("PENDING", "CREATING"))
    async with store.begin() as conn:
        await conn.execute(sa.update(sessions).values(status="PENDING",
                                                      requested_slots={"cpu": "1"}))
        await conn.execute(sa.insert(agents).values(
            id="a-1", address="http://a-1", available_slots={"cpu": "4"}, occupied_slots={}))
    (one, kid), (two, _) = made.values()
    trips[0] = 0
    async with store.begin() as conn:
        placed, refused = await place_many(
            conn, [(one, "a-1", "http://a-1"), (two, "a-1", "http://a-1")], outbox=Outbox(),
            then=[("PREPARING", "preparing")])
    assert {r["id"] for r in placed} == {one, two} and refused == 0
    if store.is_sqlite:
        assert trips[0] == 3
    async with store.connect() as conn:
        rows = (await conn.execute(sa.select(sessions.c.status, sessions.c.agent_ids,
                                             sessions.c.occupying_slots))).all()
        kernel = (await conn.execute(sa.select(kernels.c.status, kernels.c.agent_id)
                                     .where(kernels.c.id == kid))).one()
        occupied = (await conn.execute(sa.select(agents.c.occupied_slots))).scalar()
    assert [tuple(r) for r in rows] == [("PREPARING", ["a-1"], {"cpu": "1"})] * 2
    assert tuple(kernel) == ("PREPARING", "a-1")
    assert occupied == {"cpu": "2"}


@pytest.mark.postgres
async def test_on_postgresql_the_sessions_are_locked_and_their_kernels_not(monkeypatch):
    async with private_store("el") as store:
        await store.migrate()
        made = await sessions_with_kernels(store, ("RUNNING",))
        sid, kid = made["RUNNING"]
        async with store.begin() as conn:
            await _kernel_sessions(conn, {kid: None}, _END_SELECT)
            async with store.begin() as other:
                await other.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                await other.execute(sa.select(kernels.c.id).where(kernels.c.id == kid)
                                    .with_for_update(nowait=True))
            with pytest.raises(sa.exc.DBAPIError):
                async with store.begin() as other:
                    await other.execute(sa.select(sessions.c.id).where(sessions.c.id == sid)
                                        .with_for_update(nowait=True))
