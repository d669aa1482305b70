"""Benchmark 6: memory. Manager RSS with many sessions stored; agent RSS with many kernels.

    python bench/memory.py [--sessions 100000] [--kernels 100] [--runtime process|dummy]

Manager: a real manager daemon (SQLite) whose database holds ``--sessions`` sessions (lived-in
status mix, one in eight PENDING so the scheduler's passes read them); its RSS is read after
start-up, after ten listings (``ps`` first page and a page of 100) and after a few timer-driven
scheduling passes. Agent: an embedded stack (``backend.ai server start``) with ``--kernels``
sessions started through the API and RUNNING; the agent daemon's own RSS is read (kernel
processes are separate and not counted). Targets: manager <= 200 MB; agent <= 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from harness import (
    LIVED_IN_MIX,
    EmbeddedStack,
    ManagerProcess,
    fill_sessions,
    print_conditions,
    rss_mb,
)


async def touch_listings(mgr: ManagerProcess) -> None:
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI

    async with Connection(mgr.client_config()) as conn:
        api = SessionAPI(conn)
        for _ in range(5):
            await api.list_page(["name", "status"], statuses=["RUNNING", "PENDING"], limit=10)
            await api.list_page(["name", "status"], statuses=["TERMINATED"], limit=100,
                                offset=1000)


def manager_rss(sessions: int) -> None:
    print_conditions("manager memory", db="SQLite", sessions=sessions,
                     mix="4/8 TERMINATED, 1/8 each CANCELLED RUNNING PENDING ERROR")
    with ManagerProcess("sqlite+aiosqlite:///{dir}/bench.db", schedule_interval=1.0) as mgr:
        print(f"manager RSS after start-up (empty database): {rss_mb(mgr.pid):.0f} MB")
        asyncio.run(fill_sessions(mgr.db_url, sessions, LIVED_IN_MIX))
        asyncio.run(touch_listings(mgr))
        time.sleep(3.5)  # a few timer-driven scheduling passes over the PENDING ones
        print(f"manager RSS with {sessions} sessions stored, after listings and scheduling "
              f"passes: {rss_mb(mgr.pid):.0f} MB  target <= 200 MB", flush=True)


async def start_kernels(stack: EmbeddedStack, n: int) -> None:
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI

    async with Connection(ClientConfig.load(env=stack.env)) as conn:
        api = SessionAPI(conn)
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                created = await api.create(CreateSpec(image="python", name=f"mem-{i}",
                                                      resources={"cpu": "0.1", "mem": "64m"}))
                if created.status != "RUNNING":
                    raise RuntimeError(f"mem-{i} did not start: {created.status}")

        await asyncio.gather(*(one(i) for i in range(n)))


def agent_rss(kernels: int, runtime: str) -> None:
    print_conditions("agent memory", runtime=runtime, kernels=kernels)
    slots = [f"cpu={max(2, kernels)}", f"mem={max(4, kernels)}g"]
    with EmbeddedStack(runtime=runtime, slots=slots) as stack:
        pid = stack.pid("agent")
        print(f"agent RSS with no kernel: {rss_mb(pid):.0f} MB")
        t0 = time.perf_counter()
        asyncio.run(start_kernels(stack, kernels))
        print(f"started {kernels} kernels in {time.perf_counter() - t0:.1f} s")
        time.sleep(2)
        print(f"agent RSS with {kernels} running kernels: {rss_mb(pid):.0f} MB  "
              f"target <= 150 MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--kernels", type=int, default=100)
    ap.add_argument("--runtime", choices=["process", "dummy"], default="process")
    args = ap.parse_args()
    manager_rss(args.sessions)
    print()
    agent_rss(args.kernels, args.runtime)


if __name__ == "__main__":
    main()
