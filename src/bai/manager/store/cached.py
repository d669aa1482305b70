"""Values the manager keeps read from the database while the tables they come from are
unchanged: the keypair a signed request names, the image a create names, the resource group a
create runs in, the number of sessions pending as the last create for later left it (``Cached``;
that one is put by ``Store.after_commit``, once the create's own sessions are counted in).

``Store.cache_changes[name]`` counts the writes this process made to the tables of ``name``
(``engine.CACHED_TABLES``): one more when a statement writes one of them and again once its
transaction has ended, so that a value read while a write was open is not kept past its commit.
A value stands while that count is what it was when its read began. Only on SQLite: there this
process is the only writer (as the session listings' cache assumes); PostgreSQL may have other
manager replicas writing, whose changes this process would not see, so there every use reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


class Cached:
    """Values of the tables of ``name`` by key; past ``max_entries`` it starts over."""

    def __init__(self, name: str, max_entries: int) -> None:
        self.name = name
        self.max_entries = max_entries
        self._values: dict[Any, tuple[int, Any]] = {}

    def generation(self, store: Any) -> int | None:
        """The count to read under (take it before the read), or None where nothing may be
        kept (not SQLite)."""
        return store.cache_changes[self.name] if getattr(store, "is_sqlite", False) else None

    def get(self, key: Any, generation: int | None) -> Any:
        """The value kept for ``key`` if it still stands, else None."""
        entry = self._values.get(key) if generation is not None else None
        return entry[1] if entry is not None and entry[0] == generation else None

    def put(self, key: Any, generation: int | None, value: Any) -> None:
        """Keep ``value`` read under ``generation`` (if the tables were written since, the
        count has moved on and ``get`` never gives it)."""
        if generation is None:
            return
        if len(self._values) >= self.max_entries:
            self._values.clear()
        self._values[key] = (generation, value)

    async def read(self, store: Any, key: Any, read: Callable[[], Awaitable[Any]]) -> Any:
        """The value kept for ``key`` if it still stands, else ``await read()`` (kept under
        the generation taken before it). The value is shared: callers must not change it."""
        generation = self.generation(store)
        value = self.get(key, generation)
        if value is None:
            value = await read()
            self.put(key, generation, value)
        return value
