"""The store on real databases: SQLite always, PostgreSQL when ``BAI_TEST_PG_DSN`` is set
(``postgresql+asyncpg://user@host:port/db``; each test gets a fresh schema)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from pg_support import private_store

from bai.common.errors import InvalidTransition
from bai.common.resources import ResourceSlot
from bai.common.status import SessionStatus
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.transitions import Outbox, place_many, transit
from bai.manager.store import tables as t
from bai.manager.store.engine import LATER, SQLITE_CACHE_KIB, Store

S = SessionStatus


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    if request.param == "postgres":
        async with private_store("t") as s:
            yield s
        return
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    yield s
    await s.close()


async def test_migrations_match_tables_and_are_idempotent(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await store.migrate()
    await store.migrate()
    from alembic.script import ScriptDirectory

    from bai.manager.store.engine import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and int(head) >= 5
    assert await store.current_revision() == head
    async with store.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), t.metadata))
    # Only type-rendering noise is tolerated; no missing or extra tables, columns or indexes.
    structural = [d for d in diff if not (isinstance(d, list) and d and d[0][0] == "modify_type")]
    assert structural == []


def test_the_head_read_from_file_names_is_alembics_head():
    # Store.migrate skips Alembic when the database is at head_revision(): it must be the head
    # Alembic would upgrade to, each file NNNN_*.py holding revision NNNN after NNNN - 1.
    from pathlib import Path

    from alembic.script import ScriptDirectory

    from bai.manager.store.engine import alembic_config, head_revision

    script = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == script.get_current_head()
    for rev in script.walk_revisions():
        assert Path(rev.path).name.startswith(f"{rev.revision}_"), rev.path
        assert rev.down_revision is None or int(rev.down_revision) == int(rev.revision) - 1


async def test_a_migrate_at_head_runs_no_alembic_upgrade(store, monkeypatch):
    from alembic import command

    await store.migrate()  # a new database: Alembic creates it

    def refused(*args, **kwargs):
        raise AssertionError("an upgrade of a database at head")

    monkeypatch.setattr(command, "upgrade", refused)
    await store.migrate()
    assert await store.current_revision() is not None
    async with store.begin() as conn:  # a database behind head is still upgraded
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))
    with pytest.raises(AssertionError, match="at head"):
        await store.migrate()


def test_a_manager_at_head_does_not_load_alembic(tmp_path):
    # ~10 MB of a manager's memory for as long as it runs, for a look at one row
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path}/head.db"
    code = ("import asyncio, sys\n"
            "from bai.manager.store.engine import Store\n"
            "async def main():\n"
            f"    s = Store({url!r})\n"
            "    await s.migrate()\n"
            "    await s.close()\n"
            "asyncio.run(main())\n"
            "print('alembic' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert first.stdout.strip() == "True", first.stderr[-2000:]  # a new database: upgraded
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert again.stdout.strip() == "False", again.stderr[-2000:]


def test_a_manager_on_sqlite_loads_neither_postgresql_nor_the_orm(tmp_path):
    # SQLAlchemy's PostgreSQL dialect and its drivers' modules: 2.4 MB of a manager on SQLite;
    # its ORM (which sqlalchemy.ext.asyncio's __init__ imports): 6 MB of any manager
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path}/lite.db"
    code = ("import asyncio, sys\n"
            "import bai.manager.app\n"
            "from bai.manager.store import tables as t\n"
            "from bai.manager.store.engine import Store\n"
            "async def main():\n"
            f"    s = Store({url!r})\n"
            "    await s.migrate()\n"
            "    async with s.begin() as conn:\n"
            "        await conn.run_sync(t.metadata.create_all)\n"
            "    await s.close()\n"
            "asyncio.run(main())\n"
            "print([m for m in ('sqlalchemy.dialects.postgresql', 'sqlalchemy.orm')"
            " if m in sys.modules])\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)  # upgraded
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert again.stdout.strip() == "[]", again.stderr[-2000:]


def test_the_asyncio_extension_is_whole_for_whoever_asks_it_for_more():
    # the store loads sqlalchemy.ext.asyncio.engine without its package's __init__
    import subprocess
    import sys

    code = ("import sys\n"
            "from bai.manager.store.engine import AsyncConnection, Store\n"
            "from sqlalchemy.ext import asyncio as sa_async\n"
            "from sqlalchemy.ext.asyncio import AsyncConnection as same, async_sessionmaker\n"
            "from sqlalchemy.ext.asyncio.session import AsyncSession\n"
            "print(same is AsyncConnection, sa_async.AsyncSession is AsyncSession,"
            " async_sessionmaker.__module__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "True", "sqlalchemy.ext.asyncio.session"], \
        done.stderr[-2000:]


async def test_tables_make_the_live_name_index_partial_on_each_database(store):
    # made by create_all (as tests make their schema): the index's WHERE is named for the
    # database at hand only when the table is created
    async with store.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    keys = await bootstrap(store)
    async with store.begin() as conn:
        uid = (await conn.execute(sa.select(t.users.c.id))).scalar()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()

    async def add(status: str) -> None:
        async with store.begin() as conn:
            await conn.execute(sa.insert(t.sessions).values(
                id=uuid.uuid4(), name="twin", image="python", domain_name="default",
                group_id=gid, user_id=uid, access_key=keys["user"]["access_key"],
                status=status, status_data={}, requested_slots={}, occupying_slots={},
                service_ports=[], mounts=[], environ={}, agent_ids=[],
                main_kernel_id=uuid.uuid4(), resource_opts={}, abusing_reports=[]))

    await add("TERMINATED")
    await add("TERMINATED")  # ended sessions hold no name
    await add("PENDING")
    with pytest.raises(sa.exc.IntegrityError):
        await add("RUNNING")


async def test_sqlite_runs_in_wal_mode(tmp_path):
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/wal.db")
    await s.migrate()
    async with s.connect() as conn:
        assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar() > 0
    await s.close()


async def test_each_sqlite_connection_keeps_a_smaller_page_cache_than_sqlites(tmp_path):
    # SQLite's default, 2,000 KiB a connection, held 5.5 MB more of a manager with 5,000
    # sessions waiting (bench/memory.py --embedded)
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/cache.db")
    await s.migrate()
    async with s.connect() as reader, s.begin() as writer:
        for conn in (reader, writer):
            kib = -(await conn.execute(sa.text("PRAGMA cache_size"))).scalar()
            assert kib == SQLITE_CACHE_KIB < 2000
    await s.close()


async def test_bootstrap_is_idempotent_and_keeps_keys(store):
    await store.migrate()
    first = await bootstrap(store)
    second = await bootstrap(store)
    # the dashboard passwords are made once, on the first run (only their hashes are kept)
    assert all(len(first[who]["password"]) >= 8 for who in ("admin", "user"))
    assert {w: {k: v for k, v in e.items() if k != "password"} for w, e in first.items()} == second
    assert first["admin"]["access_key"] != first["user"]["access_key"]
    async with store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t.keypairs))).scalar() == 2
        aliases = dict((await conn.execute(sa.select(t.image_aliases))).all())
    assert "python" in aliases and aliases["python"].startswith("python:3.")


async def _seed_session(store, *, cpu="2", agent_cpu="2", name="s1"):
    keys = await bootstrap(store)
    sid, kid = uuid.uuid4(), uuid.uuid4()
    async with store.begin() as conn:
        uid = (await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == "user@bai.local"))).scalar()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
        image = (await conn.execute(sa.select(t.images.c.name))).scalar()
        if (await conn.execute(sa.select(t.agents.c.id))).first() is None:
            await conn.execute(sa.insert(t.agents).values(
                id="agent-1", address="http://127.0.0.1:1", available_slots={"cpu": agent_cpu},
                occupied_slots={}, isolation={}))
        await conn.execute(sa.insert(t.sessions).values(
            id=sid, name=name, image=image, domain_name="default", group_id=gid, user_id=uid,
            access_key=keys["user"]["access_key"], status="PENDING", status_data={},
            requested_slots={"cpu": cpu}, occupying_slots={}, service_ports=[], mounts=[],
            environ={}, agent_ids=[], main_kernel_id=kid, resource_opts={}, abusing_reports=[]))
        await conn.execute(sa.insert(t.kernels).values(
            id=kid, session_id=sid, image=image, requested_slots={"cpu": cpu}, occupied_slots={}))
    return sid


async def _agent_cpu(store):
    async with store.connect() as conn:
        occ = (await conn.execute(sa.select(t.agents.c.occupied_slots))).scalar()
    return ResourceSlot.from_json(occ).get("cpu", 0)


async def test_transit_reserves_releases_and_records(store):
    await store.migrate()
    sid = await _seed_session(store)
    ob = Outbox()
    async with store.begin() as conn:
        (row,), refused = await place_many(conn, [(sid, "agent-1", "http://x")], outbox=ob)
    assert refused == 0
    assert row["scheduled_at"] is not None and await _agent_cpu(store) == 2
    async with store.begin() as conn:
        # A stale expectation loses the compare-and-set and changes nothing.
        assert await transit(conn, sid, S.PENDING, S.CANCELLED, reason="x", cause="t", outbox=ob) is None
        with pytest.raises(InvalidTransition):
            await transit(conn, sid, S.SCHEDULED, S.RUNNING, reason="x", cause="t", outbox=ob)
        await transit(conn, sid, S.SCHEDULED, S.TERMINATING, reason="user-requested",
                      cause="user", outbox=ob)
        await transit(conn, sid, S.TERMINATING, S.TERMINATED, reason="user-requested",
                      cause="user", outbox=ob)
    assert await _agent_cpu(store) == 0
    async with store.connect() as conn:
        s = (await conn.execute(sa.select(t.sessions).where(t.sessions.c.id == sid))).mappings().one()
        k = (await conn.execute(sa.select(t.kernels))).mappings().one()
        hist = (await conn.execute(sa.select(t.session_history.c.from_status, t.session_history.c.to_status)
                                   .order_by(t.session_history.c.id))).all()
    assert s["status"] == "TERMINATED" and s["terminated_at"] is not None
    assert s["occupying_slots"] == {} and s["status_info"] == "user-requested"
    assert k["status"] == "TERMINATED" and k["agent_id"] == "agent-1"
    assert [tuple(h) for h in hist] == [("PENDING", "SCHEDULED"), ("SCHEDULED", "TERMINATING"),
                                        ("TERMINATING", "TERMINATED")]
    assert [e.name for e in ob.events][:1] == ["session_scheduled"]
    assert "session_terminated" in [e.name for e in ob.events]


async def test_placement_refused_when_agent_is_full(store):
    await store.migrate()
    sid = await _seed_session(store, cpu="3", agent_cpu="2")
    async with store.begin() as conn:
        assert await place_many(conn, [(sid, "agent-1", "http://x")], outbox=Outbox()) == ([], 1)
    async with store.connect() as conn:
        assert (await conn.execute(sa.select(t.sessions.c.status))).scalar() == "PENDING"
    assert await _agent_cpu(store) == 0


async def test_concurrent_placements_on_one_agent_never_overbook_it(store):
    # two sessions of 2 cpu, an agent of 3: whichever writer comes second finds no room
    await store.migrate()
    a = await _seed_session(store, cpu="2", agent_cpu="3", name="s1")
    b = await _seed_session(store, cpu="2", agent_cpu="3", name="s2")

    async def attempt(sid):
        async with store.begin() as conn:
            placed, _ = await place_many(conn, [(sid, "agent-1", "http://x")], outbox=Outbox())
            await asyncio.sleep(0.05)  # hold the transaction while the other one tries
            return len(placed)

    assert sorted(await asyncio.gather(attempt(a), attempt(b))) == [0, 1]
    assert await _agent_cpu(store) == 2


async def test_concurrent_compare_and_set_has_one_winner(store):
    await store.migrate()
    sid = await _seed_session(store)
    async with store.begin() as conn:
        await place_many(conn, [(sid, "agent-1", "http://x")], outbox=Outbox())

    async def attempt(i):
        async with store.begin() as conn:
            return await transit(conn, sid, S.SCHEDULED, S.TERMINATING, reason=f"r{i}",
                                 cause="t", outbox=Outbox())

    results = await asyncio.gather(*[attempt(i) for i in range(6)])
    assert sum(r is not None for r in results) == 1
    async with store.connect() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).select_from(t.session_history)
                                .where(t.session_history.c.to_status == "TERMINATING"))).scalar()
    assert n == 1


async def test_a_cancel_during_the_commit_reaches_the_caller_as_a_cancel(store):
    # A task stopped while its commit was on the wire (ManagerRoot.stop during a scheduling
    # pass): the caller must see the cancel itself. It saw MissingGreenlet from the listing
    # count's look at the invalidated connection, the scheduler's loop took that for a failed
    # pass, and the stop waited for that loop for ever (stop 24's CI, on PostgreSQL).
    await store.migrate()

    async def writer():
        async with store.begin() as conn:
            await conn.execute(t.domains.insert().values(name="cancelled-at-commit"))
            asyncio.get_running_loop().call_soon(task.cancel)

    task = asyncio.create_task(writer())
    with pytest.raises(asyncio.CancelledError):
        await task
    # and the store goes on: the cancelled connection is not handed to the next caller broken
    async with store.begin() as conn:
        await conn.execute(t.domains.insert().values(name="after-the-cancel"))
    async with store.connect() as conn:
        names = (await conn.execute(sa.select(t.domains.c.name))).scalars().all()
    assert "after-the-cancel" in names
    async with store.begin() as conn:  # the pool still gives working connections
        assert (await conn.execute(sa.select(sa.literal(1)))).scalar() == 1


def _any_value(col: sa.Column):
    """A value a column of this type accepts (the same string everywhere, so foreign keys match)."""
    kind = type(col.type).__name__.lower()
    if isinstance(col.type, sa.Boolean):
        return False
    if isinstance(col.type, (sa.Integer, sa.Numeric, sa.Float)):
        return 1
    if isinstance(col.type, sa.JSON):
        return {}
    if "uuid" in kind:
        return uuid.UUID(int=1)
    if "date" in kind or "time" in kind:
        return datetime(2026, 1, 1, tzinfo=UTC)
    return "x"


def _revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from bai.manager.store.engine import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in script.walk_revisions()][1:]  # all but the head


@pytest.mark.parametrize("base", _revisions())
async def test_a_database_with_rows_in_every_table_upgrades_to_head(store, base):
    """Installs upgrade in place: a row in every table (each foreign key pointing at a real row)
    at every earlier revision, then ``migrate``; every row is still there. Batch mode on SQLite
    copied and dropped the policies table, which the keypairs' foreign key refused."""
    from alembic import command

    from bai.manager.store.engine import alembic_config

    cfg = alembic_config()

    def seed(conn) -> dict[str, int]:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, base)
        old = sa.MetaData()
        old.reflect(conn)
        tables = [tb for tb in old.sorted_tables if tb.name != "alembic_version"]
        for table in tables:
            conn.execute(table.insert().values({c.name: _any_value(c) for c in table.columns}))
        return {tb.name: 1 for tb in tables}

    async with store.begin() as conn:
        seeded = await conn.run_sync(seed)
    await store.migrate()
    async with store.connect() as conn:
        counts = {name: (await conn.execute(
            sa.text(f'SELECT count(*) FROM "{name}"'))).scalar() for name in seeded}
    assert counts == seeded


