"""Issue 13, the manager's side of a submission: its CPU per ``POST /session`` and the SDK's
creates/s, two bai stacks side by side in one run (rounds alternate), e.g. this tree against
an older one.

    python bench/session_create.py [--creates 400] [--rounds 3] [--in-flight 16]
                                   [--baseline SRC] [--py-spy FILE]

Each side is ``backend.ai server start --slots cpu=64`` (process runtime) in a private HOME, as
in ``slurm_side_by_side.py``. ``--baseline SRC`` runs the other side from another source tree
(its ``src`` folder first on ``PYTHONPATH``: e.g. a ``git worktree`` of main). Per round and
side: N creates from the SDK (``SessionAPI.create``, ``enqueue_only``, a batch job ``true``
that starts in 2 hours: the submission row of the side-by-side), ``--in-flight`` at once, from
a fresh process whose ``bai`` is the side's (the client's code is compared too); the clock from
the first to the last answer and that process's CPU (the client's) over it; the manager's CPU
(all its threads, from /proc) over the process's life. ``--py-spy FILE`` records this tree's
manager with py-spy (``pip install py-spy``) over its last round (a flame graph SVG, or
``--py-spy-format raw`` for collapsed stacks).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import subprocess
import time
import types
import uuid
from math import nan
from pathlib import Path

from harness import EmbeddedStack, cpu_seconds, print_conditions, print_medians, print_rounds
from slurm_side_by_side import Bai


def measure(bai: Bai, n: int, in_flight: int, src: str | None) -> dict[str, float]:
    mgr = bai.stack.pid("manager")
    s0 = bai.statements()
    m0 = cpu_seconds(mgr)
    env = dict(bai.stack.env)
    if src:
        env["PYTHONPATH"] = str(Path(src, "src").resolve())
    proc = subprocess.run([sys.executable, __file__, "--drive", str(n), "--in-flight",
                           str(in_flight)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the SDK's creates failed:\n{proc.stdout}{proc.stderr}")
    wall, client = (float(x) for x in proc.stdout.split()[-2:])
    out = {
        "creates/s": n / wall,
        "manager CPU ms/create": (cpu_seconds(mgr) - m0) * 1000 / n,
        "client CPU ms/create": client * 1000 / n,
    }
    s1 = bai.statements()  # (the scrape's own few statements included)
    out["SQL statements/create"] = (s1 - s0) / n if s0 is not None and s1 is not None else nan
    return out


def drive(n: int, in_flight: int) -> None:
    """``--drive``: the creates of one round from this process (its environment is the
    stack's); prints the seconds from the first to the last answer and the CPU seconds."""
    stack = types.SimpleNamespace(env=dict(os.environ), state=Path("."))
    c0, t0 = time.process_time(), time.perf_counter()
    Bai(stack).create_many(n, f"c-{uuid.uuid4().hex[:6]}", later=True, in_flight=in_flight)
    print(time.perf_counter() - t0, time.process_time() - c0)


@contextlib.contextmanager
def py_spy(pid: int, out: str | None, fmt: str):
    """py-spy recording ``pid`` while the block runs (nothing without ``out`` or py-spy)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not out or not Path(exe).exists():
        if out:
            print("   py-spy not found: no profile (pip install py-spy)")
        yield
        return
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "200", "--format", fmt,
                             "--output", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # it attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # writes the profile
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        print(f"   py-spy profile of this tree's manager (last round): {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--creates", type=int, default=400, help="creates per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--baseline", default=None, metavar="SRC",
                    help="a source tree (its src/ goes first on PYTHONPATH) for the other side")
    ap.add_argument("--py-spy", default=None, metavar="FILE")
    ap.add_argument("--py-spy-format", default="flamegraph", choices=["flamegraph", "raw"])
    ap.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive is not None:
        return drive(args.drive, args.in_flight)
    with contextlib.ExitStack() as daemons:
        sides = {}
        if args.baseline:
            env = {"PYTHONPATH": str(Path(args.baseline, "src").resolve())}
            sides["before"] = daemons.enter_context(
                EmbeddedStack(runtime="process", slots=["cpu=64"], extra_env=env))
        sides["after"] = daemons.enter_context(EmbeddedStack(runtime="process", slots=["cpu=64"]))
        print_conditions("bai manager: CPU per session create (SDK), side by side",
                         sides=", ".join(sides), before=args.baseline or "-",
                         creates=args.creates, rounds=args.rounds, in_flight=args.in_flight,
                         request="enqueue_only batch 'true' starting in 2 h, SQLite")
        bais = {k: Bai(s) for k, s in sides.items()}
        srcs = {"before": args.baseline, "after": None}
        for k, b in bais.items():  # warm-up
            measure(b, 20, args.in_flight, srcs[k])
        results: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for r in range(args.rounds):
            for name, b in bais.items():
                last = r == args.rounds - 1 and name == "after"
                with py_spy(b.stack.pid("manager"), args.py_spy if last else None,
                            args.py_spy_format):
                    results[name].append(measure(b, args.creates, args.in_flight, srcs[name]))
                print_rounds(results, r, name)
        print_medians(results, 24, 2)
        print(f"   load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
