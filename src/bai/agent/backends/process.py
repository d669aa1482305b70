"""The ``process`` runtime backend: kernels as sandboxed local process trees.

Layout per kernel (``<scratch_root>/<kernel_id>/``)::

    labels.json     what list() rebuilds from: ids, spec, pid and its start time, isolation
    runner.out      the runner's own stdout/stderr (start-up failures)
    work/           the work dir: HOME and cwd of the kernel, uploaded files
      .bai/         the runner's socket, config, log, exit status, and bin/python -> interpreter

Isolation, as far as the host allows (``isolation()`` says what was applied):

* its own session and process group (``start_new_session``), so an agent restart or a signal to
  the agent never takes kernels down;
* own PID and mount namespaces (``unshare --pid --fork --kill-child --mount-proc``) when
  ``unshare`` works: the runner is PID 1, the kernel sees only its own processes, and when the
  runner dies everything in the kernel dies with it;
* a cgroup (v1 or v2, see ``cgroup.py``) with the memory limit from the ``mem`` slot, a CPU quota
  from ``cpu`` and a pids limit; exceeding memory gets the kernel killed and reported as
  ``oom-killed``. Without cgroups, ``RLIMIT_AS`` (``ulimit -v``) bounds memory instead.

The interpreter is the image label ``bai.process.interpreter`` (default: the agent setting
``process_interpreter``, ``/usr/bin/python3``); it runs ``-m bai.kernel`` from this source tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

import bai.kernel
from bai.agent import statefiles
from bai.agent.backends.base import (
    ExitCallback,
    Instance,
    InstanceState,
    KernelCreationFailed,
    KernelSpec,
    RuntimeBackend,
)
from bai.agent.backends.cgroup import CgroupDriver, CgroupError, KernelCgroup, host_pids_cap
from bai.agent.backends.process_pool import (
    PooledRunner,
    RunnerPool,
    proc_start_time,
    startup_fixed,
)
from bai.agent.runner_channel import (
    RunnerUnavailable,
    claim_runner,
    wait_runner_ready,
)
from bai.agent.settings import AgentSettings
from bai.common.errors import KernelNotFound

log = logging.getLogger(__name__)

INTERPRETER_LABEL = "bai.process.interpreter"
#: the folder that holds the ``bai`` package, put on the runner's PYTHONPATH
KERNEL_PYTHONPATH = str(Path(bai.kernel.__file__).resolve().parent.parent.parent)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNSHARE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
#: joins the cgroups named before "--" and applies an optional ulimit, then execs the rest
LAUNCHER = (
    'ulim="$1"; shift; while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; '
    'shift; if [ "$ulim" != "-" ]; then ulimit -v "$ulim" || exit 125; fi; exec "$@"'
)
LOG_TAIL = 1024 * 1024
OOM_GRACE_SECONDS = 1.0
#: a claimed runner's replacement starts this long after the claim (see RunnerPool.refill)
POOL_REFILL_DELAY = 0.05


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class PoolMiss(Exception):
    """A pooled runner could not be made the kernel's: the kernel starts cold instead."""


def base_environ(workdir: Path, user: str) -> dict[str, str]:
    """What every kernel's environment starts from (a pooled runner starts with just this)."""
    return {
        "PATH": f"{workdir / bai.kernel.STATE_DIR / 'bin'}:{DEFAULT_PATH}",
        "HOME": str(workdir),
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": KERNEL_PYTHONPATH,
    }


def build_environ(spec: KernelSpec, workdir: Path, user: str) -> dict[str, str]:
    """The kernel's environment: a clean base, the session's environ, and the runner's plumbing."""
    env = base_environ(workdir, user)
    del env["PYTHONPATH"]
    env.update({
        "BACKENDAI_KERNEL_ID": spec.kernel_id,
        "BACKENDAI_SESSION_ID": spec.session_id,
        "BACKENDAI_SESSION_NAME": spec.session_name,
        "BACKENDAI_CLUSTER_ROLE": spec.cluster_role,
        "BACKENDAI_CLUSTER_IDX": str(spec.cluster_idx),
    })
    env.update({str(k): str(v) for k, v in (spec.environ or {}).items()})
    user_pythonpath = env.pop("PYTHONPATH", "")
    if user_pythonpath:
        env["BAI_KERNEL_PYTHONPATH"] = user_pythonpath
    env["PYTHONPATH"] = KERNEL_PYTHONPATH
    return env


