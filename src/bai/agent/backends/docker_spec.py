"""What the docker backend asks the engine for: container configs, labels, environment, limits.

Pure functions of a ``KernelSpec`` and the agent's settings (``ContainerSite``), no engine calls,
so tests can check them without a runtime. See ``docker.py`` for what a kernel container is and
``docker_pool.py`` for standby containers.
"""

from __future__ import annotations

import json
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bai.agent.backends.base import KernelCreationFailed, KernelSpec
from bai.agent.backends.process_pool import startup_fixed
from bai.agent.mounts import HostMount

LABEL = "ai.bai."
L_BACKEND = LABEL + "backend"
L_AGENT = LABEL + "agent_id"
L_KERNEL = LABEL + "kernel_id"
L_SESSION = LABEL + "session_id"
L_WORKDIR = LABEL + "workdir"
#: the host uid (and gid) the kernel runs as
L_UID = LABEL + "uid"
#: on standby containers (docker_pool.py): claimed ones keep it, their kernel labels are on file
L_POOL = LABEL + "pool"
#: the whole KernelSpec, for a restarted agent (see base.py "Recovery")
L_SPEC = "bai.spec"

#: where the runner package, the work dir and the runner's own folder appear in the container
KERNEL_PKG_TARGET = "/opt/bai/bai/kernel"
WORK_TARGET = "/home/work"
RUN_TARGET = "/run/bai"
STANDBY_HOSTNAME = "bai-standby"
#: a kernel's host folder ``<scratch_root>/<kernel_id>`` (root's, 0700) holds these two
WORK_DIR = "work"  # the session's work dir, owned by the kernel's uid, mounted nosuid,nodev
RUN_DIR = "run"  # the runner's socket, config, log and exit status: root's, 0700
#: in RUN_DIR: the compiled seccomp filter (``agent/seccomp.py``) the runner loads
SECCOMP_FILE = "seccomp.bpf"

#: the DNS forwarder of slirp4netns (``outbound.py``) in a container with outbound network
SLIRP_DNS = "10.0.2.3"

KERNEL_PREFIX = "bai-kernel-"
STANDBY_PREFIX = "bai-standby-"
#: the runner starts as the container's root with only these capabilities, binds its socket in
#: RUN_TARGET, and becomes the kernel's uid for good before anything of the kernel runs
RUNNER_CAPS = ["SETUID", "SETGID"]
#: the part of a kernel's environment that is the same for every kernel
RUNNER_ENV = {
    "PYTHONPATH": "/opt/bai",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": WORK_TARGET,
}
DEFAULT_LANG = "C.UTF-8"
#: what a standby's runner and worker start with
STANDBY_ENV = {**RUNNER_ENV, "LANG": DEFAULT_LANG}

#: (NanoCpus, Memory bytes) of a container; None: no limit
Shape = tuple[int | None, int | None]

