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
import re
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
_LISTED_WRITE = "bai_listed_write"
#: the tables a session listing reads (``services/listing.py``): a statement that writes one
#: of them changes ``Store.listing_changes``
_LISTED_TABLES = re.compile(r"\b(sessions|session_dependencies|groups|users)\b", re.IGNORECASE)


def _sqlite_path(url: sa.URL) -> str | None:
    return url.database if url.database and url.database != ":memory:" else None


class Store:
    """The database behind the manager: the single source of truth."""

    def __init__(self, db_url: str, *, echo: bool = False, connect_args: dict | None = None) -> None:
        self.url = sa.make_url(db_url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict = {"echo": echo}
        if connect_args:
            kwargs["connect_args"] = dict(connect_args)
        if self.is_sqlite:
            path = _sqlite_path(self.url)
            if path:
                Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                      **kwargs.get("connect_args", {})}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._write_lock: asyncio.Lock | None = None
        #: SQL statements sent so far (an ``executemany`` counts once): what a job costs the
        #: database, in ``bai_manager_sql_statements_total``
        self.statements = 0
        #: changes this process made to the tables a session listing reads: one more when a
        #: statement writes one of them, and again once its transaction has ended (``begin``),
        #: so that a listing read between the two is not taken for the committed state. The
        #: manager's cached listings (``services/listing.py``) hold while it is unchanged.
        self.listing_changes = 0

        @event.listens_for(self.engine.sync_engine, "before_cursor_execute")
        def _count(conn, _cursor, statement, *_args: object) -> None:  # pragma: no cover
            self.statements += 1
            # writes only (INSERT, UPDATE, DELETE, WITH ..., REPLACE): a regular expression
            # on every SELECT would cost
            head = statement[:1]
            if head.isspace():
                head = statement.lstrip()[:1]
            if head in "IUDWRiudwr" and _LISTED_TABLES.search(statement):
                self.listing_changes += 1
                conn.info[_LISTED_WRITE] = True

        if self.is_sqlite:
            self._setup_sqlite(self.engine)

    @staticmethod
    def _setup_sqlite(engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver hook
            # pysqlite's own transaction handling would defeat BEGIN IMMEDIATE below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn):  # pragma: no cover - driver hook
            # Writers take the lock up front (no read->write upgrade that could fail with
            # SQLITE_BUSY_SNAPSHOT); readers stay deferred and never block under WAL.
            if conn.get_execution_options().get("bai_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        if not self.is_sqlite:
            async with self.engine.connect() as conn:
                try:
                    async with conn.begin():
                        yield conn
                finally:
                    self._ended(conn)
            return
        # SQLite has one writer at a time. This process's writers queue here, in order,
        # instead of in SQLite's busy handler, which sleeps up to 100 ms between retries:
        # with a thousand kernels starting at once that made a write cost seconds.
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock, self.engine.connect() as conn:
            await conn.execution_options(bai_write=True)
            try:
                async with conn.begin():
                    yield conn
            finally:
                self._ended(conn)

    def _ended(self, conn: AsyncConnection) -> None:
        """After a transaction (committed or rolled back): if it wrote a listed table, the
        listings read while it was open are out of date."""
        if conn.invalidated or conn.closed:
            # a cancel cut the commit short: whether it wrote is unknown, so say it did
            # (reading ``conn.info`` now would reconnect, and raise MissingGreenlet over the cancel)
            self.listing_changes += 1
            return
        if conn.info.pop(_LISTED_WRITE, False):
            self.listing_changes += 1

    def connect(self):
        """A connection for reads (``async with store.connect() as conn``)."""
        return self.engine.connect()

    async def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent)."""
        from alembic import command

        cfg = alembic_config()
        async with self.begin() as conn:
            def _upgrade(sync_conn):
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, "head")

            await conn.run_sync(_upgrade)

    async def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    async def close(self) -> None:
        await self.engine.dispose()


def alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg
