"""The ``process`` runtime backend: kernels as sandboxed local process trees.

Layout per kernel (``<scratch_root>/<kernel_id>/``, root-only ``0700`` when sandboxed)::

    labels.json     what list() rebuilds from: ids, spec, pid and its start time, uid, isolation
    runner.out      the runner's own stdout/stderr (start-up failures)
    runner.sock     the runner's listening socket: bound by the agent, handed to the runner as an
                    inherited fd; only the agent can reach this path
    work/           the work dir (owned by the kernel's uid): HOME and cwd of the kernel
      .bai/         the runner's config, log and exit status (the kernel can write them: the agent
                    reads them without following links, see ``statefiles``)

Isolation, as far as the host allows (``isolation()`` says what was applied, ``gaps`` what not):

* its own session and process group (``start_new_session``), so an agent restart or a signal to
  the agent never takes kernels down;
* the bubblewrap sandbox of ``sandbox.py`` (own uid from ``sandbox_uids``, no capabilities,
  ``no_new_privs``, PID/IPC/UTS/network namespaces, a read-only system, the work dir at
  ``/home/work`` the only writable place); without bwrap, own PID and mount namespaces
  (``unshare --pid --fork --kill-child --mount-proc``) when ``unshare`` works;
* a cgroup (v1 or v2, see ``cgroup.py``) with the memory limit from the ``mem`` slot, a CPU quota
  from ``cpu`` and a pids limit; exceeding memory gets the kernel killed and reported as
  ``oom-killed``. Without cgroups, ``RLIMIT_AS`` (``ulimit -v``) bounds memory instead.

The interpreter is the image label ``bai.process.interpreter`` (default: the agent setting
``process_interpreter``, ``/usr/bin/python3``); it runs ``-m bai.kernel`` from this source tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
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
from bai.agent.backends import outbound
from bai.agent.backends import sandbox as sandboxing
from bai.agent.quota import SPARES, TEMPLATES, QuotaError, WorkdirQuota, remove_folder
from bai.agent.backends.cgroup import CgroupDriver, CgroupError, KernelCgroup, host_pids_cap
from bai.agent.mounts import HostMount, MountRefused, make_shared
from bai.agent.mounts import attach as attach_folder
from bai.agent.mounts import resolve as resolve_mounts
from bai.agent.backends.process_pool import (
    PooledRunner,
    kill_tree,
    RunnerPool,
    proc_start_time,
    startup_fixed,
)
from bai.agent.runner_channel import (
    RunnerUnavailable,
    claim_runner,
    wait_runner_ready,
)
from bai.agent.sandbox_uids import SandboxUids, UidsExhausted
from bai.agent.settings import AgentSettings
from bai.common.errors import KernelNotFound

log = logging.getLogger(__name__)

INTERPRETER_LABEL = "bai.process.interpreter"
#: the folder that holds the ``bai`` package, put on the runner's PYTHONPATH
KERNEL_PYTHONPATH = str(Path(bai.kernel.__file__).resolve().parent.parent.parent)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNSHARE = ["--pid", "--fork", "--kill-child", "--mount-proc"]  # (``unshare``'s options)
#: joins the cgroups named before "--" and applies an optional ulimit, then execs the rest
LAUNCHER = (
    'ulim="$1"; shift; while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; '
    'shift; if [ "$ulim" != "-" ]; then ulimit -v "$ulim" || exit 125; fi; exec "$@"'
)
#: a command run without the runner (``direct_command``) where the sandbox cannot start bare
#: (``_launch``: an rlimit, no sandbox): the launcher waits for the sandbox and writes the
#: command's exit status into the kernel's root-only folder (``EXIT_FILE``, as a bare sandbox's
#: bwrap does), where an agent restarted meanwhile finds it; the exit code is its own
LAUNCHER_DIRECT = (
    'ulim="$1"; st="$2"; shift 2; while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; '
    'shift; done; shift; if [ "$ulim" != "-" ]; then ulimit -v "$ulim" || exit 125; fi; '
    '"$@"; rc=$?; echo "{\\"exit_code\\": $rc}" > "$st"; exit $rc'
)
EXIT_FILE = "exit.json"
#: how long a bare sandbox may take to say its child's pid (``_join``)
JOIN_TIMEOUT = 30.0
LOG_TAIL = 1024 * 1024
OOM_GRACE_SECONDS = 1.0
#: a claimed runner's replacement starts this long after the claim (see RunnerPool.refill)
POOL_REFILL_DELAY = 0.05
#: destroyed kernels' folders until they are removed, beside theirs (``_remove``)
TRASH_DIR = ".removing"


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def gpu_binds(spec: KernelSpec) -> list[str]:
    """What a kernel's sandbox binds for its GPUs: its device nodes and, for a share, the MPS
    control daemon's pipe folder and /dev/shm, through which MPS clients reach their server
    (NVIDIA's MPS needs the host's IPC; the MPS server then holds the kernel to its share)."""
    binds = list(spec.device_nodes)
    mps = spec.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
    if binds and mps:
        binds.append(spec.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")
        binds.append("/dev/shm")
    return [b for b in binds if os.path.exists(b)]


def block_pipe() -> tuple[int, int]:
    """(``bwrap --block-fd``, the agent's end to unblock it): a pipe whose first fd is opened
    again read-write (through ``/proc``), so that its holder is a writer too and never reads
    an end of file: only a byte written to the second fd lets it go on."""
    r, w = os.pipe()
    try:
        rw = os.open(f"/proc/self/fd/{r}", os.O_RDWR | os.O_CLOEXEC)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return rw, w


class PoolMiss(Exception):
    """A pooled runner could not be made the kernel's: the kernel starts cold instead."""


def base_environ(workdir: Path, user: str, sandboxed: bool = False) -> dict[str, str]:
    """What every kernel's environment starts from (a pooled runner starts with just this).
    ``workdir`` is where the kernel sees it (``/home/work`` in the sandbox)."""
    bin_dir = sandboxing.BIN if sandboxed else str(workdir / bai.kernel.STATE_DIR / "bin")
    return {
        "PATH": f"{bin_dir}:{DEFAULT_PATH}",
        "HOME": str(workdir),
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": sandboxing.LIB if sandboxed else KERNEL_PYTHONPATH,
    }


def build_environ(spec: KernelSpec, workdir: Path, user: str,
                  sandboxed: bool = False) -> dict[str, str]:
    """The kernel's environment: a clean base, the session's environ, and the runner's plumbing."""
    env = base_environ(workdir, user, sandboxed)
    runner_path = env["PYTHONPATH"]
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
    env["PYTHONPATH"] = runner_path
    return env


def command_environ(env: dict[str, str]) -> dict[str, str]:
    """What the runner gives the commands it starts (``Runner._child_env``): the kernel's
    environment without the runner's own ``PYTHONPATH``, the session's one restored."""
    env = dict(env)
    user_pythonpath = env.pop("BAI_KERNEL_PYTHONPATH", None)
    env.pop("PYTHONPATH", None)
    if user_pythonpath:
        env["PYTHONPATH"] = user_pythonpath
    return env


def given(command: str | None) -> bool:
    """A bootstrap script or startup command to run (``*`` and blanks are none)."""
    return (command or "").strip() not in ("", "*")


def direct_command(spec: KernelSpec) -> list[str]:
    """The startup command of a command-only job, as the runner would start it."""
    return ["/bin/sh", "-c", str(spec.startup_command)]


def runner_config(spec: KernelSpec) -> dict[str, Any]:
    """``runner.json``: what the runner does once started (a pooled one gets it in the claim)."""
    return {"bootstrap_script": spec.bootstrap_script, "startup_command": spec.startup_command}


@functools.cache
def host_program(name: str) -> str:
    """``name``'s absolute path on this host (the agent's ``PATH``, then the system folders),
    or ``name`` where none is found. The launcher runs as root with the kernel's environment:
    what it starts must never be looked up in the ``PATH`` the session sets."""
    found = shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]))
    return os.path.abspath(found) if found else name


