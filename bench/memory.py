"""Benchmark 6: memory. Manager RSS with many sessions stored; agent RSS with many kernels.

    python bench/memory.py [--sessions 100000] [--kernels 100] [--runtime process|dummy]
    python bench/memory.py --embedded [--jobs 300] [--submit 400] [--queue 5000]
                           [--baseline SRC] [--env NAME=VALUE ...]

Manager: a real manager daemon (SQLite) whose database holds ``--sessions`` sessions (lived-in
status mix, one in eight PENDING so the scheduler's passes read them); its RSS is read after
start-up, after ten listings (``ps`` first page and a page of 100) and after a few timer-driven
scheduling passes. Agent: an embedded stack (``backend.ai server start``) with ``--kernels``
sessions started through the API and RUNNING; the agent daemon's own RSS is read (kernel
processes are separate and not counted). Targets: manager <= 200 MB; agent <= 150 MB.

``--embedded``: the row of ``bench/slurm_side_by_side.py`` ("daemons' RSS, idle / N waiting"),
the manager and the agent of ``backend.ai server start --slots cpu=64`` (process runtime,
SQLite). Idle, then after what that script does before it reads the row: ``--jobs`` trivial
batch jobs to completion, 2 x ``--submit`` SDK creates for later, arrays for later up to
``--queue``, ``ps --all`` and ``ps``. Each daemon's RSS is printed with its make-up from
``/proc/PID/smaps_rollup`` (anonymous = the interpreter's heap, private to the process;
file-backed = libraries and mapped files, shared with other processes). ``--baseline SRC``
starts a second stack from another source tree (its ``src`` first on ``PYTHONPATH``) beside
this one and puts both through the same steps, phase by phase, so that the machine's load
falls on both alike; ``--env`` sets a variable for this tree's daemons only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

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


def make_up(pid: int) -> dict[str, float]:
    """RSS, its anonymous (private heap) and file-backed parts, in MB."""
    kb = {}
    for row in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = row.split(":", 1)
        kb[key] = int(value.split()[0])
    return {"rss": kb["Rss"] / 1024, "anon": kb["Anonymous"] / 1024,
            "file": (kb["Rss"] - kb["Anonymous"]) / 1024}


def embedded_rss(args: argparse.Namespace) -> None:
    from slurm_side_by_side import Bai, wait_drained

    sides: dict[str, dict[str, str]] = {"after": dict(args.env)}
    if args.baseline:
        src = Path(args.baseline, "src").resolve()
        if not (src / "bai").is_dir():
            sys.exit(f"--baseline: no src/bai in {args.baseline}")
        sides = {"before": {"PYTHONPATH": str(src)}, **sides}
    print_conditions("daemons' RSS, embedded stack", jobs=args.jobs, submit=args.submit,
                     queue=args.queue, baseline=args.baseline or "-",
                     env=" ".join(f"{k}={v}" for k, v in args.env) or "-")
    seen: dict[tuple[str, str], dict[str, dict[str, float]]] = {}

    def read(phase: str) -> None:
        for name, bai in bais.items():
            for which in ("manager", "agent"):
                seen.setdefault((name, which), {})[phase] = make_up(bai.stack.pid(which))
        print(f"   {phase}: " + ", ".join(
            f"{name} {sum(seen[(name, w)][phase]['rss'] for w in ('manager', 'agent')):.1f} MB"
            for name in bais) + f" (load {os.getloadavg()[0]:.2f})", flush=True)

    with contextlib.ExitStack() as daemons:
        bais = {name: Bai(daemons.enter_context(EmbeddedStack(
            runtime="process", slots=["cpu=64"], extra_env=env))) for name, env in sides.items()}
        time.sleep(2)
        read("idle")
        for name, bai in bais.items():
            t0 = time.perf_counter()
            bai.create_many(args.jobs, f"j-{uuid.uuid4().hex[:6]}", later=False)
            wait_drained(bai.live, 1800)
            print(f"   {name}: {args.jobs} trivial jobs in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        for name, bai in bais.items():
            for _ in range(2):
                bai.create_many(args.submit, f"s-{uuid.uuid4().hex[:6]}", later=True)
            bai.fill(max(0, args.queue - 2 * args.submit), f"q-{uuid.uuid4().hex[:6]}")
            for _ in range(3):
                bai.stack.cli("ps", "--all")
                bai.stack.cli("ps")
        time.sleep(2)
        waiting = max(args.queue, 2 * args.submit)
        read(f"{waiting:,} waiting")
    print(f"\n{'MB (RSS = anonymous + file-backed)':<40}" + "".join(f"{n:>22}" for n in sides)
          + ("   after/before" if len(sides) == 2 else ""))
    for phase in ("idle", f"{waiting:,} waiting"):
        for which in ("manager", "agent", "both"):
            parts = {n: {k: sum(seen[(n, w)][phase][k] for w in ("manager", "agent")
                                if which in (w, "both")) for k in ("rss", "anon", "file")}
                     for n in sides}
            cells = "".join(f"{p['rss']:>8.1f} ={p['anon']:>6.1f} +{p['file']:>5.1f}"
                            for p in parts.values())
            ratio = (f"{parts['after']['rss'] / parts['before']['rss']:>15.2f}"
                     if len(sides) == 2 else "")
            print(f"{phase + ', ' + which:<40}{cells}{ratio}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--kernels", type=int, default=100)
    ap.add_argument("--runtime", choices=["process", "dummy"], default="process")
    ap.add_argument("--embedded", action="store_true",
                    help="the side-by-side row: manager + agent of server start, idle and full")
    ap.add_argument("--jobs", type=int, default=300, help="--embedded: trivial jobs run first")
    ap.add_argument("--submit", type=int, default=400, help="--embedded: SDK creates, twice")
    ap.add_argument("--queue", type=int, default=5000, help="--embedded: sessions waiting")
    ap.add_argument("--baseline", metavar="SRC", help="--embedded: another checkout beside")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="--embedded: environment of this tree's daemons (repeatable)")
    args = ap.parse_args()
    if args.embedded:
        if min(args.jobs, args.submit, args.queue) < 0 or any("=" not in e for e in args.env):
            sys.exit("--jobs, --submit, --queue >= 0; --env NAME=VALUE")
        args.env = [tuple(e.split("=", 1)) for e in args.env]
        embedded_rss(args)
        return
    manager_rss(args.sessions)
    print()
    agent_rss(args.kernels, args.runtime)


if __name__ == "__main__":
    main()
