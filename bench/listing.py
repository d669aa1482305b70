"""How fast ``compute_session_list`` (what ``ps`` sends) answers from a large session table.

    python bench/listing.py [--sessions 100000] [--db /tmp/bai-bench-listing.db]

Fills a fresh SQLite database (migrated to head, bootstrapped) with N sessions over three
keypairs and a realistic status mix, then times the official client's default and ``--dead``
listings (first page of 20, with ``total_count``) for an admin and for a user, through the same
GraphQL execution the API uses. Target: well under 50 ms per listing at 100,000 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from bai.manager.api import gql
from bai.manager.services.auth import load_keypair
from bai.manager.services.bootstrap import bootstrap
from bai.manager.store import tables as t
from bai.manager.store.engine import Store

QUERY = """query($limit:Int!, $offset:Int!, $status: String, $access_key: String, $filter: String, $order: String) {
  compute_session_list(
      limit:$limit, offset:$offset, status:$status, access_key:$access_key, filter:$filter, order:$order) {
    items { name access_key id group_name main_kernel_id image type status status_info status_changed result }
    total_count
  }
}"""
LISTINGS = {
    "default": "PENDING,SCHEDULED,PULLING,PREPARING,RUNNING,RUNNING_DEGRADED,TERMINATING,ERROR",
    "--dead": "CANCELLED,TERMINATED",
}
MIX = ["TERMINATED"] * 4 + ["CANCELLED", "RUNNING", "PENDING", "ERROR"]


class _Root:
    def __init__(self, store: Store) -> None:
        self.store = store


async def fill(store: Store, n: int) -> dict:
    keys = await bootstrap(store)
    async with store.connect() as conn:
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
        owners = (await conn.execute(sa.select(t.keypairs.c.access_key, t.keypairs.c.user_id))).all()
    now = datetime.now(timezone.utc)
    batch = []
    async with store.begin() as conn:
        for i in range(n):
            ak, uid = owners[i % len(owners)]
            changed = now - timedelta(seconds=n - i)
            batch.append(dict(
                id=uuid.uuid4(), name=f"s{i}", image="python:3.11-debian12", domain_name="default",
                group_id=gid, user_id=uid, access_key=ak, status=MIX[i % len(MIX)], status_data={},
                status_changed=changed, created_at=changed, requested_slots={"cpu": "1"},
                occupying_slots={}, service_ports=[], mounts=[], environ={}, agent_ids=[],
                resource_opts={}, abusing_reports=[], last_activity_at=changed,
                main_kernel_id=uuid.uuid4()))
            if len(batch) == 5000:
                await conn.execute(t.sessions.insert(), batch)
                batch = []
        if batch:
            await conn.execute(t.sessions.insert(), batch)
    return keys


async def main(n: int, db: str, rounds: int) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.migrate()
    t0 = time.perf_counter()
    keys = await fill(store, n)
    print(f"filled {n} sessions in {time.perf_counter() - t0:.1f} s")
    root = _Root(store)
    for who in ("admin", "user"):
        async with store.connect() as conn:
            caller = (await load_keypair(conn, keys[who]["access_key"])).caller()
        for label, status in LISTINGS.items():
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                out = await gql.execute(root, caller, QUERY, {
                    "limit": 20, "offset": 0, "status": status, "access_key": None,
                    "filter": None, "order": None})
                times.append((time.perf_counter() - t0) * 1000)
            assert "errors" not in out, out
            total = out["data"]["compute_session_list"]["total_count"]
            times.sort()
            print(f"{who:5} ps {label:8} total_count={total:6}  median {statistics.median(times):5.1f} ms"
                  f"  p90 {times[int(len(times) * 0.9) - 1]:5.1f} ms")
    await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--db", default="/tmp/bai-bench-listing.db")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    asyncio.run(main(args.sessions, args.db, args.rounds))
