"""Issue 13: bai and Slurm side by side on this machine, every row of the issue's table interleaved.

    python bench/slurm_side_by_side.py [--install] [--no-slurm] [--jobs 300,1000]
        [--queue 1000] [--submit 200] [--hello 20] [--listing 10] [--wait-seconds 20]

Slurm (22.05 from Debian): a single-node cluster on loopback configured as in
``shared/reference/slurm-side-by-side.md`` (``CPUs=64`` through ``config_overrides``, backfill,
``MinJobAge=2``, no accounting), from a temporary folder, with munged, slurmctld and slurmd started
by this script and stopped by it (also on Ctrl-C or an error). ``--install`` first installs
``slurmctld slurmd slurm-client munge`` with apt (as root; services are not started by the
packages). Without Slurm (or with ``--no-slurm``, or not root) it says so and prints bai's figures
only: that is how CI smoke-tests it at a tiny size.

bai: ``backend.ai server start --slots cpu=64`` (process runtime) in a private HOME; the figures
count only with the sandbox in force, so the script refuses to run when ``server start`` reports
isolation gaps unless ``--allow-gaps`` is given (the table then says so).

Rows (each measured for Slurm then bai, or alternating run by run):
  hello world      srun python3 -c 'print(1)' vs backend.ai run --rm -c 'print(1)' python
                   (python3: /usr/bin/python3, the interpreter bai's python image runs)
  batch N          N trivial jobs (`true`) to completion: sbatch from 8 xargs loops vs the SDK
                   (16 requests in flight); clock until no job is live, polled every 0.1 s;
                   machine CPU (/proc/stat) per job over the same run
  array            the same N as one sbatch --array vs one backend.ai start --array
  CLI submission   8 parallel loops of sbatch vs backend.ai start --enqueue-only (jobs that may
                   start in 2 hours), and python3 -c pass in the same loops (the floor)
  SDK submission   sbatch from 8 loops vs the SDK, 16 in flight, into an empty queue
  deep queue       the same once the queue holds --queue jobs
  listing          squeue vs backend.ai ps --all and backend.ai ps (first page)
  memory           VmRSS of slurmctld + slurmd vs manager + agent (pooled runners apart)
  waiting CPU      CPU of slurmctld vs the manager while the queue waits (--wait-seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bai.agent.settings import AgentSettings
from harness import CLI, Daemons, EmbeddedStack, cpu_seconds, figures, interpreter, \
    pids_mentioning, print_conditions, rss_mb, shell_loops

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
LIVE_SLURM = "PD,R,CG,CF,S"
TERMINAL_BAI = ("TERMINATED", "CANCELLED", "ERROR")
LATER = "2h"  # bai --starts-at (a delay): jobs that wait while submission and listing are measured
SLURM_LATER = "now+2hours"

SLURM_CONF = """\
ClusterName=perf
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CryptoType=crypto/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=error
SlurmdDebug=error
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PriorityType=priority/basic
SchedulerParameters=default_queue_depth=1000,bf_continue,max_rpc_cnt=150
MaxJobCount=100000
MaxArraySize=100001
MinJobAge=2
MessageTimeout=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs=64 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


# -- Slurm -------------------------------------------------------------------------------------

def install_slurm() -> None:
    """apt-get install the Slurm and munge packages, without letting their scripts start
    services (a policy-rc.d that says no, removed afterwards if this put it there)."""
    if os.geteuid() != 0:
        sys.exit("--install needs root (apt-get)")
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], env=env, check=True)
    finally:
        if ours:
            policy.unlink(missing_ok=True)


