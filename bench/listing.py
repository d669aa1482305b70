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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cli-rounds", type=int, default=10)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args()
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
