"""A PostgreSQL store of a test's own: ``private_store(prefix)`` makes a fresh schema on
``BAI_TEST_PG_DSN``, yields a ``Store`` whose every connection works inside it, and drops it
afterwards (the test is skipped when the variable is not set)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from bai.manager.store.engine import Store

PG_DSN = os.environ.get("BAI_TEST_PG_DSN")


async def _admin(sql: str) -> None:
    admin = Store(PG_DSN)
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def private_store(prefix: str) -> AsyncIterator[Store]:
    if not PG_DSN:
        pytest.skip("BAI_TEST_PG_DSN not set")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await _admin(f"CREATE SCHEMA {schema}")
    store = Store(PG_DSN, connect_args={"server_settings": {"search_path": schema}})
    try:
        yield store
    finally:
        await store.close()
        await _admin(f"DROP SCHEMA {schema} CASCADE")