def build_command(
    interpreter: str,
    workdir: Path,
    procs_files: list[str],
    *,
    namespaces: bool,
    as_user: tuple[int, int] | None = None,
    mem_rlimit_kib: int | None = None,
    sandbox: list[str] | None = None,
    listen_fd: int | None = None,
    command: list[str] | None = None,
    status_file: Path | None = None,
) -> list[str]:
    """The command line that starts a kernel: launcher (cgroups, rlimit) -> the ``sandbox``
    prefix (bwrap + setpriv, see sandbox.py) or unshare [+ setpriv] -> runner. With
    ``listen_fd`` the runner serves the socket the agent bound and hands it (an inherited fd),
    and accepts only connections of the agent's uid. With ``command`` (a command-only batch
    job) that command runs in the runner's place, in the same sandbox, and the launcher writes
    its exit status to ``status_file``."""
    ulim = str(mem_rlimit_kib) if mem_rlimit_kib else "-"
    if command is not None:
        argv = ["/bin/sh", "-c", LAUNCHER_DIRECT, "bai-launch", ulim, str(status_file),
                *procs_files, "--"]
    else:
        argv = ["/bin/sh", "-c", LAUNCHER, "bai-launch", ulim, *procs_files, "--"]
    if sandbox is not None:
        argv += sandbox
    else:
        if namespaces:
            argv += [host_program("unshare"), *UNSHARE]
        if as_user is not None:
            argv += [host_program("setpriv"), f"--reuid={as_user[0]}",
                     f"--regid={as_user[1]}", "--clear-groups"]
    if command is not None:
        return argv + command
    argv += [interpreter, "-m", "bai.kernel", "--workdir", str(workdir)]
    if listen_fd is not None:
        argv += ["--listen-fd", str(listen_fd), "--agent-uid", str(os.geteuid())]
    return argv


