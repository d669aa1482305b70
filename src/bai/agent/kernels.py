"""The kernels on this node: creation, termination and the events they produce.

Per kernel the agent reports, in order: ``kernel_preparing`` -> (``kernel_pulling``) ->
``kernel_prepared`` -> ``kernel_creating`` -> ``kernel_started``, or ``kernel_creation_failed``;
later exactly one ``kernel_terminated`` (reason ``user-requested`` or whatever the destroy call
gave, ``self-terminated``, ``oom-killed``, ``already-terminated`` for a kernel this agent does not
know, ``terminated-unknown-kernel`` for one the manager no longer knows).

``create`` is idempotent on the kernel id and returns at once (the work runs in a task);
``destroy`` is idempotent, cancels a creation in progress, and answers with the exit code and the
last stats. A kernel that ends by itself is cleaned up (scratch space, cgroups) right away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bai.agent import statefiles
from bai.agent.backends.base import (
    Instance,
    InstanceState,
    KernelCreationFailed,
    KernelSpec,
    RuntimeBackend,
)
from bai.agent.manager_link import ManagerLink
from bai.agent.resources.accelerator import AllocationError, CudaDevices
from bai.common.errors import AgentError, KernelNotFound
from bai.common.events import KernelEvent
from bai.common.resources import ResourceSlot

log = logging.getLogger(__name__)
#: the files uploaded so far (a batch run's default script), kept in the runner's folder
UPLOADED = "uploaded.json"

TOMBSTONES = 5000
#: a creation's progress events (preparing ... creating) wait this long before they are sent:
#: a kernel that starts sooner (a pooled runner: ~10 ms) reports them with kernel_started in one
#: batch, one manager round trip instead of two
PROGRESS_HOLD_SECONDS = 0.05


@dataclass
class KernelRecord:
    spec: KernelSpec
    #: PREPARING, CREATING, RUNNING, TERMINATING, TERMINATED, ERROR
    status: str = "PREPARING"
    instance: Instance | None = None
    uploaded: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    exit_code: int | None = None
    #: why it ended, once it has ("oom-killed", "self-terminated", "user-requested", ...)
    exit_reason: str = ""
    stats: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending_exit: Instance | None = None

    @property
    def kernel_id(self) -> str:
        return self.spec.kernel_id

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "session_id": self.spec.session_id,
            "status": self.status,
            "container_id": self.instance.container_id if self.instance else "",
            "exit_code": self.exit_code,
        }


class HeldEvents:
    """A creation's progress events, held for ``PROGRESS_HOLD_SECONDS`` (then sent as they
    come) so that a quick start sends them together with its outcome."""

    def __init__(self, registry: KernelRegistry, spec: KernelSpec) -> None:
        self.registry = registry
        self.spec = spec
        self.held: list[tuple[str, str]] | None = []
        self._timer = asyncio.get_running_loop().call_later(PROGRESS_HOLD_SECONDS, self.flush)

    def emit(self, name: str, reason: str = "") -> None:
        if self.held is None:
            self.registry.emit(name, self.spec, reason=reason)
        else:
            self.held.append((name, reason))

    def flush(self) -> None:
        """Send what is held (in order) and stop holding."""
        self._timer.cancel()
        held, self.held = self.held, None
        for name, reason in held or ():
            self.registry.emit(name, self.spec, reason=reason)


class KernelRegistry:
    def __init__(
        self,
        agent_id: str,
        backend: RuntimeBackend,
        link: ManagerLink,
        capacity: ResourceSlot,
        devices: CudaDevices | None = None,
    ):
        self.agent_id = agent_id
        self.backend = backend
        self.link = link
        self.capacity = capacity
        self.devices = devices
        self.records: dict[str, KernelRecord] = {}
        #: kernels that ended: id -> the DELETE answer
        self.ended: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    # --- queries ---------------------------------------------------------------------------

    def get(self, kernel_id: str) -> KernelRecord:
        rec = self.records.get(kernel_id)
        if rec is None:
            raise KernelNotFound(f"no kernel {kernel_id} on agent {self.agent_id}")
        return rec

    def live_ids(self) -> list[str]:
        return list(self.records)

    def occupied(self) -> ResourceSlot:
        return ResourceSlot.total(r.spec.slots for r in self.records.values())

    def listing(self) -> list[dict[str, Any]]:
        out = [r.to_json() for r in self.records.values()]
        out += [{"kernel_id": kid, "session_id": e.get("session_id", ""), "status": "TERMINATED",
                 "container_id": "", "exit_code": e.get("exit_code")}
                for kid, e in self.ended.items()]
        return out

    def emit(self, name: str, spec: KernelSpec, reason: str = "",
             exit_code: int | None = None, **data: Any) -> None:
        self.link.post_event(KernelEvent(
            name=name, agent_id=self.agent_id, kernel_id=spec.kernel_id,
            session_id=spec.session_id, reason=reason, exit_code=exit_code, data=data))

    # --- create ----------------------------------------------------------------------------

    def create(self, spec: KernelSpec) -> KernelRecord:
        """Start creating the kernel (idempotent); progress goes out as events."""
        rec = self.records.get(spec.kernel_id)
        if rec is not None:
            return rec
        self.ended.pop(spec.kernel_id, None)
        rec = self.records[spec.kernel_id] = KernelRecord(spec)
        rec.task = asyncio.create_task(self._create(rec))
        self.tell_free()
        return rec

    def tell_free(self) -> None:
        """Tell the backend what is free now (it sizes its pre-started capacity by it)."""
        self.backend.slots_free(self.capacity - self.occupied())

    async def _create(self, rec: KernelRecord) -> None:
        spec = rec.spec
        held = HeldEvents(self, spec)
        held.emit("kernel_preparing")
        try:
            self._reserve(rec)
            if await self.backend.ensure_image(spec):
                held.emit("kernel_pulling", reason=spec.image)
            held.emit("kernel_prepared")
            rec.status = "CREATING"
            held.emit("kernel_creating")
            inst = await self.backend.create(spec)
        except asyncio.CancelledError:
            held.flush()
            raise
        except Exception as e:
            held.flush()
            if not isinstance(e, KernelCreationFailed):
                log.exception("creating kernel %s failed", spec.kernel_id)
            reason = str(e) or type(e).__name__
            rec.status = "ERROR"
            self.emit("kernel_creation_failed", spec, reason=reason, error=reason)
            with contextlib.suppress(Exception):
                await self.backend.destroy(spec.kernel_id)
            self._forget(rec, None, None)
            return
        rec.instance = inst
        rec.status = "RUNNING"
        held.flush()
        # the session's service ports are the manager's (image + user), not reported here
        self.emit("kernel_started", spec, container_id=inst.container_id)
        if inst.state == InstanceState.EXITED:
            rec.pending_exit = inst
        if rec.pending_exit is not None:
            asyncio.create_task(self.on_exit(rec.pending_exit))

    def _reserve(self, rec: KernelRecord) -> None:
        """Refuse what does not fit this node (the manager should never ask) and pick devices."""
        others = ResourceSlot.total(r.spec.slots for r in self.records.values() if r is not rec)
        wanted = ResourceSlot(rec.spec.slots)
        short = wanted.shortfall(self.capacity - others)
        if short:
            slot, (req, free) = next(iter(short.items()))
            raise KernelCreationFailed(
                f"not enough {slot} on agent {self.agent_id}: {req} requested, {free} free")
        if self.devices is not None:
            self._pick_devices(rec, self.devices)

    def _pick_devices(self, rec: KernelRecord, devices: CudaDevices) -> None:
        """Concrete GPUs for the kernel, written into its spec (environment, device nodes and
        ``accelerators``, which the runtime's labels keep for an agent restart)."""
        n = rec.spec.slots.get("cuda.device", Decimal(0))
        shares = Decimal(0) if devices.mock else rec.spec.slots.get("cuda.shares", Decimal(0))
        try:
            grants = devices.allocate(rec.kernel_id, n, shares)
        except AllocationError as e:
            raise KernelCreationFailed(f"{e} on agent {self.agent_id}") from None
        if grants:
            rec.spec.environ = {**rec.spec.environ, **devices.environ(grants)}
            rec.spec.device_nodes = devices.nodes(grants)
            rec.spec.accelerators = [g.to_json() for g in grants]

    # --- termination -----------------------------------------------------------------------

    async def destroy(self, kernel_id: str, reason: str = "user-requested") -> dict[str, Any]:
        rec = self.records.get(kernel_id)
        if rec is None:
            if kernel_id in self.ended:
                return self.ended[kernel_id]
            # not ours (or lost): clean whatever is left and let the manager move on
            inst = await self.backend.destroy(kernel_id)
            answer = {"kernel_id": kernel_id, "exit_code": inst.exit_code if inst else None,
                      "stats": None}
            if inst is not None:
                self.link.post_event(KernelEvent(
                    name="kernel_terminated", agent_id=self.agent_id, kernel_id=kernel_id,
                    session_id=inst.session_id, reason="already-terminated",
                    exit_code=inst.exit_code))
            return answer
        async with rec.lock:
            if kernel_id in self.ended:
                return self.ended[kernel_id]
            rec.status = "TERMINATING"
            if rec.task is not None and not rec.task.done():
                rec.task.cancel()
                await asyncio.gather(rec.task, return_exceptions=True)
            stats = await self._last_stats(rec)
            try:
                inst = await self.backend.destroy(kernel_id)
            except Exception as e:
                log.exception("destroying kernel %s failed", kernel_id)
                rec.status = "RUNNING" if rec.instance else rec.status
                raise AgentError(f"could not destroy kernel {kernel_id}: {e}") from e
            exit_code = inst.exit_code if inst else None
            if inst is not None and inst.exit_reason == "oom-killed":
                reason = "oom-killed"  # it had run out of memory before it was destroyed
            rec.exit_reason = reason
            self.emit("kernel_terminated", rec.spec, reason=reason, exit_code=exit_code)
            answer = self._forget(rec, exit_code, stats)
            answer["exit_reason"] = reason
            return answer

    async def on_exit(self, inst: Instance) -> None:
        """The backend noticed that a kernel ended by itself."""
        rec = self.records.get(inst.kernel_id)
        if rec is None:
            return
        if rec.status in ("PREPARING", "CREATING"):
            rec.pending_exit = inst  # _create reports it after kernel_started
            return
        async with rec.lock:
            if inst.kernel_id in self.ended or rec.status != "RUNNING":
                return
            rec.status = "TERMINATING"
            # known before the instance is removed, so an execution watching it can tell why
            rec.exit_reason = inst.exit_reason or "self-terminated"
            stats = await self._last_stats(rec)
            with contextlib.suppress(Exception):
                await self.backend.destroy(inst.kernel_id)
            self.emit("kernel_terminated", rec.spec, reason=rec.exit_reason,
                      exit_code=inst.exit_code)
            self._forget(rec, inst.exit_code, stats)

    async def _last_stats(self, rec: KernelRecord) -> dict[str, Any] | None:
        if rec.instance is None:
            return None
        try:
            raw = await asyncio.wait_for(self.backend.stats(rec.kernel_id), 5)
        except Exception:
            return None
        return {"status": "terminated", **raw, **self.device_stats(rec)}

    def device_stats(self, rec: KernelRecord) -> dict[str, Any]:
        """The GPUs the kernel holds, as its statistics name them (``info``, ``--stats``)."""
        if self.devices is None or not rec.spec.accelerators:
            return {}
        names = {g.index: g.name for g in self.devices.gpus}
        shown = []
        for a in rec.spec.accelerators:
            i = int(a["index"])
            part = "" if a.get("whole") == "1" else f" ({a['shares']}/{self.devices.per} shares)"
            shown.append(f"cuda:{i} {names.get(i, '')}{part}".replace("  ", " "))
        return {"cuda_devices": ", ".join(shown)}

    def _forget(self, rec: KernelRecord, exit_code: int | None,
                stats: dict[str, Any] | None) -> dict[str, Any]:
        rec.status = "TERMINATED" if rec.status != "ERROR" else "ERROR"
        rec.exit_code = exit_code
        if self.records.pop(rec.kernel_id, None) is not None:
            self.tell_free()
        if self.devices is not None:
            self.devices.release(rec.kernel_id)
        answer = {"kernel_id": rec.kernel_id, "exit_code": exit_code, "stats": stats,
                  "session_id": rec.spec.session_id}
        self.ended[rec.kernel_id] = answer
        while len(self.ended) > TOMBSTONES:
            self.ended.popitem(last=False)
        return answer

    # --- recovery --------------------------------------------------------------------------

    def adopt(self, inst: Instance) -> KernelRecord:
        """Take over a running kernel found after an agent restart."""
        spec = spec_from_labels(inst)
        rec = KernelRecord(spec, status="RUNNING", instance=inst)
        rec.uploaded = read_uploaded(inst)
        if self.devices is not None and spec.accelerators:
            self.devices.restore(spec.kernel_id, spec.accelerators)
        self.records[spec.kernel_id] = rec
        return rec

    async def report_ended(self, inst: Instance) -> None:
        """A kernel that ended while no agent watched: report it and clean up."""
        spec = spec_from_labels(inst)
        with contextlib.suppress(Exception):
            await self.backend.destroy(inst.kernel_id)
        self.emit("kernel_terminated", spec, reason=inst.exit_reason or "self-terminated",
                  exit_code=inst.exit_code)
        rec = KernelRecord(spec, status="TERMINATED", instance=inst)
        self._forget(rec, inst.exit_code, None)

    # --- uploads ---------------------------------------------------------------------------

    def note_uploaded(self, rec: KernelRecord, paths: list[str]) -> None:
        for p in paths:
            if p not in rec.uploaded:
                rec.uploaded.append(p)
        if rec.instance is not None:  # in the runner's folder, never through a planted link
            with contextlib.suppress(OSError):
                statefiles.write_text(rec.instance.runner_socket.parent, UPLOADED,
                                      json.dumps(rec.uploaded))


def spec_from_labels(inst: Instance) -> KernelSpec:
    try:
        return KernelSpec.from_json(json.loads(inst.labels["bai.spec"]))
    except (KeyError, ValueError, TypeError):
        return KernelSpec(kernel_id=inst.kernel_id, session_id=inst.session_id,
                          session_name=inst.labels.get("bai.session_name", ""),
                          session_type="INTERACTIVE", image=inst.labels.get("bai.image", ""),
                          slots={})


def read_uploaded(inst: Instance) -> list[str]:
    try:
        data = json.loads(statefiles.read_tail(inst.runner_socket.parent, UPLOADED, 1 << 24))
        return [str(x) for x in data]
    except (OSError, ValueError, TypeError):
        return []
