"""Pre-started kernel runners for the process backend: the runner and its worker interpreter are
started ahead of any kernel and wait; a create claims one instead of starting two interpreters
in a row (~50-100 ms of wall time and ~40 ms of CPU off the session's start).

A pooled runner lives in ``<scratch_root>/.pool/<id>/`` (``work/`` with ``.bai/bin`` as a
kernel's, ``runner.out``, ``pool.json`` with its pid) and, with cgroups, in a cgroup
``pool-<id>`` of its own (no limits but the pids limit) that it joined before it started. A claim
(``ProcessBackend._start_pooled``) makes it the kernel's:

1. the folder is renamed to ``<scratch_root>/<kernel_id>`` (the runner's open socket, log and
   working directory move with it) and ``labels.json`` is written, so adoption after an agent
   restart works as for any kernel;
2. the cgroup is renamed to the kernel's and gets the kernel's limits (memory, cpu, pids): its
   processes and the memory they already use are charged to the kernel, and the OOM counter is
   the kernel's from then on. Without cgroups the kernel's ``RLIMIT_AS`` is set on each process
   of the tree (``prlimit``) instead of by the launcher;
3. the agent sends ``{"op": "claim", "workdir", "env", "config"}``: the runner takes the work
   dir, environment and bootstrap/startup config; its worker ``chdir``s, replaces
   ``os.environ``, puts ``PYTHONPATH`` entries on ``sys.path`` and redoes the per-user site
   folder before it runs any code (``bai.kernel.worker.bind``).

What a running interpreter cannot take on later is fixed when it starts: the locale, hash seed,
I/O encoding, ``PYTHON*`` flags, the dynamic loader's and malloc's variables. A kernel whose
environment sets any of those (``startup_fixed``) is started cold, as before; so are kernels of
an interpreter without a pooled runner, and any claim that fails (the pooled runner is killed and
the kernel starts cold).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from bai.agent.quota import remove_folder

log = logging.getLogger(__name__)

POOL_DIR = ".pool"
CGROUP_PREFIX = "pool-"
#: environment variables Python or the C library read once, at process start
FIXED_PREFIXES = ("PYTHON", "LC_", "LD_", "MALLOC_", "GLIBC_")
FIXED_NAMES = frozenset({"LANG", "LANGUAGE", "TZ"})
#: ...except these, which the worker applies when it is claimed
REBINDABLE = frozenset({"PYTHONPATH"})


def startup_fixed(environ: dict[str, str] | None) -> list[str]:
    """The variables of a kernel's environment that only a fresh interpreter would honour."""
    return sorted(k for k in (environ or {}) if k not in REBINDABLE
                  and (k.startswith(FIXED_PREFIXES) or k in FIXED_NAMES))


def proc_start_time(pid: int) -> str | None:
    """The start time of ``pid`` (to tell it from a later process with the same pid), or None
    when no such process is alive (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, as the kernel lists them (``/proc/PID/task/TID/children``
    of each thread): psutil's ``children()`` reads the stat of every process on the host to
    find them (~5 ms with 300 processes, on the path of every destroy); psutil's where the
    kernel keeps no such list (built without ``CONFIG_PROC_CHILDREN``)."""
    if not PROC_CHILDREN:
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(pid).children()]
        return []
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    found += [int(c) for c in f.read().split()]
    return found


