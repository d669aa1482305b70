"""The runtime backend interface (DESIGN.md section 3).

A backend turns a ``KernelSpec`` into a running instance whose kernel runner listens on
``instance.runner_socket``, and tears it down again. Everything the agent needs to rebuild its view
after a restart is written by the backend as labels (container labels for docker, a
``labels.json`` next to the sandbox for process) and read back by ``list()``.

Idempotency and errors:

* ``create`` with a kernel id that already exists returns the existing instance.
* ``destroy`` of an unknown or already-gone kernel returns ``None`` without error; otherwise it
  stops the instance, removes it and its scratch space, and returns the exit code it had.
* ``inspect`` of an unknown kernel raises ``KernelNotFound``.
* Failures to create raise ``KernelCreationFailed`` with a reason a user can read ("image
  python:9 is not present and cannot be pulled", "cgroup memory limit could not be set", ...).

Talking to the runner: the agent calls ``open_channel(instance)`` for each execution. The default
connects to ``instance.runner_socket`` (JSON lines, see ``bai.kernel``), which suits every backend
whose runner listens on ``<workdir>/.bai/runner.sock``; the dummy backend overrides it.

Recovery: ``Instance.labels`` should carry ``bai.spec`` (``json.dumps(spec.to_json())``) so that a
restarted agent can restore the kernel's slots and names; without it the agent still adopts the
kernel, with empty slots. Exited instances that ``list()`` returns are reported as
``kernel_terminated`` (``exit_reason``/``exit_code``) and then destroyed by the agent.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bai.common.errors import BaiError

if TYPE_CHECKING:
    from bai.agent.runner_channel import RunnerChannel


class KernelCreationFailed(BaiError):
    code = "kernel-creation-failed"
    status = 500
    title = "The kernel could not be created."


class InstanceState(str, enum.Enum):
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"


@dataclass
class KernelSpec:
    kernel_id: str
    session_id: str
    session_name: str
    session_type: str  # INTERACTIVE | BATCH
    image: str
    slots: dict[str, Decimal]
    image_labels: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    startup_command: str | None = None
    bootstrap_script: str | None = None
    network: bool = False
    cluster_role: str = "main"
    cluster_idx: int = 0
    #: the owner's policy bounds (0 = the agent's own default / none): processes + threads of
    #: the kernel, and bytes its work dir may hold
    pids_limit: int = 0
    disk_quota: int = 0
    #: storage folders to bind: ``[{name, host, relpath, kernel_path, mode}]`` (``agent/mounts.py``)
    mounts: list[dict[str, str]] = field(default_factory=list)
    #: GPUs (or shares of one) the agent picked: ``[{kind, index, uuid, shares, whole}]``
    #: (``agent/resources/accelerator.py``; kept in the labels so a restart rebuilds them)
    accelerators: list[dict[str, str]] = field(default_factory=list)
    #: host device nodes the kernel may open (its ``/dev/nvidiaN`` + control nodes)
    device_nodes: list[str] = field(default_factory=list)

    def pids_max(self, default: int) -> int:
        """The kernel's pids cap: the policy's, or the agent's ``default`` when it sets none."""
        return self.pids_limit if self.pids_limit > 0 else default

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KernelSpec:
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        known["slots"] = {k: Decimal(str(v)) for k, v in (obj.get("slots") or {}).items()}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["slots"] = {k: str(v) for k, v in self.slots.items()}
        return out


@dataclass
class Instance:
    kernel_id: str
    session_id: str
    state: InstanceState
    #: host path of the kernel's work directory (mounted at /home/work in containers)
    workdir: Path
    #: host path of the runner's unix socket
    runner_socket: Path
    container_id: str = ""
    exit_code: int | None = None
    #: why it exited, when known: "oom-killed", "self-terminated", "killed"
    exit_reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)


#: Called by a backend when it notices that an instance exited by itself.
ExitCallback = Callable[[Instance], Awaitable[None]]


class RuntimeBackend(abc.ABC):
    name: str = "base"

    @abc.abstractmethod
    async def start(self, on_exit: ExitCallback) -> None:
        """Connect to the runtime; begin watching instances and call ``on_exit`` for each exit."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop watching. Running instances are left running (agent restarts keep kernels)."""

    @abc.abstractmethod
    def isolation(self) -> dict[str, Any]:
        """What this backend can enforce here, e.g. {"cgroup": "v1", "memory": true, ...}."""

    @abc.abstractmethod
    async def ensure_image(self, spec: KernelSpec) -> bool:
        """Make the image present. Returns True when it had to be pulled (for `kernel_pulling`)."""

    @abc.abstractmethod
    async def create(self, spec: KernelSpec) -> Instance:
        """Create and start the instance, with the runner listening. Idempotent on kernel_id."""

    @abc.abstractmethod
    async def destroy(self, kernel_id: str) -> Instance | None:
        """Stop and remove the instance and its scratch space. Idempotent."""

    @abc.abstractmethod
    async def inspect(self, kernel_id: str) -> Instance:
        """Current state; raises KernelNotFound."""

    @abc.abstractmethod
    async def list(self) -> list[Instance]:
        """All instances this backend made on this node, from the labels it wrote."""

    @abc.abstractmethod
    async def stats(self, kernel_id: str) -> dict[str, Any]:
        """Resource usage: {"cpu_used": msec, "mem_max_bytes": n, "mem_cur_bytes": n, ...}."""

    @abc.abstractmethod
    async def logs(self, kernel_id: str) -> str:
        """What the kernel's main process printed outside executions."""

    def slots_free(self, free: Mapping[str, Decimal]) -> None:
        """What the agent has free now (the registry says so after each change): a backend may
        keep pre-started capacity in proportion. Default: nothing to do."""

    async def open_channel(self, instance: Instance) -> RunnerChannel:
        """A conversation with the instance's runner (default: its unix socket).

        Raises ``RunnerUnavailable`` when the runner cannot be reached."""
        from bai.agent.runner_channel import connect_runner

        return await connect_runner(instance.runner_socket)
