"""Benchmark 1: ``backend.ai run --rm -c 'print(1)' python``, the whole command, N runs.

    python bench/hello_world.py [--runs 20] [--runtime process|docker] [--warmup 2]

Starts a private embedded stack (``backend.ai server start`` on free ports in a temporary HOME),
runs the real CLI ``--runs`` times (after ``--warmup`` unmeasured runs) and prints the median,
p90 and p99 of the whole command, split by the manager's session history timestamps into

  client start    process launch -> the session row is written (PENDING)
  create->RUNNING PENDING -> RUNNING (scheduling, agent, runner start-up)
  execute         RUNNING -> TERMINATING (WebSocket execute of print(1))
  destroy         TERMINATING -> TERMINATED, or the command's end if that came first
  client exit     the end of destroy -> the process has exited

The runs give no ``-t``, as the issue's command: such a run ends once its session is
TERMINATING (its name was made up), and the manager ends the session after; the last line
says when TERMINATED came relative to the command's end (positive: after it).

Without ``--runtime`` it measures the process runtime, and the docker runtime as well when
``DOCKER_HOST`` is set (the docker engine must hold the image ``python:3.11-debian12``).
Targets: process median <= 150 ms, docker median <= 600 ms.

    python bench/hello_world.py [--baseline DIR] [--vs-srun] [--runs 20] [--block N]

interleaves this checkout's whole command run by run with another checkout's (``DIR``, e.g.
``git worktree add --detach /tmp/base main``) and/or with ``srun python3 -c 'print(1)'`` on the
side-by-side bench's single-node Slurm (issue 13: bai <= 0.7x srun), and prints the ratios
(and the daemons' CPU per run of each bai side). ``--block N``: N runs of a side in a row per
round, back to back as a loop of runs goes (each then pays for what the one before left to do).

    python bench/hello_world.py --isolation-cost [--runs 20]

measures what the sandbox costs (issue 12: "hello-world latency stays within 10 %"): two
process-runtime stacks side by side, one as installed (bubblewrap, own uid, seccomp, cgroups) and
one with ``BAI_AGENT_PROCESS_SANDBOX=0`` (kernels as the server's user, no sandbox), their runs
interleaved one by one so that both see the same load; it prints both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import time
from datetime import datetime

from harness import CLI, EmbeddedStack, cpu_seconds, line, print_conditions

TARGETS = {"process": "<= 150 ms (median)", "docker": "<= 600 ms (median)"}
PHASES = ("client start", "create->RUNNING", "execute", "destroy", "client exit")


async def histories(stack: EmbeddedStack, names: list[str]) -> dict[str, dict[str, float]]:
    """``{name: {status: epoch seconds it was entered}}`` from ``GET /session/{name}/history``."""
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI

    out: dict[str, dict[str, float]] = {}
    async with Connection(ClientConfig.load(env=stack.env)) as conn:
        api = SessionAPI(conn)
        for name in names:
            out[name] = {h.to_status: datetime.fromisoformat(h.at).timestamp()
                         for h in await api.history(name)}
    return out


#: the session's name as ``run`` says it made it ready (on stderr)
READY = re.compile(r"Session (\S+) is ready")


def run_once(stack: EmbeddedStack, name: str | None = None) -> tuple[float, float, float, str]:
    """(launch epoch, exit epoch, wall ms, the session's name) of one ``backend.ai run --rm``,
    with ``-t name`` if given (a run without a name may end before its session has)."""
    launch = time.time()
    t0 = time.perf_counter()
    named = ["-t", name] if name else []
    proc = subprocess.run([CLI, "run", "--rm", *named, "-c", "print(1)", "python"],
                          env=stack.env, capture_output=True, text=True)
    wall = (time.perf_counter() - t0) * 1000
    end = time.time()
    ready = READY.search(proc.stderr)
    if proc.returncode != 0 or proc.stdout.strip() != "1" or ready is None:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return launch, end, wall, ready.group(1)


def measure(runtime: str, runs: int, warmup: int) -> None:
    with EmbeddedStack(runtime=runtime) as stack:  # the agent finds the engine by DOCKER_HOST
        print_conditions(f"hello world ({runtime} runtime)", runtime=runtime,
                         db="SQLite (embedded)", runs=runs, warmup=warmup,
                         command=f"{os.path.basename(CLI)} run --rm -c 'print(1)' python")
        for _ in range(warmup):
            run_once(stack)
        names, walls, spans = [], [], []
        daemons = {"manager": stack.pid("manager"), "agent": stack.pid("agent")}
        cpu0 = {k: cpu_seconds(pid) for k, pid in daemons.items()}
        client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(runs):
            launch, end, wall, name = run_once(stack)
            names.append(name)
            walls.append(wall)
            spans.append((launch, end))
        time.sleep(1.0)  # (the last sessions end after their commands)
        client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = {k: (cpu_seconds(pid) - cpu0[k]) * 1000 / runs for k, pid in daemons.items()}
        cpu["client"] = ((client1.ru_utime + client1.ru_stime)
                         - (client0.ru_utime + client0.ru_stime)) * 1000 / runs
        hist = asyncio.run(histories(stack, names))
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    after: list[float] = []
    for name, (launch, end) in zip(names, spans):
        h = hist[name]
        # the command may end while its session ends (its name was made up): the destroy
        # phase ends with whichever came first, and the rest is told apart
        ended = min(h["TERMINATED"], end)
        marks = [launch, h["PENDING"], h["RUNNING"], h["TERMINATING"], ended, end]
        for label, a, b in zip(PHASES, marks, marks[1:]):
            phases[label].append((b - a) * 1000)
        after.append((h["TERMINATED"] - end) * 1000)
    print(line("whole command", walls, target=TARGETS.get(runtime, "")))
    for label in PHASES:
        print(line(f"  {label}", phases[label]))
    print(line("  (TERMINATED - the command's end)", after))
    print("CPU per run (user+system): " + ", ".join(f"{k} {v:.0f} ms" for k, v in cpu.items())
          + " (agent includes its reaped kernel runners)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(flush=True)


def isolation_cost(runs: int, warmup: int) -> None:
    stacks = {"sandbox": EmbeddedStack(), "no sandbox": EmbeddedStack(
        extra_env={"BAI_AGENT_PROCESS_SANDBOX": "0"})}
    try:
        for st in stacks.values():
            st.start()
        print_conditions("hello world: the sandbox's cost, interleaved", runtime="process",
                         db="SQLite (embedded)", runs=runs, warmup=warmup,
                         compared="as installed vs BAI_AGENT_PROCESS_SANDBOX=0",
                         command=f"{os.path.basename(CLI)} run --rm -c 'print(1)' python")
        gaps = {k: st.cli("admin", "agent", "list", check=False).stdout for k, st in stacks.items()}
        walls: dict[str, list[float]] = {k: [] for k in stacks}
        for i in range(warmup + runs):
            for k, st in (stacks.items() if i % 2 else reversed(stacks.items())):
                wall = run_once(st)[2]
                if i >= warmup:
                    walls[k].append(wall)
        for k in stacks:
            print(line(f"whole command, {k}", walls[k]))
        med = {k: statistics.median(v) for k, v in walls.items()}
        print(f"sandbox / no sandbox (medians): {med['sandbox'] / med['no sandbox']:.2f} "
              "(issue 12: within 1.10)")
        for k, text in gaps.items():
            print(f"agent list, {k}:\n" + "\n".join("  " + ln for ln in text.splitlines()))
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    finally:
        for st in stacks.values():
            st.stop()


def compare(runs: int, warmup: int, baseline: str | None, vs_srun: bool,
            block: int = 1) -> None:
    """This checkout's whole command, interleaved run by run with a baseline checkout's
    (``--baseline DIR``: its ``src`` first on PYTHONPATH, for its daemons and its CLI) and/or
    with ``srun python3 -c 'print(1)'`` on the side-by-side bench's single-node Slurm
    (``--vs-srun``), the stacks as that bench starts them (process runtime, cpu=64)."""
    import contextlib

    from slurm_side_by_side import SlurmCluster, slurm_missing, timed_cmd

    why = slurm_missing() if vs_srun else None
    if why:
        print(f"srun not measured: {why}")
    with contextlib.ExitStack() as daemons:
        slurm = daemons.enter_context(SlurmCluster()) if vs_srun and not why else None
        sides: dict[str, tuple[list[str], dict[str, str]]] = {}
        stack = daemons.enter_context(EmbeddedStack(runtime="process", slots=["cpu=64"]))
        base = None
        sides["bai"] = ([CLI, "run", "--rm", "-c", "print(1)", "python"], stack.env)
        if baseline:  # the stack runs the other checkout's own launcher (harness)
            base = daemons.enter_context(EmbeddedStack(
                runtime="process", slots=["cpu=64"],
                extra_env={"PYTHONPATH": os.path.join(os.path.abspath(baseline), "src")}))
            sides["bai baseline"] = ([base.launcher, "run", "--rm", "-c", "print(1)", "python"],
                                     base.env)
        if slurm is not None:
            sides["srun"] = (["srun", "python3", "-c", "print(1)"], slurm.env)
        print_conditions("hello world, interleaved", runtime="process", db="SQLite (embedded)",
                         runs=runs, warmup=warmup, baseline=baseline or "-", block=block,
                         slurm=slurm.version() if slurm else "not measured",
                         command=f"{os.path.basename(CLI)} run --rm -c 'print(1)' python")
        walls: dict[str, list[float]] = {k: [] for k in sides}
        order = list(sides)
        stacks = {"bai": stack, "bai baseline": base} if baseline else {"bai": stack}
        cpu = {k: 0.0 for k in stacks}
        for i in range(warmup + runs // block):
            # the order turns each round, so that no side ever runs right after itself (its
            # agent refills the runner pool after a run: the run after it would pay for that);
            # with ``block`` > 1 each side runs that many times in a row (back to back, as a
            # loop of runs does: each pays for what the one before it left to do)
            turn = i % len(order)
            for k in order[turn:] + order[:turn]:
                st = stacks.get(k)
                before = st and sum(cpu_seconds(st.pid(d)) for d in ("manager", "agent"))
                for _ in range(block if i >= warmup else 1):
                    wall = timed_cmd(*sides[k])
                    if i >= warmup:
                        walls[k].append(wall)
                if st and i >= warmup:
                    cpu[k] += sum(cpu_seconds(st.pid(d)) for d in ("manager", "agent")) - before
        for k in order:
            print(line(f"whole command, {k}", walls[k]))
        for k in stacks:
            print(f"CPU per run of the manager and agent (kernel runners they reaped included), "
                  f"{k}: {cpu[k] * 1000 / max(1, len(walls[k])):.1f} ms")
        med = {k: statistics.median(v) for k, v in walls.items()}
        for k in order[1:]:
            print(f"bai / {k} (medians): {med['bai'] / med[k]:.2f}"
                  + (" (issue 13: <= 0.70)" if k == "srun" else ""))
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runtime", choices=["process", "docker"], default=None)
    ap.add_argument("--isolation-cost", action="store_true",
                    help="process runtime with and without the sandbox, interleaved")
    ap.add_argument("--baseline", metavar="DIR",
                    help="interleave with the checkout in DIR (e.g. a worktree of main)")
    ap.add_argument("--block", type=int, default=1, metavar="N",
                    help="with --baseline/--vs-srun: each side runs N times in a row per round")
    ap.add_argument("--vs-srun", action="store_true",
                    help="interleave with srun on the side-by-side bench's Slurm")
    args = ap.parse_args()
    if args.baseline or args.vs_srun:
        compare(args.runs, args.warmup, args.baseline, args.vs_srun, max(1, args.block))
        return
    if args.isolation_cost:
        isolation_cost(args.runs, args.warmup)
        return
    runtimes = [args.runtime] if args.runtime else (
        ["process", "docker"] if os.environ.get("DOCKER_HOST") else ["process"])
    for runtime in runtimes:
        measure(runtime, args.runs, args.warmup)


if __name__ == "__main__":
    main()
