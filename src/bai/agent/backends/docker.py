"""The ``docker`` runtime backend: one OCI container per kernel, through the Docker Engine API.

Works against Docker (``dockerd``) and Podman's Docker-compatible API socket; it only uses
endpoints both implement (containers create/start/kill/delete/inspect/list/logs/stats/update/
rename, images inspect/create, events, info, version).

What a kernel container looks like:

* name ``bai-kernel-<kernel_id>`` (the engine refuses a second one, which makes ``create``
  idempotent even when two requests race), labels ``ai.bai.*`` (kernel, session, agent, work dir,
  slots, ...) from which ``list()`` rebuilds everything after an agent restart;
* limits: ``cpu`` -> ``NanoCpus``, ``mem`` -> ``Memory`` = ``MemorySwap`` (no swap), ``PidsLimit``;
* network: ``NetworkMode=none``. A kernel whose policy allows outbound network (the spec's
  ``network``) gets user-mode networking, as in the process runtime (``outbound.py``): its
  runner starts gated (``--pooled``: nothing of the kernel runs), the agent puts ``unreachable``
  routes for this host's addresses into the container's network namespace and attaches
  ``slirp4netns --disable-host-loopback`` to it, then hands the runner its kernel (a ``claim``);
  slirp4netns is stopped when the kernel is destroyed. An operator's ``network_mode`` (never the
  host's or another container's) replaces this;
* a user of its own: the runner starts as the container's root with only CAP_SETUID and
  CAP_SETGID, binds its socket and opens its log, then becomes the kernel's uid for good (from
  ``sandbox_uids``: one per kernel, never shared) before anything of the kernel runs; every
  other capability dropped, ``no-new-privileges``;
* the kernel's folder ``<scratch_root>/<kernel_id>`` (``docker_folder``: root's, 0700): ``work/``
  owned by the kernel's uid, mounted ``nosuid,nodev``, bind-mounted at ``/home/work``; ``run/``
  (root's) at ``/run/bai`` with the runner's socket, config, log and exit status -- the agent
  connects to ``run/runner.sock`` and reads ``run/kernel.log``, which no session can replace;
  the runner (``bai/kernel``, stdlib only) bind-mounted read-only at ``/opt/bai/bai/kernel`` and
  started as ``python3 -m bai.kernel --workdir /home/work --state-dir /run/bai --user UID:UID``
  with ``PYTHONPATH=/opt/bai`` -- nothing of bai is baked into images.

Fast paths (a container start costs the engine ~150-250 ms): ``create`` claims a *standby*
container started ahead of demand when one of the image is ready (``docker_pool.py``; the kernel
then is the same as above, except that its labels are on the agent's file and the container keeps
``ai.bai.pool``); ``destroy`` sends SIGKILL at once (the runner keeps nothing a graceful stop
would save) to the container's PID 1 from this host, answers once every process of the kernel has
exited, and lets the engine remove the dead container in the background (~50-200 ms of its
bookkeeping; meanwhile the kernel is gone for ``inspect``/``list``/``destroy``, a ``create`` of
the same id waits, ``stop`` waits); ``stats`` reads the container's cgroup files (the engine's
stats endpoint waits for its next 1 s sampling tick). Where this host cannot see the container's
processes, the engine does it all (``docker_cgroup.py``).

Exits are noticed from the engine's ``die`` events (with a periodic re-scan as a safety net, which
also covers engines whose event stream breaks) and reported through ``on_exit`` once per
container; a kernel whose process the OOM killer took reports ``exit_reason="oom-killed"``: the
runner says so in ``exit.json`` (it reads its cgroup's count, see ``bai.kernel.oom``), which the
engine's ``OOMKilled`` need not show yet when the ``die`` event comes (it handles its OOM event
and the exit apart); ``OOMKilled`` still counts where the runner itself was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

import bai.kernel
from bai.agent import seccomp, statefiles
from bai.agent.backends.cgroup import CgroupDriver, host_pids_cap
from bai.agent.quota import QuotaError, WorkdirQuota
from bai.agent.backends import docker_folder, outbound
from bai.agent.backends.base import (
    ExitCallback,
    Instance,
    InstanceState,
    KernelCreationFailed,
    KernelSpec,
    RuntimeBackend,
)
from bai.agent.backends.docker_cgroup import cgroup_of, cgroup_stats, exited, in_container, kill
from bai.agent.backends.docker_pool import (
    Standby,
    StandbyPool,
    StandbyUnusable,
    process_environ,
    send_claim,
    wait_listening,
)
from bai.agent.backends.docker_spec import (
    KERNEL_PREFIX,
    L_AGENT,
    L_BACKEND,
    L_KERNEL,
    L_POOL,
    L_SESSION,
    L_SPEC,
    L_UID,
    L_WORKDIR,
    LABEL,
    RUN_DIR,
    SECCOMP_FILE,
    SLIRP_DNS,
    STANDBY_PREFIX,
    WORK_DIR,
    WORK_TARGET,
    ContainerSite,
    attachable_folders,
    hostname_of,
    kernel_env,
    kernel_of_name,
    limits_of,
    poolable,
    run_dir_of,
    shape_of,
)
from bai.agent.mounts import HostMount, MountRefused
from bai.agent.mounts import attach as attach_folder
from bai.agent.mounts import resolve as resolve_mounts
from bai.agent.runner_channel import RunnerUnavailable, ping_runner
from bai.agent.sandbox_uids import SandboxUids, UidsExhausted
from bai.common.errors import KernelNotFound

log = logging.getLogger(__name__)

#: the kernel's labels of claimed standbys: <scratch_root>/.claims/<kernel_id>.json
CLAIMS_DIR = ".claims"
#: in a kernel's folder (root's): the pid of its slirp4netns (``outbound.remember``) and its output
SLIRP_PID = "slirp.pid"
SLIRP_OUT = "slirp.out"
#: why a kernel ended whose runner an earlier agent held back and never handed its claim
INTERRUPTED = "creation-interrupted-by-agent-restart"
#: the most of kernel.log that logs() returns (its end)
LOG_TAIL_BYTES = 1 << 20
#: kernels' uids when the agent's settings do not say (the settings' defaults)
DEFAULT_UID_FIRST = 2_000_000
DEFAULT_UID_COUNT = 65_536
DEFAULT_UID_LOCKS = Path("/run/bai/uids")


class DockerBackend(RuntimeBackend):
    """Kernels as containers of one Docker (or Podman) engine.

    ``docker_host``: engine URL (``unix:///...``; default ``$DOCKER_HOST``, then the local socket).
    ``scratch_root``: host folder under which each kernel's folder is made; the engine must see
    the same paths (it runs on this host). ``agent_id`` scopes ``list()`` and the exit watcher to
    the containers this agent made, so several agents may share one engine. ``uids``: where
    kernels' uids come from (default: the agent settings' default range and lock dir).
    """

    name = "docker"

    def __init__(
        self,
        *,
        scratch_root: Path | str,
        agent_id: str = "",
        docker_host: str | None = None,
        pids_limit: int = 1024,
        pull_timeout: float = 30.0,
        ready_timeout: float = 60.0,
        network_mode: str | None = None,
        rescan_interval: float = 5.0,
        kernel_package: Path | None = None,
        pool_size: int = 3,
        uids: SandboxUids | None = None,
        storage_roots: dict[str, str] | None = None,
        disk_quota: int = 0,
        cgroup_parent: str = "",
        pids_total: int = -1,
    ) -> None:
        self.scratch_root = Path(scratch_root).absolute()
        self.agent_id = agent_id
        #: bytes of a work dir (its own filesystem, agent/quota.py; 0 = no quota) and the tool
        self.disk_quota = disk_quota
        self.quota: WorkdirQuota | None = None
        #: the cgroup every container is put under (the process runtime's ``cgroup_parent``),
        #: whose pids.max is ``pids_total`` (``host_pids_cap``)
        self.cgroup_parent = cgroup_parent
        self.pids_total = pids_total
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST") or None
        self.pids_limit = pids_limit
        self.pull_timeout = pull_timeout
        self.ready_timeout = ready_timeout
        #: NetworkMode for kernels that ask for network (None: they get none)
        self.network_mode = network_mode
        self.rescan_interval = rescan_interval
        self.kernel_package = (kernel_package or Path(bai.kernel.__file__).parent).absolute()
        #: the kernels' seccomp filter, loaded by the runner on top of the engine's profile
        self.seccomp = seccomp.compiled()
        self.site = ContainerSite(agent_id, self.kernel_package, pids_limit,
                                  seccomp=self.seccomp.program is not None)
        self.uids = uids or SandboxUids(DEFAULT_UID_FIRST, DEFAULT_UID_COUNT, DEFAULT_UID_LOCKS)
        #: storage host -> where this host sees it (``agent/mounts.py``)
        self.storage_roots = dict(storage_roots or {})
        #: whether work dirs could be mounted nosuid,nodev (the agent runs as root)
        self.nosuid = True
        #: slirp4netns & co. for kernels whose policy allows outbound network (root only)
        self.outbound: dict[str, str] | None = None
        self._docker: aiodocker.Docker | None = None
        self._on_exit: ExitCallback | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._engine: dict[str, Any] = {}
        #: kernels whose exit was reported (or that we are destroying): report each exit once
        self._reported: set[str] = set()
        self._destroying: set[str] = set()
        self._create_locks: dict[str, asyncio.Lock] = {}
        #: standby containers per image, claimed by create (``pool_size`` 0: off)
        self.pool = StandbyPool(self, pool_size)
        #: kernel id -> labels of claimed standbys (from CLAIMS_DIR)
        self._claimed: dict[str, dict[str, str]] = {}
        #: destroyed kernels whose dead containers the engine is still removing
        self._removing: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> DockerBackend:
        """From ``bai.agent.settings.AgentSettings``."""
        return cls(
            scratch_root=settings.scratch_root,
            agent_id=settings.agent_id,
            docker_host=settings.docker_host,
            pids_limit=settings.pids_limit,
            ready_timeout=settings.kernel_ready_timeout,
            rescan_interval=max(settings.monitor_interval, 1.0),
            pool_size=settings.docker_pool_size,
            uids=SandboxUids(settings.sandbox_uid_first, settings.sandbox_uid_count,
                             Path(settings.sandbox_uid_lock_dir)),
            storage_roots=settings.storage_roots,
            disk_quota=settings.disk_quota,
            cgroup_parent=settings.cgroup_parent,
            pids_total=settings.pids_total,
        )

    # -- connection and watching ---------------------------------------------------------------

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:  # used without start() or after stop(): connect lazily
            self._docker = aiodocker.Docker(url=self.docker_host)
        return self._docker

    async def connect(self) -> None:
        """Open the engine connection and read what it is (no watching)."""
        if self._docker is not None:
            return
        try:
            self._docker = aiodocker.Docker(url=self.docker_host)
            version = await self._docker.version()
            info = await self._docker.system.info()
        except (DockerError, OSError, ValueError, aiodocker.exceptions.DockerError) as e:
            if self._docker is not None:
                await self._docker.close()
                self._docker = None
            raise KernelCreationFailed(
                f"no container engine answers at {self.docker_host or 'the default socket'}: {e}"
            ) from e
        components = [c.get("Name", "") for c in version.get("Components") or []]
        self._engine = {
            "engine": "podman" if any("podman" in c.lower() for c in components) else "docker",
            "engine_version": version.get("Version", ""),
            "api_version": version.get("ApiVersion", ""),
            "cgroup": "v" + str(info.get("CgroupVersion") or "1"),
            "memory": bool(info.get("MemoryLimit", True)),
            "swap": bool(info.get("SwapLimit", True)),
            "cpu": bool(info.get("CpuCfsQuota", True)),
            "pids": bool(info.get("PidsLimit", True)),
            "engine_seccomp": any("seccomp" in str(o) for o in info.get("SecurityOptions") or []),
        }
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.outbound = await asyncio.to_thread(outbound.tools)
        if self.disk_quota > 0:
            self.quota = await asyncio.to_thread(WorkdirQuota.detect)
        if self.cgroup_parent and info.get("CgroupDriver") == "cgroupfs" and os.geteuid() == 0:
            await asyncio.to_thread(self._cap_parent, info)

    def _cap_parent(self, info: dict[str, Any]) -> None:
        """Containers go under ``/<cgroup_parent>`` (cgroupfs driver: a path; the systemd
        driver would want a slice, left to the engine), its pids.max capping them all."""
        driver = CgroupDriver.detect("/sys/fs/cgroup", self.cgroup_parent)
        cap = host_pids_cap(self.pids_total)
        capped = driver is not None and cap is not None and driver.cap_pids(cap)
        self.site = dataclasses.replace(self.site, cgroup_parent="/" + self.cgroup_parent)
        self._engine["cgroup_parent"] = "/" + self.cgroup_parent
        self._engine["pids_total"] = cap if capped else None

    async def start(self, on_exit: ExitCallback) -> None:
        await self.connect()
        self._on_exit = on_exit
        try:
            stale = await self.pool.remove_stale()
        except (DockerError, OSError) as e:
            log.warning("could not remove standby containers left behind: %s", e)
        else:
            if stale:
                log.info("removed %d standby container(s) an earlier agent left behind", stale)
        try:
            await self._settle_interrupted()
        except (DockerError, OSError) as e:
            log.warning("could not settle kernels an earlier agent left half-made: %s", e)
        # Exits that happened while nobody watched (agent down) are reported first.
        await self._rescan()
        for inst in await self.list():  # kernels that outlived an agent keep their uids
            self._adopt_uid(inst)
        self._tasks = [
            asyncio.create_task(self._watch_events(), name="docker-events"),
            asyncio.create_task(self._rescan_loop(), name="docker-rescan"),
        ]

    async def _settle_interrupted(self) -> None:
        """Kernels an earlier agent left half-made: it died between the start of a container
        whose runner waits for a claim (an outbound kernel's, or a standby it was claiming) and
        the claim, so nothing of the kernel ran and its runner never will. Each is ended here
        (killed, reason ``INTERRUPTED``): recovery reports it ended with that reason and removes
        it, as it does any kernel that ended while no agent watched; never adopted as running.
        A claimed standby's folder whose container was never renamed (it went with the
        standbys ``remove_stale`` removed) is removed with its claim file."""
        named = set()
        for inst in await self.list():
            named.add(inst.kernel_id)
            if inst.state is not InstanceState.RUNNING:
                continue
            container = await self._find(inst.kernel_id)
            if "--pooled" not in ((container._container.get("Config") or {}).get("Cmd") or []):
                continue
            if await self._claimed_runner(inst, container):
                continue
            log.warning("kernel %s: its runner never got its claim (the agent stopped before "
                        "it was sent); ending it", inst.kernel_id)
            statefiles.write_text(run_dir_of(inst.workdir), "exit.json",
                                  json.dumps({"reason": INTERRUPTED}))
            await self._kill(inst.kernel_id, container, inst)
            await self._wait_engine_exited(container)
        claims = self.scratch_root / CLAIMS_DIR
        for path in (claims.glob("*.json") if claims.is_dir() else []):
            kid = path.stem
            if kid not in named and not kid.startswith("."):
                log.warning("kernel %s: its standby was never renamed (the agent stopped "
                            "mid-claim); removing its folder", kid)
                await self.remove_folder(self.workdir_of(kid))
                self._drop_claim(kid)

    async def _claimed_runner(self, inst: Instance, container: Any) -> bool:
        """Whether the held-back runner of a running ``inst`` took its claim (it answers as not
        pooled); waits for a runner still starting up to ``ready_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while True:
            pong = await ping_runner(inst.runner_socket) if inst.runner_socket.exists() else None
            if pong is not None:
                return not pong.get("pooled")
            state = (await container.show()).get("State") or {}
            if not state.get("Running") or loop.time() > deadline:
                return False
            await asyncio.sleep(0.1)

    async def _wait_engine_exited(self, container: Any, timeout: float = 30.0) -> None:
        """Until the engine records the container as no longer running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with contextlib.suppress(DockerError):
                if not ((await container.show()).get("State") or {}).get("Running"):
                    return
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._removing:
            await asyncio.wait(list(self._removing.values()), timeout=10)
        if self._docker is not None:
            with contextlib.suppress(Exception):
                await self.pool.close()
            await self._docker.close()
            self._docker = None

    def isolation(self) -> dict[str, Any]:
        return {
            "runtime": "docker",
            "namespaces": True,
            "network": self.network_mode or "none",
            "outbound": self.network_mode or ("slirp4netns" if self.outbound else None),
            "user": "a uid per kernel, no capabilities, no-new-privileges",
            "workdir_nosuid": self.nosuid,
            "pids_limit": self.pids_limit,
            "disk_quota": "loop-ext4" if self.quota is not None else False,
            "seccomp": "bai+engine" if self.seccomp.program is not None else "engine",
            "gaps": ([] if self.seccomp.program is not None else [
                "seccomp: kernels may create user namespaces where the engine's profile "
                f"allows it ({self.seccomp.reason})"]) + (
                [] if self.outbound is not None or self.network_mode else [
                    "outbound: sessions whose policy allows outbound network get none ("
                    + ("slirp4netns, nsenter or ip not found: install Debian's slirp4netns"
                       if os.geteuid() == 0 else "not root") + ")"]),
            "standby_pool": self.pool.size if not self.pool.disabled else 0,
            **self._engine,
        }

    async def _watch_events(self) -> None:
        filters = {"type": ["container"], "event": ["die"], "label": self._label_filters()}
        while True:
            try:
                async with self.docker._query(
                    "events",
                    params={"filters": json.dumps(filters)},
                    timeout=aiohttp_no_timeout(),
                ) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        attrs = (event.get("Actor") or {}).get("Attributes") or {}
                        if not self._ours(attrs):
                            continue
                        name = attrs.get("name", "")
                        if name.startswith(STANDBY_PREFIX):
                            self.pool.discard(name)
                            continue
                        kid = attrs.get(L_KERNEL) or kernel_of_name(name)
                        if kid:
                            await self._maybe_report(kid)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the stream broke; the rescan loop covers the gap
                log.warning("docker event stream ended (%s); reconnecting", e)
            await asyncio.sleep(1.0)
            await self._rescan()

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval)
            await self._rescan()

    async def _rescan(self) -> None:
        try:
            for inst in await self.list():
                if inst.state is InstanceState.EXITED:
                    await self._maybe_report(inst.kernel_id, inst)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - keep watching whatever the engine answered
            log.warning("docker rescan failed: %s", e)

    async def _maybe_report(self, kernel_id: str, inst: Instance | None = None) -> None:
        if kernel_id in self._reported or kernel_id in self._destroying or self._on_exit is None:
            return
        if inst is None:
            try:
                inst = await self.inspect(kernel_id)
            except KernelNotFound:
                return
        if inst.state is not InstanceState.EXITED or kernel_id in self._reported:
            return
        self._reported.add(kernel_id)
        try:
            await self._on_exit(inst)
        except Exception:
            log.exception("on_exit callback failed for kernel %s", kernel_id)

    # -- images --------------------------------------------------------------------------------

    async def image_present(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
            return True
        except DockerError as e:
            if e.status == 404:
                return False
            raise

    async def ensure_image(self, spec: KernelSpec) -> bool:
        if await self.image_present(spec.image):
            return False
        try:
            await asyncio.wait_for(self._pull(spec.image), timeout=self.pull_timeout)
        except TimeoutError:
            reason = f"the pull did not finish within {self.pull_timeout:g} s"
        except (DockerError, OSError) as e:
            reason = _docker_message(e)
        else:
            if await self.image_present(spec.image):
                return True
            reason = "the engine reported no error but the image is still absent"
        raise KernelCreationFailed(
            f"image {spec.image} is not present on this agent and cannot be pulled: {reason}"
        )

    async def _pull(self, image: str) -> None:
        # The progress stream may carry an error object instead of a failed status.
        async for item in self.docker.images.pull(image, stream=True):
            if isinstance(item, dict) and item.get("error"):
                raise DockerError(500, str(item["error"]))

    # -- lifecycle -----------------------------------------------------------------------------

    def workdir_of(self, kernel_id: str) -> Path:
        if not kernel_id or "/" in kernel_id or kernel_id in (".", "..") or kernel_id[0] == ".":
            raise KernelNotFound(f"invalid kernel id {kernel_id!r}")
        return self.scratch_root / kernel_id / WORK_DIR

    async def make_folder(self, home: Path, uid: int, quota: int | None = None) -> None:
        """The kernel's (or a standby's) host folder (``docker_folder``), its work dir a
        filesystem of ``quota`` bytes (default: the agent's ``disk_quota``) where the host can."""
        nbytes = self.disk_quota if quota is None else quota
        try:
            mounted = await asyncio.to_thread(docker_folder.make, home, uid,
                                              self.quota if nbytes > 0 else None, nbytes)
        except QuotaError as e:  # a host that can make quotas never runs a kernel without one
            await asyncio.to_thread(docker_folder.remove, home)
            raise KernelCreationFailed(str(e)) from None
        except PermissionError as e:
            await asyncio.to_thread(docker_folder.remove, home)
            raise KernelCreationFailed(
                f"the agent cannot give a kernel's work dir to its own uid ({e}): the docker "
                "runtime's agent must run as root") from e
        if self.seccomp.program is not None:
            # run/ is fresh and root's: no session ever wrote there
            await asyncio.to_thread((home / RUN_DIR / SECCOMP_FILE).write_bytes,
                                    self.seccomp.program)
        if not mounted and self.nosuid:
            self.nosuid = False
            log.warning("work dirs are not mounted nosuid,nodev: the agent may not mount "
                        "(it does not run as root)")

    async def remove_folder(self, workdir: Path) -> None:
        """Remove the folder of the kernel whose work dir is ``workdir`` (only one of ours) and
        give back the uid that owns the work dir (no session can chown it away: no CAP_CHOWN)."""
        home = workdir.parent
        if workdir.name == WORK_DIR and home.parent in (self.scratch_root, self.pool.root):
            try:
                owner = os.lstat(workdir).st_uid
            except OSError:
                owner = 0
            await asyncio.to_thread(docker_folder.remove, home)
            if owner:
                self.uids.release(owner)

    async def take_uid(self, owner: str) -> int:
        try:
            return await asyncio.to_thread(self.uids.take, owner)
        except (UidsExhausted, OSError) as e:
            raise KernelCreationFailed(f"no uid for the kernel: {e}") from e

    def _adopt_uid(self, inst: Instance) -> None:
        with contextlib.suppress(ValueError, UidsExhausted, OSError):
            uid = int(inst.labels.get(L_UID) or 0)
            if uid:
                self.uids.adopt(uid, f"kernel {inst.kernel_id}")

    def container_name(self, kernel_id: str) -> str:
        return KERNEL_PREFIX + kernel_id

    async def create(self, spec: KernelSpec) -> Instance:
        removing = self._removing.get(spec.kernel_id)
        if removing is not None:  # the same id again right after a destroy
            await asyncio.shield(removing)
        lock = self._create_locks.setdefault(spec.kernel_id, asyncio.Lock())
        async with lock:
            try:
                existing = await self.inspect(spec.kernel_id)
            except KernelNotFound:
                existing = None
            if existing is not None:
                return existing
            try:
                return await self._create(spec)
            finally:
                self._create_locks.pop(spec.kernel_id, None)

    async def _create(self, spec: KernelSpec) -> Instance:
        workdir = self.workdir_of(spec.kernel_id)
        limits = limits_of(spec)
        config = {"bootstrap_script": spec.bootstrap_script,
                  "startup_command": spec.startup_command}
        self._reported.discard(spec.kernel_id)
        shape = shape_of(limits)
        try:
            folders = await asyncio.to_thread(resolve_mounts, self.storage_roots, spec.mounts)
        except MountRefused as e:
            raise KernelCreationFailed(str(e)) from None
        # outbound network (the policy's allow_outbound) is attached at the claim; an
        # operator's network_mode is the engine's, fixed when a container is made
        gated = spec.network and not self.network_mode and self.outbound is not None
        # a standby's work dir was made with the agent's disk_quota: another size is created
        other_quota = self.quota is not None and spec.disk_quota not in (0, self.disk_quota)
        if not poolable(spec) or other_quota or (spec.network and self.network_mode) \
                or not attachable_folders(folders):
            return await self._create_container(spec, workdir, limits, config, folders)
        inst = None
        entry = self.pool.take(spec.image, shape, folders=bool(folders))
        if entry is not None:
            try:
                inst = await self._claim(spec, entry, workdir, limits, config, folders, gated)
            except StandbyUnusable as e:
                log.info("kernel %s: standby %s unusable (%s); creating a container",
                         spec.kernel_id, entry.name, e)
        if inst is None:
            inst = await self._create_container(spec, workdir, limits, config, folders)
        self.pool.want(spec.image, shape)  # refill in the background
        return inst

    async def _claim(self, spec: KernelSpec, entry: Standby, workdir: Path,
                     limits: dict[str, Any], config: dict[str, Any],
                     folders: list[HostMount], gated: bool) -> Instance:
        """The kernel takes over a standby container (see ``docker_pool``), with its storage
        ``folders`` and, if ``gated``, outbound network attached before the runner goes on."""
        self._write_claim(spec.kernel_id, self.site.kernel_labels(spec, workdir, entry.uid))

        async def prepare(entry: Standby, workdir: Path) -> None:
            try:
                if folders:
                    await asyncio.to_thread(self._attach_folders, entry, workdir, folders)
                if gated:
                    await self._attach_outbound(entry, workdir)
            except BaseException as e:
                await asyncio.to_thread(outbound.forget, workdir.parent / SLIRP_PID)
                if isinstance(e, OSError | MountRefused | subprocess.SubprocessError
                              | RuntimeError | TimeoutError | ValueError):
                    raise StandbyUnusable(f"{type(e).__name__}: {e}") from e
                raise

        try:
            await self.pool.claim(
                entry, kernel_name=self.container_name(spec.kernel_id), workdir=workdir,
                shape=shape_of(limits),
                limits={**limits, "PidsLimit": spec.pids_max(self.pids_limit)},
                hostname=hostname_of(spec), env=kernel_env(spec), config=config,
                prepare=prepare if folders or gated else None)
        except BaseException:
            self._drop_claim(spec.kernel_id)
            raise
        container = self.docker.containers.container(entry.container_id)
        await self._ready_or_remove(spec.kernel_id, container, workdir, entry.uid)
        return await self.inspect(spec.kernel_id)

    def _attach_folders(self, entry: Standby, workdir: Path, folders: list[HostMount]) -> None:
        """Bind ``folders`` beneath a claimed standby's work dir on the host (``agent/mounts``:
        nosuid, nodev, read-only for ``ro``, set before they are attached), then check that the
        container sees each at its path, read-only where asked; raises StandbyUnusable where
        not (the caller removes the standby: its folder's removal detaches them)."""
        for m in folders:
            attach_folder(m, workdir, WORK_TARGET)
        seen = docker_folder.seen_in(entry.pid, entry.container_id)
        for m in folders:
            opts = seen.get(m.target)
            if opts is None or (m.read_only and "ro" not in opts) \
                    or not {"nosuid", "nodev"} <= opts:
                why = (f"folder {m.name!r} did not reach the container" if opts is None else
                       f"folder {m.name!r} is mounted {','.join(sorted(opts))} in it")
                self.pool._no_folders(why)
                raise StandbyUnusable(why)

    async def _attach_outbound(self, entry: Standby, workdir: Path) -> None:
        """Outbound network for a claimed standby (its runner is still held back), as
        ``_give_outbound`` does for a container made for the kernel."""
        assert self.outbound is not None
        home = workdir.parent
        if not in_container(entry.pid, entry.container_id):
            raise OSError("the standby's process is not the container's")
        slirp = await asyncio.to_thread(outbound.attach, self.outbound, entry.pid,
                                        home / SLIRP_OUT, own_loopback=False)
        outbound.remember(slirp, home / SLIRP_PID)
        if entry.resolv_path:  # what a made container gets from Dns=[SLIRP_DNS]
            await asyncio.to_thread(Path(entry.resolv_path).write_text,
                                    f"nameserver {SLIRP_DNS}\n")

    async def _create_container(self, spec: KernelSpec, workdir: Path, limits: dict[str, Any],
                                config: dict[str, Any], folders: list[HostMount]) -> Instance:
        uid = await self.take_uid(f"kernel {spec.kernel_id}")
        try:
            await self.remove_folder(workdir)  # what a failed earlier try may have left
            await self.make_folder(workdir.parent, uid, spec.disk_quota or self.disk_quota)
            statefiles.write_text(run_dir_of(workdir), "runner.json", json.dumps(config))
            network = (self.network_mode or "none") if spec.network else "none"
            # outbound network (the policy's allow_outbound): set up before the runner goes on
            gated = spec.network and not self.network_mode and self.outbound is not None
            container = await self.docker.containers.create(
                self.site.kernel_config(spec, workdir, uid, network, folders, gated=gated),
                name=self.container_name(spec.kernel_id)
            )
        except BaseException as e:
            self.uids.release(uid)
            if isinstance(e, DockerError) and e.status == 409:  # someone created it meanwhile
                return await self.inspect(spec.kernel_id)
            await asyncio.shield(self.remove_folder(workdir))
            if isinstance(e, DockerError):
                raise KernelCreationFailed(
                    f"the container could not be created: {_docker_message(e)}"
                ) from e
            raise
        await self._ready_or_remove(spec.kernel_id, container, workdir, uid, start=True,
                                    claim=config if gated else None)
        return await self.inspect(spec.kernel_id)

    async def _ready_or_remove(self, kernel_id: str, container: Any, workdir: Path, uid: int,
                               start: bool = False, claim: dict[str, Any] | None = None) -> None:
        """(Start and) wait for the runner; ``claim``: the runner is gated, give the container
        outbound network and then the runner this config. On any failure remove the container
        and its folder and give its uid back."""
        try:
            if start:
                await container.start()
            if claim is not None:
                await self._give_outbound(container, workdir, claim)
            await self._wait_ready(kernel_id, container, workdir)
        except BaseException as e:
            self._destroying.add(kernel_id)
            try:
                await asyncio.to_thread(outbound.forget, workdir.parent / SLIRP_PID)
                with contextlib.suppress(DockerError):
                    await container.delete(force=True, v=True)
                await self.remove_folder(workdir)
                self._drop_claim(kernel_id)
                self.uids.release(uid)
            finally:
                self._destroying.discard(kernel_id)
            if isinstance(e, DockerError):
                raise KernelCreationFailed(
                    f"the container could not be started: {_docker_message(e)}"
                ) from e
            raise

    async def _give_outbound(self, container: Any, workdir: Path, config: dict[str, Any]) -> None:
        """Outbound network for the started, gated container (``outbound.py``: the blocking
        routes, then slirp4netns), then the runner's kernel: nothing of the kernel ran before.
        The kernel fails with the reason when any of it fails."""
        assert self.outbound is not None
        home = workdir.parent
        try:
            await wait_listening(container, run_dir_of(workdir), self.ready_timeout)
            info = await container.show()
            pid, cid = int((info.get("State") or {}).get("Pid") or 0), info.get("Id") or ""
            if not in_container(pid, cid):
                raise OSError("the agent cannot see the container's processes")
            slirp = await asyncio.to_thread(outbound.attach, self.outbound, pid, home / SLIRP_OUT,
                                            own_loopback=False)  # the engine set up its lo
            outbound.remember(slirp, home / SLIRP_PID)
            # what the engine gave the container: the kernel's environment, the image's, PATH
            env = await asyncio.to_thread(process_environ, pid, cid)
        except (OSError, ValueError, RuntimeError, TimeoutError, NotImplementedError,
                StandbyUnusable, subprocess.SubprocessError, DockerError) as e:
            raise KernelCreationFailed(
                f"outbound network could not be set up: {_docker_message(e)}") from None
        try:
            await send_claim(run_dir_of(workdir) / bai.kernel.SOCKET_NAME, env, config)
        except (OSError, TimeoutError, StandbyUnusable, RunnerUnavailable) as e:
            raise KernelCreationFailed(f"the kernel runner did not start: {e}") from None

    # -- claimed standbys' labels --------------------------------------------------------------

    def _claim_file(self, kernel_id: str) -> Path:
        return self.scratch_root / CLAIMS_DIR / f"{kernel_id}.json"

    def _write_claim(self, kernel_id: str, labels: dict[str, str]) -> None:
        path = self._claim_file(kernel_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(labels))
        os.replace(tmp, path)
        self._claimed[kernel_id] = labels

    def _drop_claim(self, kernel_id: str) -> None:
        self._claimed.pop(kernel_id, None)
        with contextlib.suppress(OSError):
            self._claim_file(kernel_id).unlink()

    def _labels_of(self, info: dict[str, Any]) -> dict[str, str]:
        """The kernel labels of a container: its own, or for a claimed standby the ones on file."""
        labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
        if L_POOL not in labels:
            return labels
        names = [info.get("Name", "")] + list(info.get("Names") or [])
        kid = next((k for k in map(kernel_of_name, names) if k), "")
        if not kid:
            return labels  # an unclaimed standby: no kernel
        known = self._claimed.get(kid)
        if known is None:
            try:
                known = json.loads(self._claim_file(kid).read_text())
            except (OSError, ValueError):
                known = {L_BACKEND: "docker", L_AGENT: labels.get(L_AGENT, ""),
                         L_WORKDIR: str(self.workdir_of(kid)), L_UID: labels.get(L_UID, "")}
            self._claimed[kid] = known
        return {**known, L_KERNEL: kid, L_POOL: labels[L_POOL]}

    async def _wait_ready(self, kernel_id: str, container: Any, workdir: Path) -> None:
        """Until the runner answers ``ping`` with ready; fail early when the container exits."""
        sock = run_dir_of(workdir) / bai.kernel.SOCKET_NAME
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.ready_timeout
        delay = 0.005
        polls = 0
        while True:
            if sock.exists():
                pong = await ping_runner(sock)
                if pong and pong.get("ready"):
                    return
            polls += 1
            if polls % 8:  # asking the engine costs more than a ping: every 8th round only
                await asyncio.sleep(delay)
                continue
            info = await container.show()
            state = info.get("State") or {}
            if not state.get("Running") and state.get("Status") in ("exited", "dead"):
                if statefiles.read_tail(run_dir_of(workdir), "exit.json", 4096):
                    return  # the runner started and ended by itself (a startup command exited)
                output = await self._container_logs(container, tail=20)
                why = "out of memory" if state.get("OOMKilled") else f"exit code {state.get('ExitCode')}"
                raise KernelCreationFailed(
                    f"the kernel runner exited before it was ready ({why})"
                    + (f": {output.strip()}" if output.strip() else "")
                )
            if loop.time() > deadline:
                raise KernelCreationFailed(
                    f"the kernel runner did not become ready within {self.ready_timeout:g} s"
                )
            await asyncio.sleep(delay)
            if loop.time() - started > 2.0:  # a runner is ready within ~0.1 s; then back off
                delay = min(delay * 2, 0.25)

    async def destroy(self, kernel_id: str) -> Instance | None:
        self._destroying.add(kernel_id)
        try:
            try:
                container = await self._find(kernel_id)
            except KernelNotFound:
                container = None
            inst: Instance | None = None
            if container is not None:
                inst = self._instance(container._container)
                dead = inst.state is not InstanceState.EXITED and await self._kill(
                    kernel_id, container, inst)
                if dead:  # nothing of the kernel runs any more: the engine's removal of the
                    # container (~50-200 ms of its bookkeeping) need not hold up the answer
                    self._removing[kernel_id] = asyncio.create_task(
                        self._remove_container(kernel_id, container))
                else:  # SIGKILL (the runner keeps nothing a graceful stop would save) + removal
                    await self._remove_container(kernel_id, container)
            workdir = Path(
                inst.workdir if inst is not None else self.workdir_of(kernel_id)
            )
            await asyncio.to_thread(outbound.forget, workdir.parent / SLIRP_PID)
            await self.remove_folder(workdir)
            self._drop_claim(kernel_id)
            self._reported.add(kernel_id)
            return inst
        finally:
            self._destroying.discard(kernel_id)

    async def _kill(self, kernel_id: str, container: Any, inst: Instance) -> bool:
        """Set ``inst`` to what killing the running container ends it with: ``oom-killed``
        (exit code 137) when anything in it ran out of memory before, else ``killed``. True when
        its processes were killed from this host (SIGKILL to its PID 1 ends its PID namespace)."""
        info = container._container
        pid = int((info.get("State") or {}).get("Pid") or 0)
        cg = await asyncio.to_thread(cgroup_of, pid)
        oom = dead = False
        if cg is not None:  # the cgroup's count, as the process backend does: no race with
            oom = cg.oom_kills() > 0  # the engine's bookkeeping of an exit in progress
            dead = await asyncio.to_thread(kill, pid, info.get("Id") or "")
            if dead:
                await exited(pid)
        else:  # only the engine's record: stop the container and read OOMKilled from it
            with contextlib.suppress(DockerError):
                await container.stop(t=0)
            with contextlib.suppress(KernelNotFound):
                oom = (await self.inspect(kernel_id)).exit_reason == "oom-killed"
        inst.state = InstanceState.EXITED
        inst.exit_code, inst.exit_reason = (137, "oom-killed") if oom else (None, "killed")
        return dead

    async def _remove_container(self, kernel_id: str, container: Any) -> None:
        try:
            for attempt in range(3):
                try:
                    await container.delete(force=True, v=True)
                    return
                except DockerError as e:
                    if e.status == 404:
                        return
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.5)  # e.g. 409: the engine is still processing the exit
        except Exception as e:
            if kernel_id not in self._removing:
                raise
            log.warning("could not remove the container of kernel %s: %s", kernel_id, e)
        finally:
            self._removing.pop(kernel_id, None)

    # -- observation ---------------------------------------------------------------------------

    async def _find(self, kernel_id: str) -> Any:
        """The container (inspected) of a kernel of this agent; raises KernelNotFound."""
        if kernel_id in self._removing:
            raise KernelNotFound(f"kernel {kernel_id} was destroyed")
        try:
            container = await self.docker.containers.get(self.container_name(kernel_id))
        except DockerError as e:
            if e.status == 404:
                raise KernelNotFound(f"kernel {kernel_id} has no container") from e
            raise
        if not self._ours((container._container.get("Config") or {}).get("Labels") or {}):
            raise KernelNotFound(f"kernel {kernel_id} belongs to another agent")
        return container

    async def inspect(self, kernel_id: str) -> Instance:
        container = await self._find(kernel_id)
        return self._instance(container._container)

    def _instance(self, info: dict[str, Any]) -> Instance:
        labels = self._labels_of(info)
        state = info.get("State") or {}
        status = state.get("Status", "")
        workdir = Path(labels.get(L_WORKDIR) or self.workdir_of(labels[L_KERNEL]))
        if status in ("exited", "dead", "removing") or (
            status not in ("created", "") and not state.get("Running")
        ):
            st = InstanceState.EXITED
        elif state.get("Running"):
            st = InstanceState.RUNNING
        else:
            st = InstanceState.CREATING
        exit_code: int | None = None
        reason = ""
        if st is InstanceState.EXITED:
            exit_code = state.get("ExitCode")
            reason = "oom-killed" if state.get("OOMKilled") else _exit_json_reason(workdir)
        return Instance(
            kernel_id=labels[L_KERNEL],
            session_id=labels.get(L_SESSION, ""),
            state=st,
            workdir=workdir,
            runner_socket=run_dir_of(workdir) / bai.kernel.SOCKET_NAME,
            container_id=info.get("Id", ""),
            exit_code=exit_code,
            exit_reason=reason,
            labels={k: v for k, v in labels.items() if k.startswith(LABEL) or k == L_SPEC},
        )

    def _label_filters(self) -> list[str]:
        filters = [f"{L_BACKEND}=docker"]
        if self.agent_id:
            filters.append(f"{L_AGENT}={self.agent_id}")
        return filters

    def _ours(self, labels: dict[str, str]) -> bool:
        return labels.get(L_BACKEND) == "docker" and labels.get(L_AGENT, "") == self.agent_id

    async def list(self) -> list[Instance]:
        filters = {"label": self._label_filters()}
        summaries = await self.docker.containers.list(all=True, filters=json.dumps(filters))
        out = []
        for summary in summaries:
            # filter again: not every engine applies every label filter
            if not self._ours(summary._container.get("Labels") or {}):
                continue
            labels = self._labels_of(summary._container)
            if L_KERNEL not in labels or labels[L_KERNEL] in self._removing:
                continue  # an unclaimed standby, or a destroyed kernel's container going away
            try:
                out.append(await self.inspect(labels[L_KERNEL]))
            except (KernelNotFound, KeyError):
                continue  # removed meanwhile
        return out

    async def stats(self, kernel_id: str) -> dict[str, Any]:
        container = await self._find(kernel_id)
        limit = (container._container.get("HostConfig") or {}).get("Memory")
        # The engine's stats endpoint answers on its next 1 s sampling tick (0-1 s, ~0.5 s on
        # average, even with one-shot); the container's cgroup files answer at once.
        pid = int((container._container.get("State") or {}).get("Pid") or 0)
        local = await asyncio.to_thread(cgroup_stats, pid) if pid > 0 else None
        if local is not None:
            if limit:
                local["mem_limit_bytes"] = int(limit)
            return local
        try:
            raw = await self.docker._query_json(
                f"containers/{container.id}/stats",
                params={"stream": "false", "one-shot": "true"},
            )
        except DockerError as e:
            raise KernelNotFound(f"no stats for kernel {kernel_id}: {_docker_message(e)}") from e
        if isinstance(raw, str):  # Podman answers without a JSON content type
            raw = json.loads(raw.strip().splitlines()[0]) if raw.strip() else {}
        if isinstance(raw, list):  # some engines answer a one-element stream
            raw = raw[0] if raw else {}
        mem = raw.get("memory_stats") or {}
        cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
        out: dict[str, Any] = {
            "cpu_used": int(cpu.get("total_usage", 0)) // 1_000_000,  # ns -> msec
            "mem_cur_bytes": int(mem.get("usage", 0)),
            "mem_max_bytes": int(mem.get("max_usage", mem.get("usage", 0))),
            "pids": int((raw.get("pids_stats") or {}).get("current", 0)),
        }
        if limit:
            out["mem_limit_bytes"] = int(limit)
        return out

    async def logs(self, kernel_id: str) -> str:
        container = await self._find(kernel_id)
        run_dir = run_dir_of(self._instance(container._container).workdir)
        out = await self._container_logs(container, tail=2000)
        runner_log = await asyncio.to_thread(
            statefiles.read_tail, run_dir, "kernel.log", LOG_TAIL_BYTES)
        return out + runner_log.decode(errors="replace")

    async def _container_logs(self, container: Any, tail: int | None = None) -> str:
        params: dict[str, Any] = {"stdout": True, "stderr": True}
        if tail is not None:
            params["tail"] = tail
        try:
            lines = await container.log(**params)
        except DockerError:
            return ""
        return "".join(lines)


def aiohttp_no_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_read=None)


def _exit_json_reason(workdir: Path) -> str:
    try:
        data = json.loads(statefiles.read_tail(run_dir_of(workdir), "exit.json", 4096))
        return str(data.get("reason") or "self-terminated")
    except (OSError, ValueError, AttributeError):
        return "self-terminated"


def _docker_message(e: BaseException) -> str:
    if isinstance(e, DockerError):
        msg = e.message
        if isinstance(msg, dict):
            msg = msg.get("message", str(msg))
        return str(msg).strip()
    return str(e) or type(e).__name__
