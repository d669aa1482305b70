"""Benchmark 2: scheduler throughput, N sessions queued against M ``dummy`` agents.

    python bench/scheduler_throughput.py [--sessions 10000] [--agents 100] [--db sqlite|postgres|both]

A real manager daemon (``python -m bai.manager serve``) on SQLite, or on PostgreSQL when
``BAI_BENCH_PG_DSN`` is set (``source /tmp/bai-ci/services.env``; the database is emptied first),
and ``--agents`` dummy agents in this process (``bai.testing.agents.AgentFleet``, each offering
room for every session it may get). ``--sessions`` PENDING sessions are written straight into the
database (what N enqueue calls leave behind), one more is enqueued through the API, which kicks
the scheduler; the clock runs from that call until every session is RUNNING (the database is
polled every 50 ms). The whole path is measured: scheduling passes, the create RPC to each
agent, the agents' kernel events and the manager's transitions to RUNNING.
Target: >= 1,000 sessions/s on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from harness import (
    ManagerProcess,
    cpu_seconds,
    error_reasons,
    fill_sessions,
    pg_dsn,
    print_conditions,
    reset_pg,
    status_counts,
)

SQLITE = "sqlite+aiosqlite:///{dir}/bench.db"
#: statuses on the way to RUNNING: while any session is in one, the run is not over
IN_FLIGHT = {"PENDING", "SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING"}


async def alive_agents(db_url: str) -> int:
    import sqlalchemy as sa

    from bai.manager.store import tables as t
    from bai.manager.store.engine import Store

    store = Store(db_url)
    try:
        async with store.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(t.agents)
                                           .where(t.agents.c.status == "ALIVE"))).scalar() or 0)
    finally:
        await store.close()


async def measure(mgr: ManagerProcess, sessions: int, agents: int, timeout: float) -> None:
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI
    from bai.testing.agents import AgentFleet

    per_agent = -(-sessions // agents) + 1
    async with AgentFleet(agents, manager_endpoints=[mgr.endpoint], cluster_token=mgr.token,
                          slot_cpu=str(per_agent), slot_mem=f"{per_agent}g") as fleet:
        deadline = time.monotonic() + 60
        while await alive_agents(mgr.db_url) < agents:
            if time.monotonic() > deadline:
                raise RuntimeError("the agents did not all register within 60 s")
            await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await fill_sessions(mgr.db_url, sessions, ("PENDING",), owners=mgr.keys["admin"]["access_key"])
        fill_s = time.perf_counter() - t0
        total = sessions + 1
        from bai.manager.store.engine import Store

        poll = Store(mgr.db_url)
        async with Connection(mgr.client_config()) as conn:
            cpu0, own0 = cpu_seconds(mgr.pid), cpu_seconds(os.getpid(), children=False)
            t0 = time.perf_counter()
            await SessionAPI(conn).create(CreateSpec(image="python", name="bench-kick",
                                                     enqueue_only=True))
            running, last_print, counts, first = 0, t0, {}, None
            while True:
                await asyncio.sleep(0.05)
                counts = await status_counts(poll)
                running = counts.get("RUNNING", 0)
                now = time.perf_counter()
                if running and first is None:
                    first = now - t0
                if running >= total or not IN_FLIGHT & counts.keys() or now - t0 > timeout:
                    break
                if now - last_print > 5:
                    print(f"   ... {running} RUNNING after {now - t0:.1f} s", flush=True)
                    last_print = now
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(mgr.pid) - cpu0
            own = cpu_seconds(os.getpid(), children=False) - own0
            await poll.close()
            errors = await error_reasons(mgr.db_url) if counts.get("ERROR") else []
        # stop the agents together (one by one, each waits up to 2 s to flush its events)
        await asyncio.wait([asyncio.create_task(a.stop()) for a in fleet.agents], timeout=30)
    print(f"queued {sessions} PENDING sessions in {fill_s:.1f} s (straight into the database)")
    done = "all" if running >= total else f"only {running} of"
    if running < total:
        print(f"sessions by status at the end: {counts}")
    for info, n in errors:
        print(f"   {n} in ERROR: {info}")
    print(f"{done} {total} sessions RUNNING after {elapsed:.2f} s: "
          f"{running / elapsed:,.0f} sessions/s  target >= 1,000 sessions/s")
    if first is not None:
        print(f"first session RUNNING after {first:.2f} s")
    print(f"manager CPU (user+system) during the run: {cpu:.1f} s, "
          f"{cpu * 1000 / max(1, running):.1f} ms per session started", flush=True)
    print(f"agents + status poller (this process) CPU: {own:.1f} s, "
          f"{own * 1000 / max(1, running):.1f} ms per session started", flush=True)


def run_one(label: str, db_url: str, sessions: int, agents: int, timeout: float) -> None:
    print_conditions(f"scheduler throughput ({label})", db=label, sessions=sessions,
                     agents=f"{agents} dummy agents in one process (AgentFleet)",
                     manager="one `python -m bai.manager serve` process")
    with ManagerProcess(db_url) as mgr:
        asyncio.run(measure(mgr, sessions, agents, timeout))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up after this many seconds (the figure is then partial)")
    args = ap.parse_args()
    if args.db == "both":
        # each database in a fresh process: a second run in the same process (its event loop,
        # its dead fleet's memory) measured PostgreSQL 2-3 times slower than a run of its own
        for db in ("sqlite", "postgres"):
            subprocess.run([sys.executable, __file__, "--db", db, "--sessions", str(args.sessions),
                            "--agents", str(args.agents), "--timeout", str(args.timeout)],
                           check=False)
        return
    if args.db == "sqlite":
        run_one("SQLite", SQLITE, args.sessions, args.agents, args.timeout)
    else:
        dsn = pg_dsn()
        if dsn is None:
            print("PostgreSQL: skipped (BAI_BENCH_PG_DSN is not set; "
                  "source /tmp/bai-ci/services.env)")
            return
        reset_pg(dsn)
        run_one("PostgreSQL", dsn, args.sessions, args.agents, args.timeout)

if __name__ == "__main__":
    main()