async def test_an_older_installs_default_images_get_their_services(store):
    """Before apps, the default images were registered without services and bootstrap keeps
    existing rows: the upgrade (0008) gives bai's default images (process and docker) the
    default services, once; an admin's own services and other images stay as they were."""
    from alembic import command

    from bai.common.services import DEFAULT_SERVICES
    from bai.manager.store.engine import alembic_config

    cfg = alembic_config()
    mine = [{"name": "lab", "protocol": "http", "ports": [9999]}]
    rows = {
        "python:3.11-debian12": ({"bai.process.interpreter": "/usr/bin/python3"}, []),
        "python:3.11-debian12-docker": ({"ai.bai.rootfs.sha256": "ab"}, []),
        "python:custom": ({"bai.process.interpreter": "/usr/bin/python3"}, mine),
        "someones/image:1": ({"ai.backend.runtime-type": "python"}, []),
    }

    def seed(conn) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
        for name, (labels, ports) in rows.items():
            conn.execute(t.images.insert().values(
                name=name, registry="local", architecture="x86_64", labels=labels,
                min_slots={}, service_ports=ports, created_at=datetime(2026, 1, 1, tzinfo=UTC)))

    async with store.begin() as conn:
        await conn.run_sync(seed)
    await store.migrate()
    async with store.connect() as conn:
        got = dict((await conn.execute(sa.select(t.images.c.name, t.images.c.service_ports))).all())
    assert got == {"python:3.11-debian12": DEFAULT_SERVICES,
                   "python:3.11-debian12-docker": DEFAULT_SERVICES,
                   "python:custom": mine, "someones/image:1": []}