_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class ContainerSite:
    """What every container of one agent shares."""

    agent_id: str
    kernel_package: Path
    pids_limit: int
    #: the agent puts the seccomp filter in each kernel's run/ (SECCOMP_FILE): the runner loads it
    seccomp: bool = False
    #: the engine's CgroupParent for every container ("": the engine's default), e.g. "/bai":
    #: the agent's cgroup, whose pids.max caps all kernels of the host together
    cgroup_parent: str = ""

    def kernel_labels(self, spec: KernelSpec, workdir: Path, uid: int) -> dict[str, str]:
        return {
            L_BACKEND: "docker",
            L_AGENT: self.agent_id,
            L_KERNEL: spec.kernel_id,
            L_SESSION: spec.session_id,
            LABEL + "session_name": spec.session_name,
            LABEL + "session_type": spec.session_type,
            LABEL + "cluster_role": spec.cluster_role,
            LABEL + "cluster_idx": str(spec.cluster_idx),
            LABEL + "image": spec.image,
            LABEL + "slots": json.dumps({k: str(v) for k, v in spec.slots.items()}),
            L_WORKDIR: str(workdir),
            L_UID: str(uid),
            L_SPEC: json.dumps(spec.to_json()),
        }

    def host_config(self, workdir: Path, network_mode: str,
                    work_propagation: str = "") -> dict[str, Any]:
        """``work_propagation``: the work dir's bind propagation (``rslave`` for a standby whose
        work dir is a shared mount, so that folders the agent binds beneath it at a claim
        reach the running container; ``docker_pool``); "": the engine's default (rprivate)."""
        if network_mode == "host" or network_mode.startswith("container:"):
            raise KernelCreationFailed(f"network mode {network_mode} would share a network "
                                       "namespace with the host or another container")
        return {
            "Binds": [
                f"{workdir}:{WORK_TARGET}:rw" + (f",{work_propagation}" if work_propagation
                                                   else ""),
                f"{run_dir_of(workdir)}:{RUN_TARGET}:rw",
                f"{self.kernel_package}:{KERNEL_PKG_TARGET}:ro",
            ],
            "NetworkMode": network_mode,
            **({"CgroupParent": self.cgroup_parent} if self.cgroup_parent else {}),
            "PidsLimit": self.pids_limit,
            "CapDrop": ["ALL"],
            "CapAdd": RUNNER_CAPS,
            "SecurityOpt": ["no-new-privileges"],
            # Podman asks for nofile=1048576 and a huge nproc by default, which fails where the
            # engine's own hard limits are lower; the agent's hard limits are what this host grants.
            "Ulimits": ulimits(),
            "AutoRemove": False,
        }

    def kernel_config(self, spec: KernelSpec, workdir: Path, uid: int,
                      network_mode: str, folders: Sequence[HostMount] = (),
                      gated: bool = False) -> dict[str, Any]:
        """The container created for a kernel that runs as ``uid``, with its storage
        ``folders`` bound (read-only ones with the read-only mount flag); ``gated``: its runner
        waits for a claim (``--pooled``) before anything of the kernel runs, so the agent can
        set up the container's network first (``DockerBackend._give_outbound``)."""
        host_config = {**self.host_config(workdir, network_mode), **limits_of(spec),
                       "PidsLimit": spec.pids_max(self.pids_limit)}
        if spec.device_nodes:  # only this kernel's GPUs (+ control nodes) in its device cgroup
            host_config["Devices"] = [{"PathOnHost": n, "PathInContainer": n,
                                       "CgroupPermissions": "rwm"} for n in spec.device_nodes]
            # the driver's libraries come with the NVIDIA container toolkit (docker --gpus);
            # an engine without it refuses the create, naming the driver, rather than giving a
            # container without a usable GPU
            uuids = [a["uuid"] for a in spec.accelerators if a.get("uuid")]
            if uuids:
                host_config["DeviceRequests"] = [{"Driver": "nvidia", "DeviceIDs": uuids,
                                                  "Capabilities": [["gpu"]]}]
            if spec.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"):
                # an MPS client reaches the host's MPS server through its pipe folder and IPC
                pipe = spec.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"
                host_config["Binds"] = [*host_config["Binds"], f"{pipe}:{pipe}:rw"]
                host_config["IpcMode"] = "host"
        if gated:  # slirp4netns answers DNS there (the host's resolvers may be on its loopback)
            host_config["Dns"] = [SLIRP_DNS]
        if folders:
            host_config["Mounts"] = [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only,
                 "BindOptions": {"Propagation": "rprivate"}} for m in folders]
        return {
            "Image": spec.image,
            "Cmd": [*runner_argv(uid, self.seccomp), *(["--pooled"] if gated else [])],
            "Entrypoint": [],
            "Env": [f"{k}={v}" for k, v in kernel_env(spec).items()],
            "WorkingDir": WORK_TARGET,
            "Hostname": hostname_of(spec),
            "Labels": self.kernel_labels(spec, workdir, uid),
            "StopSignal": "SIGTERM",
            "HostConfig": host_config,
        }

    def standby_config(self, image: str, shape: Shape, workdir: Path, uid: int,
                       attachable: bool = False) -> dict[str, Any]:
        """A standby container of ``image`` with limits ``shape``, work dir ``workdir`` and
        ``uid``: what ``kernel_config`` gives minus what a claim supplies (name, labels,
        hostname, env, storage folders, outbound network). ``attachable``: ``workdir`` is a
        shared mount, bound ``rslave``: folders bound beneath it on the host appear inside."""
        host_config = self.host_config(workdir, "none", "rslave" if attachable else "")
        cpu, mem = shape
        if cpu is not None:
            host_config["NanoCpus"] = cpu
        if mem is not None:
            host_config["Memory"] = host_config["MemorySwap"] = mem
        return {
            "Image": image,
            "Cmd": [*runner_argv(uid, self.seccomp), "--pooled"],
            "Entrypoint": [],
            "Env": [f"{k}={v}" for k, v in STANDBY_ENV.items()],
            "WorkingDir": WORK_TARGET,
            "Hostname": STANDBY_HOSTNAME,
            "Labels": {L_BACKEND: "docker", L_AGENT: self.agent_id, L_POOL: image,
                       L_WORKDIR: str(workdir), L_UID: str(uid)},
            "StopSignal": "SIGTERM",
            "HostConfig": host_config,
        }