def slurm_missing() -> str | None:
    """Why Slurm cannot be run here, or None."""
    if os.geteuid() != 0:
        return "not root (the Slurm daemons of this benchmark run as root)"
    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue")
               if shutil.which(p) is None]
    return f"not installed ({', '.join(missing)} missing; --install installs it)" if missing \
        else None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster(Daemons):
    """munged + slurmctld + slurmd from a temporary folder, in the foreground of this script."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bai-slurm-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}
        self.host = socket.gethostname().split(".")[0]

    def _spawn(self, name: str, *argv: str) -> None:
        log = open(self.dir / f"{name}.out", "ab")  # noqa: SIM115 - closed with the folder
        self.procs[name] = subprocess.Popen(list(argv), env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> SlurmCluster:
        d = self.dir
        for sub in ("state", "spool", "munge"):
            (d / sub).mkdir(mode=0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", "munged", "-F", "--force", f"--socket={d}/munge.sock",
                    f"--key-file={key}", f"--pid-file={d}/munge/munged.pid",
                    f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/munged.seed")
        self._wait(lambda: (d / "munge.sock").exists(), "munged", 30)
        (d / "slurm.conf").write_text(SLURM_CONF.format(
            host=self.host, dir=d, ctld_port=_port(), d_port=_port()))
        self._spawn("slurmctld", "slurmctld", "-D", "-c", "-f", str(d / "slurm.conf"))
        self._spawn("slurmd", "slurmd", "-D", "-f", str(d / "slurm.conf"))
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
                   == "idle", "the node to be idle", 90)
        return self

    def _wait(self, cond: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    out = (self.dir / f"{name}.out").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {out}")
            if cond():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Slurm: waited {timeout:.0f} s for {what}")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=600)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def live(self) -> int:
        out = self.run("squeue", "-h", "-t", LIVE_SLURM, "-o", "%i", check=False).stdout
        return len(out.split())

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def version(self) -> str:
        return self.run("sinfo", "-V", check=False).stdout.strip()

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run("scancel", "--full", "-u", "root", check=False)
                self._wait(lambda: self.live() == 0, "jobs to end", 15)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids_mentioning(str(self.dir)):  # job steps started from this cluster
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- bai -----------------------------------------------------------------------------------------

class Bai:
    """The embedded stack plus what the rows need: SDK creates, the live count, the CLI."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.db = stack.state / "bai.db"

    def live(self) -> int:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            marks = ",".join("?" * len(TERMINAL_BAI))
            return con.execute(f"SELECT count(*) FROM sessions WHERE status NOT IN ({marks})",
                               TERMINAL_BAI).fetchone()[0]
        finally:
            con.close()

    def create_many(self, n: int, tag: str, later: bool, in_flight: int = 16) -> None:
        """``n`` creates from the SDK, ``in_flight`` at once, as an SDK program runs them:
        on ``bai.client.eventloop.run`` (uvloop where installed), asyncio's loop where the
        ``bai`` on the path has no such runner (an older ``--baseline`` tree)."""
        try:
            from bai.client.eventloop import run
        except ImportError:
            run = asyncio.run
        run(self._create_many(n, tag, later, in_flight))

    async def _create_many(self, n: int, tag: str, later: bool, in_flight: int) -> None:
        from bai.client.config import ClientConfig
        from bai.client.connection import Connection
        from bai.client.models import CreateSpec
        from bai.client.session import SessionAPI

        async with Connection(ClientConfig.load(env=self.stack.env)) as conn:
            api = SessionAPI(conn)
            todo = iter(range(n))

            async def worker() -> None:
                for i in todo:
                    await api.create(CreateSpec(
                        image="python", name=f"{tag}-{i}", type="batch", startup_command="true",
                        enqueue_only=True, starts_at=LATER if later else None))

            await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))

    def statements(self) -> float | None:
        """The manager's ``bai_manager_sql_statements_total`` (admin keypair), None if absent."""
        async def scrape() -> str:
            from bai.client.config import ClientConfig
            from bai.client.connection import Connection

            async with Connection(ClientConfig.load(env=self.stack.env)) as conn:
                return str(await conn.request("GET", "/metrics"))

        try:
            text = asyncio.run(scrape())
        except Exception:  # noqa: BLE001 - a figure on the side, never a failure
            return None
        for line in text.splitlines():
            if line.startswith("bai_manager_sql_statements_total "):
                return float(line.split()[-1])
        return None

    def fill(self, n: int, tag: str) -> None:
        """``n`` sessions that wait (2 hours), as arrays (one request per 10,000)."""
        from bai.common.arrays import MAX_ARRAY

        for first in range(0, n, MAX_ARRAY):
            last = min(n, first + MAX_ARRAY) - 1
            timed_cmd([CLI, "start", "--array", f"{first}-{last}", "-t", tag, "--starts-at",
                       LATER, "--type", "batch", "-c", "true", "python"], self.stack.env)

    def rss(self) -> tuple[float, float]:
        """(manager + agent, pooled runners and kernels) in MB."""
        daemons = {self.stack.pid("manager"), self.stack.pid("agent")}
        own = sum(rss_mb(p) for p in daemons)
        others = 0.0
        for pid in pids_mentioning(str(self.stack.home)):
            if pid not in daemons:
                with contextlib.suppress(OSError):
                    others += rss_mb(pid)
        return own, others