async def test_a_write_counts_as_a_change_of_the_tables_it_names_and_no_other(tmp_path):
    # what the listings' and the caches' generations (Store.listing_changes, cache_changes)
    # follow: one for each write that names their tables, again as its transaction ends; a
    # read moves none. The same statement text twice counts twice (its tables are kept by text)
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/w.db")
    try:
        await store.migrate()

        def counts():
            return (store.listing_changes, dict(store.cache_changes))

        base = counts()
        writes = [
            (sa.update(t.images).values(labels={}), 0, {"images": 2}),
            (sa.update(t.scaling_groups).values(is_active=True), 0,
             {"scaling_groups": 2, "policies": 2}),
            (sa.update(t.keypair_resource_policies).values(max_concurrent_sessions=3), 0,
             {"policies": 2, "owners": 2}),
            (sa.update(t.domains).values(is_active=True), 0, {"policies": 2, "owners": 2}),
            (sa.update(t.keypairs).values(is_active=True), 0,
             {"keypairs": 2, "policies": 2, "owners": 2}),
            (sa.delete(t.agents), 0, {"scaling_groups": 2}),
            (sa.update(t.users).values(role="user"), 2, {"keypairs": 2, "owners": 2}),
            (sa.update(t.groups).values(is_active=True), 2, {"policies": 2, "owners": 2}),
            (sa.delete(t.group_members), 0, {"owners": 2}),
            (sa.delete(t.session_dependencies), 2, {}),
            (sa.update(t.sessions).values(status_info="x"), 2, {"sessions": 2}),
            (sa.delete(t.web_sessions), 0, {}),
            (sa.update(t.vfolders).values(name="x"), 0, {}),
            (sa.delete(t.images).where(t.images.c.name.in_(sa.select(t.users.c.email))), 2,
             {"images": 2, "keypairs": 2, "owners": 2}),
            (sa.select(t.sessions, t.images, t.agents), 0, {}),
        ]
        for statement, listed, cached in writes * 2:
            before = counts()
            async with store.begin() as conn:
                await conn.execute(statement)
            after = counts()
            assert after[0] - before[0] == listed, statement
            assert {k: v - before[1][k] for k, v in after[1].items() if v != before[1][k]} == \
                cached, statement
        assert counts() != base
    finally:
        await store.close()


