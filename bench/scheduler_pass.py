"""How long one scheduling pass takes with N pending sessions (SQLite by default).

    python bench/scheduler_pass.py [N] [--db URL]

Prints the time of the first pass (places what fits, writes every waiting session's reason)
and of a second pass (nothing changed: reads and decides only).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid

import sqlalchemy as sa

from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.root import ManagerRoot
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


class SilentAgents:
    async def create_kernel(self, address, spec):
        return {"kernel_id": spec["kernel_id"]}

    async def close(self):
        pass


async def main(n: int, db: str | None) -> None:
    tmp = tempfile.mkdtemp()
    root = ManagerRoot(ManagerSettings(db_url=db or f"sqlite+aiosqlite:///{tmp}/bench.db"))
    await root.store.migrate()
    keys = await bootstrap(root.store)
    root.agents.rpc = SilentAgents()
    for i in range(10):
        await root.agents.heartbeat({"agent_id": f"agent-{i}", "address": f"http://127.0.0.1:{i+1}",
                                     "available_slots": {"cpu": "4", "mem": str(16 * 2**30)}})
    async with root.store.begin() as conn:
        uid = (await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == "user@bai.local"))).scalar()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
        image = (await conn.execute(sa.select(t.images.c.name))).scalar()
        now = t.utcnow()
        rows = [dict(
            id=uuid.uuid4(), name=f"bench-{i}", image=image, domain_name="default", group_id=gid,
            user_id=uid, access_key=keys["user"]["access_key"], status="PENDING", status_data={},
            requested_slots={"cpu": "1", "mem": str(2**30)}, occupying_slots={}, service_ports=[],
            mounts=[], environ={}, agent_ids=[], resource_opts={}, abusing_reports=[],
            created_at=now, status_changed=now, last_activity_at=now,
        ) for i in range(n)]
        await conn.execute(sa.insert(t.sessions), rows)
    for label in ("first pass", "second pass"):
        t0 = time.perf_counter()
        d = await root.scheduler.run_pass()
        dt = time.perf_counter() - t0
        print(f"{label}: {n} pending, {len(d.assignments)} placed, {len(d.waits)} waiting: {dt:.3f}s")
    await root.sessions.close()
    await root.store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=10_000)
    ap.add_argument("--db", default=None)
    a = ap.parse_args()
    asyncio.run(main(a.n, a.db))