def bind_listener(folder: Path) -> socket.socket:
    """The runner's listening socket at ``folder/runner.sock``, bound by the agent (through
    ``/proc/self/fd`` of the folder: long paths bind, and no chdir in a threaded process)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{bai.kernel.SOCKET_NAME}")
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


class _Watched(dict):
    """The kernels the monitor watches, with an event set whenever one is added: with none,
    the monitor waits for it instead of ticking every ``monitor_interval`` (120 wake-ups a
    minute of an idle agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.added = asyncio.Event()

    def __setitem__(self, key: str, value: _Kernel) -> None:
        super().__setitem__(key, value)
        self.added.set()


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
        #: what the host provides (set by _probe); inactive: today's unsandboxed processes
        self.sandbox = sandboxing.Sandbox()
        #: work dirs of their own size (root with loop devices only)
        self.quota: WorkdirQuota | None = None
        #: slirp4netns & co. for kernels whose policy allows outbound network (root + sandbox)
        self.outbound: dict[str, str] | None = None
        #: kernel uids (root with the sandbox only)
        self.uids: SandboxUids | None = None
        self._kernels = _Watched()
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_exit: ExitCallback | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._probed = False
        #: folders of destroyed kernels still being removed (``_remove(later=True)``)
        self._removals: set[asyncio.Task[None]] = set()
        #: pidfds of the launchers this agent started, by kernel (``_watch_exit``)
        self._pidfds: dict[str, int] = {}
        self._checks: set[asyncio.Task[None]] = set()
        self.pool = RunnerPool(self.root, settings.process_pool_size, self._spawn_pooled,
                               self._forget_pooled, self._pooled_answers)
        #: the agent's free whole CPU slots (``slots_free``; until told: the host's cores, an
        #: agent's CPU slots by default)
        self._free_cpu: int | None = os.cpu_count()
        self.pool.room = lambda: self._free_cpu

    # --- lifecycle -------------------------------------------------------------------------

    async def _probe(self) -> None:
        if self._probed:
            return
        self._probed = True
        self.root.mkdir(parents=True, exist_ok=True)
        if self.settings.disk_quota > 0:
            self.quota = await asyncio.to_thread(WorkdirQuota.detect)
            if self.quota is not None:  # (one place for kernels' and pooled runners' folders)
                self.quota.template_dir = self.root / TEMPLATES
        if self.settings.process_cgroups:
            self.cgroups = await asyncio.to_thread(
                CgroupDriver.detect, "/sys/fs/cgroup", self.settings.cgroup_parent)
            cap = host_pids_cap(self.settings.pids_total)
            if self.cgroups is not None and cap is not None:
                await asyncio.to_thread(self.cgroups.cap_pids, cap)
        self.sandbox = await asyncio.to_thread(
            sandboxing.probe, self.settings.bwrap_path, self.settings.process_sandbox,
            self.cgroups is not None, self.settings.process_interpreter)
        if self.quota is not None and self.cgroups is not None and self.sandbox.active:
            # work dir filesystems are kept for the next kernels only where a kernel's end is
            # known complete (its cgroup removed) and kernels see nothing but their own
            self.quota.spare_dir = self.root / SPARES
        if self.sandbox.active:
            os.chmod(self.root, 0o700)  # kernels never walk the host's paths: only the agent
            self.user_name = "work"
            if self.sandbox.privileged:
                self.outbound = await asyncio.to_thread(outbound.tools)
                self.uids = SandboxUids(self.settings.sandbox_uid_first,
                                        self.settings.sandbox_uid_count,
                                        Path(self.settings.sandbox_uid_lock_dir))
            return
        log.warning("process runtime without its sandbox: %s", "; ".join(self.sandbox.gaps()))
        if self.settings.process_namespaces and shutil.which("unshare"):
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    host_program("unshare"), *UNSHARE, "true", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    @property
    def _trash(self) -> Path:
        """Where a destroyed kernel's folder waits for its removal (never listed: no labels)."""
        return self.root / TRASH_DIR

    def _sweep_trash(self) -> None:
        """Remove what a previous agent left half removed (before any uid is handed out), and
        the work dir filesystems it kept."""
        if self._trash.is_dir():
            for folder in self._trash.iterdir():
                remove_folder(folder)
        if self.quota is not None:
            self.quota.drop_spares()

    async def start(self, on_exit: ExitCallback) -> None:
        await self._probe()
        await asyncio.to_thread(self._sweep_pool)
        await asyncio.to_thread(self._sweep_trash)
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
        for kernel_id in list(self._pidfds):
            self._unwatch_exit(kernel_id)
        # pooled runners are no kernels: they end with the agent
        await self.pool.close()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        if self.quota is not None:
            await asyncio.to_thread(self.quota.drop_spares)
        if self.uids is not None:
            self.uids.close()  # the kernels keep running; the next agent adopts their uids

    # --- pooled runners (see process_pool.py) ----------------------------------------------

    def slots_free(self, free: Mapping[str, Decimal]) -> None:
        """Pre-started runners: at most one per free whole CPU slot (``process_pool_size`` at
        most); more are started when slots come free again."""
        cpu = free.get("cpu")
        before = self.pool.target()
        self._free_cpu = max(0, int(cpu)) if cpu is not None else None
        if self._monitor is not None and self.pool.target() > before:
            for interp in {self.settings.process_interpreter, *self.pool.idle}:
                self.pool.refill(interp, self.cgroups is not None, POOL_REFILL_DELAY)

    def _make_folder(self, kdir: Path, interp: str, uid: int | None, quota: int = 0) -> None:
        """A kernel's (or pooled runner's) folder: root-only when sandboxed, its work dir owned
        by the kernel's uid (a filesystem of ``quota`` bytes where the host allows, see
        ``agent/quota.py``); the ``.bai/bin`` interpreter links outside the sandbox only."""
        work = kdir / "work"
        if self.quota is not None and quota > 0 and self.quota.reuse(kdir, quota):
            pass  # an emptied filesystem a kernel left (``WorkdirQuota.recycle``)
        else:
            kdir.mkdir(parents=True)
            work.mkdir()
            if self.quota is not None and quota > 0:
                try:
                    self.quota.attach(work, quota)
                except QuotaError as e:  # a host that can make quotas never runs a kernel
                    raise KernelCreationFailed(str(e)) from None   # without one
        if self.sandbox.active:
            os.chmod(kdir, 0o700)
            os.chmod(work, 0o700)
            (work / bai.kernel.STATE_DIR).mkdir()
            owner = (uid, uid) if uid is not None else None
        else:
            os.chmod(kdir, 0o755)
            os.chmod(work, 0o755)
            (work / bai.kernel.STATE_DIR / "bin").mkdir(parents=True)
            for name in ("python", "python3"):
                (work / bai.kernel.STATE_DIR / "bin" / name).symlink_to(interp)
            owner = self.as_user
        if owner is not None:
            for p in [work, *work.rglob("*")]:
                os.lchown(p, *owner)

    def _launch(self, kdir: Path, interp: str, procs: list[str], uid: int | None,
                env: dict[str, str], mem_rlimit_kib: int | None = None,
                pooled: bool = False, mounts: Sequence[HostMount] = (),
                info_fd: int | None = None, devices: Sequence[str] = (),
                command: list[str] | None = None, output_fd: int | None = None
                ) -> subprocess.Popen[bytes]:
        """Start the runner of ``kdir``: the agent binds its socket and hands it over
        (``info_fd``: bwrap writes its child's pid there, see ``outbound.py``); or, with
        ``command``, that command in the runner's place, its output to ``output_fd``.

        A command in the sandbox (no rlimit, no outbound network) starts without the launcher:
        bwrap itself writes the exit status (``--json-status-fd``) and waits, set up, until the
        agent has moved it into the kernel's cgroups (``_join``): one program fewer a job."""
        work = kdir / "work"
        listener = bind_listener(kdir) if command is None else None
        filt = self.sandbox.seccomp_memfd() if self.sandbox.active else None
        bare = (command is not None and self.sandbox.active and info_fd is None
                and not mem_rlimit_kib)
        #: fds the child inherits (closed here once it holds them)
        inherited: list[int] = []
        status_fd = block_r = block_w = info_r = info_w = None
        account_fds: tuple[int, int] | None = None
        nss_fd: int | None = None
        try:
            if self.sandbox.active and uid is not None:
                # the kernel's account (whoami): in memory, no file on the host's disk
                passwd, group = sandboxing.accounts(uid, self.user_name)
                inherited.append(sandboxing.data_memfd(passwd.encode()))
                inherited.append(sandboxing.data_memfd(group.encode()))
                account_fds = (inherited[-2], inherited[-1])
                nss = sandboxing.nsswitch()
                if nss:
                    inherited.append(sandboxing.data_memfd(nss.encode()))
                    nss_fd = inherited[-1]
            if bare:
                status_fd = os.open(kdir / EXIT_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                    | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                inherited.append(status_fd)
                if procs:
                    block_r, block_w = block_pipe()
                    info_r, info_w = os.pipe()
                    inherited += [block_r, info_w]
            if self.sandbox.active:
                prefix: list[str] | None = self.sandbox.argv(
                    interp, work, uid, seccomp_fd=filt, mounts=mounts,
                    info_fd=info_w if bare else info_fd,
                    accounts=account_fds, devices=devices,
                    block_fd=block_r, status_fd=status_fd, runner=command is None,
                    nsswitch_fd=nss_fd)
                inside = Path(sandboxing.WORKDIR)
            else:
                prefix, inside = None, work
            listen_fd = listener.fileno() if listener is not None else None
            if bare:
                assert prefix is not None and command is not None
                argv = prefix + command
            else:
                argv = build_command(interp, inside, procs, namespaces=self.namespaces,
                                     as_user=self.as_user, mem_rlimit_kib=mem_rlimit_kib,
                                     sandbox=prefix, listen_fd=listen_fd, command=command,
                                     status_file=kdir / EXIT_FILE)
            if pooled:
                argv.append("--pooled")
            with (open(kdir / "runner.out", "ab") if output_fd is None
                  else contextlib.nullcontext(output_fd)) as out:
                popen = subprocess.Popen(
                    argv, env=env, cwd=kdir if self.sandbox.active else work,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=tuple(
                        fd for fd in (listen_fd, filt, info_fd, *inherited) if fd is not None))
        except BaseException:
            for fd in (block_w, info_r):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            if listener is not None:
                listener.close()  # the runner holds it now: when it ends, connecting fails
            if filt is not None:
                os.close(filt)  # the launcher has its own copy for bwrap
            for fd in inherited:
                os.close(fd)
        if block_w is not None and info_r is not None:
            self._join(popen, info_r, block_w, procs)
        return popen

    @staticmethod
    def _join(popen: subprocess.Popen[bytes], info_r: int, block_w: int,
              procs: list[str]) -> None:
        """Move a bare sandbox (``_launch``), waiting on its block fd, into the kernel's cgroups
        and let it go on: its child (bwrap's, the kernel's PID namespace init; everything of the
        kernel descends from it) joins every ``procs`` file before it runs anything of the
        kernel's. Where that fails the sandbox is killed (OSError). Where the agent dies first
        the sandbox waits for good: its block fd is a reader and writer of its pipe, so it never
        reads an end of file (and never runs outside the cgroups); destroy kills it."""
        try:
            pid = outbound.child_pid(info_r, JOIN_TIMEOUT)
            for path in procs:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, str(pid).encode())
                finally:
                    os.close(fd)
            os.write(block_w, b"\0")
        except (OSError, ValueError, TimeoutError) as e:
            kill_tree(popen.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
            raise OSError(f"the sandbox could not join the kernel's cgroups: {e}") from None
        finally:
            os.close(info_r)
            os.close(block_w)

    def _folders(self, spec: KernelSpec) -> list[HostMount]:
        """The kernel's storage folders on this host (``agent/mounts.py``); refused ones, and
        read-only ones where no sandbox can bind them read-only, fail the create."""
        if not spec.mounts:
            return []
        try:
            folders = resolve_mounts(self.settings.storage_roots, spec.mounts)
        except MountRefused as e:
            raise KernelCreationFailed(str(e)) from None
        if not self.sandbox.active:
            for m in folders:
                if m.read_only:
                    raise KernelCreationFailed(
                        f"folder {m.name!r}: a read-only mount needs the process sandbox "
                        f"(bubblewrap), which this agent runs without ({self.sandbox.reason})")
                if not m.target.startswith(sandboxing.WORKDIR + "/"):
                    raise KernelCreationFailed(
                        f"folder {m.name!r}: without the process sandbox a folder can only "
                        f"appear under {sandboxing.WORKDIR} (asked: {m.target})")
        return folders

    @staticmethod
    def _attach_folders(workdir: Path, folders: list[HostMount]) -> None:
        for m in folders:
            attach_folder(m, workdir, sandboxing.WORKDIR)

    @staticmethod
    def _link_folders(workdir: Path, folders: list[HostMount]) -> None:
        """Without a sandbox the kernel sees the host: its folders are links in its work dir."""
        for m in folders:
            link = workdir / m.target[len(sandboxing.WORKDIR) + 1:]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(m.source, target_is_directory=True)

    def _inside(self, k_workdir: Path) -> Path:
        """Where the kernel sees its work dir."""
        return Path(sandboxing.WORKDIR) if self.sandbox.active else k_workdir

    def _spawn_pooled(self, interp: str, folder: Path, cgroup_name: str | None) -> PooledRunner:
        """Start a runner that waits for a claim, in its own folder, cgroup and uid."""
        uid = self.uids.take(f"pool {folder.name}") if self.uids is not None else None
        try:
            self._make_folder(folder, interp, uid, self.settings.disk_quota)
            if self.sandbox.active and self.sandbox.privileged:
                try:  # so that a session's folders can join its sandbox later
                    make_shared(folder / "work")
                except OSError as e:
                    log.warning("pooled runner %s: its work dir cannot take folders later "
                                "(sessions with folders start cold): %s", folder.name, e)
            procs: list[str] = []
            if cgroup_name is not None and self.cgroups is not None:
                procs = self.cgroups.create(cgroup_name, None, None,
                                            self.settings.pids_limit).procs_files()
            try:
                popen = self._launch(folder, interp, procs, uid, base_environ(
                    self._inside(folder / "work"), self.user_name, self.sandbox.active),
                    pooled=True)
            except OSError:
                self._remove_pool_cgroup(cgroup_name)
                raise
        except BaseException:
            if uid is not None and self.uids is not None:
                self.uids.release(uid)
            raise
        runner = PooledRunner(folder, interp, popen, cgroup_name if procs else None, uid)
        (folder / "pool.json").write_text(json.dumps({
            "pid": popen.pid, "pid_start": runner.pid_start, "interpreter": interp,
            "cgroup": runner.cgroup_name, "uid": uid}))
        return runner

    def _forget_pooled(self, runner: PooledRunner) -> None:
        """What a discarded pooled runner held besides its folder: its cgroup and uid."""
        self._remove_pool_cgroup(runner.cgroup_name)
        if runner.uid is not None and self.uids is not None:
            self.uids.release(runner.uid)

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

    async def _pooled_answers(self, runner: PooledRunner) -> None:
        """Until the pooled runner answers on its socket (``RunnerPool.probe``)."""
        await wait_runner_ready(runner.folder / bai.kernel.SOCKET_NAME,
                                self.settings.kernel_ready_timeout, runner.alive, "status")

    async def _start_pooled(self, spec: KernelSpec, k: _Kernel, runner: PooledRunner,
                            folders: list[HostMount]) -> Instance:
        """Make a pooled runner this kernel's (see process_pool.py); PoolMiss if it cannot be."""
        # Its launcher joins the pool cgroup by that cgroup's path, so the cgroup (and folder)
        # are renamed only once the runner answers, which it does after (the socket, bound by
        # the agent, exists from the start). The pool asks each new runner while it waits
        # there: only one that has not answered yet is asked now.
        try:
            if not runner.answered:
                await self._pooled_answers(runner)
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
        k.labels["bai.namespaces"] = self._namespaces_label()
        k.labels["bai.pooled"] = "1"
        if runner.uid is not None:
            k.labels["bai.uid"] = str(runner.uid)
        config = runner_config(spec)
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
                await asyncio.to_thread(self._limit_address_space, runner.popen.pid, int(mem),
                                        runner.uid)
            except (OSError, psutil.Error, subprocess.CalledProcessError) as e:
                raise PoolMiss(f"cannot set the memory rlimit: {e}") from None
        self._write_labels(k)
        if folders:  # before the claim: the session's code finds them in place
            try:
                await asyncio.to_thread(self._attach_folders, k.workdir, folders)
            except (OSError, MountRefused) as e:
                raise PoolMiss(f"cannot add the storage folders: {e}") from None
        inside = self._inside(k.workdir)
        try:
            answer = await claim_runner(self._socket(k), str(inside),
                                        build_environ(spec, inside, self.user_name,
                                                      self.sandbox.active),
                                        config, self.settings.kernel_ready_timeout)
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
    def _limit_address_space(pid: int, mem: int, uid: int | None = None) -> None:
        """Without cgroups: the launcher's ``ulimit -v``, set on a running tree instead. The
        processes of a kernel ``uid`` are limited by that uid (``prlimit`` of another uid needs
        CAP_SYS_RESOURCE, which a root agent may lack); the sandbox's own (root) ones are not
        the kernel's code and are left."""
        import resource

        limit = (mem // 1024) * 1024
        root = psutil.Process(pid)
        done: set[int] = set()
        while True:  # until a pass finds no process it has not limited: later forks inherit
            new = [p for p in [root, *root.children(recursive=True)] if p.pid not in done]
            if not new:
                return
            for p in new:
                done.add(p.pid)
                owner = p.uids().real
                if uid is None:
                    resource.prlimit(p.pid, resource.RLIMIT_AS, (limit, limit))
                elif owner == uid:
                    subprocess.run(
                        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                         "prlimit", f"--pid={p.pid}", f"--as={limit}:{limit}"],
                        check=True, capture_output=True, timeout=30)

    def _namespaces_label(self) -> str:
        if self.sandbox.active:
            return "pid,mount,ipc,uts,net" + ("" if self.sandbox.privileged else ",user")
        return "pid,mount" if self.namespaces else ""

    @staticmethod
    def _socket(k: _Kernel) -> Path:
        return k.kdir / bai.kernel.SOCKET_NAME

    def _release_uid(self, k: _Kernel) -> None:
        uid = k.labels.get("bai.uid")
        if uid and self.uids is not None:
            self.uids.release(int(uid))

    async def _undo_pooled(self, k: _Kernel) -> None:
        """After a PoolMiss: the claimed runner and whatever was made of it go."""
        await asyncio.to_thread(self._kill, k)
        self._release_uid(k)
        cg = k.cgroup or (self.cgroups.open(k.kernel_id) if self.cgroups is not None else None)
        if cg is not None:  # renamed to the kernel's even when its limits then failed
            await asyncio.to_thread(cg.kill_all)
            await asyncio.to_thread(cg.remove)
        await asyncio.to_thread(remove_folder, k.kdir)
        k.popen, k.cgroup = None, None
        for key in ("bai.pid", "bai.pid_start", "bai.namespaces", "bai.pooled", "bai.cgroup",
                    "bai.uid"):
            k.labels.pop(key, None)

    def isolation(self) -> dict[str, Any]:
        cg = self.cgroups
        controllers = cg.controllers if cg else set()
        sb = self.sandbox
        return {
            "runtime": "process",
            "cgroup": cg.version if cg else None,
            "memory": "cgroup" if cg else "rlimit-as",
            "cpu": "cgroup-quota" if "cpu" in controllers else None,
            "pids": "cgroup" if "pids" in controllers else None,
            "disk_quota": "loop-ext4" if self.quota is not None else False,
            "oom_kill_detection": bool(cg),
            "sandbox": "bubblewrap" if sb.active else None,
            "uid_per_kernel": sb.active and sb.privileged,
            "pid_namespace": sb.active or self.namespaces,
            "mount_namespace": sb.active or self.namespaces,
            "network_namespace": sb.active,
            "seccomp": "bai" if sb.active and sb.seccomp is not None else None,
            "process_group": True,
            "user": "per-kernel uid" if self.uids is not None else self.user_name,
            "outbound": "slirp4netns" if self.outbound is not None else None,
            "gaps": sb.gaps() + ([] if self.outbound is not None or not sb.active else [
                "outbound: sessions whose policy allows outbound network get none ("
                + ("slirp4netns, nsenter or ip not found: install Debian's slirp4netns"
                   if sb.privileged else "not root") + ")"]),
        }

    # --- watching --------------------------------------------------------------------------

    def _watch_exit(self, k: _Kernel) -> None:
        """Report ``k``'s end as soon as its launcher ends (a pidfd the event loop watches), not
        at the monitor's next tick: a batch job's slots are free again at once. Where pidfds are
        missing (Linux < 5.3) the monitor alone notices."""
        if k.popen is None or k.kernel_id in self._pidfds:
            return
        try:
            fd = os.pidfd_open(k.popen.pid)
        except (AttributeError, OSError):
            return
        self._pidfds[k.kernel_id] = fd
        asyncio.get_running_loop().add_reader(fd, self._launcher_ended, k)

    def _unwatch_exit(self, kernel_id: str) -> None:
        fd = self._pidfds.pop(kernel_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _launcher_ended(self, k: _Kernel) -> None:
        self._unwatch_exit(k.kernel_id)
        if k.reported or k.destroying or k.starting:
            return
        task = asyncio.create_task(self._check_one(k))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_one(self, k: _Kernel) -> None:
        if k.reported or k.destroying or k.starting:
            return
        try:
            await self._check(k)
        except Exception:  # one broken kernel must not stop watching the others
            log.exception("checking kernel %s failed", k.kernel_id)

    async def _watch(self) -> None:
        while True:
            if not self._kernels:  # nothing to watch: no tick till a kernel is added
                self._kernels.added.clear()
                await self._kernels.added.wait()
            await asyncio.sleep(self.settings.monitor_interval)
            for k in list(self._kernels.values()):
                await self._check_one(k)

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
        if k.labels.get("bai.direct"):
            # no runner: the launcher or bare sandbox (the agent's child) ended with the
            # command's status, or wrote it to the kernel's root-only folder (an agent
            # restarted meanwhile reads it)
            if returncode is None:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    returncode = sandboxing.json_exit_code((k.kdir / EXIT_FILE).read_text())
                    code = returncode
            if returncode is not None and returncode >= 0:
                reason = "self-terminated"
        else:
            code, reason = self._runner_exit(k, code, reason)
        if k.cgroup is not None and k.cgroup.oom_kills() > 0:
            code, reason = 137, "oom-killed"
        elif reason == "killed" and code is not None and code < 128:
            reason = "self-terminated"
        k.exit = (code, reason)

    @staticmethod
    def _runner_exit(k: _Kernel, code: int | None, reason: str) -> tuple[int | None, str]:
        """The exit status the runner wrote (``exit.json`` in the work dir), if any."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            # the kernel can write this file: read without following links, and bounded
            raw = statefiles.read_tail(k.workdir / bai.kernel.STATE_DIR, "exit.json", 4096)
            data = json.loads(raw)
            code, reason = int(data["exit_code"]), str(data.get("reason") or "self-terminated")
        return code, reason

    def _kill(self, k: _Kernel) -> None:
        """Blocking: SIGKILL the whole kernel and wait until it is gone."""
        pid = k.pid
        if pid and (k.popen is not None or proc_start_time(pid) == k.labels.get("bai.pid_start")):
            kill_tree(pid)
        if k.cgroup is not None:
            k.cgroup.kill_all()
        slirp = int(k.labels.get("bai.slirp_pid") or 0)
        if slirp and proc_start_time(slirp) == k.labels.get("bai.slirp_start"):
            outbound.stop(slirp)
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
        # a pooled runner's work dir was made with the agent's disk_quota: another starts cold
        other_quota = self.quota is not None and spec.disk_quota not in (
            0, self.settings.disk_quota)
        # a batch job's work is its startup command: started cold, its runner runs no Python
        # worker (see bai.kernel.runner), while a pooled one has one and another is made in
        # its place: two interpreters a job instead of one
        command_only = spec.session_type.upper() == "BATCH" and given(spec.startup_command)
        # ... and with nothing else for a runner to do, no runner at all: the sandbox runs the
        # command itself (a bootstrap script, or outbound network, which is attached to a
        # sandbox that waits for it, keep the runner)
        direct = (command_only and self.settings.process_direct_command
                  and not given(spec.bootstrap_script) and not (spec.network and self.outbound))
        folders = await asyncio.to_thread(self._folders, spec) if spec.mounts else []
        # storage folders join a pooled runner's sandbox only under its work dir, as root
        attachable = not folders or (self.sandbox.privileged and self.sandbox.active and all(
            m.target.startswith(sandboxing.WORKDIR + "/") for m in folders))
        # outbound network: pooled runners have none (it is attached at start, outbound.py)
        runner = None if not attachable or startup_fixed(spec.environ) or other_quota \
            or command_only or (spec.network and self.outbound) or spec.device_nodes \
            else self.pool.take(interp)
        try:
            return await self._create_kernel(spec, interp, runner, folders, direct)
        finally:
            if not command_only:
                self.pool.refill(interp, self.cgroups is not None, POOL_REFILL_DELAY)

    async def _create_kernel(self, spec: KernelSpec, interp: str, runner: PooledRunner | None,
                             folders: list[HostMount], direct: bool = False) -> Instance:
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
                    inst = await self._start_pooled(spec, k, runner, folders)
                    self._watch_exit(k)
                    return inst
                except PoolMiss as e:
                    log.warning("kernel %s starts cold: %s", spec.kernel_id, e)
                    await self._undo_pooled(k)
                    if runner.cgroup_name is not None:
                        await asyncio.to_thread(self._remove_pool_cgroup, runner.cgroup_name)
            inst = await self._start(spec, k, interp, folders, direct)
            self._watch_exit(k)
            return inst
        finally:
            k.starting = False

    async def _start(self, spec: KernelSpec, k: _Kernel, interp: str,
                     folders: list[HostMount], direct: bool = False) -> Instance:
        kdir = k.kdir

        def prepare() -> int | None:  # one thread hop: the uid, then the folder
            uid = None
            if self.uids is not None:
                try:
                    uid = self.uids.take(f"kernel {spec.kernel_id}")
                except UidsExhausted as e:
                    raise KernelCreationFailed(str(e)) from None
                k.labels["bai.uid"] = str(uid)
            self._make_folder(kdir, interp, None, spec.disk_quota or self.settings.disk_quota)
            return uid

        uid = await asyncio.to_thread(prepare)
        if direct:
            k.labels["bai.direct"] = "1"
        self._write_labels(k)
        state = k.workdir / bai.kernel.STATE_DIR
        # a fresh work dir that no kernel code has seen yet: the agent writes, then hands it over
        if not direct:
            (state / "runner.json").write_text(json.dumps(runner_config(spec)))
            return await self._start_runner(spec, k, interp, folders, uid)
        # the command's output goes where the runner would have written it (logs() reads it)
        log_fd = os.open(state / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            return await self._start_runner(spec, k, interp, folders, uid, log_fd)
        finally:
            os.close(log_fd)

    async def _start_runner(self, spec: KernelSpec, k: _Kernel, interp: str,
                            folders: list[HostMount], uid: int | None,
                            log_fd: int | None = None) -> Instance:
        """Hand the work dir over and start the kernel: its runner, or with ``log_fd`` its
        command alone (output to that file)."""
        kdir = k.kdir
        direct = log_fd is not None
        owner = (uid, uid) if uid is not None else self.as_user
        if owner is not None:
            for p in [k.workdir, *k.workdir.rglob("*")]:
                os.lchown(p, *owner)
        if not self.sandbox.active:
            self._link_folders(k.workdir, folders)
        mem = spec.slots.get("mem") or None
        env = build_environ(spec, self._inside(k.workdir), self.user_name, self.sandbox.active)
        if direct:
            env = command_environ(env)
        # outbound network (the policy's allow_outbound): bwrap says its child's pid here
        info_r, info_w = os.pipe() if spec.network and self.outbound else (None, None)

        def spawn() -> subprocess.Popen[bytes]:  # one thread hop: the cgroup, then the start
            procs: list[str] = []
            if self.cgroups is not None:
                try:
                    k.cgroup = self.cgroups.create(
                        spec.kernel_id, mem, spec.slots.get("cpu") or None,
                        spec.pids_max(self.settings.pids_limit))
                except CgroupError as e:
                    raise KernelCreationFailed(str(e)) from None
                procs = k.cgroup.procs_files()
                k.labels["bai.cgroup"] = self.cgroups.version
            try:
                return self._launch(
                    kdir, interp, procs, uid, env,
                    mem_rlimit_kib=int(mem) // 1024 if (mem and k.cgroup is None) else None,
                    mounts=folders, info_fd=info_w, devices=gpu_binds(spec),
                    command=direct_command(spec) if direct else None, output_fd=log_fd)
            except OSError as e:
                raise KernelCreationFailed(f"cannot start the kernel: {e}") from None

        try:
            k.popen = await asyncio.to_thread(spawn)
        except BaseException:
            if info_r is not None:
                os.close(info_r)
            raise
        finally:
            if info_w is not None:
                os.close(info_w)
        k.labels["bai.pid"] = str(k.popen.pid)
        k.labels["bai.pid_start"] = proc_start_time(k.popen.pid) or ""
        k.labels["bai.namespaces"] = self._namespaces_label()
        if info_r is not None:
            try:
                await asyncio.to_thread(self._give_outbound, k, info_r)
            finally:
                os.close(info_r)
        self._write_labels(k)
        if direct:  # nothing to wait for: the command runs (or already ran)
            return self._instance(k)
        return await self._wait_ready(k)

    def _give_outbound(self, k: _Kernel, info_r: int) -> None:
        """Outbound network for kernel ``k`` (``outbound.py``); the kernel fails without it."""
        assert self.outbound is not None
        try:
            pid = outbound.child_pid(info_r)
            slirp = outbound.attach(self.outbound, pid, k.kdir / "slirp.out")
        except (OSError, ValueError, TimeoutError, subprocess.SubprocessError) as e:
            raise KernelCreationFailed(f"outbound network could not be set up: {e}") from None
        k.labels["bai.slirp_pid"] = str(slirp.pid)
        k.labels["bai.slirp_start"] = proc_start_time(slirp.pid) or ""

    async def _wait_ready(self, k: _Kernel) -> Instance:
        kdir = k.kdir
        state = k.workdir / bai.kernel.STATE_DIR
        try:
            await wait_runner_ready(self._socket(k), self.settings.kernel_ready_timeout, k.alive)
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
        tmp.write_text(json.dumps(k.labels))  # (indented, json takes its Python encoder)
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
            await self._remove(kernel_id, later=True, killed=True)
        self._locks.pop(kernel_id, None)
        return inst

    async def _remove(self, kernel_id: str, later: bool = False, killed: bool = False) -> None:
        """Kill what is left of the kernel, remove its cgroup and folder, release its uid.
        ``later``: the folder is moved out of the kernel's place at once and removed (and the
        uid released) after this returns: unmounting a work dir's filesystem takes 0.1-0.3 s,
        which a destroy (and a batch job's end: its slots) need not wait for. ``killed``: the
        caller has just killed the kernel (``_kill`` waited until it was gone)."""
        self._unwatch_exit(kernel_id)
        k = self._kernels.pop(kernel_id, None)
        cg = k.cgroup if k is not None and k.cgroup is not None else (
            self.cgroups.open(kernel_id) if self.cgroups is not None else None)
        folder = self.root / kernel_id

        ended = False  # every process of the kernel known gone (its cgroup removed)

        def release(folder: Path) -> None:
            # the work dir's filesystem, emptied, serves the next kernel where nothing of
            # this one can still hold a file of it
            if not (ended and self.quota is not None and self.quota.recycle(folder)):
                remove_folder(folder)
            if k is not None:
                self._release_uid(k)  # nothing of the kernel runs or stays any more

        def remove() -> Path | None:  # one thread hop for the lot
            nonlocal ended
            if k is not None and not killed:
                self._kill(k)
            if cg is not None:
                ended = cg.remove()
            if later:
                with contextlib.suppress(OSError):
                    self._trash.mkdir(mode=0o700, exist_ok=True)
                    gone = self._trash / kernel_id
                    folder.rename(gone)
                    return gone
            release(folder)
            return None

        gone = await asyncio.to_thread(remove)
        if gone is not None:
            task = asyncio.create_task(asyncio.to_thread(release, gone))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)

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
        if labels.get("bai.uid") and self.uids is not None and k.alive():
            try:
                self.uids.adopt(int(labels["bai.uid"]), f"kernel {kernel_id}")
            except (UidsExhausted, OSError, ValueError) as e:
                log.warning("kernel %s: cannot hold its uid again: %s", kernel_id, e)
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
            runner_socket=self._socket(k),
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