async def test_sqlite_writers_take_turns_on_one_connection_until_one_fails(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/k.db")
    pool = store.engine.sync_engine.pool
    checkouts, out = [], set()

    def checkout(dbapi_conn, *_):
        checkouts.append(dbapi_conn)
        out.add(id(dbapi_conn))

    sa.event.listen(pool, "checkout", checkout)
    sa.event.listen(pool, "checkin", lambda dbapi_conn, *_: out.discard(id(dbapi_conn)))
    try:
        async with store.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        for i in range(3):
            async with store.begin() as conn:
                await conn.execute(sa.text(f"INSERT INTO t VALUES ({i})"))
        async with store.connect() as conn:  # a read takes a connection of its own
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 3
        assert len(checkouts) == 2 and checkouts[0] is not checkouts[1]
        assert out == {id(checkouts[0])}  # the writers' connection, kept
        with pytest.raises(LookupError):  # a failed write: its connection goes back
            async with store.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (9)"))
                raise LookupError
        assert out == set()
        async with store.begin() as conn:  # and the next writer connects (from the pool)
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 3
            await conn.execute(sa.text("INSERT INTO t VALUES (4)"))
        assert len(checkouts) == 3 and len(out) == 1
    finally:
        await store.close()
    assert out == set()  # closed with the store


async def test_an_insert_held_by_the_store_writes_what_sqlalchemy_writes(tmp_path, monkeypatch):
    # Store.insert_later makes the parameters itself on SQLite's one-hop layer: the rows of a
    # create's inserts (JSON, NULLs, UUIDs, aware datetimes) land as conn.execute lands them,
    # counted the same, without SQLAlchemy's execution; what would take a Python-side default
    # goes through conn.execute
    from sqlalchemy.ext.asyncio import AsyncConnection

    now = datetime.now(UTC)
    sid, kid, gid, uid = (uuid.uuid4() for _ in range(4))
    session = dict(
        id=sid, name="held", tag=None, type="batch", image="python:3.11", registry="local",
        architecture="x86_64", domain_name="default", group_id=gid, user_id=uid,
        access_key="AKIA", status="PENDING", status_info="enqueued",
        status_data={"scheduler": {"position": 2, "note": "é"}}, created_at=now,
        starts_at=None, startup_command="true", bootstrap_script=None, resource_opts={},
        requested_slots={"cpu": "1", "mem": "268435456"}, occupying_slots={},
        scaling_group="default", service_ports=[{"name": "x", "ports": [1]}], mounts=[],
        agent_ids=[], callback_url=None, idle_timeout=0, abusing_reports=[], attempt=0,
        environ={"A": "1"}, main_kernel_id=kid, status_changed=now, last_activity_at=now)
    kernel = dict(id=kid, session_id=sid, image="python:3.11", status="PENDING",
                  status_info="enqueued", status_changed=now, created_at=now,
                  requested_slots={"cpu": "1"}, occupied_slots={"cpu": "1"})
    history = [dict(session_id=sid, from_status=None, to_status="PENDING", reason="enqueued",
                    cause="user:AKIA", at=now)] * 2
    domain = [{"name": "d2"}]  # total_resource_slots and more from Python-side defaults
    raw, counted, executed = {}, {}, []
    real = AsyncConnection.execute

    async def execute(self, statement, *args, **kw):
        executed.append(statement)
        return await real(self, statement, *args, **kw)

    monkeypatch.setattr(AsyncConnection, "execute", execute)
    for held in (False, True):
        store = Store(f"sqlite+aiosqlite:///{tmp_path}/h{held}.db")
        sa.event.listen(store.engine.sync_engine, "connect",  # rows without their owners
                        lambda dbapi_conn, _: dbapi_conn.cursor().execute(
                            "PRAGMA foreign_keys=OFF"))
        try:
            async with store.begin() as conn:
                await conn.run_sync(t.metadata.create_all)
            before = (store.statements, store.listing_changes, dict(store.cache_changes))
            executed.clear()
            async with store.begin() as conn:
                for table, rows in ((t.sessions, [session]), (t.kernels, [kernel]),
                                    (t.session_history, history), (t.domains, domain)):
                    statement = sa.insert(table).execution_options(**LATER)
                    if held:
                        await store.insert_later(conn, statement, rows)
                    else:
                        await conn.execute(statement, rows)
            counted[held] = (store.statements - before[0], store.listing_changes - before[1],
                             {k: v - before[2][k] for k, v in store.cache_changes.items()})
            if held:  # only the insert that takes a default went through conn.execute
                assert [s.table.name for s in executed] == ["domains"]
        finally:
            await store.close()
        with contextlib.closing(sqlite3.connect(tmp_path / f"h{held}.db")) as db:
            raw[held] = {name: db.execute(f"SELECT * FROM {name}").fetchall()
                         for name in ("sessions", "kernels", "session_history", "domains")}
    for side in raw.values():  # (a domain's created_at: its default, the time of the insert)
        side["domains"] = [r[:-1] for r in side["domains"]]
    assert raw[True] == raw[False]
    assert len(raw[True]["session_history"]) == 2 and len(raw[True]["domains"]) == 1
    assert counted[True] == counted[False] == (  # BEGIN too
        5, 2, {"keypairs": 0, "images": 0, "scaling_groups": 0, "owners": 2, "sessions": 2,
               "policies": 2})


async def test_after_commit_calls_once_a_transaction_committed_and_never_after_a_rollback(store):
    # what a create keeps read for the next one (the sessions pending) goes by this: called
    # after the commit with its end counted in cache_changes, nothing after a rollback
    await store.migrate()
    calls = []

    def note(what: str) -> None:
        calls.append((what, dict(store.cache_changes), store.transactions))

    async with store.begin() as conn:
        await conn.execute(sa.update(t.sessions).values(status_info="x"))
        store.after_commit(conn, lambda: note("a"))
        store.after_commit(conn, lambda: note("b"))
        assert calls == []
    assert [c[0] for c in calls] == ["a", "b"]
    assert calls[0][1:] == (dict(store.cache_changes), store.transactions)
    with pytest.raises(RuntimeError):
        async with store.begin() as conn:
            await conn.execute(sa.update(t.sessions).values(status_info="y"))
            store.after_commit(conn, lambda: note("rolled back"))
            raise RuntimeError("rollback")
    async with store.begin() as conn:
        await conn.execute(sa.update(t.sessions).values(status_info="z"))
    assert [c[0] for c in calls] == ["a", "b"]


async def test_commit_unless_commits_a_transaction_whose_read_finds_nothing(
        store, trips):
    # a create's last step (Store.commit_unless): the read sees what the transaction wrote;
    # no row, committed (on SQLite's one-hop layer the writes, the read and the COMMIT are one
    # trip); a row, the caller's raise rolls it all back; a held write's error is raised there
    await store.migrate()
    insert = sa.insert(t.domains).execution_options(**LATER)
    named = sa.select(t.domains.c.name).where(t.domains.c.name == sa.bindparam("name"))
    async with store.begin() as conn:  # (the writer connects)
        await conn.execute(sa.select(sa.literal(1)))
    committed = []
    for name, look in (("d-a", "d-x"), ("d-b", "d-a"), ("d-c", "d-c")):
        trips[0] = 0
        try:
            async with store.begin() as conn:
                store.after_commit(conn, lambda name=name: committed.append(name))
                await store.insert_later(conn, insert, [{"name": name, "total_resource_slots": {}}])
                if await store.commit_unless(conn, named, {"name": look}) is not None:
                    raise LookupError(look)
        except LookupError:
            pass
        if store.is_sqlite and name == "d-a":
            assert trips[0] == 1
    with pytest.raises(sa.exc.IntegrityError):
        async with store.begin() as conn:
            await store.insert_later(conn, insert, [{"name": "d-a", "total_resource_slots": {}}])
            await store.commit_unless(conn, named, {"name": "d-x"})
    async with store.begin() as conn:  # the connection goes on
        await store.insert_later(conn, insert, [{"name": "d-d", "total_resource_slots": {}}])
        assert await store.commit_unless(conn, named, {"name": "d-x"}) is None
    async with store.connect() as conn:
        names = set((await conn.execute(sa.select(t.domains.c.name))).scalars())
    assert names - {"default"} == {"d-a", "d-d"}
    assert committed == ["d-a"]


async def test_a_read_by_the_store_gives_the_row_sqlalchemy_gives(store, monkeypatch):
    # Store.first reads on SQLite's one-hop layer without SQLAlchemy's execution: the row of a
    # create's owner and queue read, and of a session (JSON, NULLs, UUIDs, aware datetimes),
    # is the one conn.execute gives, value for value and type for type, counted the same
    from sqlalchemy.ext.asyncio import AsyncConnection

    from bai.manager.services.sessions import _OWNER, _OWNER_AND_QUEUE

    await store.migrate()
    keys = await bootstrap(store)
    ak = keys["user"]["access_key"]
    now = datetime.now(UTC)
    async with store.connect() as conn:
        owner = (await conn.execute(sa.select(t.keypairs.c.user_id, t.users.c.domain_name)
                                    .join(t.users, t.users.c.id == t.keypairs.c.user_id)
                                    .where(t.keypairs.c.access_key == ak))).one()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalars().first()
    sid = uuid.uuid4()
    async with store.begin() as conn:
        await conn.execute(t.sessions.insert(), [dict(
            id=sid, name="read", tag=None, type="batch", image="python:3.11",
            registry="local", architecture="x86_64", domain_name=owner.domain_name,
            group_id=gid, user_id=owner.user_id, access_key=ak, status="PENDING",
            status_info="enqueued", status_data={"scheduler": {"note": "é", "n": 2}},
            created_at=now, starts_at=None, startup_command=None, resource_opts={},
            requested_slots={"cpu": "1"}, occupying_slots={}, scaling_group="default",
            service_ports=[], mounts=[], agent_ids=[], callback_url=None, idle_timeout=0,
            abusing_reports=[], attempt=0, environ={"A": "1"}, main_kernel_id=uuid.uuid4(),
            status_changed=now, last_activity_at=now)])
    reads = [(_OWNER_AND_QUEUE, {"ak": ak, "name": "read", "group": "default"}),
             (_OWNER, {"ak": ak, "name": "other", "group": "nowhere"}),
             (_OWNER, {"ak": "no-such-key", "name": None, "group": "default"}),
             (sa.select(t.sessions).where(t.sessions.c.id == sa.bindparam("id")), {"id": sid})]
    executed = []
    real = AsyncConnection.execute

    async def execute(self, statement, *args, **kw):
        executed.append(statement)
        return await real(self, statement, *args, **kw)

    monkeypatch.setattr(AsyncConnection, "execute", execute)
    for statement, params in reads:
        async with store.begin() as conn:
            before = store.statements
            row = await store.first(conn, statement, params)
            counted = store.statements - before
            executed.clear()
            expected = (await conn.execute(statement, params)).mappings().first()
            assert store.statements - before == 2 * counted
        if expected is None:
            assert row is None
            continue
        expected = dict(expected)
        assert row == expected
        assert [type(v) for v in row.values()] == [type(v) for v in expected.values()]
        assert list(row) == list(expected)
    # (the last read: the session, its JSON, NULL, aware datetime and UUID as written)
    assert row["status_data"]["scheduler"]["note"] == "é" and row["tag"] is None
    assert row["created_at"] == now and row["id"] == sid
    async with store.begin() as conn:
        executed.clear()
        owner_row = await store.first(conn, *reads[0])
    assert owner_row["pending"] == 1 and owner_row["live_id"] == sid
    assert owner_row["group_id"] == gid and owner_row["policy_slots"] is not None
    # on SQLite the read took no conn.execute; on PostgreSQL it is conn.execute
    assert len(executed) == (0 if store.is_sqlite else 1)
