"""``store/cached.py``: a value stands while its tables' count is what it was when its read
began; nothing is kept without SQLite."""

from __future__ import annotations

from types import SimpleNamespace

from bai.manager.store.cached import Cached


def _store(sqlite: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_sqlite=sqlite, cache_changes={"t": 0})


def test_a_value_stands_until_its_tables_are_written():
    store, cache = _store(), Cached("t", 8)
    g = cache.generation(store)
    cache.put("k", g, "v")
    assert cache.get("k", cache.generation(store)) == "v"
    store.cache_changes["t"] += 1
    assert cache.get("k", cache.generation(store)) is None


def test_nothing_is_kept_without_sqlite():
    store, cache = _store(sqlite=False), Cached("t", 8)
    g = cache.generation(store)
    assert g is None
    cache.put("k", g, "v")
    assert cache.get("k", g) is None


def test_past_its_size_it_starts_over():
    store, cache = _store(), Cached("t", 2)
    g = cache.generation(store)
    for k in ("a", "b", "c"):
        cache.put(k, g, k)
    assert [cache.get(k, g) for k in ("a", "b", "c")] == [None, None, "c"]
