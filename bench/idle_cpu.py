"""The daemons' CPU while many batch sessions wait for later: the manager and the agent idle.

    python bench/idle_cpu.py [--queue 5000] [--window 60] [--rounds 3] [--settle 10]
                             [--baseline SRC]

Starts the embedded stack (``backend.ai server start``, process runtime) in a private HOME,
queues ``--queue`` batch sessions for two hours later (``--starts-at 2h``, as arrays), waits
``--settle`` seconds, then takes the manager's and the agent's CPU (all threads, from the
kernel's per-process clock) over ``--rounds`` windows of ``--window`` seconds.
``--baseline SRC`` starts a second stack from another source tree (its ``src`` first on
``PYTHONPATH``, e.g. a ``git worktree`` of main) beside the first, filled the same way: both
are measured over the same windows, so the machine's load falls on both alike. The row of
``bench/slurm_side_by_side.py`` is this one ("controller CPU while 5,000 wait"); slurmctld did
0.07 % of a core there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from harness import CLI, EmbeddedStack, figures, print_conditions

LATER = "2h"


def process_cpu_s(pid: int) -> float:
    """CPU seconds of one process (all its threads), to the nanosecond."""
    return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9  # CPUCLOCK_SCHED of the process


def fill(stack: EmbeddedStack, n: int) -> None:
    from bai.common.arrays import MAX_ARRAY

    for first in range(0, n, MAX_ARRAY):
        last = min(n, first + MAX_ARRAY) - 1
        stack.cli("start", "--array", f"{first}-{last}", "-t", "idle", "--starts-at", LATER,
                  "--type", "batch", "-c", "true", "python")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queue", type=int, default=5000, help="sessions waiting for later")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per measured window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds before the first window")
    ap.add_argument("--baseline", metavar="SRC", help="another checkout beside this one")
    args = ap.parse_args()
    if args.queue < 0 or args.window <= 0 or args.rounds < 1 or args.settle < 0:
        sys.exit("--queue >= 0, --window > 0, --rounds >= 1, --settle >= 0")

    sides = {"after": {}}
    if args.baseline:
        src = Path(args.baseline, "src").resolve()
        if not (src / "bai").is_dir():
            sys.exit(f"--baseline: no src/bai in {args.baseline}")
        sides = {"before": {"PYTHONPATH": str(src)}, "after": {}}
    print_conditions("daemons' CPU while sessions wait for later", queue=args.queue,
                     window_s=args.window, rounds=args.rounds, settle_s=args.settle,
                     baseline=args.baseline or "-", cli=CLI)
    with contextlib.ExitStack() as daemons:
        stacks = {}
        for name, env in sides.items():
            stacks[name] = daemons.enter_context(EmbeddedStack(runtime="process",
                                                               slots=["cpu=64"], extra_env=env))
            t0 = time.perf_counter()
            fill(stacks[name], args.queue)
            print(f"   {name}: {args.queue:,} queued for later in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        time.sleep(args.settle)
        pids = {(name, which): s.pid(which) for name, s in stacks.items()
                for which in ("manager", "agent")}
        pct: dict[tuple[str, str], list[float]] = {k: [] for k in pids}
        for r in range(args.rounds):
            c0 = {k: process_cpu_s(p) for k, p in pids.items()}
            t0 = time.perf_counter()
            time.sleep(args.window)
            w = time.perf_counter() - t0
            for k, p in pids.items():
                pct[k].append((process_cpu_s(p) - c0[k]) * 100 / w)
            print(f"   round {r + 1}: " + ", ".join(
                f"{name} {which} {pct[(name, which)][-1]:.3f}" for name, which in pids)
                + f" % of a core (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\n{'median of rounds (% of a core)':<34}" + "".join(f"{n:>10}" for n in sides)
          + ("   after/before" if len(sides) == 2 else ""))
    for which in ("manager", "agent"):
        med = {n: figures(pct[(n, which)])["median"] for n in sides}
        ratio = (f"{med['after'] / med['before']:>15.2f}" if len(sides) == 2 and med["before"]
                 else "")
        print(f"{which:<34}" + "".join(f"{med[n]:>10.3f}" for n in sides) + ratio)
    manager = figures(pct[("after", "manager")])["median"]
    print(f"manager (after): {manager * 600:.1f} ms CPU per minute; target <= 0.05 % "
          f"(30 ms/min); slurmctld did 0.07 %")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
