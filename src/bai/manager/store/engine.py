"""The store: one async SQLAlchemy engine plus migrations.

``Store.begin()`` opens a transaction (an ``AsyncConnection``), ``Store.connect()`` a plain
connection. SQLite runs in WAL mode with a busy timeout so that readers never block the writer and
concurrent writers wait instead of failing; on SQLite every write transaction starts with
``BEGIN IMMEDIATE`` so that compare-and-set writes serialise cleanly. PostgreSQL goes through
asyncpg. Schema changes are Alembic revisions in ``store/migrations``; ``migrate()`` brings the
database to head and is safe to run on every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import operator
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.util.concurrency import greenlet_spawn

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: each connection's page cache (SQLite's default: 2,000 KiB): the pages it holds are a copy of
#: what the operating system's file cache holds too
SQLITE_CACHE_KIB = 512
_LISTED_WRITE = "bai_listed_write"
_HEARTBEAT_ONLY = "bai_heartbeat_only"
_REVISION_FILE = re.compile(r"(\d{4})_\w+\.py")
_READ_VERSION = sa.text("SELECT version_num FROM alembic_version")
#: the tables a session listing reads (``services/listing.py``): a statement that writes one
#: of them changes ``Store.listing_changes``
_LISTED_TABLES = re.compile(r"\b(sessions|session_dependencies|groups|users)\b", re.IGNORECASE)
_CACHE_WRITES = "bai_cache_writes"
#: the execution options of a write whose result (rows, rowcount, lastrowid) nobody reads: on
#: SQLite it goes with the transaction's next statement or its commit, in one trip to the
#: thread, and its error (an IntegrityError) is raised there (``store/sqlite_onehop.py``)
LATER = {"bai_later": True}
#: what the manager keeps read in memory (``store/cached.py``), by name, and the tables it is
#: read from: a statement that writes one of them changes ``Store.cache_changes[name]``
CACHED_TABLES = {
    # a keypair with its user (``services/auth.py``)
    "keypairs": re.compile(r"\b(keypairs|users)\b", re.IGNORECASE),
    # an image by its name or alias (``services/images.py``)
    "images": re.compile(r"\b(images|image_aliases)\b", re.IGNORECASE),
    # a resource group with its live agents' capacities (``services/sessions.py``)
    "scaling_groups": re.compile(r"\b(scaling_groups|agents)\b", re.IGNORECASE),
    # a create's owner: keypair, user, policy, domain, group and membership
    # (``services/sessions.py``)
    "owners": re.compile(r"\b(keypairs|users|keypair_resource_policies|domains|groups|"
                         r"group_members)\b", re.IGNORECASE),
    # the number of sessions pending, for a create's first lines (``services/sessions.py``)
    "sessions": re.compile(r"\bsessions\b", re.IGNORECASE),
    # what a scheduling pass reads of the limits and policies (``services/schedule_input.py``)
    # and a placed kernel's spec of its keypair's policy (``services/lifecycle.py``)
    "policies": re.compile(r"\b(groups|domains|scaling_groups|keypairs|"
                           r"keypair_resource_policies)\b", re.IGNORECASE),
}


@functools.lru_cache(maxsize=512)
def _tables_written(statement: str) -> tuple[bool, tuple[str, ...]]:
    """Whether the write ``statement`` names a table a session listing reads, and the names of
    ``CACHED_TABLES`` whose tables it names. Kept by statement: the same few texts come back
    (statements built once, SQLAlchemy's compiled cache), and the expressions over a long
    INSERT cost more than the rest of its bookkeeping."""
    return (_LISTED_TABLES.search(statement) is not None,
            tuple(name for name, tables in CACHED_TABLES.items() if tables.search(statement)))


def _async_engine_module() -> Any:
    """``sqlalchemy.ext.asyncio.engine`` without its package's ``__init__``, which imports the
    ORM for ``AsyncSession`` (51 modules, 6 MB of the manager's memory) that bai never uses.
    The package stays whole for whoever asks it for anything else: its ``__init__`` runs then.
    """
    name = "sqlalchemy.ext.asyncio"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = importlib.util.module_from_spec(spec)

        def the_rest(attr: str) -> Any:
            if importlib.util.find_spec(f"{name}.{attr}") is not None:
                raise AttributeError(attr)  # a submodule: the import system loads it alone
            del package.__getattr__
            spec.loader.exec_module(package)
            return getattr(package, attr)

        package.__getattr__ = the_rest
        sys.modules[name] = package
    return importlib.import_module(name + ".engine")


_sa_async = _async_engine_module()
AsyncConnection, AsyncEngine = _sa_async.AsyncConnection, _sa_async.AsyncEngine


def _sqlite_path(url: sa.URL) -> str | None:
    return url.database if url.database and url.database != ":memory:" else None


class Store:
    """The database behind the manager: the single source of truth."""

    def __init__(self, db_url: str, *, echo: bool = False, connect_args: dict | None = None,
                 one_hop: bool = True) -> None:
        self.url = sa.make_url(db_url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict = {"echo": echo}
        one_hop_on = False
        if connect_args:
            kwargs["connect_args"] = dict(connect_args)
        if self.is_sqlite:
            path = _sqlite_path(self.url)
            if path:
                Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                      **kwargs.get("connect_args", {})}
            if self.url.get_driver_name() == "aiosqlite" and one_hop:
                # one trip to SQLite's thread per statement instead of 3-4 (sqlite_onehop.py):
                # bench/session_create.py: the manager's CPU per create 6.6 -> 3.5 ms (load 4.5)
                from bai.manager.store import sqlite_onehop

                if (module := sqlite_onehop.dbapi()) is not None:
                    kwargs["module"] = module
                    one_hop_on = True
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = _sa_async.create_async_engine(self.url, **kwargs)
        self._write_lock: asyncio.Lock | None = None
        #: SQLite: the connection writers take turns on, between their transactions
        self._writer: AsyncConnection | None = None
        #: SQL statements sent so far (an ``executemany`` counts once): what a job costs the
        #: database, in ``bai_manager_sql_statements_total``
        self.statements = 0
        #: changes this process made to the tables a session listing reads: one more when a
        #: statement writes one of them, and again once its transaction has ended (``begin``),
        #: so that a listing read between the two is not taken for the committed state. The
        #: manager's cached listings (``services/listing.py``) hold while it is unchanged.
        self.listing_changes = 0
        #: the same for the tables of each name of ``CACHED_TABLES``: what was read from them
        #: stands while its count is unchanged (``store/cached.py``)
        self.cache_changes = dict.fromkeys(CACHED_TABLES, 0)
        #: transactions this process ended through ``begin()`` (any of them may have written):
        #: on SQLite, where this process is the only writer, the database is as it was while
        #: this stays the same (an agent's unchanged heartbeat then needs no read)
        self.transactions = 0
        #: the same but for transactions that wrote agents' ``last_heartbeat`` alone
        #: (``heartbeat_only``): on SQLite, while this stays the same, what the scheduler
        #: decides on is as it was (its look at the fingerprint needs no read)
        self.changes = 0
        #: called (no argument) after a transaction that wrote a listed table ended, if set
        #: (the watchdogs' wake-up on SQLite: ``services/watchdogs.py``)
        self.on_listing_change: Callable[[], None] | None = None
        #: what to call once each open transaction has committed (``after_commit``)
        self._committed: dict[AsyncConnection, list[Callable[[], None]]] = {}

        #: SQLite's one-hop layer: an insert held without SQLAlchemy's execution
        #: (``insert_later``), by statement and columns: (SQL, parameter names, their bind
        #: processors), or None where it takes ``conn.execute``
        self._held: dict[tuple[Any, tuple[str, ...]], tuple[str, tuple, tuple] | None] = {}
        self._one_hop = one_hop_on
        #: the same for a read (``first``), by statement: (SQL, parameters, column keys and
        #: result processors), or None
        self._read: dict[Any, tuple[str, tuple, tuple] | None] = {}

        @event.listens_for(self.engine.sync_engine, "before_cursor_execute")
        def _count(conn, _cursor, statement, *_args: object) -> None:  # pragma: no cover
            self._note(conn, statement)

        if self.is_sqlite:
            self._setup_sqlite(self.engine, one_hop_on, self._note)

    def _note(self, conn: Any, statement: str) -> None:
        """A statement about to be sent on ``conn`` (a sync ``Connection``): counted, and if it
        writes, the changes to the tables it names."""
        self.statements += 1
        # writes only (INSERT, UPDATE, DELETE, WITH ..., REPLACE): a regular expression
        # on every SELECT would cost
        head = statement[:1]
        if head.isspace():
            head = statement.lstrip()[:1]
        if head in "IUDWRiudwr":
            listed, cached = _tables_written(statement)
            if listed:
                self.listing_changes += 1
                conn.info[_LISTED_WRITE] = True
            for name in cached:
                self.cache_changes[name] += 1
                conn.info.setdefault(_CACHE_WRITES, set()).add(name)

    async def insert_later(self, conn: AsyncConnection, statement: sa.Insert,
                           rows: list[dict[str, Any]]) -> None:
        """``await conn.execute(statement, rows)`` for an insert whose result nobody reads
        (``LATER``). On SQLite's one-hop layer the rows' parameters are made here by the
        statement's own bind processors (compiled once per set of columns) and the statement is
        held for the transaction's next trip without SQLAlchemy's execution of it (a result
        object, events, a switch to its greenlet: 50-85 us of a create's three inserts each).
        The same SQL and values reach SQLite, counted the same (``_note``). Elsewhere, and for
        an insert that would take a Python-side default, it is ``conn.execute``."""
        held = None
        if rows and self._one_hop and conn.in_transaction():
            keys = tuple(rows[0])
            held = self._held.get((statement, keys), False)
            if held is False:
                held = self._held[statement, keys] = self._compile_held(statement, keys)
        if held is None or any(r.keys() != rows[0].keys() for r in rows):
            await conn.execute(statement, rows)
            return
        sql, values_of, processors = held
        sync = conn.sync_connection
        dbapi = sync.connection.dbapi_connection
        params = []
        for r in rows:
            values = list(values_of(r))
            for i, process in processors:
                values[i] = process(values[i])
            params.append(values)
        self._note(sync, sql)
        dbapi.hold(sql, params)

    async def first(self, conn: AsyncConnection, statement: sa.Select,
                    params: dict[str, Any]) -> dict[str, Any] | None:
        """``(await conn.execute(statement, params)).mappings().first()`` as a dict (None
        without a row). On SQLite's one-hop layer, in a transaction, the statement is compiled
        once (SQLAlchemy's compiler) and sent in one trip to the thread, awaited here, without
        SQLAlchemy's execution of it (a context, events, a result object, a switch to its
        greenlet: ~0.24 ms of a create, bench/session_create.py). Its parameters are made by the
        statement's own bind processors and its columns read by their types' own result
        processors: the row is the one SQLAlchemy gives. Counted the same (``_note``); an
        error goes through SQLAlchemy's own handler, which wraps it, or invalidates the
        connection on a cancel or a disconnect, as for ``conn.execute``. Elsewhere (and for
        a statement this cannot compile alone) it is ``conn.execute``."""
        return await self._first(conn, statement, params, False)

    async def commit_unless(self, conn: AsyncConnection, statement: sa.Select,
                            params: dict[str, Any]) -> dict[str, Any] | None:
        """The transaction open on ``conn`` (``begin``) ends here: ``first``'s row of
        ``statement``, read after all it wrote; if there is none, the transaction commits (on
        SQLite's one-hop layer in the read's own trip, with the writes held before it: a
        create's whole transaction is one trip), else it stays open for its caller to roll
        back (raise). Nothing may be sent on ``conn`` after it. Elsewhere it is ``first``, and
        the transaction commits as its block ends."""
        return await self._first(conn, statement, params, True)

    async def _first(self, conn: AsyncConnection, statement: sa.Select, params: dict[str, Any],
                     commit: bool) -> dict[str, Any] | None:
        read = None
        if self._one_hop and conn.in_transaction() and not conn.invalidated:
            read = self._read.get(statement, False)
            if read is False:
                read = self._read[statement] = self._compile_read(statement)
        sync = conn.sync_connection
        if (read is None or sync is None or sync._echo
                or any(fixed is _MISSING and name not in params for name, fixed, _ in read[1])):
            row = (await conn.execute(statement, params)).mappings().first()
            return None if row is None else dict(row)
        sql, binds, columns = read
        try:
            values = tuple(v if p is None else p(v) for name, fixed, p in binds
                           for v in (params.get(name, fixed),))
        except BaseException as e:
            await greenlet_spawn(_handle, sync, e, sql, params, None)
        self._note(sync, sql)
        try:
            _, rows = await sync.connection.dbapi_connection.fetch(sql, values, commit)
        except BaseException as e:
            await greenlet_spawn(_handle, sync, e, sql, values, _READ_CONTEXT)
        if not rows:
            return None
        return {key: value if process is None else process(value)
                for (key, process), value in zip(columns, rows[0], strict=True)}

    def _compile_read(self, statement: sa.Select) -> tuple[str, tuple, tuple] | None:
        """``first``'s SQL, its parameters (name, fixed value or ``_MISSING``, bind
        processor) in the SQL's order, and its columns' keys and result processors; None
        where it takes ``conn.execute``."""
        try:
            compiled = statement.compile(dialect=self.engine.dialect)
        except sa.exc.CompileError:  # conn.execute says what is wrong
            return None
        names = compiled.positiontup
        if (names is None or compiled.post_compile_params or compiled.literal_execute_params
                or compiled.escaped_bind_names or not compiled._result_columns
                or not compiled._ordered_columns or compiled.has_out_parameters):
            return None
        processors = compiled._bind_processors
        binds = tuple((name, _MISSING if (b := compiled.binds[name]).required
                       else b.effective_value, processors.get(name)) for name in names)
        # as SQLAlchemy's result does (``get_result_processor``), by the column's type and
        # the description's type code, which sqlite3 leaves None
        dialect = self.engine.dialect
        columns = tuple((c[0], c[3]._cached_result_processor(dialect, None))
                        for c in compiled._result_columns)
        return compiled.string, binds, columns

    def _compile_held(self, statement: sa.Insert,
                      keys: tuple[str, ...]) -> tuple[str, Callable, tuple] | None:
        """``insert_later``'s SQL, what takes a row's values in the SQL's order (one C call),
        and the bind processors by position (only the columns that have one: a create's
        session has 51 columns, 17 of them with one); None where it takes ``conn.execute``."""
        try:
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=list(keys))
        except sa.exc.CompileError:  # conn.execute says what is wrong
            return None
        names = compiled.positiontup
        # (of one column, itemgetter would give its value alone, not a tuple)
        if (compiled.insert_prefetch or compiled.returning or compiled.post_compile_params
                or names is None or set(names) != set(keys) or len(names) < 2):
            return None
        processors = compiled._bind_processors
        return compiled.string, operator.itemgetter(*names), tuple(
            (i, _empty_kept(p) if issubclass(compiled.binds[n].type._type_affinity, sa.JSON)
             else p) for i, n in enumerate(names) if (p := processors.get(n)) is not None)

    @staticmethod
    def _setup_sqlite(engine: AsyncEngine, one_hop: bool,
                      note: Callable[[Any, str], None]) -> None:
        sync_engine = engine.sync_engine

        if one_hop:
            @event.listens_for(sync_engine, "before_cursor_execute")
            def _later(_conn, cursor, _statement, _params, context, _many):  # pragma: no cover
                if context is not None and context.execution_options.get("bai_later"):
                    cursor.later = True

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver hook
            # pysqlite's own transaction handling would defeat BEGIN IMMEDIATE below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn):  # pragma: no cover - driver hook
            # Writers take the lock up front (no read->write upgrade that could fail with
            # SQLITE_BUSY_SNAPSHOT); readers stay deferred and never block under WAL.
            sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("bai_write") else "BEGIN"
            if one_hop:
                # held for the transaction's first trip as the one-hop cursor would hold it,
                # without SQLAlchemy's execution of it (a context, events and a result: ~80 us
                # of a create's main-thread CPU); counted the same
                note(conn, sql)
                conn.connection.dbapi_connection.hold_begin(sql)
            else:
                conn.exec_driver_sql(sql)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        if not self.is_sqlite:
            async with self.engine.connect() as conn, self._transaction(conn):
                yield conn
            return
        # SQLite has one writer at a time. This process's writers queue here, in order,
        # instead of in SQLite's busy handler, which sleeps up to 100 ms between retries:
        # with a thousand kernels starting at once that made a write cost seconds.
        # They take turns on one connection, kept between them (a connection of the pool
        # each time cost a checkout, a checkin and three more switches to SQLAlchemy's
        # greenlet: half of what an empty transaction costs). A transaction that fails
        # leaves it to be closed as before, and the next one connects afresh.
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            conn, self._writer = self._writer, None
            if conn is None:
                conn = await self.engine.connect().start()
                await conn.execution_options(bai_write=True)
            kept = False
            try:
                async with self._transaction(conn):
                    yield conn
                kept = not (conn.invalidated or conn.closed)
            finally:
                if kept:
                    self._writer = conn
                else:
                    await conn.__aexit__(None, None, None)  # closed as ``async with`` would

    @contextlib.asynccontextmanager
    async def _transaction(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """A transaction on ``conn``; its end counted (``_ended``), then, once it committed,
        what ``after_commit`` asked for (nothing after a rollback)."""
        try:
            async with (_OneHopTransaction(conn) if self._one_hop else conn.begin()):
                yield
        finally:
            self._ended(conn)
            committed = self._committed.pop(conn, ())
        for fn in committed:
            fn()

    def _ended(self, conn: AsyncConnection) -> None:
        """After a transaction (committed or rolled back): if it wrote a listed table, the
        listings read while it was open are out of date."""
        self.transactions += 1
        if conn.invalidated or conn.closed:
            # a cancel cut the commit short: whether it wrote is unknown, so say it did
            # (reading ``conn.info`` now would reconnect, and raise MissingGreenlet over the cancel)
            self.changes += 1
            for name in self.cache_changes:
                self.cache_changes[name] += 1
            self._listed_write()
            return
        if not conn.info.pop(_HEARTBEAT_ONLY, False):
            self.changes += 1
        for name in conn.info.pop(_CACHE_WRITES, ()):
            self.cache_changes[name] += 1
        if conn.info.pop(_LISTED_WRITE, False):
            self._listed_write()

    def after_commit(self, conn: AsyncConnection, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the transaction open on ``conn`` has committed, right after its
        end is counted (``cache_changes``) and before another transaction of this process
        begins on SQLite (under the write lock); never if it rolls back or its end fails."""
        self._committed.setdefault(conn, []).append(fn)

    @staticmethod
    def heartbeat_only(conn: AsyncConnection) -> None:
        """Mark the transaction open on ``conn`` as one that writes agents' ``last_heartbeat``
        alone: it does not count in ``changes``."""
        conn.info[_HEARTBEAT_ONLY] = True

    def _listed_write(self) -> None:
        self.listing_changes += 1
        if self.on_listing_change is not None:
            self.on_listing_change()

    def connect(self):
        """A connection for reads (``async with store.connect() as conn``)."""
        return self.engine.connect()

    async def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent). A database already
        there is only read: importing Alembic would stay in the manager's memory (~10 MB)."""
        if await self._at_head():
            return
        from alembic import command

        cfg = alembic_config()
        async with self.begin() as conn:
            def _upgrade(sync_conn):
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, "head")

            await conn.run_sync(_upgrade)

    async def _at_head(self) -> bool:
        head = head_revision()
        try:
            async with self.engine.connect() as conn:
                found = (await conn.execute(_READ_VERSION)).scalars().all()
        except sa.exc.DBAPIError:  # no alembic_version table yet: a new database
            return False
        return head is not None and found == [head]

    async def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()
        await self.engine.dispose()


#: a parameter of ``Store.first``'s statement that its caller must give
_MISSING = object()


def _empty_kept(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A JSON column's bind processor ``process`` with what it makes of an empty dict and an
    empty list made once: 7 of a new session's 10 JSON values are (a ``json.dumps`` each,
    2-4 us)."""
    empty = {dict: process({}), list: process([])}

    def kept(value: Any) -> Any:
        return empty[value.__class__] if not value and value.__class__ in empty else process(
            value)

    return kept


class _OneHopTransaction:
    """``conn.begin()`` on SQLite's one-hop layer, where SQLAlchemy's switches to its greenlet
    would wrap nothing that awaits: its begin (the ``BEGIN`` is held for the first trip) and an
    end with nothing to send (``ends_quietly``: after ``Store.commit_unless``, say) run on the
    loop; an end that sends goes through the greenlet as ``conn.begin()``'s does. The same
    SQLAlchemy transaction either way (``sync_connection.begin()``, its context's enter and
    exit)."""

    __slots__ = ("_conn", "_tx")

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        conn = self._conn
        if conn.invalidated or conn.closed:  # beginning would connect again: awaits
            self._tx = (await conn.begin().start(is_ctxmanager=True)).sync_transaction
            return
        self._tx = conn.sync_connection.begin()
        self._tx.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        sync = self._conn.sync_connection
        if (sync is not None and not sync.invalidated and not sync.closed
                and sync.connection.dbapi_connection.ends_quietly()):
            self._tx.__exit__(*exc)
        else:
            await greenlet_spawn(self._tx.__exit__, *exc)


def _handle(sync: Any, error: BaseException, sql: str, params: Any, context: Any) -> None:
    """In SQLAlchemy's greenlet (what it may close awaits there), with ``error`` the one being
    handled (its handler reads ``sys.exc_info()``, which a greenlet keeps for itself): raise
    what ``conn.execute`` raises for it."""
    try:
        raise error
    except BaseException:
        sync._handle_dbapi_exception(error, sql, params, None, context)


class _ReadContext:
    """What SQLAlchemy's error handler reads of an execution context, for ``Store.first``'s
    statement: a single execution whose failure needs no more (as ``DefaultExecutionContext``)."""

    executemany = False

    @staticmethod
    def handle_dbapi_exception(_e: BaseException) -> None:
        pass


_READ_CONTEXT = _ReadContext()


def head_revision() -> str | None:
    """The newest revision, from the file names alone (without Alembic): revisions are numbered
    in order, each file ``NNNN_name.py`` holding revision ``NNNN`` after ``NNNN - 1``
    (test_store_engine holds Alembic's own head to this)."""
    numbers = [m.group(1) for f in (MIGRATIONS_DIR / "versions").iterdir()
               if (m := _REVISION_FILE.fullmatch(f.name))]
    return max(numbers, default=None)


def alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg
