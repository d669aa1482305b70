"""What every benchmark shares: figures (median/p90/p99), the conditions block, an embedded stack.

The scripts in ``bench/`` import this module by its plain name (``python bench/x.py`` puts
``bench/`` first on ``sys.path``). Nothing here asserts a time: benchmarks print, people judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from bai.client.cli.server import _write_toml
from bai.testing.ports import free_port
from bai.testing.procs import pids_mentioning

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLI = str(VENV_BIN / "backend.ai") if (VENV_BIN / "backend.ai").exists() else "backend.ai"


# -- figures ----------------------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty ``samples``."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


def figures(samples: Sequence[float]) -> dict[str, float]:
    """``{"n", "median", "p90", "p99", "min", "max"}`` of ``samples`` (any unit)."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    n = len(ordered)
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"n": n, "median": median, "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "min": ordered[0], "max": ordered[-1]}


def line(label: str, samples: Sequence[float], unit: str = "ms", *, target: str = "") -> str:
    """``label  median 12.3 ms  p90 ...  p99 ...  (n=20)  target ...`` as one printed line."""
    f = figures(samples)
    if not f["n"]:
        return f"{label:<38} no samples"
    text = (f"{label:<38} median {f['median']:8.1f} {unit}  p90 {f['p90']:8.1f} {unit}  "
            f"p99 {f['p99']:8.1f} {unit}  min {f['min']:7.1f}  max {f['max']:7.1f}  (n={f['n']})")
    return text + (f"  target {target}" if target else "")



def print_rounds(results: dict[str, list[dict[str, float]]], r: int, name: str) -> None:
    """One side's figures of round ``r`` (0-based), with the load average."""
    print(f"   round {r + 1} {name}: " + ", ".join(
        f"{k} {v:.1f}" for k, v in results[name][-1].items())
        + f" (load {os.getloadavg()[0]:.1f})", flush=True)


def print_medians(results: dict[str, list[dict[str, float]]], width: int = 22,
                  digits: int = 1) -> None:
    """The median of the rounds of each figure and side, and after/before with two sides."""
    sides = list(results)
    keys = list(results[sides[0]][0])
    print(f"\n{'median of rounds':<{width}}" + "".join(f"{k:>12}" for k in sides)
          + ("       after/before" if len(sides) == 2 else ""))
    for key in keys:
        med = {k: figures([x[key] for x in v])["median"] for k, v in results.items()}
        ratio = (f"{med['after'] / med['before']:>19.2f}"
                 if len(sides) == 2 and med.get("before") else "")
        print(f"{key:<{width}}" + "".join(f"{med[k]:>12.{digits}f}" for k in sides) + ratio)

# -- conditions -------------------------------------------------------------------------------

