"""The store's SQLite layer (``store/sqlite_onehop.py``): one trip to SQLite's thread per
statement, with every result a caller reads (rows, ``rowcount``, ``lastrowid``, RETURNING,
errors) the same as SQLAlchemy's stock aiosqlite adapter gives; the stock adapter runs the same
script beside it as the reference."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from bai.manager.store.engine import LATER, Store

pytestmark = pytest.mark.skipif(
    __import__("bai.manager.store.sqlite_onehop", fromlist=["dbapi"]).dbapi() is None,
    reason="the installed SQLAlchemy or aiosqlite is not the one the layer was written for "
           "(the stock adapter runs)")

items = sa.Table("items", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("name", sa.String, unique=True, nullable=False),
                 sa.Column("n", sa.Integer, nullable=False))


async def _script(store: Store) -> list:
    """Every kind of statement the manager sends, and what a caller reads back from each."""
    seen: list = []
    async with store.begin() as conn:
        await conn.run_sync(items.metadata.create_all)
    async with store.begin() as conn:
        r = await conn.execute(items.insert().values(name="a", n=1))
        seen.append(("insert", r.rowcount, r.lastrowid, tuple(r.inserted_primary_key)))
        r = await conn.execute(items.insert(), [{"name": f"m{i}", "n": i} for i in range(5)])
        seen.append(("executemany", r.rowcount))
        r = await conn.execute(items.insert().values(name="r", n=7).returning(items.c.id, items.c.n))
        seen.append(("insert returning", list(r.keys()), r.all()))
        r = await conn.execute(items.update().where(items.c.n >= 3).values(n=items.c.n + 10))
        seen.append(("update", r.rowcount))
        r = await conn.execute(items.update().where(items.c.name == "nobody").values(n=0))
        seen.append(("update none", r.rowcount))
        r = await conn.execute(items.update().where(items.c.n > 12).values(n=0)
                               .returning(items.c.name))
        seen.append(("update returning", sorted(r.scalars().all()), r.rowcount))
        r = await conn.execute(items.delete().where(items.c.n == 0))
        seen.append(("delete", r.rowcount))
        r = await conn.execute(sa.select(items.c.name, items.c.n).order_by(items.c.id))
        seen.append(("select", list(r.keys()), r.all()))
        r = await conn.execute(sa.select(items).where(items.c.name == "nobody"))
        seen.append(("select none", r.first()))
        r = await conn.execute(sa.text("SELECT count(*) AS c FROM items"))
        seen.append(("text", r.scalar_one()))
        r = await conn.exec_driver_sql("SELECT name FROM items WHERE n = ?", (1,))
        seen.append(("driver sql", r.all()))
        with pytest.raises(sa.exc.IntegrityError) as err:
            async with conn.begin_nested():
                await conn.execute(items.insert().values(name="m9", n=1))
                await conn.execute(items.insert().values(name="a", n=2))
        seen.append(("integrity", type(err.value.orig), str(err.value.orig)))
        with pytest.raises(sa.exc.IntegrityError) as err:
            await conn.execute(items.insert().values(name=None, n=2))
        seen.append(("not null", type(err.value.orig), str(err.value.orig)))
        with pytest.raises(sa.exc.OperationalError) as err:
            await conn.execute(sa.text("SELECT x FROM nowhere"))
        seen.append(("operational", type(err.value.orig), str(err.value.orig)))
        with pytest.raises(sa.exc.ProgrammingError) as err:
            await conn.exec_driver_sql("SELECT ?", (1, 2))
        seen.append(("programming", type(err.value.orig)))
        async with conn.begin_nested():
            await conn.execute(items.insert().values(name="saved", n=3))
        r = await conn.execute(sa.select(sa.func.count()).select_from(items))
        seen.append(("after savepoints", r.scalar()))
    with pytest.raises(sa.exc.IntegrityError):
        async with store.begin() as conn:
            await conn.execute(items.insert().values(name="gone", n=1))
            await conn.execute(items.insert().values(name="a", n=1))
    async with store.connect() as conn:
        r = await conn.execute(sa.select(items.c.name).order_by(items.c.name))
        seen.append(("committed", r.scalars().all()))
    return seen


async def test_every_result_is_the_stock_adapters(tmp_path, trips):
    results, counts = {}, {}
    for one_hop in (False, True):
        store = Store(f"sqlite+aiosqlite:///{tmp_path}/{one_hop}.db", one_hop=one_hop)
        try:
            trips[0] = 0
            results[one_hop] = await _script(store)
            counts[one_hop] = trips[0]
        finally:
            await store.close()
    assert results[True] == results[False]
    got = dict((r[0], r[1:]) for r in results[True])
    assert got["insert"] == (1, 1, (1,))
    assert got["executemany"] == (5,) and got["update"] == (3,) and got["update none"] == (0,)
    assert got["insert returning"] == (["id", "n"], [(7, 7)])
    assert got["update returning"][0] == ["m3", "m4", "r"]  # its rowcount: as stock says
    assert got["delete"] == (4,) and got["select none"] == (None,)
    assert got["select"] == (["name", "n"], [("a", 1), ("m1", 1), ("m2", 2)])
    assert got["integrity"] == (sqlite3.IntegrityError, "UNIQUE constraint failed: items.name")
    assert got["operational"] == (sqlite3.OperationalError, "no such table: nowhere")
    assert got["committed"] == (["a", "m1", "m2", "saved"],)
    assert counts[True] < counts[False] / 2, counts


async def test_a_statement_is_one_trip_to_the_thread(tmp_path, trips):
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        async with store.begin() as conn:
            trips[0] = 0
            await conn.execute(sa.select(sa.literal(1)))  # BEGIN IMMEDIATE goes with this
            assert trips[0] == 1
            assert (await conn.execute(sa.select(sa.literal(2)))).scalar() == 2
            assert trips[0] == 2
            await conn.execute(sa.text("CREATE TABLE t (x)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            assert trips[0] == 4
            trips[0] = 0
        pooled = not isinstance(store.engine.pool, sa.pool.NullPool)  # (SQLAlchemy < 2.0.38)
        assert trips[0] == 1 or not pooled  # the commit; the pool's reset has nothing to undo
        async with store.connect() as conn:  # (readers connect apart from the writers)
            pass
        trips[0] = 0
        async with store.connect() as conn:  # a read: BEGIN with the SELECT, ROLLBACK
            assert (await conn.execute(sa.text("SELECT x FROM t"))).scalar() == 1
        assert trips[0] == 2 or not pooled
        # a transaction that sent nothing: no BEGIN, no COMMIT or ROLLBACK; and the next one
        # begins once
        trips[0] = 0
        async with store.begin():
            pass
        assert trips[0] == 0 or not pooled
        async with store.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
        trips[0] = 0
        with pytest.raises(LookupError):  # the same, rolled back
            async with store.begin():
                raise LookupError
        assert trips[0] == 0 or not pooled
        async with store.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (3)"))
        async with store.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 3
    finally:
        await store.close()


async def test_a_begin_that_fails_fails_the_first_statement(tmp_path):
    # BEGIN IMMEDIATE goes with the transaction's first statement: the lock it could not take
    # is that statement's error, and the transaction wrote nothing
    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    first = Store(url)
    second = Store(url)

    @sa.event.listens_for(second.engine.sync_engine, "connect")
    def _impatient(dbapi_conn, _record):  # after the store's own busy_timeout
        dbapi_conn.cursor().execute("PRAGMA busy_timeout=50")

    try:
        async with first.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        async with first.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                async with second.begin() as other:
                    await other.execute(sa.text("INSERT INTO t VALUES (2)"))
        async with second.begin() as conn:  # the lock is free: the same connection goes on
            await conn.execute(sa.text("INSERT INTO t VALUES (3)"))
        async with first.connect() as conn:
            assert (await conn.execute(sa.text("SELECT x FROM t ORDER BY x"))).all() == [
                (1,), (3,)]
    finally:
        await first.close()
        await second.close()


async def test_a_read_returned_to_the_pool_is_rolled_back(tmp_path):
    # the reset after a read that left its transaction open is not skipped: the next use of
    # the pooled connection begins afresh and sees what was committed since
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    try:
        async with store.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        for i in range(3):
            async with store.connect() as conn:
                assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == i
            async with store.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    finally:
        await store.close()


def _slow_on_connect(store: Store, entered: threading.Event) -> None:
    @sa.event.listens_for(store.engine.sync_engine, "connect")
    def _add(dbapi_conn, _record):
        def slow() -> int:
            entered.set()
            time.sleep(0.5)
            return 1
        dbapi_conn.create_function("slow", 0, slow)


async def test_a_cancel_during_a_statement_reaches_the_caller_and_writes_nothing(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    entered = threading.Event()
    _slow_on_connect(store, entered)
    try:
        async with store.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))

        async def writer():
            async with store.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                await conn.execute(sa.text("SELECT slow()"))

        task = asyncio.create_task(writer())
        assert await asyncio.to_thread(entered.wait, 30)  # the statement runs on the thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.begin() as conn:  # the lock is free again and nothing was written
            assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 0
            await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
        async with store.connect() as conn:
            assert (await conn.execute(sa.text("SELECT x FROM t"))).all() == [(2,)]
    finally:
        await store.close()


async def test_a_writer_of_another_store_waits_for_the_lock_on_the_thread(tmp_path):
    # two stores on one file (two manager processes): the second writer waits in SQLite's busy
    # handler, on its own thread, while the event loop goes on and lets the first one commit
    url = f"sqlite+aiosqlite:///{tmp_path}/b.db"
    first, second = Store(url), Store(url)
    try:
        async with first.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        holding = asyncio.Event()

        async def hold():
            async with first.begin() as conn:
                await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                holding.set()
                await asyncio.sleep(0.5)

        async def wait_then_write():
            await holding.wait()
            async with second.begin() as conn:  # BEGIN IMMEDIATE waits for the first commit
                n = (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar()
                await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
            return n

        _, n = await asyncio.gather(hold(), wait_then_write())
        assert n == 1
    finally:
        await first.close()
        await second.close()


async def test_a_write_whose_result_is_unread_goes_with_the_next_trip(tmp_path, trips):
    later = items.insert().execution_options(**LATER)
    stores = {one_hop: Store(f"sqlite+aiosqlite:///{tmp_path}/w{one_hop}.db", one_hop=one_hop)
              for one_hop in (True, False)}
    try:
        seen = {}
        for one_hop, store in stores.items():
            async with store.begin() as conn:
                await conn.run_sync(items.metadata.create_all)
            async with store.begin() as conn:
                await conn.execute(sa.select(sa.literal(1)))
                trips[0] = 0
                await conn.execute(later, [{"name": "a", "n": 1}])
                await conn.execute(later, [{"name": f"m{i}", "n": i} for i in range(3)])
                held = trips[0]
                # a read sees them: they went first, in its trip
                n = (await conn.execute(sa.select(sa.func.count()).select_from(items))).scalar()
                read = trips[0]
                await conn.execute(later, [{"name": "z", "n": 9}])
                trips[0] = 0
            seen[one_hop] = (n, trips[0])
            if one_hop:
                assert (held, read) == (0, 1)
            # an error a held write meets is raised by the commit it went with, or by the next
            # statement, and the transaction is rolled back
            for ending in ("commit", "statement"):
                with pytest.raises(sa.exc.IntegrityError) as err:
                    async with store.begin() as conn:
                        await conn.execute(items.insert().values(name=f"gone-{ending}", n=1))
                        await conn.execute(later, [{"name": "a", "n": 2}])
                        if ending == "statement":
                            await conn.execute(sa.select(sa.literal(1)))
                assert isinstance(err.value.orig, sqlite3.IntegrityError)
                assert str(err.value.orig) == "UNIQUE constraint failed: items.name"
            trips[0] = 0
            with pytest.raises(LookupError):  # held writes a rollback drops: never sent
                async with store.begin() as conn:
                    await conn.execute(later, [{"name": "dropped", "n": 1}])
                    raise LookupError
            assert trips[0] == 0 or not one_hop
            async with store.begin() as conn:  # the connection goes on
                await conn.execute(later, [{"name": "after", "n": 1}])
            async with store.connect() as conn:
                seen[one_hop] += (sorted((await conn.execute(
                    sa.select(items.c.name))).scalars().all()),)
        assert seen[True][0] == seen[False][0] == 4
        assert seen[True][1] == 1  # the commit, with the write held before it
        assert seen[True][2] == seen[False][2] == ["a", "after", "m0", "m1", "m2", "z"]
    finally:
        for store in stores.values():
            await store.close()


#: a read as conn.execute makes it, and as Store.first makes it without SQLAlchemy's execution
_READS = {
    "execute": lambda store, conn, statement: conn.execute(statement, {"x": 1}),
    "first": lambda store, conn, statement: store.first(conn, statement, {"x": 1}),
}
_SLOW = sa.select(sa.func.slow().label("s"), sa.bindparam("x").label("x"))


@pytest.mark.parametrize("read", list(_READS))
async def test_a_read_whose_begin_fails_raises_what_sqlalchemy_raises(tmp_path, read):
    # Store.first's errors are conn.execute's: a lock it cannot take is an OperationalError
    # ("database is locked") wrapping sqlite3's, with the statement; the connection goes on
    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    first, second = Store(url), Store(url)

    @sa.event.listens_for(second.engine.sync_engine, "connect")
    def _impatient(dbapi_conn, _record):
        dbapi_conn.cursor().execute("PRAGMA busy_timeout=50")

    statement = sa.select(sa.bindparam("x").label("x"))
    try:
        async with first.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        async with first.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            with pytest.raises(sa.exc.OperationalError, match="database is locked") as raised:
                async with second.begin() as other:
                    await _READS[read](second, other, statement)
        assert type(raised.value.orig) is sqlite3.OperationalError
        assert raised.value.statement == "SELECT ? AS x" and raised.value.params == (1,)
        assert not raised.value.connection_invalidated
        async with second.begin() as conn:  # the lock is free: the same connection goes on
            assert (await second.first(conn, statement, {"x": 2})) == {"x": 2}
    finally:
        await first.close()
        await second.close()


async def test_a_cancel_during_a_read_reaches_the_caller_as_sqlalchemys_does(tmp_path):
    # a read cancelled while on the thread: the caller sees the cancel, the connection is left
    # as conn.execute leaves it, nothing was written and the store goes on
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    entered = threading.Event()
    _slow_on_connect(store, entered)
    left = {}
    try:
        async with store.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x)"))
        for read in _READS:
            entered.clear()
            connections = []

            async def writer():
                async with store.begin() as conn:
                    connections.append(conn)
                    await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
                    try:
                        await _READS[read](store, conn, _SLOW)
                    finally:  # as the statement left it
                        connections.append(conn.invalidated)

            task = asyncio.create_task(writer())
            assert await asyncio.to_thread(entered.wait, 30)  # the statement runs there
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            left[read] = (connections[1], connections[0].invalidated, connections[0].closed)
            async with store.begin() as conn:  # the lock is free again, nothing was written
                assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar() == 0
        assert left["first"] == left["execute"] == (True, False, True)
        async with store.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (2)"))
            assert await store.first(conn, sa.select(sa.bindparam("x").label("x")),
                                     {"x": 3}) == {"x": 3}
        async with store.connect() as conn:
            assert (await conn.execute(sa.text("SELECT x FROM t"))).all() == [(2,)]
    finally:
        await store.close()


async def test_a_read_on_a_closed_connection_raises_what_sqlalchemy_raises(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    statement = sa.select(sa.bindparam("x").label("x"))
    raised = {}
    try:
        for read in _READS:
            with pytest.raises(sa.exc.DBAPIError) as e:
                async with store.begin() as conn:
                    await conn.execute(sa.text("SELECT 1"))
                    dbapi = conn.sync_connection.connection.dbapi_connection
                    await dbapi._connection.close()  # the thread's sqlite3 connection is gone
                    await _READS[read](store, conn, statement)
            raised[read] = (type(e.value), type(e.value.orig), str(e.value.orig),
                            e.value.connection_invalidated)
        assert raised["first"] == raised["execute"]
    finally:
        await store.close()
