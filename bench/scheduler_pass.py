"""Benchmark 3: how long one scheduling pass takes with N pending sessions.

    python bench/scheduler_pass.py [N ...] [--db sqlite|postgres|both|URL] [--rounds 5]

For each N (default 1,000 and 10,000) a fresh database gets 10 agents (4 cores each, so 40
sessions fit) and N PENDING sessions, just enqueued (status_info ``enqueued``, as a create
leaves it); the scheduler's ``run_pass`` (load, decide, write) runs in this process with the
agent RPC stubbed out. Prints the first pass (a manager that has not read the queue before:
places what fits, writes the reasons near the head of the queue), the background write of the
deeper sessions' reasons that pass deferred (timed on its own), the median of ``--rounds``
further passes (nothing changed: reads and decides only), the median of ``--rounds // 2``
"shifted" passes (one new session at the head of the queue each: every position moves, so
every reason line changes), and how the time grew from the smallest N to each larger one. A pass
is: ``load_input`` (read the queue, agents, limits, usage), ``decide`` (in memory), and writing
the reasons of sessions that stay pending (only lines that changed) plus, on the first pass, the
placements; the kernel starts it spawns are not timed (the next passes wait for them to end).
Each pass is also split into load / decide / the rest, in wall time and in CPU time of this
process (the manager's side; the database server's is not counted: on a busy machine CPU is
the steadier figure), and ``--profile`` prints cProfile's top functions of the first pass and of
one more unchanged and one more shifted pass (``BENCH_SORT=cumulative`` to order by cumulative time).
PostgreSQL needs ``BAI_BENCH_PG_DSN`` (``source /tmp/bai-ci/services.env``; emptied first).
Target: grows no worse than linearly; <= 200 ms at 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from harness import clear_pg, pg_dsn, print_conditions

from bai.manager.app import settle_gc
from bai.manager.services import scheduling
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.root import ManagerRoot
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


class SilentAgents:
    async def create_kernel(self, address, spec):
        return {"kernel_id": spec["kernel_id"]}

    async def close(self):
        pass


async def settle(root: ManagerRoot) -> None:
    """Wait until the background work a pass spawned (kernel starts) is done."""
    for _ in range(600):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                 and (t.get_name() or "").startswith("start-")]
        if not tasks:
            return
        await asyncio.sleep(0.05)


class PhaseClock:
    """Times the phases of ``run_pass`` from inside: ``load_input`` and ``decide`` as the
    scheduling module calls them (wrapped by name), in wall and CPU time; the rest of the pass
    is what is left (the reason writes and their events, and on the first pass the
    placements)."""

    def __init__(self) -> None:
        self.load: list[tuple[float, float]] = []
        self.decide: list[tuple[float, float]] = []
        self._load, self._decide = scheduling.load_input, scheduling.decide
        scheduling.load_input, scheduling.decide = self.timed_load, self.timed_decide

    async def timed_load(self, *args, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return await self._load(*args, **kw)
        finally:
            self.load.append(((time.perf_counter() - t0) * 1000,
                              (time.process_time() - c0) * 1000))

    def timed_decide(self, *args, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self._decide(*args, **kw)
        finally:
            self.decide.append(((time.perf_counter() - t0) * 1000,
                                (time.process_time() - c0) * 1000))

    def close(self) -> None:
        scheduling.load_input, scheduling.decide = self._load, self._decide


async def measure(n: int, db: str | None, rounds: int, profile: bool = False) -> tuple[float, float]:
    """(first pass ms, median of the next ``rounds`` passes ms) with ``n`` pending."""
    tmp = tempfile.mkdtemp()
    if db and db.startswith("postgresql"):
        await clear_pg(db)
    root = ManagerRoot(ManagerSettings(db_url=db or f"sqlite+aiosqlite:///{tmp}/bench.db"))
    await root.store.migrate()
    keys = await bootstrap(root.store, max_sessions=0)
    root.agents.rpc = SilentAgents()
    settle_gc()  # what `python -m bai.manager serve` does once started
    for i in range(10):
        await root.agents.heartbeat({"agent_id": f"agent-{i}", "address": f"http://127.0.0.1:{i+1}",
                                     "available_slots": {"cpu": "4", "mem": str(16 * 2**30)}})
    async with root.store.begin() as conn:
        uid = (await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == "user@bai.local"))).scalar()
        gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
        image = (await conn.execute(sa.select(t.images.c.name))).scalar()
    now = t.utcnow()

    def session(name: str, created_at) -> dict:
        return {
            "id": uuid.uuid4(), "name": name, "image": image, "domain_name": "default",
            "group_id": gid, "user_id": uid, "access_key": keys["user"]["access_key"],
            "status": "PENDING", "status_info": "enqueued", "status_data": {}, "requested_slots": {"cpu": "1", "mem": str(2**30)},
            "occupying_slots": {}, "service_ports": [], "mounts": [], "environ": {}, "agent_ids": [],
            "resource_opts": {}, "abusing_reports": [], "created_at": created_at,
            "status_changed": now, "last_activity_at": now,
        }

    async with root.store.begin() as conn:
        await conn.execute(sa.insert(t.sessions), [session(f"bench-{i}", now) for i in range(n)])
    clock = PhaseClock()
    runs: dict[str, list[tuple[float, float, float, float]]] = {}

    async def timed(kind: str, prof: cProfile.Profile | None = None):
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        d = await root.scheduler.run_pass()
        if prof:
            prof.disable()
        runs.setdefault(kind, []).append((
            (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000,
            *clock.load[-1], *clock.decide[-1]))
        return d

    profiles: dict[str, cProfile.Profile] = {}
    if profile:
        profiles["first"] = cProfile.Profile()
    placed = len((await timed("first", profiles.get("first"))).assignments)
    await settle(root)  # the kernel starts it spawned run apart from the timed passes
    # the lines deep in the queue, deferred by the pass, written now rather than 2 s later in
    # the background (so that the next passes see them written, as they would by then)
    t0, c0 = time.perf_counter(), time.process_time()
    await root.scheduler.flush_deep()
    deep_ms, deep_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
    for _ in range(rounds):
        await timed("unchanged")
    # A new session at the head of the queue: every position behind it moves, so every reason
    # line changes and is written (what each pass pays while a busy queue moves).
    for i in range(max(1, rounds // 2)):
        async with root.store.begin() as conn:
            await conn.execute(sa.insert(t.sessions).values(
                session(f"head-{i}", now - timedelta(seconds=i + 1))))
        await timed("shifted")
    clock.close()
    first, nxt = runs["first"][0][0], statistics.median(r[0] for r in runs["unchanged"])
    print(f"{n:>7} pending: first pass {first:7.1f} ms ({placed} placed, the rest get their"
          f" reason); next passes median {nxt:7.1f} ms  target <= 200 ms at 10,000", flush=True)
    for kind, what in (("first", "first pass (placements, reasons near the head)"),
                       ("unchanged", "unchanged pass (nothing to write)"),
                       ("shifted", "shifted pass (one new head: every line rewritten)")):
        wall, cpu, load_ms, load_cpu, decide_ms, decide_cpu = (
            statistics.median(r[i] for r in runs[kind]) for i in range(6))
        rest = statistics.median(r[0] - r[2] - r[4] for r in runs[kind])
        rest_cpu = statistics.median(r[1] - r[3] - r[5] for r in runs[kind])
        print(f"{'':>9}{what:<52} wall {wall:7.1f} ms (load_input {load_ms:6.1f}, decide"
              f" {decide_ms:6.1f}, the rest: writes, events {rest:7.1f})", flush=True)
        print(f"{'':>9}{'':<52}  CPU {cpu:7.1f} ms (load_input {load_cpu:6.1f}, decide"
              f" {decide_cpu:6.1f}, the rest: writes, events {rest_cpu:7.1f})", flush=True)
        if kind == "first":
            print(f"{'':>9}{'then, off the pass: the deep lines written':<52} wall {deep_ms:7.1f}"
                  f" ms, CPU {deep_cpu:7.1f} ms (in the background, {scheduling.REFRESH_DEEP:g} s"
                  " later)", flush=True)
    if profile:
        for kind in ("first", "unchanged", "shifted"):
            if kind == "shifted":
                async with root.store.begin() as conn:
                    await conn.execute(sa.insert(t.sessions).values(
                        session("head-profiled", now - timedelta(hours=1))))
            prof = profiles.get(kind)
            if prof is None:
                prof = cProfile.Profile()
                clock = PhaseClock()
                await timed(kind, prof)
                clock.close()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(25)
            print(f"cProfile of one {kind} pass at {n} pending (by own time):")
            print("\n".join(buf.getvalue().splitlines()[4:]), flush=True)
    await root.sessions.close()
    await root.store.close()
    return first, nxt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", type=int, nargs="*", default=[1_000, 10_000])
    ap.add_argument("--db", default="both", help="sqlite, postgres, both, or a SQLAlchemy URL")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="print cProfile's top functions of the first, one unchanged and one shifted pass"
                         " at the largest N")
    a = ap.parse_args()
    dbs: list[tuple[str, str | None]] = []
    if a.db in ("sqlite", "both"):
        dbs.append(("SQLite", None))
    if a.db in ("postgres", "both"):
        if pg_dsn():
            dbs.append(("PostgreSQL", pg_dsn()))
        else:
            print("PostgreSQL: skipped (BAI_BENCH_PG_DSN is not set)")
    if a.db not in ("sqlite", "postgres", "both"):
        dbs.append((a.db.split(":")[0], a.db))
    for label, url in dbs:
        print_conditions(f"one scheduling pass ({label})", db=label, sizes=a.sizes,
                         rounds=a.rounds, agents="10 (4 cores each), agent RPC stubbed")
        sizes = sorted(a.sizes)
        results = [(n, *asyncio.run(measure(n, url, a.rounds, a.profile and n == sizes[-1])))
                   for n in sizes]
        base_n, base_first, base_next = results[0]
        for n, first, nxt in results[1:]:
            print(f"growth {base_n} -> {n} ({n / base_n:.0f}x sessions): first pass "
                  f"{first / base_first:.1f}x, next passes {nxt / base_next:.1f}x")
        print()


if __name__ == "__main__":
    main()
