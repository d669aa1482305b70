"""Benchmark: a docker kernel's creation from a standby container vs a container made for it,
for kernels without folders, with storage folders and with outbound network (issues 12, 14).

    python bench/docker_standby.py [--runs 10] [--warmup 1] [--folders 2]

Needs root and ``BAI_TEST_DOCKER_HOST`` (or ``DOCKER_HOST``) with the test image
(``scripts/build-images.sh``). Times ``DockerBackend.create`` (the agent's whole part of a session
start: folders resolved, container made or standby claimed, runner ready) in-process, the kinds
and both ways interleaved round by round so that load drifts hit each alike. Before each timed
create the pool is full and idle (no refill runs beside it). "cold": the pool is switched off
for that create (``pool.disabled``); "standby": a ready standby is claimed (the line says how
many of the creates really were claims). Outbound needs slirp4netns, nsenter and ip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from harness import line, print_conditions

from bai.agent.backends.base import KernelSpec
from bai.agent.backends.docker import DockerBackend
from bai.agent.backends.docker_spec import L_POOL
from bai.testing.docker import test_image


def spec(**kw: object) -> KernelSpec:
    return KernelSpec(**{
        "kernel_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4()),
        "session_name": "bench-" + uuid.uuid4().hex[:6], "session_type": "INTERACTIVE",
        "image": test_image(), "slots": {"cpu": Decimal(1), "mem": Decimal(256 * 2**20)},
        **kw})


async def pool_full(b: DockerBackend, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (len(b.pool.ready.get(test_image(), [])) < b.pool.size
           or any(b.pool._fills.get(test_image(), ()))):
        if time.monotonic() > deadline:
            raise RuntimeError("the standby pool did not fill")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the engine settle after the last start


async def main(runs: int, warmup: int, nfolders: int) -> None:
    engine = os.environ.get("BAI_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    tmp = Path(tempfile.mkdtemp(prefix="bai-bench-dstandby-"))
    root = tmp / "storage"
    mounts = []
    for i in range(nfolders):
        (root / "u" / f"f{i}").mkdir(parents=True)
        mounts.append({"name": f"f{i}", "host": "local", "relpath": f"u/f{i}",
                       "kernel_path": f"/home/work/f{i}", "mode": "ro" if i == 0 else "rw"})
    b = DockerBackend(scratch_root=tmp / "scratch", agent_id=f"bench-{uuid.uuid4().hex[:8]}",
                      docker_host=engine, pool_size=1, storage_roots={"local": str(root)})

    async def ignore(_inst: object) -> None:
        pass

    await b.start(ignore)
    kinds: dict[str, dict[str, object]] = {
        "no folder": {}, f"{nfolders} folders (1 ro)": {"mounts": mounts}}
    if b.outbound is not None:
        kinds["outbound network"] = {"network": True}
    print_conditions("docker kernel creation: standby claim vs container made for it",
                     runs=runs, warmup=warmup, folders=nfolders, engine=engine,
                     outbound="measured" if b.outbound is not None else "not measured (no tools)")
    times: dict[tuple[str, str], list[float]] = {}
    claimed: dict[str, int] = {}
    try:
        await b.destroy((await b.create(spec())).kernel_id)  # the pool follows this image
        for i in range(warmup + runs):
            for kind, kw in kinds.items():
                for way in ("cold", "standby"):
                    await pool_full(b)
                    b.pool.disabled = "bench: cold" if way == "cold" else ""
                    s = spec(**kw)
                    t0 = time.perf_counter()
                    inst = await b.create(s)
                    ms = (time.perf_counter() - t0) * 1000
                    b.pool.disabled = ""
                    if i >= warmup:
                        times.setdefault((kind, way), []).append(ms)
                        if way == "standby" and L_POOL in inst.labels:
                            claimed[kind] = claimed.get(kind, 0) + 1
                    await b.destroy(s.kernel_id)
    finally:
        for inst in await b.list():
            await b.destroy(inst.kernel_id)
        await b.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for kind in kinds:
        cold, warm = times[(kind, "cold")], times[(kind, "standby")]
        print(line(f"{kind}: made for it", cold))
        print(line(f"{kind}: standby", warm)
              + f"  claims {claimed.get(kind, 0)}/{len(warm)}"
              + f"  -> {statistics.median(cold) / statistics.median(warm):.1f}x faster")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--folders", type=int, default=2)
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.warmup, max(1, args.folders)))