def _meminfo_mb() -> int:
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                return int(row.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+uncommitted-src" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def conditions(**extra: object) -> dict[str, object]:
    """The machine and software a figure was taken on, plus the benchmark's own parameters."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "machine": f"{cores} cores ({platform.processor() or platform.machine()}), "
                   f"{_meminfo_mb()} MB memory, {platform.system()} {platform.release()}",
        "load_average_1m": round(load[0], 2),
        "python": platform.python_version(),
        "commit": _commit(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def print_conditions(title: str, **extra: object) -> dict[str, object]:
    cond = conditions(**extra)
    print(f"== {title}")
    for k, v in cond.items():
        print(f"   {k}: {v}")
    sys.stdout.flush()
    return cond


# -- processes and ports ----------------------------------------------------------------------

def interpreter(python: str) -> tuple[str, str]:
    """(the interpreter ``python`` runs in the end, its version): a pyenv shim on PATH is a
    shell script that costs more than the interpreter it starts."""
    done = subprocess.run([python, "-c", "import platform, sys; print(sys.executable); "
                           "print(platform.python_version())"],
                          capture_output=True, text=True, check=True)
    path, version = done.stdout.split()
    return path, version


def shell_loops(command: str, n: int, env: dict[str, str], parallel: int) -> tuple[float, float]:
    """(seconds, CPU seconds of everything they ran) for ``parallel`` shell loops to run
    ``command`` ``n`` times in all; RuntimeError if a call fails."""
    script = ('for _ in $(seq "$1"); do out=$(' + command + ' 2>&1) || '
              '{ echo "$out" >&2; exit 1; }; done')
    share = [n // parallel + (1 if i < n % parallel else 0) for i in range(parallel)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["sh", "-c", script, "loop", str(k)], env=env)
             for k in share if k]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(codes):
        raise RuntimeError(f"a loop of {command!r} failed")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def free_port_pair() -> tuple[int, int]:
    """Two free ports (the manager's and the local agent's)."""
    for _ in range(50):
        a = free_port()
        b = free_port()
        if a != b:
            return a, b
    raise RuntimeError("no free ports")


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (from /proc)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of one process (plus its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_dsn() -> str | None:
    """``BAI_BENCH_PG_DSN`` (``source /tmp/bai-ci/services.env`` sets it), if any."""
    return os.environ.get("BAI_BENCH_PG_DSN") or None


async def clear_pg(dsn: str) -> None:
    """Empty the benchmark database: drop and recreate the public schema."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(dsn)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        await conn.execute(sa.text("CREATE SCHEMA public"))
    await engine.dispose()


def reset_pg(dsn: str) -> None:
    """``clear_pg`` outside an event loop."""
    import asyncio

    asyncio.run(clear_pg(dsn))


def baseline_launcher(tree: str, folder: str) -> str:
    """The ``backend.ai`` program of another checkout, as pip would install it for this
    interpreter, written into ``folder``: this venv's launcher may ask for what the other
    tree's ``bai`` lacks (``bai.cli()``, 2af2203)."""
    try:
        with open(os.path.join(tree, "packaging", "bin", "backend.ai")) as f:
            body = f.read().split("\n", 1)[1]
    except OSError:  # older trees: pip's wrapper did this
        body = "from bai.client.cli.main import main\n\nmain()\n"
    path = os.path.join(folder, "backend.ai")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n{body}")
    os.chmod(path, 0o755)
    return path


class Daemons:
    """``with X(...) as x``: ``start()`` on enter (``stop()`` if it fails), ``stop()`` on exit."""

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedStack(Daemons):
    """``backend.ai server start`` in a private HOME on free ports; ``stop()`` tears it down.

    ``env`` is the environment to run the CLI with (HOME points at the private folder, so the
    client configuration the start wrote is the one used).
    """

    def __init__(self, runtime: str = "process", slots: Sequence[str] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bai-bench-"))
        self.port, self.agent_port = free_port_pair()
        self.runtime = runtime
        self.slots = list(slots)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("BACKEND_", "BAI_PROFILE", "BAI_CONFIG", "BAI_STATE",
                                         "XDG_"))}
        # As on a user's machine, byte-code caches are written (and then used).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        # benchmarks run more sessions at once than the default policy's 8
        self.env.update({"HOME": str(self.home), "BAI_MANAGER_DEFAULT_MAX_SESSIONS": "0",
                         **(extra_env or {})})
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.start_output = ""
        #: the ``backend.ai`` program of this stack's tree: a stack run from another tree's
        #: ``src`` (``extra_env`` PYTHONPATH, e.g. ``--baseline``) runs that tree's launcher,
        #: since this venv's may ask for what the other ``bai`` lacks (``bai.cli()``)
        src = (extra_env or {}).get("PYTHONPATH")
        self.launcher = (baseline_launcher(os.path.dirname(os.path.abspath(src)), str(self.home))
                         if src and os.path.isdir(os.path.join(src, "bai")) else CLI)

    @property
    def state(self) -> Path:
        return self.home / ".local" / "share" / "bai"

    def pid(self, which: str) -> int:
        return int((self.state / f"{which}.pid").read_text().strip())

    def keys(self) -> dict:
        return json.loads((self.state / "keys.json").read_text())

    def cli(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.launcher, *args], env=self.env, capture_output=True,
                              text=True, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"backend.ai {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> EmbeddedStack:
        for attempt in range(3):
            args = ["server", "start", "--port", str(self.port), "--agent-port",
                    str(self.agent_port), "--runtime", self.runtime, "--timeout", "60"]
            for s in self.slots:
                args += ["--slots", s]
            proc = self.cli(*args, check=False)
            self.start_output = proc.stdout + proc.stderr  # says whether isolation has gaps
            if proc.returncode == 0:
                return self
            if "in use" not in self.start_output or attempt == 2:  # "port N is in use", EADDRINUSE
                raise RuntimeError(f"backend.ai {' '.join(args)} failed ({proc.returncode}):\n"
                                   f"{self.start_output}")
            # another process bound a port between the pick and the daemon's bind: new ports
            self.cli("server", "stop", check=False)
            self.port, self.agent_port = free_port_pair()
            self.endpoint = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self.cli("server", "stop", check=False)
        # Kernels outlive `server stop` by design; end this stack's own (their command lines
        # name its private folder), then the folder.
        for pid in pids_mentioning(str(self.home)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        unmount_below(self.home)
        shutil.rmtree(self.home, ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """Lazily unmount every filesystem mounted below ``folder`` (kernels' work-dir quota
    filesystems: the agent unmounts only what it removes, and rmtree cannot remove a mount
    point), deepest first."""
    prefix = str(folder.resolve()) + "/"
    try:
        mounts = [line.split()[1].encode().decode("unicode_escape")
                  for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed milliseconds."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append((time.perf_counter() - t0) * 1000)


# -- a manager daemon on its own, and a filled database ---------------------------------------

def _wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the manager exited:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the manager did not listen within {timeout:.0f} s")


class ManagerProcess(Daemons):
    """``python -m bai.manager init`` then ``serve`` on a free port, on ``db_url``.

    ``settings`` become lines of the ``[manager]`` TOML table (e.g. ``schedule_interval``).
    """

    def __init__(self, db_url: str, **settings: object) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bai-bench-mgr-"))
        self.db_url = db_url.replace("{dir}", str(self.dir))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.token = os.urandom(12).hex()
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.keys: dict = {}

    def start(self) -> ManagerProcess:
        values = {"host": "127.0.0.1", "port": self.port, "db_url": self.db_url,
                  "cluster_token": self.token, "state_dir": str(self.dir),
                  "log_level": "WARNING", "default_max_sessions": 0, **self.settings}
        toml = self.dir / "manager.toml"
        _write_toml(toml, "manager", values)  # TOML: settings may hold tables
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        init = subprocess.run([sys.executable, "-m", "bai.manager", "init", "--config", str(toml),
                               "--keys-out", str(self.dir / "keys.json")],
                              capture_output=True, text=True, env=env)
        if init.returncode != 0:
            raise RuntimeError(f"bai.manager init failed:\n{init.stderr}{init.stdout}")
        self.keys = json.loads((self.dir / "keys.json").read_text())
        log = self.dir / "manager.log"
        with open(log, "ab") as out:
            # BAI_BENCH_CPROFILE=FILE: the manager runs under cProfile and writes FILE on stop
            prof = os.environ.get("BAI_BENCH_CPROFILE")
            wrap = ["-m", "cProfile", "-o", prof] if prof else []
            self.proc = subprocess.Popen([sys.executable, *wrap, "-m", "bai.manager", "serve",
                                          "--config", str(toml)], stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        _wait_port(self.port, 60, self.proc, log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client_config(self, who: str = "admin"):
        from bai.client.config import ClientConfig

        k = self.keys[who]
        return ClientConfig(endpoints=(self.endpoint,), access_key=k["access_key"],
                            secret_key=k["secret_key"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.environ.get("BAI_BENCH_KEEP"):  # keep the manager's log and state to look at
            print(f"manager state kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


#: the status mix of a "lived-in" session table: mostly ended sessions, some live ones
LIVED_IN_MIX = ["TERMINATED"] * 4 + ["CANCELLED", "RUNNING", "PENDING", "ERROR"]


async def fill_sessions(db_url: str, n: int, statuses: Sequence[str] = ("PENDING",),
                        owners: str = "all", batch: int = 5000) -> None:
    """Insert ``n`` sessions (and their main kernels) straight into the database.

    Statuses cycle through ``statuses``; owners cycle through every keypair (``owners="all"``)
    or one keypair's access key. Live statuses other than PENDING get no agent: this is for
    listing and memory figures, and for a PENDING queue the scheduler then places.
    """
    import uuid
    from datetime import datetime, timedelta

    import sqlalchemy as sa

    from bai.manager.store import tables as t
    from bai.manager.store.engine import Store

    store = Store(db_url)
    try:
        async with store.connect() as conn:
            gid = (await conn.execute(sa.select(t.groups.c.id))).scalar()
            q = sa.select(t.keypairs.c.access_key, t.keypairs.c.user_id)
            if owners != "all":
                q = q.where(t.keypairs.c.access_key == owners)
            keypairs = (await conn.execute(q)).all()
            image = (await conn.execute(sa.select(t.images.c.name))).scalar()
        now = datetime.now(UTC)
        slots = {"cpu": "1", "mem": str(256 * 2**20)}
        for start in range(0, n, batch):
            srows, krows = [], []
            for i in range(start, min(n, start + batch)):
                ak, uid = keypairs[i % len(keypairs)]
                status = statuses[i % len(statuses)]
                changed = now - timedelta(milliseconds=n - i)
                sid, kid = uuid.uuid4(), uuid.uuid4()
                srows.append(dict(
                    id=sid, name=f"bench-{i}", image=image, domain_name="default", group_id=gid,
                    user_id=uid, access_key=ak, status=status, status_info="enqueued",
                    status_data={}, status_changed=changed, created_at=changed,
                    requested_slots=slots, occupying_slots={}, service_ports=[], mounts=[],
                    environ={}, agent_ids=[], resource_opts={}, abusing_reports=[],
                    last_activity_at=changed, main_kernel_id=kid, scaling_group="default",
                    terminated_at=changed if status in ("TERMINATED", "CANCELLED", "ERROR")
                    else None))
                krows.append(dict(id=kid, session_id=sid, image=image, status=status,
                                  status_info="enqueued", status_changed=changed,
                                  created_at=changed, requested_slots=slots,
                                  occupied_slots=slots))
            async with store.begin() as conn:
                await conn.execute(t.sessions.insert(), srows)
                await conn.execute(t.kernels.insert(), krows)
        if not store.is_sqlite:
            # PostgreSQL plans by its statistics, which autovacuum refreshes some time after a
            # bulk load; a database that has lived with these rows has them already
            async with store.begin() as conn:
                await conn.execute(sa.text("ANALYZE sessions, kernels"))
    finally:
        await store.close()


async def status_counts(db: str | Any) -> dict[str, int]:
    """``{status: number of sessions}`` from the database (a URL, or an open ``Store`` that a
    polling loop keeps: opening one costs more than the query)."""
    import sqlalchemy as sa

    from bai.manager.store import tables as t
    from bai.manager.store.engine import Store

    store = Store(db) if isinstance(db, str) else db
    try:
        async with store.connect() as conn:
            rows = (await conn.execute(
                sa.select(t.sessions.c.status, sa.func.count()).group_by(t.sessions.c.status)
            )).all()
        return {str(r[0]): int(r[1]) for r in rows}
    finally:
        if store is not db:
            await store.close()


async def error_reasons(db_url: str, limit: int = 5) -> list[tuple[str, int]]:
    """The most common ``status_info`` of sessions in ERROR, with their counts."""
    import sqlalchemy as sa

    from bai.manager.store import tables as t
    from bai.manager.store.engine import Store

    store = Store(db_url)
    try:
        async with store.connect() as conn:
            n = sa.func.count().label("n")
            rows = (await conn.execute(
                sa.select(t.sessions.c.status_info, n).where(t.sessions.c.status == "ERROR")
                .group_by(t.sessions.c.status_info).order_by(n.desc()).limit(limit))).all()
        return [(str(r[0]), int(r[1])) for r in rows]
    finally:
        await store.close()
