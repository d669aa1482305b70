"""Shared fixtures: ``stack`` (one embedded stack for the whole test session, started with
``backend.ai server start`` in a temporary HOME) and ``make_stack`` (extra stacks with other agent
slots, e.g. an agent of 2 cpus for queueing tests). The machinery lives in ``tests/stacks.py``.
``trips`` counts the calls queued to aiosqlite's thread (the store's trips on SQLite).
"""

from __future__ import annotations

import os
import shutil

import pytest

from stacks import Stack, start_stack


@pytest.fixture(autouse=True)
def _umask_restored():
    """Each test ends with the umask it began with: ``server start`` run in-process (click's
    CliRunner) sets 0o077 for the daemons it spawns, which left every later test's files
    unreadable to the kernels' uids (their sandboxes read them as other users)."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


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