# -- measuring -----------------------------------------------------------------------------------

def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds of one process (all its threads) to the nanosecond, from the kernel's
    per-process CPU clock; /proc's clock ticks where that clock is refused. In ticks (10 ms),
    slurmctld's 0.07 % of a core over 60 s is 4 of them, and the ratio mostly rounding."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9  # CPUCLOCK_SCHED of the process
    except OSError:
        return cpu_seconds(pid)


def wait_drained(live: Callable[[], int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while live() and time.monotonic() < deadline:
        time.sleep(0.1)
    if live():
        raise RuntimeError(f"jobs still live after {timeout:.0f} s")


def timed_cmd(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stdout[-500:]}{proc.stderr[-500:]}")
    return ms


def loops(command: str, n: int, env: dict[str, str], parallel: int = 8) -> float:
    """Seconds for ``parallel`` shell loops to run ``command`` n times in all."""
    return shell_loops(command, n, env, parallel)[0]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, figure: str, slurm: float | None, bai: float, unit: str, target: str,
            higher_is_better: bool) -> None:
        def fmt(v: float | None) -> str:
            if v is None:
                return "-"
            if v < 1:  # the CPU row: 0.05 % of a core is not "0.0 %"
                return f"{v:.3f} {unit}"
            return f"{v:,.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"

        ratio = "-" if not slurm else f"{bai / slurm:.2f}"
        verdict = ""
        if slurm == 0 and bai > 0:  # Slurm below what /proc shows: bai is behind by any ratio
            ratio, verdict = "∞", " MISSED"
        if slurm:
            limit = float(target.split()[-1].rstrip("×"))
            ok = bai / slurm >= limit if higher_is_better else bai / slurm <= limit
            verdict = " met" if ok else " MISSED"
        self.rows.append((figure, fmt(slurm), fmt(bai), ratio, target + verdict))
        print(f"-- {figure}: Slurm {fmt(slurm)}, bai {fmt(bai)}, bai/Slurm {ratio} "
              f"(target {target}){verdict}", flush=True)

    def print(self) -> None:
        print("\n| figure | Slurm | bai | bai/Slurm | target |")
        print("| --- | --- | --- | --- | --- |")
        for r in self.rows:
            print("| " + " | ".join(r) + " |")


def positive(text: str) -> int:
    """A count of runs or jobs: every row needs at least one (0 made a row divide by zero)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def main() -> None:  # noqa: PLR0915 - one row after the other, as the table reads
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true", help="apt-get install Slurm and munge")
    ap.add_argument("--no-slurm", action="store_true", help="bai only")
    ap.add_argument("--allow-gaps", action="store_true",
                    help="run even if bai's sandbox is not in force (figures do not count)")
    ap.add_argument("--hello", type=positive, default=20, help="hello world runs of each")
    ap.add_argument("--jobs", default="1000,5000", help="batch sizes, comma separated")
    ap.add_argument("--cpu-jobs", type=positive, default=300, help="jobs for the machine CPU row")
    ap.add_argument("--submit", type=positive, default=400, help="jobs per submission row")
    ap.add_argument("--queue", type=int, default=5000, help="depth of the waiting queue")
    ap.add_argument("--listing", type=positive, default=10, help="listing runs of each")
    ap.add_argument("--wait-seconds", type=float, default=60.0,
                    help="how long the controllers' CPU is taken while jobs wait (0.07 %% of a "
                         "core over 20 s is under 2 clock ticks)")
    ap.add_argument("--settle-seconds", type=float, default=10.0,
                    help="pause before the controllers' CPU is taken")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per batch run")
    args = ap.parse_args()
    try:
        sizes = [positive(x) for x in args.jobs.split(",") if x]
    except argparse.ArgumentTypeError as e:
        ap.error(f"argument --jobs: {e}")
    if not sizes:
        ap.error("argument --jobs: at least one batch size")

    # Ctrl-C and SIGTERM unwind through the `with` blocks, which stop every daemon
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.install and not args.no_slurm:
        install_slurm()
    why = "--no-slurm" if args.no_slurm else slurm_missing()
    if why:
        print(f"Slurm not measured: {why}; bai's figures only")

    with contextlib.ExitStack() as daemons:
        slurm = None if why else daemons.enter_context(SlurmCluster())
        stack = daemons.enter_context(EmbeddedStack(runtime="process", slots=["cpu=64"]))
        gaps = [ln for ln in stack.start_output.splitlines() if "isolation NOT enforced" in ln]
        if gaps and not args.allow_gaps:
            sys.exit(f"bai's sandbox is not in force: {gaps[0]} (--allow-gaps to go on)")
        bai = Bai(stack)
        versions = subprocess.run([CLI, "--version"], capture_output=True, text=True).stdout
        # srun and the floors run the interpreter bai's `python` image runs (the agent's
        # process_interpreter, /usr/bin/python3), not whatever `python3` is first on PATH: a
        # pyenv shim there took srun from ~50 to 126 ms, and a pyenv build's site-packages ~30 ms
        py3, py3_version = interpreter(next(
            p for p in (AgentSettings.model_fields["process_interpreter"].default,
                        shutil.which("python3"), sys.executable) if p and os.path.exists(p)))
        print_conditions(
            "bai vs Slurm, side by side", slurm=slurm.version() if slurm else "not measured",
            python3=f"{py3} ({py3_version}) for srun and the floors",
            # bai's CLI and daemons run the interpreter its virtualenv was made from: README
            # command 1's `python3 -m venv` (on Debian 12, /usr/bin/python3; a pyenv build
            # without PGO/LTO starts ~35 % more instructions)
            bai_python=f"{sys._base_executable} ({platform.python_version()})",
            slurm_config="single node on loopback, CPUs=64 (config_overrides), backfill, "
                         "MinJobAge=2, no accounting" if slurm else "-",
            bai=(versions.strip() or "bai") + ", embedded default, --slots cpu=64, "
                "process runtime, SQLite",
            sandbox="NOT in force: " + gaps[0] if gaps else "in force",
            sizes=f"hello {args.hello}, jobs {sizes}, cpu-jobs {args.cpu_jobs}, "
                  f"submit {args.submit}, queue {args.queue}, listing {args.listing}")
        table = Table()
        senv = slurm.env if slurm else {}

        # -- idle memory
        idle_bai, idle_pool = bai.rss()
        idle_slurm = (rss_mb(slurm.pid("slurmctld")) + rss_mb(slurm.pid("slurmd"))
                      if slurm else None)

        # -- hello world, alternating
        hw = {"slurm": [], "bai": [], "floor": []}
        timed_cmd([CLI, "run", "--rm", "-c", "print(1)", "python"], stack.env)  # warm-up
        if slurm:
            timed_cmd(["srun", py3, "-c", "print(1)"], senv)
        for _ in range(args.hello):
            if slurm:
                hw["slurm"].append(timed_cmd(["srun", py3, "-c", "print(1)"], senv))
            hw["bai"].append(timed_cmd([CLI, "run", "--rm", "-c", "print(1)", "python"],
                                       stack.env))
            hw["floor"].append(timed_cmd([py3, "-c", "print(1)"], stack.env))
        med = {k: figures(v).get("median") for k, v in hw.items()}
        print(f"   hello world p90: bai {figures(hw['bai'])['p90']:.0f} ms"
              + (f", srun {figures(hw['slurm'])['p90']:.0f} ms" if slurm else "")
              + f"; floor python3 -c 'print(1)' median {med['floor']:.0f} ms")
        table.add("hello world, whole command, median", med["slurm"], med["bai"], "ms",
                  "≤ 0.7", False)

        # -- batch jobs to completion (and machine CPU per job)
        for n in sizes + ([args.cpu_jobs] if args.cpu_jobs not in sizes else []):
            is_cpu = n not in sizes
            rate: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for side in (["slurm"] if slurm else []) + ["bai"]:
                c0, t0 = machine_cpu_s(), time.perf_counter()
                if side == "slurm":
                    loops("sbatch -Q --wrap true -o /dev/null", n, senv)
                    wait_drained(slurm.live, args.timeout)
                else:
                    st0 = bai.statements()
                    bai.create_many(n, f"b{n}-{uuid.uuid4().hex[:6]}", later=False)
                    wait_drained(bai.live, args.timeout)
                rate[side] = n / (time.perf_counter() - t0)
                cpu[side] = (machine_cpu_s() - c0) * 1000 / n
                if side == "bai" and st0 is not None:
                    st1 = bai.statements()
                    if st1 is not None:  # create -> schedule -> start -> end, and the timers
                        print(f"   bai, {n:,} jobs: {(st1 - st0) / n:.1f} SQL statements per job")
            if not is_cpu:
                table.add(f"{n:,} trivial batch jobs to completion", rate.get("slurm"),
                          rate["bai"], "jobs/s", "≥ 2", True)
            if n == args.cpu_jobs:
                table.add(f"machine CPU per trivial job ({n:,} jobs)", cpu.get("slurm"),
                          cpu["bai"], "ms", "≤ 1", False)

        # -- the same jobs as one array (sbatch --array / backend.ai start --array)
        n = sizes[0]
        arate: dict[str, float] = {}
        for side in (["slurm"] if slurm else []) + ["bai"]:
            t0 = time.perf_counter()
            if side == "slurm":
                slurm.run("sbatch", "-Q", f"--array=1-{n}", "--wrap", "true", "-o", "/dev/null")
                wait_drained(slurm.live, args.timeout)
            else:
                timed_cmd([CLI, "start", "--array", f"1-{n}", "-t", f"a-{uuid.uuid4().hex[:6]}",
                           "--type", "batch", "-c", "true", "python"], stack.env)
                wait_drained(bai.live, args.timeout)
            arate[side] = n / (time.perf_counter() - t0)
        table.add(f"{n:,} trivial jobs as one array to completion", arate.get("slurm"),
                  arate["bai"], "jobs/s", "≥ 2", True)

        # -- submission from CLI loops (jobs for later), with the python3 floor
        k = args.submit
        sub: dict[str, float] = {}
        if slurm:
            sub["slurm"] = k / loops(f"sbatch -Q --begin={SLURM_LATER} --wrap true "
                                     "-o /dev/null", k, senv)
        sub["bai"] = k / loops(f"'{CLI}' start --enqueue-only --starts-at {LATER} --type batch "
                               "-c true python", k, stack.env)
        sub["floor"] = k / loops(f"{shlex.quote(py3)} -c pass", k, stack.env)
        print(f"   CLI loops: python3 -c pass {sub['floor']:.0f} /s; "
              f"bai/python3 floor {sub['bai'] / sub['floor']:.2f} (target ≥ 0.67)")
        table.add("submission rate, 8 CLI loops", sub.get("slurm"), sub["bai"], "/s", "≥ 0.5",
                  True)

        # -- submission from the SDK vs sbatch, empty queue then deep queue
        def submit_row(label: str) -> tuple[float | None, float]:
            s = k / loops(f"sbatch -Q --begin={SLURM_LATER} --wrap true -o /dev/null", k,
                          senv) if slurm else None
            t0 = time.perf_counter()
            bai.create_many(k, f"s-{uuid.uuid4().hex[:6]}", later=True)
            b = k / (time.perf_counter() - t0)
            table.add(label, s, b, "/s", "≥ 2", True)
            return s, b

        _s0, b0 = submit_row("submission rate, SDK (16 in flight) vs sbatch (8 loops)")
        have = 2 * k
        fill = max(0, args.queue - have)
        if fill:
            if slurm:
                loops(f"sbatch -Q --begin={SLURM_LATER} --wrap true -o /dev/null", fill, senv)
            bai.fill(fill, f"q-{uuid.uuid4().hex[:6]}")
        _s1, b1 = submit_row(f"submission into a {args.queue:,}-deep queue, SDK vs sbatch")
        print(f"   bai's SDK rate deep/empty: {b1 / b0:.2f} (target ≥ 0.8)")
        waiting = max(args.queue, have) + k

        # -- listing, alternating
        ls = {"squeue": [], "ps --all": [], "ps": []}
        for _ in range(args.listing):
            if slurm:
                ls["squeue"].append(timed_cmd(["squeue"], senv))
            ls["ps --all"].append(timed_cmd([CLI, "ps", "--all"], stack.env))
            ls["ps"].append(timed_cmd([CLI, "ps"], stack.env))
        med = {k2: figures(v).get("median") for k2, v in ls.items()}
        table.add(f"listing all {waiting:,} waiting: ps --all vs squeue", med["squeue"],
                  med["ps --all"], "ms", "≤ 1", False)
        table.add("first page: ps vs squeue (all)", med["squeue"], med["ps"], "ms", "≤ 0.5",
                  False)

        # -- memory, idle and with the queue
        full_bai, full_pool = bai.rss()
        full_slurm = (rss_mb(slurm.pid("slurmctld")) + rss_mb(slurm.pid("slurmd"))
                      if slurm else None)
        print(f"   bai's pooled runners and kernels: {idle_pool:.0f} MB idle, "
              f"{full_pool:.0f} MB with the queue")
        table.add("daemons' RSS, idle", idle_slurm, idle_bai, "MB", "≤ 1", False)
        table.add(f"daemons' RSS, {waiting:,} waiting", full_slurm, full_bai, "MB", "≤ 1", False)

        # -- controller CPU while the jobs wait: the controllers (manager, slurmctld) in the
        # row, the node daemons (agent, slurmd) beside it; after a settling pause, so that
        # what the rows before set going (a deferred pass, a listing's cache) is not counted
        w = args.wait_seconds
        time.sleep(args.settle_seconds)
        pids = {"manager": stack.pid("manager"), "agent": stack.pid("agent")}
        if slurm:
            pids.update(slurmctld=slurm.pid("slurmctld"), slurmd=slurm.pid("slurmd"))
        c0 = {k: process_cpu_s(p) for k, p in pids.items()}
        time.sleep(w)
        cpu_pct = {k: (process_cpu_s(p) - c0[k]) * 100 / w for k, p in pids.items()}
        print(f"   CPU over {w:g} s while {waiting:,} wait (% of a core): "
              + ", ".join(f"{k} {v:.2f}" for k, v in cpu_pct.items()))
        table.add(f"controller CPU while {waiting:,} wait (% of a core)", cpu_pct.get("slurmctld"),
                  cpu_pct["manager"], "%", "≤ 1", False)

        print(f"   load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
        table.print()


if __name__ == "__main__":
    main()
