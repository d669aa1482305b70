"""Shared fixtures: ``stack`` (one embedded stack for the whole test session, started with
``backend.ai server start`` in a temporary HOME) and ``make_stack`` (extra stacks with other agent
slots, e.g. an agent of 2 cpus for queueing tests). The machinery lives in ``tests/stacks.py``.
``trips`` counts the calls queued to aiosqlite's thread (the store's trips on SQLite).
"""

from __future__ import annotations

import shutil

import pytest

from stacks import Stack, start_stack


@pytest.fixture(scope="session")
def stack():
    st = start_stack("cpu=8", "mem=8g", "cuda.shares=4", "cuda.device=2")
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture
def make_stack():
    made: list[Stack] = []

    def make(*slots: str, runtime: str = "process", env: dict[str, str] | None = None) -> Stack:
        st = start_stack(*slots, runtime=runtime, env=env)
        made.append(st)
        return st

    yield make
    for st in made:
        st.stop()
        shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture
def trips(monkeypatch):
    """Counts calls queued to aiosqlite's thread: ``trips[0]``."""
    import aiosqlite

    count = [0]
    queue = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):
        count[0] += 1
        return await queue(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return count
