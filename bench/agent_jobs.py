"""Issue 13, the agent's side: machine CPU and wall time per trivial batch job, two bai stacks
side by side in one run (rounds alternate), e.g. this tree against an older one.

    python bench/agent_jobs.py [--jobs 200] [--rounds 3] [--sdk] [--baseline SRC]
                               [--baseline-env K=V]

Each side is ``backend.ai server start --slots cpu=64`` (process runtime, sandbox in force) in a
private HOME. ``--baseline SRC`` runs the other side from another source tree (its ``src`` folder
first on ``PYTHONPATH``: e.g. a ``git worktree`` of main); ``--baseline-env K=V`` (repeatable)
runs it with these environment variables instead or as well (e.g.
``BAI_AGENT_PROCESS_DIRECT_COMMAND=0``). Per round and side: N jobs ``true`` as one array
(``backend.ai start --array 1-N --type batch -c true python``; ``--sdk``: one SDK create each, 16
in flight, as ``slurm_side_by_side.py``'s batch rows submit), the clock from the submission
until none is live (polled every 0.1 s); CPU from /proc: the whole machine's, the manager's, the
agent's own, what the agent's children used (kernels: launcher, sandbox, command) and the host
kernel's own threads (loop devices, file systems, network namespaces' teardown, RCU: what the jobs
set going there, plus whatever else the machine does meanwhile); "bai ms/job" adds those to the
client's (the CLI, or this process while it submits through the SDK). On a shared machine the
whole machine's figure counts others' work too: compare "bai". Then the idle CPU of the
pre-started runners over ``--idle-seconds``.

Each side starts in a mount namespace of its own (where root may make one): one side's mounts
(64 kept work dir filesystems) would otherwise be in the other's sandboxes' tables.
Where cgroup v1's cpuacct (or cgroup v2) is writable, each side's daemons start in a cgroup of
their own and make their kernels' cgroups under one of their own (``BAI_AGENT_CGROUP_PARENT``):
"daemons+children" is everything the stack ran outside its kernels' cgroups (manager, agent,
bwrap's processes while they set a sandbox up, before it joins the kernel's cgroups), "kernel
cgroups" what ran in them (setpriv, the command); "bai, all ms/job" adds those two, the kernel
threads and the client: the exact figure (the /proc one misses what bwrap's processes ran,
which no one waits for).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import time
import uuid
from pathlib import Path

from harness import EmbeddedStack, cpu_seconds, print_conditions, print_medians, print_rounds
from slurm_side_by_side import Bai, machine_cpu_s, timed_cmd, wait_drained

#: ``flags`` of /proc/PID/stat: a kernel thread
PF_KTHREAD = 0x00200000
CPUACCT_V1 = Path("/sys/fs/cgroup/cpuacct")
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 0x4000, 1 << 18


class CpuCgroup:
    """A cgroup of ours whose CPU (with its children cgroups', also removed ones) is read:
    cgroup v1's cpuacct or v2; ``path`` is its name under the hierarchy's root."""

    def __init__(self, name: str) -> None:
        v1 = (CPUACCT_V1 / "cpuacct.usage").exists()
        self.root = CPUACCT_V1 if v1 else Path("/sys/fs/cgroup")
        self.dir = self.root / name
        self.dir.mkdir(exist_ok=True)
        self.v1 = v1

    def join(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def cpu_s(self) -> float:
        if self.v1:
            return int((self.dir / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.dir / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def remove(self) -> None:
        """Remove it, and what the agent made of that name in v1's other hierarchies."""
        tops = Path("/sys/fs/cgroup").glob(f"*/{self.dir.name}") if self.v1 else [self.dir]
        for top in tops:
            for d in sorted([*top.rglob("*"), top], key=lambda p: -len(p.parts)):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()


def cpu_cgroups(tag: str) -> tuple[CpuCgroup, CpuCgroup] | None:
    """(the daemons', the kernels' parent) for one side, or None where cgroups are not ours."""
    try:
        return CpuCgroup(f"bai-bench-{os.getpid()}-{tag}"), CpuCgroup(
            f"bai-bench-{os.getpid()}-{tag}-kernels")
    except OSError:
        return None


def own_mount_namespace() -> bool:
    """Move this process into a mount namespace of its own (a private copy of its current
    one), so that a stack started next keeps its mounts (work dir filesystems) from the other
    side's table, as on a host with one agent: every sandbox copies its agent's table and bwrap
    reads it for each of its mounts. False where that is refused (not root, threads)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    return libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0


@contextlib.contextmanager
def started_in(cg: CpuCgroup | None):
    """What this process starts meanwhile starts in ``cg`` (it moves there and back)."""
    if cg is None:
        yield
        return
    home = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    cg.join(os.getpid())
    try:
        yield
    finally:
        for line in home.splitlines():
            _, ctl, path = line.split(":", 2)
            if (cg.v1 and "cpuacct" in ctl.split(",")) or (not cg.v1 and ctl == ""):
                (cg.root / path.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))


def kernel_threads() -> dict[tuple[int, str], int]:
    """CPU ticks of each of the host kernel's own threads, by (pid, start time)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[6]) & PF_KTHREAD:
                out[(int(pid), fields[19])] = int(fields[11]) + int(fields[12])
    return out


def measure(bai: Bai, n: int, timeout: float, sdk: bool = False,
            cgs: tuple[CpuCgroup, CpuCgroup] | None = None) -> dict[str, float]:
    stack = bai.stack
    mgr, agent = stack.pid("manager"), stack.pid("agent")
    g0 = [cg.cpu_s() for cg in cgs] if cgs else []
    c0, kt0 = machine_cpu_s(), kernel_threads()
    m0, a0, k0 = cpu_seconds(mgr), cpu_seconds(agent, children=False), cpu_seconds(agent)
    cli0 = os.times()
    t0 = time.perf_counter()
    if sdk:  # as slurm_side_by_side's rows: one POST /session each, 16 in flight
        bai.create_many(n, f"j-{uuid.uuid4().hex[:6]}", later=False)
    else:
        timed_cmd([stack.launcher, "start", "--array", f"1-{n}", "-t", f"j-{uuid.uuid4().hex[:6]}",
                   "--type", "batch", "-c", "true", "python"], stack.env)
    sdk_cpu = os.times()
    wait_drained(bai.live, timeout)
    wall = time.perf_counter() - t0
    cli1 = os.times()
    agent_self = cpu_seconds(agent, children=False) - a0
    kt1 = kernel_threads()
    threads = sum(t - kt0.get(k, 0) for k, t in kt1.items()) / os.sysconf("SC_CLK_TCK")
    out = {
        "jobs/s": n / wall,
        "machine CPU ms/job": (machine_cpu_s() - c0) * 1000 / n,
        "manager ms/job": (cpu_seconds(mgr) - m0) * 1000 / n,
        "agent ms/job": agent_self * 1000 / n,
        "kernels ms/job": ((cpu_seconds(agent) - k0) - agent_self) * 1000 / n,
        "kernel threads ms/job": threads * 1000 / n,
        # the CLI (a child), or this process while it submitted through the SDK
        "client ms/job": (cli1.children_user + cli1.children_system - cli0.children_user
                          - cli0.children_system + sdk_cpu.user + sdk_cpu.system - cli0.user
                          - cli0.system) * 1000 / n,
    }
    out["bai ms/job"] = sum(v for k, v in out.items() if k not in ("jobs/s", "machine CPU ms/job"))
    if cgs:
        daemons, kernels = ((cg.cpu_s() - g) * 1000 / n for cg, g in zip(cgs, g0))
        out["daemons+children ms/job"] = daemons
        out["kernel cgroups ms/job"] = kernels
        out["bai, all ms/job"] = (daemons + kernels + out["kernel threads ms/job"]
                                  + out["client ms/job"])
    return out


def idle_runners(stack: EmbeddedStack, seconds: float) -> tuple[int, float]:
    """(pre-started runners, their CPU ms over ``seconds`` of idling)."""
    import psutil

    below = psutil.Process(stack.pid("agent")).children(recursive=True)
    pids = [p.pid for p in below if _interpreter(p.pid)]  # runners and their workers

    def total() -> float:
        out = 0.0
        for p in pids:
            with contextlib.suppress(OSError):
                out += cpu_seconds(p, children=False)
        return out

    before = total()
    time.sleep(seconds)
    runners = sum(1 for p in pids if b"--pooled" in _interpreter(p))
    return runners, (total() - before) * 1000


def _interpreter(pid: int) -> bytes:
    """The command line of ``pid`` if it is a Python interpreter, else b""."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"python" in os.path.basename(argv.split(b"\0")[0]):
            return argv
    return b""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default=None, metavar="SRC",
                    help="a source tree (its src/ goes first on PYTHONPATH) for the other side")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--sdk", action="store_true",
                    help="submit each job with its own SDK create (16 in flight), as "
                         "slurm_side_by_side's batch rows do, instead of one array")
    args = ap.parse_args()
    base_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    if args.baseline:
        base_env["PYTHONPATH"] = str(Path(args.baseline, "src").resolve())
    with contextlib.ExitStack() as daemons:
        sides = {}
        cgs = {}
        for name, env in ([("before", base_env)] if base_env else []) + [("after", {})]:
            cgs[name] = cpu_cgroups(name)
            if cgs[name] is not None:
                daemons.callback(cgs[name][1].remove)
                daemons.callback(cgs[name][0].remove)
                env = {**env, "BAI_AGENT_CGROUP_PARENT": cgs[name][1].dir.name}
            if not own_mount_namespace() and base_env:
                print(f"   {name}: in the mount namespace of the other side")
            with started_in(cgs[name][0] if cgs[name] else None):
                sides[name] = daemons.enter_context(
                    EmbeddedStack(runtime="process", slots=["cpu=64"], extra_env=env))
        for name, stack in sides.items():
            if "isolation NOT enforced" in stack.start_output:
                print(f"   {name}: sandbox NOT in force; figures do not count")
        print_conditions("bai agent: trivial batch jobs, side by side",
                         sides=", ".join(sides), before=base_env or "-", jobs=args.jobs,
                         rounds=args.rounds,
                         submit="SDK creates, 16 in flight" if args.sdk
                         else "one array per round (start --array)")
        bais = {k: Bai(s) for k, s in sides.items()}
        for b in bais.values():  # warm-up
            measure(b, 10, args.timeout)
        results: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
        for r in range(args.rounds):
            for name, b in bais.items():
                results[name].append(measure(b, args.jobs, args.timeout, args.sdk, cgs[name]))
                print_rounds(results, r, name)
        idle = {k: idle_runners(s, args.idle_seconds) for k, s in sides.items()}
        print_medians(results, 22, 1)
        for k, (n, ms) in idle.items():
            print(f"   {k}: {n} pre-started runners, {ms:.0f} ms CPU over "
                  f"{args.idle_seconds:.0f} s idle")
        print(f"   load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
