"""Benchmark: what mounting storage folders adds to session start (issue 14: <= 10 ms).

    python bench/mounts.py [--runs 20] [--warmup 2] [--folders 4] [--runtime process|docker]

Starts a private embedded stack, makes ``--folders`` folders, and times ``backend.ai start``
of an interactive session (then removes it), interleaving the kinds so that load drifts hit
each alike. Session start is PENDING -> RUNNING from the manager's session history (scheduling,
the agent's create, the runner's start-up), the same span as hello_world.py's create->RUNNING.

Kinds: no folder; 1 folder; ``--folders`` folders (one ``:ro``), all under /home/work. Two
parts: pre-started runners off (cold starts: the folders are ``bwrap --bind`` arguments of the
new sandbox) and the default pool (the agent attaches the folders to a pre-started runner's
running sandbox, ``agent/mounts.py``; in docker, to a standby container's work dir,
``docker_pool.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from harness import EmbeddedStack, line, print_conditions

TARGET = "<= 10 ms (median, added by mounting)"


def agent_side(runs: int, nfolders: int) -> None:
    """What the agent does per session for its folders, timed in-process (steady under load,
    unlike whole starts): resolve (walk beneath the root, ACL check) and, as root, attach to a
    work dir with shared propagation (a pre-started runner's path) and detach again."""
    import tempfile
    import time
    from pathlib import Path

    from harness import figures

    from bai.agent.mounts import attach, detach_below, make_shared, resolve

    with tempfile.TemporaryDirectory(prefix="bai-bench-mnt-") as tmp:
        root, work = Path(tmp) / "storage", Path(tmp) / "work"
        work.mkdir()
        specs = []
        for i in range(nfolders):
            (root / "u" / f"f{i}").mkdir(parents=True)
            specs.append({"name": f"f{i}", "host": "local", "relpath": f"u/f{i}",
                          "kernel_path": f"/home/work/f{i}", "mode": "ro" if i == 0 else "rw"})
        roots = {"local": str(root)}
        can_attach = os.geteuid() == 0
        if can_attach:
            make_shared(work)
        res, att = [], []
        try:
            for _ in range(runs):
                t0 = time.perf_counter()
                found = resolve(roots, specs)
                t1 = time.perf_counter()
                if can_attach:
                    for m in found:
                        attach(m, work, "/home/work")
                    att.append((time.perf_counter() - t1) * 1000)
                    detach_below(work / "f0")
                    for m in found[1:]:
                        detach_below(work / m.target.rsplit("/", 1)[-1])
                res.append((t1 - t0) * 1000)
        finally:
            detach_below(work)
    print(f"== agent side, {nfolders} folders, {runs} rounds (in-process)")
    print(line(f"resolve {nfolders} folders (walk + ACL)", res))
    if att:
        print(line(f"attach {nfolders} folders (shared work dir)", att))
    print(f"per folder: resolve {figures(res)['median'] / nfolders:.3f} ms"
          + (f", attach {figures(att)['median'] / nfolders:.3f} ms" if att else
             " (attach needs root: not measured)"), flush=True)
    print()


async def start_spans(stack: EmbeddedStack, names: list[str]) -> dict[str, float]:
    """name -> PENDING -> RUNNING in ms, from ``GET /session/{name}/history``."""
    from datetime import datetime

    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI

    out: dict[str, float] = {}
    async with Connection(ClientConfig.load(env=stack.env)) as conn:
        api = SessionAPI(conn)
        for name in names:
            at = {h.to_status: datetime.fromisoformat(h.at).timestamp()
                  for h in await api.history(name)}
            out[name] = (at["RUNNING"] - at["PENDING"]) * 1000
    return out


def one(stack: EmbeddedStack, name: str, mounts: list[str]) -> None:
    args = ["start", "-q", "-t", name]
    for m in mounts:
        args += ["-m", m]
    stack.cli(*args, "python")
    stack.cli("rm", name)


def part(runtime: str, pool: bool, runs: int, warmup: int, nfolders: int) -> None:
    env = {} if pool else {"BAI_AGENT_PROCESS_POOL_SIZE": "0", "BAI_AGENT_DOCKER_POOL_SIZE": "0"}
    with EmbeddedStack(runtime=runtime, extra_env=env) as stack:
        print_conditions(
            f"session start with storage folders ({runtime} runtime, "
            f"{'default pre-started runners' if pool else 'pre-started runners off'})",
            runtime=runtime, runs=runs, warmup=warmup, folders=nfolders,
            command="backend.ai start -t NAME [-m F ...] python; backend.ai rm NAME")
        folders = [f"bench-f{i}" for i in range(nfolders)]
        for f in folders:
            stack.cli("vfolder", "create", f)
        kinds = {
            "no folder": [],
            "1 folder": folders[:1],
            f"{nfolders} folders (1 ro)": folders[:-1] + [f"{folders[-1]}:ro"],
        }
        names: dict[str, list[str]] = {k: [] for k in kinds}
        tag = f"mb{os.getpid()}{'p' if pool else 'c'}"
        for i in range(warmup + runs):
            for k, (label, mounts) in enumerate(kinds.items()):
                name = f"{tag}-{k}-{i}"
                one(stack, name, mounts)
                if i >= warmup:
                    names[label].append(name)
        spans = asyncio.run(start_spans(stack, [n for ns in names.values() for n in ns]))
    base = [spans[n] for n in names["no folder"]]
    for label, ns in names.items():
        samples = [spans[n] for n in ns]
        extra = ""
        if label != "no folder":
            delta = statistics.median(samples) - statistics.median(base)
            extra = f"  -> adds {delta:+.1f} ms (median)"
        print(line(f"PENDING->RUNNING, {label}", samples) + extra)
    print(f"target: {TARGET}; load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--folders", type=int, default=4)
    ap.add_argument("--runtime", choices=["process", "docker"], default="process")
    ap.add_argument("--no-pool-part", action="store_true",
                    help="only the part with pre-started runners off")
    args = ap.parse_args()
    agent_side(max(args.runs, 50), max(2, args.folders))
    part(args.runtime, False, args.runs, args.warmup, max(2, args.folders))
    if not args.no_pool_part:
        part(args.runtime, True, args.runs, args.warmup, max(2, args.folders))


if __name__ == "__main__":
    main()