def runner_config(spec: KernelSpec) -> dict[str, Any]:
    """``runner.json``: what the runner does once started (a pooled one gets it in the claim)."""
    return {"bootstrap_script": spec.bootstrap_script, "startup_command": spec.startup_command}


def build_command(
    interpreter: str,
    workdir: Path,
    procs_files: list[str],
    *,
    namespaces: bool,
    as_user: tuple[int, int] | None = None,
    mem_rlimit_kib: int | None = None,
) -> list[str]:
    """The command line that starts a kernel: launcher (cgroups, rlimit) -> unshare -> runner."""
    argv = ["/bin/sh", "-c", LAUNCHER, "bai-launch",
            str(mem_rlimit_kib) if mem_rlimit_kib else "-", *procs_files, "--"]
    if namespaces:
        argv += UNSHARE
    if as_user is not None:
        argv += ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", "--clear-groups"]
    argv += [interpreter, "-m", "bai.kernel", "--workdir", str(workdir)]
    return argv


class _Kernel:
    """What the backend tracks about one kernel."""

    def __init__(self, kernel_id: str, kdir: Path, labels: dict[str, str]):
        self.kernel_id = kernel_id
        self.kdir = kdir
        self.labels = labels
        self.popen: subprocess.Popen[bytes] | None = None
        self.cgroup: KernelCgroup | None = None
        self.exit: tuple[int | None, str] | None = None
        self.reported = False
        self.destroying = False
        #: create() is still starting it: the monitor leaves it alone (it has no pid yet, and
        #: create() itself reports a runner that ended during start-up)
        self.starting = False
        self.oom_seen_at = 0.0

    @property
    def workdir(self) -> Path:
        return self.kdir / "work"

    @property
    def pid(self) -> int:
        return int(self.labels.get("bai.pid") or 0)

    def alive(self) -> bool:
        if self.exit is not None:
            return False
        if self.popen is not None:
            return self.popen.poll() is None
        pid = self.pid
        return bool(pid) and proc_start_time(pid) == self.labels.get("bai.pid_start")


