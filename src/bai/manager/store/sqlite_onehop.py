"""SQLite statements in one trip to aiosqlite's thread.

SQLAlchemy's aiosqlite adapter makes a statement cost several trips between the event loop and
the thread that owns the ``sqlite3`` connection: one to make a cursor, one to execute, one to
fetch the rows, one to close the cursor (a SELECT 4, an INSERT 3). Each trip is a queued call, a
future, a wake-up of the loop through its self-pipe and a greenlet switch; a session create ran
~34 of them. Here a statement is one function run on that thread: cursor, execute (or
executemany), fetch every row, read ``description``, ``rowcount`` and ``lastrowid``, close; the
loop gets all of it back in one answer. ``COMMIT`` and ``ROLLBACK`` stay one trip each, and the
pool's reset of a connection whose last statement left no transaction open (after a commit, say)
costs none: SQLite would do nothing with it.

A ``BEGIN`` (``BEGIN IMMEDIATE`` for writers, ``store/engine.py``) answers nothing a caller
reads, so it is not sent alone: it goes ahead of the transaction's first statement, in that
statement's trip (a write transaction one trip fewer). A transaction that sends no statement
sends no ``BEGIN`` either, and its ``COMMIT`` or ``ROLLBACK`` costs no trip. What a failing
``BEGIN`` raises (``database is locked`` after the busy timeout) is then raised by that first
statement.

A write whose results its caller never reads (no rows, ``rowcount`` or ``lastrowid``: the
inserts of a new session) may be held the same way, if its statement carries the execution
options ``store.engine.LATER`` (``sa.insert(t).execution_options(**LATER)``; the store's
``before_cursor_execute`` sets the cursor's ``later``): it goes ahead of the next
statement, or with the ``COMMIT``, in one trip (a create's three inserts and its commit: one).
Its result says nothing (``rowcount`` -1); an error it meets (an ``IntegrityError``) is raised
by the statement or the commit it went with, and the transaction is rolled back as before.
Elsewhere (PostgreSQL, the stock adapter) the option changes nothing.

A read may skip SQLAlchemy's execution too (``Store.first``, a create's owner read): it
compiles the statement itself and awaits the connection's ``fetch``, the same one trip with
what is held ahead of it, on the loop rather than in SQLAlchemy's greenlet. Such a read may end
its transaction too (``Store.commit_unless``): the ``COMMIT`` follows it in the same trip where
it found no row, and SQLAlchemy's commit then sends nothing (a create's whole transaction, one
trip).

Nothing else changes: the SQL sent, the errors (the ``sqlite3`` exceptions, wrapped by SQLAlchemy
into ``IntegrityError`` and the rest as before), transactions, savepoints and ``BEGIN IMMEDIATE``
(all plain statements), the busy timeout (SQLite's, on that thread), and a cancel (the awaiting
task sees ``CancelledError``; the statement ends on the thread, and SQLAlchemy invalidates the
connection as before). Server-side cursors (``stream``) keep SQLAlchemy's own cursor.

``dbapi()`` gives the DBAPI object to pass as ``create_async_engine(..., module=...)``, or None
where the installed SQLAlchemy or aiosqlite is not the one this was written against (then the
stock adapter runs).
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.util.concurrency import await_only


#: what a transaction's ``BEGIN`` is sent as (``store/engine.py``): held for the next trip
_BEGINS = frozenset({"BEGIN", "BEGIN IMMEDIATE"})


def _execute(cur: sqlite3.Cursor, operation: str, parameters: Any, many: bool) -> None:
    if many:
        cur.executemany(operation, parameters)
    elif parameters is None:
        cur.execute(operation)
    else:
        cur.execute(operation, parameters)


def _send(conn: sqlite3.Connection, ahead: list[tuple[str, Any, bool]]) -> None:
    """On the SQLite thread: the statements held ``ahead``, in order."""
    for operation, parameters, many in ahead:
        cur = conn.cursor()
        try:
            _execute(cur, operation, parameters, many)
        finally:
            cur.close()


async def _nothing() -> None:
    pass


def _commit(conn: sqlite3.Connection, ahead: list[tuple[str, Any, bool]]) -> None:
    _send(conn, ahead)
    conn.commit()


def _run(conn: sqlite3.Connection, ahead: list[tuple[str, Any, bool]], operation: str,
         parameters: Any, many: bool, commit_unless_rows: bool = False) -> tuple:
    """On the SQLite thread: the statements held ``ahead`` (a ``BEGIN``, writes), then the
    whole statement, rows included; then, with ``commit_unless_rows``, the ``COMMIT`` if it
    found none."""
    if ahead:
        _send(conn, ahead)
    cur = conn.cursor()
    try:
        _execute(cur, operation, parameters, many)
        description = cur.description
        rows = cur.fetchall() if description else ()
        if commit_unless_rows and not rows:
            conn.commit()
        # read after the fetch, as the stock adapter does: a RETURNING statement counts its rows
        # as they are stepped
        return description, rows, cur.rowcount, cur.lastrowid, conn.in_transaction
    finally:
        cur.close()


class OneHopCursor:
    """A DBAPI cursor whose ``execute`` is one trip to the thread; the rows are then local."""

    server_side = False
    __slots__ = ("_adapt_connection", "_rows", "arraysize", "description", "lastrowid",
                 "rowcount", "later")

    def __init__(self, adapt_connection: Any) -> None:
        #: the next statement is held (``LATER``; set by the store's ``before_cursor_execute``)
        self.later = False
        self._adapt_connection = adapt_connection
        self._rows: collections.deque = collections.deque()
        self.arraysize = 1
        self.description = None
        self.rowcount = -1
        self.lastrowid = None

    def _go(self, operation: str, parameters: Any, many: bool) -> None:
        adapt = self._adapt_connection
        if self.later or (operation in _BEGINS and not parameters and not many):
            adapt._ahead.append((operation, parameters, many))  # sent with the next trip
            self.description, self.rowcount, self.lastrowid = None, -1, None
            self._rows.clear()
            if self.later:
                self.later = False
                # SQLAlchemy's execute wants an await; this one returns at once, on the loop
                await_only(_nothing())
            return
        try:
            result = await_only(adapt.trip(operation, parameters, many))
        except BaseException as error:
            adapt.failed(error)
            raise
        self.description, rows, self.rowcount, self.lastrowid, in_tx = result
        if self.description is not None and _COUNTS_HIDDEN_WITH_ROWS:
            self.rowcount = self.lastrowid = -1
        self._rows = collections.deque(rows)
        adapt._idle = not in_tx

    def execute(self, operation: str, parameters: Any = None) -> None:
        self._go(operation, parameters, False)

    def executemany(self, operation: str, seq_of_parameters: Any) -> None:
        self._go(operation, seq_of_parameters, True)

    async def _async_soft_close(self) -> None:
        """Nothing to close on the thread: the cursor there closed with the statement."""

    def close(self) -> None:
        self._rows.clear()

    def setinputsizes(self, *inputsizes: Any) -> None:
        pass

    def __enter__(self) -> OneHopCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        while self._rows:
            yield self._rows.popleft()

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        rr = self._rows
        return [rr.popleft() for _ in range(min(self.arraysize if size is None else size,
                                                len(rr)))]

    def fetchall(self) -> Sequence[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


_DBAPI = None
#: SQLAlchemy 2.0's stock cursor says -1 for ``rowcount`` and ``lastrowid`` of a statement that
#: returns rows (RETURNING); 2.1's passes sqlite3's on. The layer says what the stock one would.
_COUNTS_HIDDEN_WITH_ROWS = False


def dbapi() -> Any:
    """The DBAPI module object for ``create_async_engine(module=...)`` (made once), or None."""
    global _DBAPI, _COUNTS_HIDDEN_WITH_ROWS
    if _DBAPI is not None:
        return _DBAPI
    try:
        import aiosqlite
        from sqlalchemy.dialects.sqlite import aiosqlite as sa_aiosqlite
    except ImportError:  # pragma: no cover - the server extra brings both
        return None
    stock_conn = getattr(sa_aiosqlite, "AsyncAdapt_aiosqlite_connection", None)
    stock_dbapi = getattr(sa_aiosqlite, "AsyncAdapt_aiosqlite_dbapi", None)
    if (stock_conn is None or stock_dbapi is None
            or not hasattr(aiosqlite.Connection, "_execute")
            or not hasattr(stock_conn, "_handle_exception")):
        return None  # pragma: no cover - another SQLAlchemy or aiosqlite: keep the stock adapter
    try:
        from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_cursor
    except ImportError:  # pragma: no cover
        AsyncAdapt_dbapi_cursor = ()
    _COUNTS_HIDDEN_WITH_ROWS = not issubclass(sa_aiosqlite.AsyncAdapt_aiosqlite_cursor,
                                              AsyncAdapt_dbapi_cursor)

    class OneHopConnection(stock_conn):
        #: True while the last word from the thread is that no transaction is open, so that a
        #: rollback (the pool's reset on every return) has nothing to undo
        _idle = False

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            #: statements not sent yet (a ``BEGIN``, ``LATER`` writes): they go with the next
            #: statement or the commit
            self._ahead: list[tuple[str, Any, bool]] = []

        def hold(self, operation: str, seq_of_parameters: list) -> None:
            """Hold a write for the next trip, as a ``LATER`` statement's ``executemany`` is
            (``Store.insert_later``: its caller made the parameters)."""
            self._ahead.append((operation, seq_of_parameters, True))

        def hold_begin(self, operation: str) -> None:
            """A transaction's ``BEGIN``, held for its first trip (``Store``'s begin hook
            sends it here rather than through a cursor, which would hold it the same)."""
            self._ahead.append((operation, None, False))

        def trip(self, operation: str, parameters: Any, many: bool,
                 commit_unless_rows: bool = False):
            """The awaitable of one trip: what is held, then ``operation`` (then the
            ``COMMIT`` if it found no row, with ``commit_unless_rows``); its answer is
            ``_run``'s."""
            ahead, self._ahead = self._ahead, []
            aio = self._connection
            return aio._execute(_run, aio._conn, ahead, operation, parameters, many,
                                commit_unless_rows)

        def failed(self, error: BaseException) -> None:
            """After a trip that raised ``error``: raises what the stock adapter would
            (``_handle_exception``), or returns for the caller to re-raise."""
            self._idle = False  # whatever the thread did, the next rollback undoes it
            if isinstance(error, Exception):
                self._handle_exception(error)

        async def fetch(self, operation: str, parameters: Any,
                        commit_unless_rows: bool = False) -> tuple[Any, Sequence[Any]]:
            """One statement in one trip, awaited on the loop rather than in SQLAlchemy's
            greenlet (``Store.first``): its ``description`` and rows. With
            ``commit_unless_rows`` the transaction is committed in the same trip if it found
            none (``Store.commit_unless``): SQLAlchemy's commit then sends nothing."""
            try:
                description, rows, _, _, in_tx = await self.trip(operation, parameters, False,
                                                                 commit_unless_rows)
            except BaseException as error:
                self.failed(error)
                raise
            self._idle = not in_tx
            return description, rows

        def ends_quietly(self) -> bool:
            """Whether the transaction's commit or rollback now sends nothing: no statement
            held but its ``BEGIN``, and none open on the thread (``Store.commit_unless``
            committed it, or it sent nothing)."""
            return self._idle and all(operation in _BEGINS for operation, _, _ in self._ahead)

        def cursor(self, server_side: bool = False):
            if server_side:
                if self._ahead:  # that cursor's statements go their own way: the held first
                    OneHopCursor(self).execute("SELECT 1")
                self._idle = False  # statements we do not see: assume a transaction
                return super().cursor(server_side=True)
            return OneHopCursor(self)

        def commit(self) -> None:
            ahead, self._ahead = self._ahead, []
            if any(operation not in _BEGINS for operation, _, _ in ahead):
                try:
                    await_only(self._connection._execute(_commit, self._connection._conn, ahead))
                except BaseException as error:
                    self._idle = False  # the next rollback undoes what went through
                    if isinstance(error, Exception):
                        self._handle_exception(error)
                    raise
            elif self._idle:  # a BEGIN with nothing after it: nothing to commit
                return
            else:
                super().commit()
            self._idle = True

        def rollback(self) -> None:
            self._ahead.clear()
            if self._idle:
                return
            super().rollback()
            self._idle = True

    class OneHopDBAPI(stock_dbapi):
        def connect(self, *arg: Any, **kw: Any):
            stock = super().connect(*arg, **kw)
            return OneHopConnection(self, stock._connection)

    _DBAPI = OneHopDBAPI(aiosqlite, sqlite3)
    return _DBAPI
