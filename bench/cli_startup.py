"""Benchmark 7: CLI start-up, ``backend.ai --help`` (and a few other commands that stop early).

    python bench/cli_startup.py [--runs 30]

Runs each command ``--runs`` times as a fresh process (after one unmeasured run that warms the
byte-code cache) and prints median, p90 and p99 of the wall time, plus the CPU time the process
used (user + system): on a busy machine the CPU time is the steadier figure.
No server is needed. Target: ``backend.ai --help`` <= 150 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time

from harness import CLI, line, print_conditions

COMMANDS = {
    "backend.ai --help": ["--help"],
    "backend.ai run --help": ["run", "--help"],
    "backend.ai ps --help": ["ps", "--help"],
}


#: as on a user's machine, byte-code caches are written and used
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(args: list[str], runs: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    subprocess.run([CLI, *args], capture_output=True, env=ENV, check=False)  # warm the byte-code cache
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([CLI, *args], capture_output=True, env=ENV, check=False)
        walls.append((time.perf_counter() - t0) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(((after.ru_utime + after.ru_stime)
                     - (before.ru_utime + before.ru_stime)) * 1000)
        if proc.returncode != 0:
            raise RuntimeError(f"{args} exited {proc.returncode}: {proc.stderr.decode()}")
    return walls, cpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    print_conditions("CLI start-up", runs=args.runs, cli=CLI)
    for label, argv in COMMANDS.items():
        walls, cpus = measure(argv, args.runs)
        target = "<= 150 ms (median)" if argv == ["--help"] else ""
        print(line(label, walls, target=target))
        print(line("  CPU time (user+system)", cpus))


if __name__ == "__main__":
    main()
