"""Two writers race to move one session on SQLite: the compare-and-set lets exactly one win.

Both read the session TERMINATING before either writes (a barrier), then each tries
TERMINATING -> TERMINATED with the row it read. Without the ``status = :expected`` guard on the UPDATE both
would "win": two history rows, and the session's slots released twice, which frees slots that
another session still holds.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from api_support import ApiRoot, add_session, seed

from bai.common.status import SessionStatus as S
from bai.manager.services.transitions import Outbox, load_session, transit
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


@pytest.fixture
async def store(tmp_path):
    root = ApiRoot(ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/race.db"))
    yield root.store
    await root.store.close()


async def test_two_writers_one_winner(store):
    s = await seed(store)
    slot = {"cpu": "1", "mem": "268435456"}
    async with store.begin() as conn:
        await conn.execute(t.agents.insert().values(
            id="agent-0", address="http://127.0.0.1:1", isolation={},
            available_slots={"cpu": "4", "mem": "4294967296"},
            # two sessions hold one slot each
            occupied_slots={"cpu": "2", "mem": "536870912"}))
    row = await add_session(store, s, name="raced", status="TERMINATING", requested_slots=slot,
                            occupying_slots=slot)
    await add_session(store, s, name="bystander", requested_slots=slot, occupying_slots=slot)
    sid = row["id"]

    both_read = asyncio.Barrier(2)

    async def writer(n: int):
        async with store.connect() as conn:
            seen = await load_session(conn, sid)
        assert seen["status"] == "TERMINATING"
        await both_read.wait()
        async with store.begin() as conn:
            return await transit(conn, sid, S.TERMINATING, S.TERMINATED, reason=f"writer-{n}",
                                 cause="test", outbox=Outbox(), row=seen)

    results = await asyncio.gather(writer(1), writer(2))
    assert sum(r is not None for r in results) == 1, results
    async with store.connect() as conn:
        moves = (await conn.execute(
            sa.select(t.session_history.c.to_status).where(t.session_history.c.session_id == sid,
                                                           t.session_history.c.to_status == "TERMINATED"))).all()
        occupied = (await conn.execute(
            sa.select(t.agents.c.occupied_slots).where(t.agents.c.id == "agent-0"))).scalar()
    assert len(moves) == 1
    assert occupied == {"cpu": "1", "mem": "268435456"}  # the bystander's slot is still held
