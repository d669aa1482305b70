"""Standby containers: kernel containers started ahead of demand, one small pool per image.

Starting a container costs the engine ~150-250 ms (runc, namespaces, the overlay mount) while
creating one costs ~10 ms; a kernel that takes over a started container (a *claim*) costs a few
engine calls of ~1-10 ms instead, and its runner and worker interpreter are already up. What a
claim changes, and how:

* name: ``bai-standby-<token>`` is renamed to ``bai-kernel-<kernel_id>`` (the engine's rename);
* folder: the standby's ``<scratch_root>/.pool/<token>`` (``docker_folder``: ``work/`` at
  ``/home/work``, ``run/`` at ``/run/bai``) is renamed to ``<scratch_root>/<kernel_id>``; a bind
  mount follows the folder, not its path;
* user: the standby's runner gave up root for a uid of its own when it started (taken when the
  standby is made); the kernel keeps it;
* limits: ``NanoCpus``, ``Memory`` = ``MemorySwap`` through ``POST /containers/{id}/update`` when the
  standby was started with another shape (refills use the shape of the latest request, so a steady
  workload never needs it); ``PidsLimit``, ulimits, security options are the agent's, the same
  for every kernel;
* hostname: set in the container's UTS namespace from the agent (``setns`` + ``sethostname``; the
  agent runs as root on the engine's host) and written to the engine's ``/etc/hostname`` file;
* environment and config: the standby runs the kernel runner as ``python3 -m bai.kernel
  --pooled`` (PID 1, its worker interpreter already started); the claim (``bai.kernel``: op
  ``claim``) hands it the environment the engine gave the container (read from
  ``/proc/<pid>/environ``) updated by the kernel's, and the bootstrap/startup config; the runner
  and its worker take them on. Kernels whose environment sets what an interpreter fixes when it
  starts (``LANG``, ``LC_*``, ``PYTHON*``, ...; ``docker_spec.poolable``) are created as before;
* labels cannot change after create: the kernel's labels are kept by the agent in
  ``<scratch_root>/.claims/<kernel_id>.json`` (outside the work dir, out of the kernel's reach) and
  the container keeps ``ai.bai.pool`` -- see ``DockerBackend._labels_of``.

* storage folders: a standby's ``work/`` is a shared mount of its own (``mounts.make_shared``)
  bound ``rslave`` at ``/home/work``; the claim binds each folder beneath it on the host
  (``mounts.attach``: walked with ``O_NOFOLLOW`` beneath its storage root, cloned detached,
  ``nosuid,nodev`` and for ``ro`` read-only before it is attached), and checks in the
  container's own mount table that each arrived (read-only where asked) before the runner takes
  the claim. Only folders under ``/home/work``; others, or an engine that will not bind
  ``rslave``, mean a container made for the kernel;
* outbound network: standbys start with ``NetworkMode=none`` and a held-back runner, as an
  outbound kernel's container does; the claim attaches ``outbound.attach`` (unreachable routes,
  slirp4netns) and points ``/etc/resolv.conf`` at slirp's DNS before the runner takes the claim.

Only ``NetworkMode=none`` kernels are pooled (where the hostname is all the UTS namespace holds);
anything a claim cannot do falls back to creating the container as before.
Standbys that a previous agent left behind are removed when the backend starts, and the ones this
backend made when it stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiodocker.exceptions import DockerError

import bai.kernel
from bai.agent import statefiles
from bai.agent.backends import docker_folder
from bai.agent.backends.docker_cgroup import in_container
from bai.agent.backends.docker_spec import (
    L_POOL,
    L_WORKDIR,
    STANDBY_PREFIX,
    WORK_DIR,
    WORK_TARGET,
    Shape,
    run_dir_of,
)

if TYPE_CHECKING:
    from bai.agent.backends.docker import DockerBackend

log = logging.getLogger(__name__)

#: folder (under the scratch root) holding the standbys' work dirs
POOL_DIR = ".pool"
#: at most this many images keep a pool (least recently used ones are dropped)
MAX_IMAGES = 4
#: after a failed start, no refill for this image for this long
FAIL_BACKOFF = 30.0
START_TIMEOUT = 30.0

_CLONE_NEWUTS = 0x04000000


class StandbyUnusable(Exception):
    """A claim failed before the kernel took the container over; create one the usual way."""


@dataclass
class Standby:
    image: str
    container_id: str
    name: str
    #: its work dir (``<scratch_root>/.pool/<token>/work``)
    workdir: Path
    uid: int
    image_id: str
    shape: Shape
    pid: int
    hostname_path: str
    #: the engine's /etc/resolv.conf of the container (outbound kernels get slirp's DNS)
    resolv_path: str = ""
    #: its work dir is a shared mount bound rslave: storage folders can join at the claim
    attachable: bool = False


class StandbyPool:
    """Standby containers per image for one ``DockerBackend`` (``size`` per image; 0 = off)."""

    def __init__(self, backend: DockerBackend, size: int) -> None:
        self.backend = backend
        self.size = size
        self.root = backend.scratch_root / POOL_DIR
        self.ready: dict[str, list[Standby]] = {}
        #: image -> shape of its latest request, least recently used first
        self.wanted: collections.OrderedDict[str, Shape] = collections.OrderedDict()
        self.failed_until: dict[str, float] = {}
        #: why claims are off on this host, once found out (e.g. the agent cannot setns)
        self.disabled = "" if size > 0 else "docker_pool_size is 0"
        #: why standbys cannot take storage folders, once found out (not root, the engine
        #: refuses rslave, folders never reach the container)
        self.no_folders = "" if os.geteuid() == 0 else "the agent does not run as root"
        #: image -> standby starts in progress
        self._fills: dict[str, set[asyncio.Task[None]]] = {}
        self._starting: dict[str, tuple[Path, int]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- taking and refilling ----------------------------------------------------------------

    def take(self, image: str, shape: Shape, folders: bool = False) -> Standby | None:
        """A ready standby of ``image``: one of the same shape, else one whose limits an update
        can set (both limits given on both sides), else None; with ``folders``, only one that
        can take storage folders."""
        if self.disabled:
            return None
        entries = [e for e in self.ready.get(image) or [] if e.attachable or not folders]
        found = next((e for e in entries if e.shape == shape), None)
        if found is None and None not in shape:
            found = next((e for e in entries if None not in e.shape), None)
        if found is not None:
            self.ready[image].remove(found)
        return found

    def want(self, image: str, shape: Shape) -> None:
        """Note a request for ``image``; refill its pool in the background."""
        if self.disabled or self._closed:
            return
        self.wanted[image] = shape
        self.wanted.move_to_end(image)
        while len(self.wanted) > MAX_IMAGES:
            old, _ = self.wanted.popitem(last=False)
            for e in self.ready.pop(old, []):
                self._later(self._remove(e.name, e.workdir, e.uid))
        if time.monotonic() < self.failed_until.get(image, 0.0):
            return
        # every missing standby starts at once: a start is mostly waiting on the engine's
        # processes, and one after the other they would not keep up with back-to-back sessions
        fills = self._fills.setdefault(image, set())
        for _ in range(self.size - len(self.ready.get(image, [])) - len(fills)):
            task = asyncio.create_task(self._fill_one(image, shape), name=f"pool-{image}")
            fills.add(task)
            task.add_done_callback(fills.discard)

    def discard(self, container_id: str) -> None:
        """A standby exited (the engine said so): forget and remove it."""
        for entries in self.ready.values():
            for e in list(entries):
                if e.container_id == container_id or e.name == container_id:
                    entries.remove(e)
                    self._later(self._remove(e.name, e.workdir, e.uid))

    async def _fill_one(self, image: str, shape: Shape) -> None:
        try:
            entry = await self._start(image, shape)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a pool is an optimisation: log and back off
            if time.monotonic() >= self.failed_until.get(image, 0.0):
                log.warning("could not start a standby container of %s: %s", image, e)
            self.failed_until[image] = time.monotonic() + FAIL_BACKOFF
            return
        if self._closed or self.disabled or image not in self.wanted:
            await self._remove(entry.name, entry.workdir, entry.uid)
        else:
            self.ready.setdefault(image, []).append(entry)

    async def _start(self, image: str, shape: Shape) -> Standby:
        token = uuid.uuid4().hex[:16]
        name = STANDBY_PREFIX + token
        workdir = self.root / token / WORK_DIR
        self.root.mkdir(mode=0o700, exist_ok=True)
        uid = await self.backend.take_uid(f"standby {token}")
        self._starting[name] = (workdir, uid)
        try:
            await self.backend.make_folder(workdir.parent, uid)
            attachable = not self.no_folders and await asyncio.to_thread(self._share, workdir)
            try:
                container = await self._create_started(
                    self.backend.site.standby_config(image, shape, workdir, uid, attachable),
                    name)
            except DockerError as e:
                if not attachable:
                    raise
                container = await self._create_started(
                    self.backend.site.standby_config(image, shape, workdir, uid), name)
                # e.g. the engine runs in a mount namespace where the work dir is not shared
                self._no_folders(f"the engine refuses an rslave bind ({e})")
                attachable = False
            await wait_listening(container, run_dir_of(workdir), START_TIMEOUT)
            info = await container.show()
        except BaseException:
            await asyncio.shield(self._remove(name, workdir, uid))
            raise
        finally:
            self._starting.pop(name, None)
        return Standby(
            image=image,
            container_id=info["Id"],
            name=name,
            workdir=workdir,
            uid=uid,
            image_id=info.get("Image", ""),
            shape=shape,
            pid=int((info.get("State") or {}).get("Pid") or 0),
            hostname_path=info.get("HostnamePath") or "",
            resolv_path=info.get("ResolvConfPath") or "",
            attachable=attachable,
        )

    async def _create_started(self, config: dict[str, Any], name: str) -> Any:
        """Create and start container ``name``; one that does not start is removed (the caller
        removes it on anything else)."""
        # a create cancelled midway may still complete in the engine: let it, then remove
        create = asyncio.ensure_future(self.backend.docker.containers.create(config, name=name))
        try:
            container = await asyncio.shield(create)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await create
            raise
        try:
            await container.start()
        except DockerError:
            with contextlib.suppress(DockerError):
                await container.delete(force=True, v=True)
            raise
        return container

    def _share(self, workdir: Path) -> bool:
        """Make a standby's work dir a shared mount (folders join it at the claim)."""
        try:
            docker_folder.make_shared(workdir)
            return True
        except OSError as e:
            self._no_folders(f"its work dir cannot be a shared mount ({e})")
            return False

    def _no_folders(self, why: str) -> None:
        if not self.no_folders:
            self.no_folders = why
            log.warning("standby containers cannot take storage folders: %s (sessions with "
                        "folders start in a container made for them)", why)

    # -- claiming ----------------------------------------------------------------------------

    async def claim(self, entry: Standby, *, kernel_name: str, workdir: Path, shape: Shape,
                    limits: dict[str, Any], hostname: str, env: dict[str, str],
                    config: dict[str, Any],
                    prepare: Callable[[Standby, Path], Awaitable[None]] | None = None) -> None:
        """Turn ``entry`` into the kernel's container: ``env`` is the kernel's container
        environment (the image's and the engine's variables are added here, as the engine would
        have); ``prepare(entry, workdir)`` runs last before the runner gets the claim (storage
        folders, outbound network). Raises ``StandbyUnusable`` (with the container and
        ``workdir`` removed) when anything fails before the runner took the claim."""
        docker = self.backend.docker
        renamed = False
        try:
            image_id = (await docker.images.inspect(entry.image))["Id"]
            if image_id != entry.image_id:
                raise StandbyUnusable("the image changed since the standby was started")
            os.rename(entry.workdir.parent, workdir.parent)
            renamed = True
            statefiles.write_text(run_dir_of(workdir), "runner.json", json.dumps(config))
            # the policy's pids limit as well (a standby has the agent's pids_limit)
            if shape != entry.shape or limits.get("PidsLimit", self.backend.pids_limit) \
                    != self.backend.pids_limit:
                await docker._query_json(
                    f"containers/{entry.container_id}/update", method="POST",
                    data=json.dumps(limits))
            await docker._query_json(
                f"containers/{entry.container_id}/rename", method="POST",
                params={"name": kernel_name})
            await asyncio.to_thread(set_hostname, entry.pid, entry.container_id, hostname)
            if entry.hostname_path:
                with contextlib.suppress(OSError):
                    Path(entry.hostname_path).write_text(hostname + "\n")
            if prepare is not None:
                await prepare(entry, workdir)
            # what the engine gave the container (PATH, the image's variables), then the kernel's
            base = await asyncio.to_thread(process_environ, entry.pid, entry.container_id)
            await send_claim(run_dir_of(workdir) / bai.kernel.SOCKET_NAME,
                             {**base, "HOSTNAME": hostname, **env}, config)
        except BaseException as e:
            await asyncio.shield(self._remove(
                entry.container_id, workdir if renamed else entry.workdir, entry.uid))
            if isinstance(e, PermissionError | NotImplementedError):
                self.disabled = f"the agent cannot reach a standby's processes ({e})"
                log.warning("standby containers are off: %s", self.disabled)
            if isinstance(e, Exception) and not isinstance(e, StandbyUnusable):
                raise StandbyUnusable(str(e) or type(e).__name__) from e
            raise

    # -- removal -----------------------------------------------------------------------------

    def _later(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _remove(self, container: str, workdir: Path | None, uid: int | None) -> None:
        with contextlib.suppress(DockerError, OSError):
            await self.backend.docker.containers.container(container).delete(force=True, v=True)
        if workdir is not None:
            await self.backend.remove_folder(workdir)
        if uid is not None:
            self.backend.uids.release(uid)

    async def close(self) -> None:
        """Stop refilling and remove every standby this pool started."""
        self._closed = True
        fills = [task for tasks in self._fills.values() for task in tasks]
        for task in fills:
            task.cancel()
        await asyncio.gather(*fills, return_exceptions=True)
        doomed = [(e.name, e.workdir, e.uid) for entries in self.ready.values() for e in entries]
        doomed += [(name, w, uid) for name, (w, uid) in self._starting.items()]
        self.ready.clear()
        await asyncio.gather(*(self._remove(*d) for d in doomed), *self._cleanups,
                             return_exceptions=True)

    async def remove_stale(self) -> int:
        """Remove the unclaimed standbys of this agent that an earlier run left behind."""
        filters = {"label": [*self.backend._label_filters(), L_POOL]}
        summaries = await self.backend.docker.containers.list(
            all=True, filters=json.dumps(filters))
        doomed = []
        for s in summaries:
            info = s._container
            names = [n.lstrip("/") for n in info.get("Names") or []]
            labels = info.get("Labels") or {}
            if not self.backend._ours(labels) or not any(
                    n.startswith(STANDBY_PREFIX) for n in names):
                continue
            # its uid is not ours to give back: the lock went with the agent that took it
            doomed.append((info["Id"], Path(labels.get(L_WORKDIR) or "/"), None))
        await asyncio.gather(*(self._remove(*d) for d in doomed), return_exceptions=True)
        return len(doomed)


async def wait_listening(container: Any, run_dir: Path, timeout: float) -> None:
    """Until the runner of a started ``container`` accepts connections (its socket appears in
    ``run_dir``); raises RuntimeError when the container exits or ``timeout`` passes first."""
    sock = run_dir / bai.kernel.SOCKET_NAME
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not sock.exists():
        if delay >= 0.04:  # not there at once: make sure it is still alive
            state = (await container.show()).get("State") or {}
            if not state.get("Running"):
                raise RuntimeError(f"it exited with code {state.get('ExitCode')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"its runner did not listen within {timeout:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def set_hostname(pid: int, container_id: str, name: str) -> None:
    """``sethostname`` inside the UTS namespace of process ``pid`` of container ``container_id``,
    from a short-lived thread (``setns`` moves only the calling thread, which then ends)."""
    if pid <= 0:
        raise NotImplementedError("the engine did not say which process the container runs")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY)
            try:
                # checked after opening: the namespace is the container's own, not a recycled
                # pid's (the host's hostname must never be the one that changes)
                if not in_container(pid, container_id):
                    raise StandbyUnusable("the standby's process is not the container's")
                if libc.setns(fd, _CLONE_NEWUTS) != 0:
                    err = ctypes.get_errno()
                    raise PermissionError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            raw = name.encode()
            if libc.sethostname(raw, len(raw)) != 0:
                err = ctypes.get_errno()
                raise PermissionError(err, f"sethostname: {os.strerror(err)}")
        except FileNotFoundError as e:  # the engine's processes are not visible from here
            errors.append(NotImplementedError(str(e)))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)

    thread = threading.Thread(target=run, name="bai-sethostname")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def process_environ(pid: int, container_id: str) -> dict[str, str]:
    """The environment process ``pid`` of container ``container_id`` started with."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError as e:  # the engine's processes are not visible from here
        raise NotImplementedError(str(e)) from e
    if not in_container(pid, container_id):  # read from a recycled pid
        raise StandbyUnusable("the standby's process is not the container's")
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape")
            for k, v in pairs}


async def send_claim(sock: Path, env: dict[str, str], config: dict[str, Any]) -> None:
    """Hand a pooled runner its kernel (``bai.kernel``: op ``claim``); raises when it does not
    take it."""
    from bai.agent.runner_channel import claim_runner

    answer = await claim_runner(sock, WORK_TARGET, env, config, 5)
    if not answer or answer.get("status") != "claimed":
        raise StandbyUnusable(f"the runner refused the claim: {answer}")
