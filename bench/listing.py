"""Benchmark 4: listing with many sessions stored (``ps``, a page of 100, the GraphQL list).

    python bench/listing.py [--sessions 100000] [--rounds 30] [--db sqlite|postgres]

A real manager daemon on a database filled with ``--sessions`` sessions over three keypairs and
a lived-in status mix (half TERMINATED; some CANCELLED, RUNNING, PENDING, ERROR). Prints:

* server time: the ``POST /admin/gql`` round trip on a kept-alive loopback connection, for the
  queries the CLI sends -- ``ps`` (first page of 10, default statuses), ``ps --all`` (one page
  of 100), a page of 100 deep in the list (offset 10,000), ``ps --dead``, as admin and as user;
* the whole CLI command: ``backend.ai ps`` and ``backend.ai ps --limit 100`` (one page of the
  size ``ps --all`` fetches), as fresh processes, and once ``backend.ai ps --all`` (every page).

Targets: first page <= 50 ms server time; whole CLI command <= 300 ms.

    python bench/listing.py --vs-squeue [--queue 5200] [--rounds 20] [--before-src DIR]

Issue 13's listing rows alone, side by side with Slurm (as ``bench/slurm_side_by_side.py``
sets it up; root with Slurm installed, else bai only): ``--queue`` jobs that wait (Slurm:
``sbatch --begin``; bai: ``start --array --starts-at``), then, interleaved round by round,
``squeue``, ``backend.ai ps --all`` and ``backend.ai ps`` as fresh processes. Targets:
``ps --all`` <= squeue, ``ps`` <= 0.5x squeue. ``--before-src DIR``: also a second bai stack
whose manager and CLI run the source tree DIR (e.g. ``git archive <commit> src | tar -x``),
its CLI launched through a pip-style entry-point wrapper: before/after in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time

from harness import (
    CLI,
    LIVED_IN_MIX,
    ManagerProcess,
    fill_sessions,
    line,
    pg_dsn,
    print_conditions,
    reset_pg,
)

DEFAULT = "PENDING,SCHEDULED,PREPARING,PULLING,PREPARED,CREATING,RUNNING,RESTARTING,TERMINATING,RESIZING,SUSPENDED,ERROR"
DEAD = "CANCELLED,TERMINATED"
FIELDS = ["name", "access_key", "id", "image", "type", "status", "status_info",
          "status_changed", "result"]
#: label -> (status list, limit, offset)
QUERIES = {
    "ps (first page of 10)": (DEFAULT, 10, 0),
    "ps --all (page of 100)": (DEFAULT, 100, 0),
    "page of 100 at offset 10,000": (DEFAULT, 100, 10_000),
    "ps --dead (first page of 10)": (DEAD, 10, 0),
}


async def server_times(mgr: ManagerProcess, rounds: int) -> None:
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI

    for who in ("admin", "user"):
        async with Connection(mgr.client_config(who)) as conn:
            api = SessionAPI(conn)
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await api.whoami()
                samples.append((time.perf_counter() - t0) * 1000)
            print(line(f"{who}: keypair query", samples))
            for label, (statuses, limit, offset) in QUERIES.items():
                samples = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    items, total = await api.list_page(FIELDS, statuses=statuses.split(","),
                                                       limit=limit, offset=offset)
                    samples.append((time.perf_counter() - t0) * 1000)
                target = "<= 50 ms" if "first page" in label else ""
                print(line(f"{who}: {label}", samples, target=target)
                      + f"  [{len(items)} of {total}]", flush=True)


def cli_times(mgr: ManagerProcess, rounds: int) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BACKEND_", "BAI_")) and k != "PYTHONDONTWRITEBYTECODE"}
    k = mgr.keys["admin"]
    env.update(BACKEND_ENDPOINT=mgr.endpoint, BACKEND_ACCESS_KEY=k["access_key"],
               BACKEND_SECRET_KEY=k["secret_key"], BAI_CONFIG=str(mgr.dir / "none.toml"))
    commands = {"backend.ai ps": ["ps"], "backend.ai ps --limit 100": ["ps", "--limit", "100"]}
    for label, args in commands.items():
        subprocess.run([CLI, *args], env=env, capture_output=True)  # byte-code caches
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True)
            samples.append((time.perf_counter() - t0) * 1000)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} failed: {proc.stderr}")
        print(line(label, samples, target="<= 300 ms"), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([CLI, "ps", "--all"], env=env, capture_output=True, text=True)
    ms = (time.perf_counter() - t0) * 1000
    print(f"backend.ai ps --all (every page, {max(0, proc.stdout.count(chr(10)) - 2)} rows): "
          f"{ms:.0f} ms (one run)", flush=True)


PIP_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from bai.client.cli.main import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def vs_squeue(args: argparse.Namespace) -> None:
    import contextlib
    import sys
    import uuid
    from pathlib import Path

    from harness import EmbeddedStack, figures
    from slurm_side_by_side import LATER, SLURM_LATER, SlurmCluster, loops, slurm_missing, \
        timed_cmd

    class Stack(EmbeddedStack):
        """An embedded stack whose CLI is ``cli`` (and whose daemons run ``src``, if given)."""

        def __init__(self, cli: str, src: str | None) -> None:
            super().__init__(runtime="process", slots=["cpu=64"],
                             extra_env={"PYTHONPATH": src} if src else None)
            self.cli_path = cli

        def cli(self, *a: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
            proc = subprocess.run([self.cli_path, *a], env=self.env, capture_output=True,
                                  text=True, **kw)
            if check and proc.returncode != 0:
                raise RuntimeError(f"backend.ai {' '.join(a)} failed: {proc.stderr[-500:]}")
            return proc

    why = slurm_missing()
    sides: dict[str, tuple[str, Stack]] = {}
    with contextlib.ExitStack() as daemons:
        slurm = None if why else daemons.enter_context(SlurmCluster())
        sides["after"] = (CLI, daemons.enter_context(Stack(CLI, None)))
        if args.before_src:
            wrapper = Path(sides["after"][1].home) / "backend.ai-before"
            wrapper.write_text(PIP_WRAPPER.format(python=sys.executable))
            wrapper.chmod(0o755)
            src = str(Path(args.before_src).resolve())
            sides["before"] = (str(wrapper), daemons.enter_context(Stack(str(wrapper), src)))
        print_conditions("listing vs squeue", slurm=slurm.version() if slurm else f"not "
                         f"measured: {why}", queue=args.queue, rounds=args.rounds,
                         before=args.before_src or "-")
        if slurm:
            loops(f"sbatch -Q --begin={SLURM_LATER} --wrap true -o /dev/null", args.queue,
                  slurm.env)
        for _label, (cli, st) in sides.items():
            timed_cmd([cli, "start", "--array", f"0-{args.queue - 1}", "-t",
                       f"q-{uuid.uuid4().hex[:6]}", "--starts-at", LATER, "--type", "batch",
                       "-c", "true", "python"], st.env)
        cmds: dict[str, tuple[list[str], dict]] = {}
        if slurm:
            cmds["squeue"] = (["squeue"], slurm.env)
        for label, (cli, st) in sides.items():
            cmds[f"ps --all ({label})"] = ([cli, "ps", "--all"], st.env)
            cmds[f"ps ({label})"] = ([cli, "ps"], st.env)
        for argv, env in cmds.values():  # warm-up: byte-code caches, the manager's cache
            timed_cmd(argv, env)
        samples: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.rounds):
            for label, (argv, env) in cmds.items():
                samples[label].append(timed_cmd(argv, env))
        med = {k: figures(v)["median"] for k, v in samples.items()}
        sq = med.get("squeue")
        for label, m in med.items():
            ratio = f"  {m / sq:.2f}x squeue" if sq and label != "squeue" else ""
            print(f"{label:24s} median {m:7.1f} ms  p90 {figures(samples[label])['p90']:7.1f}"
                  f"{ratio}")
        print("targets: ps --all <= 1x squeue, ps <= 0.5x squeue; load (1 min) at the end: "
              f"{os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cli-rounds", type=int, default=10)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--vs-squeue", action="store_true", help="the listing rows vs squeue only")
    ap.add_argument("--queue", type=int, default=5200, help="--vs-squeue: jobs that wait")
    ap.add_argument("--before-src", default=None,
                    help="--vs-squeue: also a stack running this source tree (before)")
    args = ap.parse_args()
    if args.vs_squeue:
        vs_squeue(args)
        return
    if args.db == "postgres":
        url = pg_dsn()
        if url is None:
            raise SystemExit("BAI_BENCH_PG_DSN is not set (source /tmp/bai-ci/services.env)")
        reset_pg(url)
    else:
        url = "sqlite+aiosqlite:///{dir}/bench.db"
    print_conditions("listing", db=args.db, sessions=args.sessions,
                     mix="4/8 TERMINATED, 1/8 each CANCELLED RUNNING PENDING ERROR; 3 keypairs",
                     rounds=args.rounds, cli_rounds=args.cli_rounds)
    with ManagerProcess(url) as mgr:
        t0 = time.perf_counter()
        asyncio.run(fill_sessions(mgr.db_url, args.sessions, LIVED_IN_MIX))
        print(f"filled {args.sessions} sessions in {time.perf_counter() - t0:.1f} s")
        asyncio.run(server_times(mgr, args.rounds))
        cli_times(mgr, args.cli_rounds)


if __name__ == "__main__":
    main()