#: whether the kernel lists each thread's children (``children``)
PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s children (a sandbox's PID namespace init among them: its namespace
    dies with it) and then ``pid``'s process group."""
    for child in children(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class PooledRunner:
    """One pre-started runner waiting for a kernel."""

    def __init__(self, folder: Path, interpreter: str, popen: subprocess.Popen[bytes],
                 cgroup_name: str | None, uid: int | None = None) -> None:
        self.folder = folder
        self.interpreter = interpreter
        self.popen = popen
        self.cgroup_name = cgroup_name
        #: its own uid from spawn (sandboxed, as root): no other session can write its folder
        self.uid = uid
        self.pid_start = proc_start_time(popen.pid) or ""
        #: it has answered on its socket: its launcher has joined its cgroup, and a claim need
        #: not ask again (``RunnerPool.probe``)
        self.answered = False

    @property
    def workdir(self) -> Path:
        return self.folder / "work"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        kill_tree(self.popen.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class RunnerPool:
    """Idle pooled runners per interpreter, refilled after each claim.

    ``spawn(interpreter, folder, cgroup_name)`` starts one and ``forget(runner)`` removes what
    else it holds once it is killed (its cgroup; the backend knows how); the pool keeps at most
    ``size`` idle per interpreter that kernels have asked for, and no more than ``room()`` (the
    agent's free whole CPU slots, when the backend was told them; None: no such bound). Idle
    runners are blocked in ``select``/``readline`` (no CPU); surplus ones (slots taken since)
    stay until claimed: a pool that shrank and grew with each job would start runners nobody
    claims while batch jobs come and go.
    """

    def __init__(self, root: Path, size: int,
                 spawn: Callable[[str, Path, str | None], PooledRunner],
                 forget: Callable[[PooledRunner], None] = lambda runner: None,
                 probe: Callable[[PooledRunner], Awaitable[None]] | None = None) -> None:
        self.root = root / POOL_DIR
        #: the cgroups of this pool's runners: agents on one host share the cgroup parent, and
        #: each sweeps only its own scratch root's leftovers
        self.cgroup_prefix = f"{CGROUP_PREFIX}{hashlib.sha1(str(root).encode()).hexdigest()[:8]}-"
        self.size = size
        self.room: Callable[[], int | None] = lambda: None
        self.spawn = spawn
        self.forget = forget
        self.idle: dict[str, list[PooledRunner]] = {}
        self._filling: dict[str, asyncio.Task[None]] = {}
        #: waits until a new runner answers (raises if it does not): then it is ``answered``,
        #: found out while it waits in the pool rather than when a kernel claims it
        self.probe = probe
        self._probes: set[asyncio.Task[None]] = set()

    def take(self, interpreter: str) -> PooledRunner | None:
        """The oldest live pooled runner of ``interpreter`` (ready or still starting), or None."""
        queue = self.idle.get(interpreter) or []
        while queue:
            runner = queue.pop(0)
            if runner.alive():
                return runner
            self.discard(runner)
        return None

    def refill(self, interpreter: str, with_cgroup: bool, delay: float = 0.0) -> None:
        """Start runners in the background until ``size`` of ``interpreter`` wait.

        After a claim the refill waits ``delay`` first, so that starting the next runner does
        not compete with the kernel that was just handed out while it reports ready; a start
        that fails is logged and left (the next create starts cold)."""
        if interpreter in self._filling or len(self.idle.get(interpreter) or ()) >= self.target():
            return
        self._filling[interpreter] = asyncio.get_running_loop().create_task(
            self._fill(interpreter, with_cgroup, delay))

    async def _fill(self, interpreter: str, with_cgroup: bool, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            queue = self.idle.setdefault(interpreter, [])
            while len(queue) < self.target():
                spawn = asyncio.ensure_future(
                    asyncio.to_thread(self._spawn_one, interpreter, with_cgroup))
                try:
                    runner = await asyncio.shield(spawn)
                except asyncio.CancelledError:
                    # the thread goes on and starts it: it is the pool's, for close() to kill
                    if (runner := await spawn) is not None:
                        queue.append(runner)
                    raise
                if runner is None:
                    return
                queue.append(runner)
                if self.probe is not None:
                    task = asyncio.ensure_future(self._probe(runner, self.probe))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
        finally:
            self._filling.pop(interpreter, None)

    @staticmethod
    async def _probe(runner: PooledRunner, probe: Callable[[PooledRunner], Awaitable[None]]
                     ) -> None:
        # a runner that does not answer is left to its claim, which asks again and discards it
        with contextlib.suppress(Exception):
            await probe(runner)
            runner.answered = True

    def target(self) -> int:
        """How many idle runners of one interpreter the pool keeps now."""
        room = self.room()
        return max(0, self.size if room is None else min(self.size, room))

    def _spawn_one(self, interpreter: str, with_cgroup: bool) -> PooledRunner | None:
        rid = uuid.uuid4().hex[:16]
        folder = self.root / rid
        try:
            return self.spawn(interpreter, folder, self.cgroup_prefix + rid if with_cgroup else None)
        except Exception:  # pooling is an optimisation: creates work without it
            log.exception("could not pre-start a kernel runner for %s", interpreter)
            remove_folder(folder)
            return None

    def discard(self, runner: PooledRunner) -> None:
        """Kill a runner that is still the pool's and remove its folder and cgroup."""
        runner.kill()
        remove_folder(runner.folder)
        self.forget(runner)

    async def close(self) -> None:
        """Stop refilling and discard every idle runner."""
        for task in list(self._probes):
            task.cancel()
        for task in list(self._filling.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gone = [r for queue in self.idle.values() for r in queue]
        self.idle.clear()
        for r in gone:
            await asyncio.to_thread(self.discard, r)

    def sweep(self) -> None:
        """Kill and remove pooled runners a previous agent left behind."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            with contextlib.suppress(OSError, ValueError, KeyError):
                meta = json.loads((folder / "pool.json").read_text())
                pid = int(meta["pid"])
                if pid and proc_start_time(pid) == meta.get("pid_start"):
                    kill_tree(pid)
            remove_folder(folder)
