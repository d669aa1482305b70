"""Benchmark: the CLI's cost per call, ``backend.ai start --enqueue-only`` in shell loops
against ``python3 -c pass`` in the same loops (issue 13: within 1.5x of it).

    python bench/cli_call.py [--calls 200] [--loops 8] [--rounds 3] [--baseline DIR]

Starts a private embedded stack (``backend.ai server start`` on free ports in a temporary
HOME), then, in each of ``--rounds`` rounds, runs ``--calls`` calls of each side spread over
``--loops`` parallel ``sh`` loops (``out=$(CMD 2>&1) || exit 1``, as the Slurm side-by-side
does), the sides one after the other with the order turned each round:

  python3 -c pass       the floor: a Python process that does nothing (the interpreter that
                        ``python3`` on PATH runs, a pyenv shim resolved)
  venv python -c pass   the same for the interpreter the CLI runs on (its site-packages)
  bai                   ``backend.ai start --enqueue-only --starts-at 2h --type batch -c true
                        python``: a session queued for later, nothing runs
  bai baseline          (``--baseline DIR``) the other checkout's CLI: its launcher
                        (``packaging/bin/backend.ai``) for this interpreter in a temporary
                        folder, its ``src`` first on PYTHONPATH (``git worktree add --detach
                        /tmp/base main``), against the same manager: the client's code is what
                        differs (this venv's site-packages are on both paths)

For each side it prints calls/s, the client's CPU per call (user+system of the loops and all
they started, from ``getrusage(RUSAGE_CHILDREN)``: the shell's fork is in every side alike) and
the manager's CPU per call, the median of the rounds, and each side's ratio to
``python3 -c pass``: rate (higher is better) and client CPU (lower is better).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile

from harness import CLI, EmbeddedStack, baseline_launcher, cpu_seconds, figures, interpreter, \
    print_conditions, shell_loops

LATER = "2h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per side and round")
    ap.add_argument("--loops", type=int, default=8, help="parallel shell loops")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout's client, same manager")
    ap.add_argument("--python3", default="python3",
                    help="the floor's interpreter (default: python3 on PATH)")
    args = ap.parse_args()
    for name in ("calls", "loops", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"argument --{name}: must be at least 1")
    with EmbeddedStack(runtime="process") as stack, tempfile.TemporaryDirectory() as tmp:
        bai = (f"{shlex.quote(CLI)} start --enqueue-only --starts-at {LATER} --type batch "
               "-c true python")
        # (no python3 on PATH: this interpreter stands in, as the conditions say)
        python3, version = interpreter(args.python3 if shutil.which(args.python3)
                                       else sys.executable)
        sides = {"python3 -c pass": (f"{shlex.quote(python3)} -c pass", stack.env),
                 "venv python -c pass": (f"{shlex.quote(sys.executable)} -c pass", stack.env),
                 "bai": (bai, stack.env)}
        if args.baseline:
            src = os.path.join(os.path.abspath(args.baseline), "src")
            sides["bai baseline"] = (bai.replace(shlex.quote(CLI), shlex.quote(
                baseline_launcher(args.baseline, tmp))), {**stack.env, "PYTHONPATH": src})
        print_conditions("CLI calls in shell loops", calls=args.calls, loops=args.loops,
                         rounds=args.rounds, baseline=args.baseline or "-",
                         python3=f"{python3} ({version})",
                         venv_python=f"{sys.executable} ({interpreter(sys.executable)[1]})",
                         command=bai.replace(CLI, os.path.basename(CLI)))
        manager = stack.pid("manager")
        stack.cli("start", "--enqueue-only", "--starts-at", LATER, "--type", "batch", "-c",
                  "true", "python")  # the first call writes the byte-code caches
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        order = list(sides)
        for r in range(args.rounds):
            turn = r % len(order)
            for k in order[turn:] + order[:turn]:
                cpu0 = cpu_seconds(manager)
                seconds, client = shell_loops(sides[k][0], args.calls, sides[k][1], args.loops)
                rows[k].append({"calls/s": args.calls / seconds,
                                "client CPU ms/call": client * 1000 / args.calls,
                                "manager CPU ms/call":
                                    (cpu_seconds(manager) - cpu0) * 1000 / args.calls})
                print(f"   round {r + 1} {k}: " + ", ".join(
                    f"{name} {v:.1f}" for name, v in rows[k][-1].items())
                    + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    med = {k: {name: figures([x[name] for x in v])["median"] for name in v[0]}
           for k, v in rows.items()}
    floor = med["python3 -c pass"]
    print(f"\n{'median of rounds':<22}{'calls/s':>10}{'client CPU':>12}{'manager CPU':>13}"
          f"{'rate / python3':>16}{'CPU / python3':>15}")
    for k, m in med.items():
        print(f"{k:<22}{m['calls/s']:>10.1f}{m['client CPU ms/call']:>9.2f} ms"
              f"{m['manager CPU ms/call']:>10.2f} ms"
              f"{m['calls/s'] / floor['calls/s']:>16.2f}"
              f"{m['client CPU ms/call'] / floor['client CPU ms/call']:>15.2f}")
    print(f"python3 -c pass / bai (rates): {floor['calls/s'] / med['bai']['calls/s']:.2f} "
          "(issue 13: within 1.5)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