class ProcessBackend(RuntimeBackend):
    name = "process"

    def __init__(self, settings: AgentSettings):
        self.settings = settings
        self.root = Path(settings.scratch_root).absolute()
        self.cgroups: CgroupDriver | None = None
        self.namespaces = False
        self.as_user: tuple[int, int] | None = None
        self.user_name = pwd.getpwuid(os.getuid()).pw_name
        self._kernels: dict[str, _Kernel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_exit: ExitCallback | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._probed = False
        self.pool = RunnerPool(self.root, settings.process_pool_size, self._spawn_pooled,
                               lambda runner: self._remove_pool_cgroup(runner.cgroup_name))

    # --- lifecycle -------------------------------------------------------------------------

    async def _probe(self) -> None:
        if self._probed:
            return
        self._probed = True
        self.root.mkdir(parents=True, exist_ok=True)
        if self.settings.process_cgroups:
            self.cgroups = await asyncio.to_thread(
                CgroupDriver.detect, "/sys/fs/cgroup", self.settings.cgroup_parent)
            cap = host_pids_cap(self.settings.pids_total)
            if self.cgroups is not None and cap is not None:
                await asyncio.to_thread(self.cgroups.cap_pids, cap)
        if self.settings.process_namespaces and shutil.which("unshare"):
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    *UNSHARE, "true", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.namespaces = await proc.wait() == 0
        if self.settings.process_run_as:
            try:
                pw = pwd.getpwnam(self.settings.process_run_as)
            except KeyError:
                raise KernelCreationFailed(
                    f"process_run_as: no such user {self.settings.process_run_as!r}") from None
            if pw.pw_uid != os.getuid():
                self.as_user = (pw.pw_uid, pw.pw_gid)
                self.user_name = pw.pw_name

    async def start(self, on_exit: ExitCallback) -> None:
        await self._probe()
        await asyncio.to_thread(self._sweep_pool)
        self._on_exit = on_exit
        for inst in await self.list():
            k = self._kernels[inst.kernel_id]
            # exits found now are the agent's recovery to report, not the monitor's
            k.reported = inst.state == InstanceState.EXITED
        self._monitor = asyncio.create_task(self._watch())
        self.pool.refill(self.settings.process_interpreter, self.cgroups is not None)

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        # pooled runners are no kernels: they end with the agent
        await self.pool.close()

    # --- pooled runners (see process_pool.py) ----------------------------------------------

    def _spawn_pooled(self, interp: str, folder: Path, cgroup_name: str | None) -> PooledRunner:
        """Start a runner that waits for a claim, in its own folder and cgroup."""
        work = folder / "work"
        state = work / bai.kernel.STATE_DIR
        (state / "bin").mkdir(parents=True)
        for name in ("python", "python3"):
            (state / "bin" / name).symlink_to(interp)
        if self.as_user is not None:
            for p in [work, *work.rglob("*")]:
                os.lchown(p, *self.as_user)
        procs: list[str] = []
        if cgroup_name is not None and self.cgroups is not None:
            procs = self.cgroups.create(cgroup_name, None, None,
                                        self.settings.pids_limit).procs_files()
        argv = build_command(interp, work, procs, namespaces=self.namespaces,
                             as_user=self.as_user) + ["--pooled"]
        try:
            with open(folder / "runner.out", "ab") as out:
                popen = subprocess.Popen(
                    argv, env=base_environ(work, self.user_name), cwd=work,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
        except OSError:
            self._remove_pool_cgroup(cgroup_name)
            raise
        runner = PooledRunner(folder, interp, popen, cgroup_name if procs else None)
        (folder / "pool.json").write_text(json.dumps({
            "pid": popen.pid, "pid_start": runner.pid_start, "interpreter": interp,
            "cgroup": runner.cgroup_name}))
        return runner

    def _remove_pool_cgroup(self, name: str | None) -> None:
        if name and self.cgroups is not None:
            cg = self.cgroups.open(name)
            cg.kill_all()
            cg.remove()

    def _sweep_pool(self) -> None:
        """Pooled runners (and their cgroups) a previous agent left behind."""
        self.pool.sweep()
        if self.cgroups is not None:
            for name in self.cgroups.names(self.pool.cgroup_prefix):
                self._remove_pool_cgroup(name)

    async def _start_pooled(self, spec: KernelSpec, k: _Kernel, runner: PooledRunner) -> Instance:
        """Make a pooled runner this kernel's (see process_pool.py); PoolMiss if it cannot be."""
        pool_sock = runner.workdir / bai.kernel.STATE_DIR / bai.kernel.SOCKET_NAME
        if not pool_sock.exists():
            # Still starting: its launcher joins the pool cgroup by that cgroup's path, so the
            # cgroup (and folder) are renamed only once the runner listens, which it does after.
            try:
                await wait_runner_ready(pool_sock, self.settings.kernel_ready_timeout,
                                        runner.alive, "status")
            except (RunnerUnavailable, TimeoutError) as e:
                said = self._with_output(f"the pooled runner did not start: {e}", runner.folder)
                await asyncio.to_thread(self.pool.discard, runner)  # still the pool's: not moved
                raise PoolMiss(said) from None
        try:
            runner.folder.rename(k.kdir)
            (k.kdir / "pool.json").unlink()
        except OSError as e:
            raise PoolMiss(f"cannot move the pooled runner: {e}") from None
        k.popen = runner.popen
        k.labels["bai.pid"] = str(runner.popen.pid)
        k.labels["bai.pid_start"] = runner.pid_start
        k.labels["bai.namespaces"] = "pid,mount" if self.namespaces else ""
        k.labels["bai.pooled"] = "1"
        state = k.workdir / bai.kernel.STATE_DIR
        config = runner_config(spec)
        (state / "runner.json").write_text(json.dumps(config))
        if self.as_user is not None:
            os.lchown(state / "runner.json", *self.as_user)
        mem = spec.slots.get("mem") or None
        if runner.cgroup_name is not None and self.cgroups is not None:
            try:
                k.cgroup = await asyncio.to_thread(
                    self._claim_cgroup, runner.cgroup_name, spec.kernel_id, mem,
                    spec.slots.get("cpu") or None, spec.pids_max(self.settings.pids_limit))
            except CgroupError as e:
                raise PoolMiss(str(e)) from None
            k.labels["bai.cgroup"] = self.cgroups.version
        elif mem:
            try:
                await asyncio.to_thread(self._limit_address_space, runner.popen.pid, int(mem))
            except (OSError, psutil.Error) as e:
                raise PoolMiss(f"cannot set the memory rlimit: {e}") from None
        self._write_labels(k)
        sock = state / bai.kernel.SOCKET_NAME
        try:
            answer = await claim_runner(sock, str(k.workdir),
                                        build_environ(spec, k.workdir, self.user_name), config,
                                        self.settings.kernel_ready_timeout)
        except (RunnerUnavailable, OSError, TimeoutError) as e:
            raise PoolMiss(self._with_output(f"the pooled runner did not take the claim: {e}",
                                             k.kdir)) from None
        if not answer or answer.get("status") != "claimed":
            raise PoolMiss(f"the pooled runner refused the claim: {answer}")
        if answer.get("ready"):  # a warm runner without a bootstrap script: ready at once
            return self._instance(k)
        return await self._wait_ready(k)

    def _claim_cgroup(self, pool_name: str, kernel_id: str, mem: Any, cpu: Any,
                      pids: int) -> KernelCgroup:
        assert self.cgroups is not None
        cg = self.cgroups.rename(self.cgroups.open(pool_name), kernel_id)
        self.cgroups.set_limits(cg, mem, cpu, pids)
        return cg

    @staticmethod
    def _limit_address_space(pid: int, mem: int) -> None:
        """Without cgroups: the launcher's ``ulimit -v``, set on a running tree instead."""
        import resource

        limit = (mem // 1024) * 1024
        root = psutil.Process(pid)
        done: set[int] = set()
        while True:  # until a pass finds no process it has not limited: later forks inherit
            new = [p for p in [root, *root.children(recursive=True)] if p.pid not in done]
            if not new:
                return
            for p in new:
                resource.prlimit(p.pid, resource.RLIMIT_AS, (limit, limit))
                done.add(p.pid)

    async def _undo_pooled(self, k: _Kernel) -> None:
        """After a PoolMiss: the claimed runner and whatever was made of it go."""
        await asyncio.to_thread(self._kill, k)
        cg = k.cgroup or (self.cgroups.open(k.kernel_id) if self.cgroups is not None else None)
        if cg is not None:  # renamed to the kernel's even when its limits then failed
            await asyncio.to_thread(cg.kill_all)
            await asyncio.to_thread(cg.remove)
        await asyncio.to_thread(shutil.rmtree, k.kdir, True)
        k.popen, k.cgroup = None, None
        for key in ("bai.pid", "bai.pid_start", "bai.namespaces", "bai.pooled", "bai.cgroup"):
            k.labels.pop(key, None)

    def isolation(self) -> dict[str, Any]:
        cg = self.cgroups
        controllers = cg.controllers if cg else set()
        return {
            "runtime": "process",
            "cgroup": cg.version if cg else None,
            "memory": "cgroup" if cg else "rlimit-as",
            "cpu": "cgroup-quota" if "cpu" in controllers else None,
            "pids": "cgroup" if "pids" in controllers else None,
            "oom_kill_detection": bool(cg),
            "pid_namespace": self.namespaces,
            "mount_namespace": self.namespaces,
            "network_namespace": False,
            "process_group": True,
            "user": self.user_name,
        }

    # --- watching --------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval)
            for k in list(self._kernels.values()):
                if k.reported or k.destroying or k.starting:
                    continue
                try:
                    await self._check(k)
                except Exception:  # one broken kernel must not stop watching the others
                    log.exception("checking kernel %s failed", k.kernel_id)

    async def _check(self, k: _Kernel) -> None:
        oom = k.cgroup is not None and k.cgroup.oom_kills() > 0
        if oom and k.alive():
            # the OOM killer took a process of the kernel: the kernel as a whole is done. The
            # runner gets a moment to tell the running execution (and usually exits by itself).
            now = time.monotonic()
            k.oom_seen_at = k.oom_seen_at or now
            if now - k.oom_seen_at < OOM_GRACE_SECONDS:
                return
            log.info("kernel %s ran out of memory; killing it", k.kernel_id)
            await asyncio.to_thread(self._kill, k)
        if k.alive():
            return
        self._settle_exit(k)
        k.reported = True
        if self._on_exit is not None:
            asyncio.create_task(self._on_exit(self._instance(k)))

    def _settle_exit(self, k: _Kernel) -> None:
        """Work out how the kernel ended (once): OOM counter, the runner's exit.json, the pid."""
        if k.exit is not None:
            return
        returncode = k.popen.poll() if k.popen is not None else None
        code: int | None = exit_status(returncode) if returncode is not None else None
        reason = "killed"
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((k.workdir / bai.kernel.STATE_DIR / "exit.json").read_text())
            code, reason = int(data["exit_code"]), str(data.get("reason") or "self-terminated")
        if k.cgroup is not None and k.cgroup.oom_kills() > 0:
            code, reason = 137, "oom-killed"
        elif reason == "killed" and code is not None and code < 128:
            reason = "self-terminated"
        k.exit = (code, reason)

    def _kill(self, k: _Kernel) -> None:
        """Blocking: SIGKILL the whole kernel and wait until it is gone."""
        pid = k.pid
        if pid and (k.popen is not None or proc_start_time(pid) == k.labels.get("bai.pid_start")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if k.cgroup is not None:
            k.cgroup.kill_all()
        if k.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                k.popen.wait(timeout=5)
        else:
            deadline = time.monotonic() + 5
            while pid and proc_start_time(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.02)

    # --- images ----------------------------------------------------------------------------

    def interpreter_of(self, spec: KernelSpec) -> str:
        return str((spec.image_labels or {}).get(INTERPRETER_LABEL)
                   or self.settings.process_interpreter)

    async def ensure_image(self, spec: KernelSpec) -> bool:
        interp = self.interpreter_of(spec)
        if not (os.path.isfile(interp) and os.access(interp, os.X_OK)):
            raise KernelCreationFailed(
                f"image {spec.image}: its interpreter {interp} is not present on this node")
        return False

    # --- create / destroy ------------------------------------------------------------------

    def _lock(self, kernel_id: str) -> asyncio.Lock:
        return self._locks.setdefault(kernel_id, asyncio.Lock())

    async def create(self, spec: KernelSpec) -> Instance:
        await self._probe()
        async with self._lock(spec.kernel_id):
            if (self.root / spec.kernel_id / "labels.json").exists():
                return await self.inspect(spec.kernel_id)
            try:
                return await self._create(spec)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._remove(spec.kernel_id)
                raise

    async def _create(self, spec: KernelSpec) -> Instance:
        interp = self.interpreter_of(spec)
        runner = None if startup_fixed(spec.environ) else self.pool.take(interp)
        try:
            return await self._create_kernel(spec, interp, runner)
        finally:
            self.pool.refill(interp, self.cgroups is not None, POOL_REFILL_DELAY)

    async def _create_kernel(self, spec: KernelSpec, interp: str,
                             runner: PooledRunner | None) -> Instance:
        kdir = self.root / spec.kernel_id
        k = _Kernel(spec.kernel_id, kdir, {
            "bai.kernel_id": spec.kernel_id,
            "bai.session_id": spec.session_id,
            "bai.session_name": spec.session_name,
            "bai.image": spec.image,
            "bai.spec": json.dumps(spec.to_json()),
            "bai.interpreter": interp,
            "bai.created_at": str(time.time()),
        })
        k.starting = True
        self._kernels[spec.kernel_id] = k
        try:
            if runner is not None:
                try:
                    return await self._start_pooled(spec, k, runner)
                except PoolMiss as e:
                    log.warning("kernel %s starts cold: %s", spec.kernel_id, e)
                    await self._undo_pooled(k)
                    if runner.cgroup_name is not None:
                        await asyncio.to_thread(self._remove_pool_cgroup, runner.cgroup_name)
            (k.workdir / bai.kernel.STATE_DIR / "bin").mkdir(parents=True)
            return await self._start(spec, k, interp)
        finally:
            k.starting = False

    async def _start(self, spec: KernelSpec, k: _Kernel, interp: str) -> Instance:
        kdir = k.kdir
        state = k.workdir / bai.kernel.STATE_DIR
        self._write_labels(k)
        for name in ("python", "python3"):
            (state / "bin" / name).symlink_to(interp)
        (state / "runner.json").write_text(json.dumps(runner_config(spec)))
        if self.as_user is not None:
            for p in [k.workdir, *k.workdir.rglob("*")]:
                os.lchown(p, *self.as_user)
        mem = spec.slots.get("mem") or None
        procs: list[str] = []
        if self.cgroups is not None:
            try:
                k.cgroup = await asyncio.to_thread(
                    self.cgroups.create, spec.kernel_id, mem, spec.slots.get("cpu") or None,
                    spec.pids_max(self.settings.pids_limit))
            except CgroupError as e:
                raise KernelCreationFailed(str(e)) from None
            procs = k.cgroup.procs_files()
            k.labels["bai.cgroup"] = self.cgroups.version
        argv = build_command(
            interp, k.workdir, procs, namespaces=self.namespaces, as_user=self.as_user,
            mem_rlimit_kib=int(mem) // 1024 if (mem and k.cgroup is None) else None)
        env = build_environ(spec, k.workdir, self.user_name)
        with open(kdir / "runner.out", "ab") as out:
            try:
                k.popen = subprocess.Popen(
                    argv, env=env, cwd=k.workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                raise KernelCreationFailed(f"cannot start the kernel: {e}") from None
        k.labels["bai.pid"] = str(k.popen.pid)
        k.labels["bai.pid_start"] = proc_start_time(k.popen.pid) or ""
        k.labels["bai.namespaces"] = "pid,mount" if self.namespaces else ""
        self._write_labels(k)
        return await self._wait_ready(k)

    async def _wait_ready(self, k: _Kernel) -> Instance:
        kdir = k.kdir
        state = k.workdir / bai.kernel.STATE_DIR
        sock = state / bai.kernel.SOCKET_NAME
        try:
            await wait_runner_ready(sock, self.settings.kernel_ready_timeout, k.alive)
        except RunnerUnavailable:
            if (state / "exit.json").exists():
                return self._instance(k)  # it started and already ended by itself
            raise KernelCreationFailed(
                self._with_output("the kernel runner exited during start-up", kdir)) from None
        except TimeoutError as e:
            raise KernelCreationFailed(self._with_output(str(e), kdir)) from None
        return self._instance(k)

    def _write_labels(self, k: _Kernel) -> None:
        tmp = k.kdir / "labels.json.tmp"
        tmp.write_text(json.dumps(k.labels, indent=1))
        tmp.replace(k.kdir / "labels.json")

    async def destroy(self, kernel_id: str) -> Instance | None:
        async with self._lock(kernel_id):
            k = self._kernels.get(kernel_id) or self._load(kernel_id)
            if k is None:
                self._locks.pop(kernel_id, None)
                return None
            k.destroying = True
            exited_before = not k.alive()
            if exited_before:
                self._settle_exit(k)
            # destroyed during the OOM grace period: it ran out of memory all the same
            oom = k.cgroup is not None and k.cgroup.oom_kills() > 0
            await asyncio.to_thread(self._kill, k)
            inst = self._instance(k)
            if not exited_before:
                inst.exit_code, inst.exit_reason = (137, "oom-killed") if oom else (None, "killed")
            inst.state = InstanceState.EXITED
            await self._remove(kernel_id)
        self._locks.pop(kernel_id, None)
        return inst

    async def _remove(self, kernel_id: str) -> None:
        k = self._kernels.pop(kernel_id, None)
        cg = k.cgroup if k is not None and k.cgroup is not None else (
            self.cgroups.open(kernel_id) if self.cgroups is not None else None)

        def remove() -> None:  # one thread hop for the lot
            if k is not None:
                self._kill(k)
            if cg is not None:
                cg.remove()
            shutil.rmtree(self.root / kernel_id, True)

        await asyncio.to_thread(remove)

    # --- reading state ---------------------------------------------------------------------

    def _load(self, kernel_id: str) -> _Kernel | None:
        """Adopt a kernel from its labels (after an agent restart), or None."""
        kdir = self.root / kernel_id
        try:
            labels = json.loads((kdir / "labels.json").read_text())
        except (OSError, ValueError):
            return None
        k = _Kernel(kernel_id, kdir, {str(a): str(b) for a, b in labels.items()})
        if labels.get("bai.cgroup") and self.cgroups is not None:
            k.cgroup = self.cgroups.open(kernel_id)
        self._kernels[kernel_id] = k
        return k

    def _instance(self, k: _Kernel) -> Instance:
        alive = k.alive()
        if not alive:
            self._settle_exit(k)
        code, reason = k.exit if (k.exit and not alive) else (None, "")
        return Instance(
            kernel_id=k.kernel_id,
            session_id=k.labels.get("bai.session_id", ""),
            state=InstanceState.RUNNING if alive else InstanceState.EXITED,
            workdir=k.workdir,
            runner_socket=k.workdir / bai.kernel.STATE_DIR / bai.kernel.SOCKET_NAME,
            container_id=f"pid:{k.pid}" if k.pid else "",
            exit_code=code,
            exit_reason=reason,
            labels=dict(k.labels),
        )

    async def inspect(self, kernel_id: str) -> Instance:
        k = self._kernels.get(kernel_id) or self._load(kernel_id)
        if k is None:
            raise KernelNotFound(f"no kernel {kernel_id} on this node")
        return self._instance(k)

    async def list(self) -> list[Instance]:
        await self._probe()
        out = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not (entry / "labels.json").is_file():
                continue
            k = self._kernels.get(entry.name) or self._load(entry.name)
            if k is not None:
                out.append(self._instance(k))
        return out

    async def stats(self, kernel_id: str) -> dict[str, Any]:
        k = self._kernels.get(kernel_id) or self._load(kernel_id)
        if k is None:
            raise KernelNotFound(f"no kernel {kernel_id} on this node")
        out: dict[str, Any] = {}
        if k.cgroup is not None:
            out = await asyncio.to_thread(k.cgroup.stats)
            limit = k.cgroup.memory_limit()
            if limit is not None and limit < 2**60:
                out["mem_limit_bytes"] = limit
        if "cpu_used" not in out and k.alive():
            out.update(await asyncio.to_thread(self._tree_stats, k.pid))
        return out

    @staticmethod
    def _tree_stats(pid: int) -> dict[str, int]:
        cpu = 0.0
        rss = 0
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
        except psutil.Error:
            pass
        return {"cpu_used": int(cpu * 1000), "mem_cur_bytes": rss, "mem_max_bytes": rss}

    @staticmethod
    def _tail(path: Path, limit: int = LOG_TAIL) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @classmethod
    def _with_output(cls, msg: str, folder: Path) -> str:
        """``msg``, then what the runner in ``folder`` last printed (why it failed, mostly)."""
        tail = cls._tail(folder / "runner.out", 2000).strip()
        return f"{msg}: {tail}" if tail else msg

    async def logs(self, kernel_id: str) -> str:
        k = self._kernels.get(kernel_id) or self._load(kernel_id)
        if k is None:
            raise KernelNotFound(f"no kernel {kernel_id} on this node")
        # kernel.log is in the session's tree: never read through a link planted there
        runner_log = statefiles.read_tail(k.workdir / bai.kernel.STATE_DIR, "kernel.log", LOG_TAIL)
        return self._tail(k.kdir / "runner.out") + runner_log.decode("utf-8", "replace")
