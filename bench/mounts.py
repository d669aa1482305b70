"""Benchmark: what mounting storage folders adds to session start (issue 14: <= 10 ms).

    python bench/mounts.py [--runs 20] [--warmup 2] [--folders 4] [--runtime process|docker]

Starts a private embedded stack, makes ``--folders`` folders, and times ``backend.ai start``
of an interactive session (then removes it), interleaving the kinds so that load drifts hit
each alike. Session start is PENDING -> RUNNING from the manager's session history (scheduling,
the agent's create, the runner's start-up), the same span as hello_world.py's create->RUNNING.

Kinds: no folder; 1 folder; ``--folders`` folders (one ``:ro``). A session with folders never
takes a pre-started runner (its sandbox is made with the folders), so the stack runs with the
process pool off (cold starts on both sides: the mount's own cost) and, in a second part, with
the default pool (what a session without folders gets: the price of starting cold).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

from harness import EmbeddedStack, line, print_conditions

TARGET = "<= 10 ms (median, added by mounting)"


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
    env = {} if pool else {"BAI_AGENT_PROCESS_POOL_SIZE": "0"}
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
    part(args.runtime, False, args.runs, args.warmup, max(2, args.folders))
    if not args.no_pool_part:
        part(args.runtime, True, args.runs, args.warmup, max(2, args.folders))


if __name__ == "__main__":
    main()