def runner_argv(uid: int, seccomp: bool = False) -> list[str]:
    """The runner, started as the container's root, gives up root for ``uid`` (see RUNNER_CAPS);
    with ``seccomp`` it first loads the agent's filter, on top of the engine's own profile."""
    return ["python3", "-m", "bai.kernel", "--workdir", WORK_TARGET, "--state-dir", RUN_TARGET,
            "--user", f"{uid}:{uid}",
            *(["--seccomp", f"{RUN_TARGET}/{SECCOMP_FILE}"] if seccomp else [])]


def run_dir_of(workdir: Path) -> Path:
    """The runner's folder next to a kernel's work dir (``<scratch_root>/<kernel_id>/run``)."""
    return workdir.parent / RUN_DIR


def kernel_env(spec: KernelSpec) -> dict[str, str]:
    """The container environment of a kernel (the image's own variables come on top of it). The
    runner's PYTHONPATH is its own; the session's goes to the kernel's processes through
    ``BAI_KERNEL_PYTHONPATH`` (``bai.kernel``)."""
    extra = {"BAI_KERNEL_PYTHONPATH": spec.environ["PYTHONPATH"]} if spec.environ.get(
        "PYTHONPATH") else {}
    return {
        **spec.environ,
        **extra,
        **RUNNER_ENV,
        "LANG": spec.environ.get("LANG", DEFAULT_LANG),
        "BACKENDAI_KERNEL_ID": spec.kernel_id,
        "BACKENDAI_SESSION_ID": spec.session_id,
        "BACKENDAI_SESSION_NAME": spec.session_name,
        "BACKENDAI_CLUSTER_ROLE": spec.cluster_role,
        "BACKENDAI_CLUSTER_IDX": str(spec.cluster_idx),
    }


def poolable(spec: KernelSpec) -> bool:
    """Whether a standby can become this kernel as far as the spec goes: no GPUs (a container's
    devices are fixed when it is made) and an environment whose variables that a running
    interpreter cannot take on later (locale, ``PYTHON*``, loader, ...) are what the standby's
    runner and worker started with. Storage folders and outbound network are attached at the
    claim where the agent can (``DockerBackend._create`` decides)."""
    env = kernel_env(spec)
    return not spec.device_nodes and all(env[k] == STANDBY_ENV.get(k)
                                         for k in startup_fixed(env))


def attachable_folders(folders: Sequence[HostMount]) -> bool:
    """Whether ``folders`` can join a running standby: each beneath the work dir (the one mount
    of the container whose propagation the agent controls)."""
    return all(m.target.startswith(WORK_TARGET + "/") for m in folders)


def limits_of(spec: KernelSpec) -> dict[str, Any]:
    """``cpu`` -> ``NanoCpus``; ``mem`` -> ``Memory`` = ``MemorySwap`` (no swap on top)."""
    out: dict[str, Any] = {}
    cpu = spec.slots.get("cpu")
    if cpu is not None and cpu > 0:
        out["NanoCpus"] = int(Decimal(cpu) * 1_000_000_000)
    mem = spec.slots.get("mem")
    if mem is not None and mem > 0:
        mem_bytes = int(mem)
        if mem_bytes < 6 * 1024 * 1024:
            raise KernelCreationFailed(
                f"mem={mem_bytes} bytes is below the 6 MiB a container needs at least"
            )
        out["Memory"] = out["MemorySwap"] = mem_bytes
    return out


def shape_of(limits: dict[str, Any]) -> Shape:
    return (limits.get("NanoCpus"), limits.get("Memory"))


def hostname_of(spec: KernelSpec) -> str:
    name = _HOSTNAME_BAD.sub("-", spec.session_name.lower()).strip("-")[:63].strip("-")
    return name or spec.kernel_id[:12]


def kernel_of_name(name: str) -> str:
    """The kernel id of a container name (``/bai-kernel-<id>``), or ``""``."""
    name = name.lstrip("/")
    return name[len(KERNEL_PREFIX):] if name.startswith(KERNEL_PREFIX) else ""


def ulimits() -> list[dict[str, Any]]:
    """nofile and nproc no higher than the agent's own hard limits (and at most 1048576 and
    32768: Podman lowers its own nproc to 32768, and a runc without CAP_SYS_RESOURCE cannot raise
    a limit above the engine's). nproc counts the uid's processes host-wide, so it stays large;
    the pids cgroup limit is what bounds a kernel."""
    out = []
    for name, which, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 1048576),
        ("nproc", resource.RLIMIT_NPROC, 32768),
    ):
        hard = resource.getrlimit(which)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        out.append({"Name": name, "Soft": value, "Hard": value})
    return out
