"""CUDA accelerators: the node's NVIDIA GPUs found through NVML, or a mock for tests.

Slots: ``cuda.device`` counts whole GPUs; ``cuda.shares`` counts fractions, ``shares_per_device``
of them to one GPU (default 4, so the guide's ``-r cuda.shares=2`` is half a device).

The agent picks concrete devices for each kernel: whole devices first-fit (lowest free index);
shares best-fit (the device with the least room that still takes the request, so that free
devices stay whole for later ``cuda.device`` requests instead of being fragmented). What a
kernel holds is written into its spec (``KernelSpec.accelerators``), which the runtime keeps in
its labels, so an agent restart rebuilds it (``restore``) and every exit path frees it
(``release``).

Detection uses ``nvidia-ml-py`` (module ``pynvml``), imported lazily and optional (extra ``gpu``):
no library, no driver or no GPU means no accelerator slots and no error. ``MockCudaDevices`` (the
settings' ``slot_cuda_device``/``slot_cuda_shares``) stays for tests and is named as a mock.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

log = logging.getLogger(__name__)

#: one GPU = this many ``cuda.shares`` (the guide: ``cuda.shares=2`` is half a device)
DEFAULT_SHARES_PER_DEVICE = 4
#: device nodes every CUDA process needs besides its own ``/dev/nvidiaN``
COMMON_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory: int  # bytes
    #: its device node (``/dev/nvidia<minor>``)
    node: str = ""
    #: NVML's compute mode (3: EXCLUSIVE_PROCESS, where only the MPS server holds a context)
    compute_mode: int = 0


@dataclass
class Detection:
    gpus: list[Gpu] = field(default_factory=list)
    #: why there are none (empty when there are)
    reason: str = ""
    mock: bool = False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def detect_nvidia(nvml: Any = None) -> Detection:
    """The NVIDIA GPUs NVML reports. ``nvml``: a module with pynvml's calls (tests pass a fake);
    by default ``pynvml`` is imported here, lazily: its absence, a missing driver or an NVML
    error all mean no GPUs (``reason`` says which), never an exception."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return Detection(reason="nvidia-ml-py is not installed (pip install 'bai[gpu]')")
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...
        return Detection(reason=f"no NVIDIA driver ({e})")
    try:
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                minor = int(nvml.nvmlDeviceGetMinorNumber(h))
            except Exception:
                minor = i
            try:
                mode = int(nvml.nvmlDeviceGetComputeMode(h))
            except Exception:
                mode = 0
            gpus.append(Gpu(index=i, uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                            name=_text(nvml.nvmlDeviceGetName(h)),
                            memory=int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                            node=f"/dev/nvidia{minor}", compute_mode=mode))
    except Exception as e:
        return Detection(reason=f"NVML could not list devices ({e})")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return Detection(gpus=gpus, reason="" if gpus else "NVML reports no GPU")


EXCLUSIVE_PROCESS = 3  # pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS


def bypass_gap(gpus: list[Gpu]) -> str:
    """Where a share session could go around MPS (empty: it cannot)."""
    open_ = [str(g.index) for g in gpus if g.compute_mode != EXCLUSIVE_PROCESS]
    if not open_:
        return ""
    return (f"cuda.shares: a session can bypass MPS and its share on GPU {', '.join(open_)} "
            "(compute mode not EXCLUSIVE_PROCESS: nvidia-smi -c EXCLUSIVE_PROCESS closes it)")


def mps_gap(gpus: list[Gpu]) -> str:
    """Why this host cannot enforce fractional shares (empty: it can). Enforcement is NVIDIA
    MPS: a control daemon outside the kernel caps each client's device memory
    (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``) and compute (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``)."""
    if not gpus:
        return ""
    if os.environ.get("BAI_CUDA_SHARES_UNENFORCED") == "1":  # the operator accepts the gap
        return ""
    if shutil.which("nvidia-cuda-mps-control") is None:
        return ("cuda.shares not offered: nvidia-cuda-mps-control (NVIDIA MPS) is not installed, "
                "so nothing outside a session could hold it to its share of device memory")
    return ""


@dataclass
class Grant:
    """One device (or part of one) a kernel holds."""
    index: int
    uuid: str
    shares: Decimal  # == shares_per_device for a whole device
    whole: bool

    def to_json(self) -> dict[str, str]:
        return {"kind": "cuda", "index": str(self.index), "uuid": self.uuid,
                "shares": str(self.shares), "whole": "1" if self.whole else "0"}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Grant:
        return cls(index=int(obj["index"]), uuid=str(obj.get("uuid", "")),
                   shares=Decimal(str(obj["shares"])), whole=str(obj.get("whole")) == "1")


class AllocationError(ValueError):
    pass


class CudaDevices:
    """Which kernel holds which GPU (or which shares of it) on this node."""

    def __init__(self, gpus: list[Gpu], shares_per_device: int = DEFAULT_SHARES_PER_DEVICE,
                 *, shares_enforced: bool = True, mock: bool = False,
                 mps_pipe_dir: str = ""):
        self.gpus = list(gpus)
        self.per = Decimal(shares_per_device)
        self.shares_enforced = shares_enforced
        self.mock = mock
        self.mps_pipe_dir = mps_pipe_dir
        #: kernel id -> what it holds
        self.held: dict[str, list[Grant]] = {}

    # --- capacity ------------------------------------------------------------------------

    def slots(self, *, offer_shares: bool = True) -> dict[str, Decimal]:
        if not self.gpus:
            return {}
        out = {"cuda.device": Decimal(len(self.gpus))}
        if offer_shares:
            out["cuda.shares"] = Decimal(len(self.gpus)) * self.per
        return out

    def used(self, index: int) -> Decimal:
        return sum((g.shares for gs in self.held.values() for g in gs if g.index == index),
                   Decimal(0))

    # --- allocation ----------------------------------------------------------------------

    def allocate(self, kernel_id: str, devices: Decimal = Decimal(0),
                 shares: Decimal = Decimal(0)) -> list[Grant]:
        """Pick devices for a kernel; raises AllocationError (naming the slot) if short."""
        if kernel_id in self.held:
            return self.held[kernel_id]
        grants: list[Grant] = []
        used = {g.index: self.used(g.index) for g in self.gpus}

        def take_whole(n: int, slot: str) -> None:
            free = [g for g in self.gpus if used[g.index] == 0]  # first-fit: lowest index
            if len(free) < n:
                raise AllocationError(
                    f"{slot}: {n} whole device(s) requested, {len(free)} free of {len(self.gpus)}")
            for g in free[:n]:
                used[g.index] = self.per
                grants.append(Grant(g.index, g.uuid, self.per, whole=True))

        if devices > 0:
            take_whole(int(devices), "cuda.device")
        if shares > 0:
            whole, rest = divmod(shares, self.per)
            if whole:
                take_whole(int(whole), "cuda.shares")
            if rest:
                fits = [g for g in self.gpus if self.per - used[g.index] >= rest]
                if not fits:
                    raise AllocationError(
                        f"cuda.shares: no device has {rest} free shares (of {self.per} each)")
                best = min(fits, key=lambda g: (self.per - used[g.index], g.index))  # best-fit
                used[best.index] += rest
                grants.append(Grant(best.index, best.uuid, rest, whole=False))
        if grants:
            self.held[kernel_id] = grants
        return grants

    def restore(self, kernel_id: str, accelerators: list[dict[str, Any]]) -> None:
        grants = [Grant.from_json(a) for a in accelerators if a.get("kind") == "cuda"]
        if grants:
            self.held[kernel_id] = grants

    def release(self, kernel_id: str) -> None:
        self.held.pop(kernel_id, None)

    # --- what the kernel sees ------------------------------------------------------------

    def environ(self, grants: list[Grant]) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` (UUIDs of real GPUs, indices of mock ones) and, for a
        fraction, the MPS client limits: memory and compute of its share."""
        if not grants:
            return {}
        ids = [str(g.index) if self.mock or not g.uuid else g.uuid for g in grants]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(ids), "NVIDIA_VISIBLE_DEVICES": ",".join(ids)}
        part = [g for g in grants if not g.whole]
        if part and not self.mock:
            by_index = {g.index: g for g in self.gpus}
            limits = []
            pct = 100
            for pos, g in enumerate(grants):
                if g.whole:
                    continue
                mem = by_index[g.index].memory * g.shares / self.per
                mib = int((mem / 2**20).to_integral_value(rounding=ROUND_CEILING))
                limits.append(f"{pos}={mib}M")  # ordinal as the kernel sees it
                pct = min(pct, int(100 * g.shares / self.per))
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(limits)
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(pct, 1))
            if self.mps_pipe_dir:
                env["CUDA_MPS_PIPE_DIRECTORY"] = self.mps_pipe_dir
        return env

    def nodes(self, grants: list[Grant]) -> list[str]:
        """Host device nodes the kernel may open: its GPUs' and the shared control nodes."""
        if not grants or self.mock:
            return []
        by_index = {g.index: g for g in self.gpus}
        own = [by_index[g.index].node for g in grants if by_index[g.index].node]
        return sorted(set(own)) + [n for n in COMMON_NODES if os.path.exists(n)]

    def describe(self, grants: list[Grant]) -> list[dict[str, str]]:
        """What ``info``/``ps`` show: the devices by index, model and share."""
        by_index = {g.index: g for g in self.gpus}
        return [{"index": str(g.index), "name": by_index[g.index].name if g.index in by_index
                 else "", "uuid": g.uuid, "shares": str(g.shares)} for g in grants]


class MockCudaDevices(CudaDevices):
    """A MOCK accelerator for tests: ``count`` fake GPUs, named as mocks, with no device nodes
    and unenforced shares."""

    def __init__(self, count: int, shares_per_device: int = DEFAULT_SHARES_PER_DEVICE):
        super().__init__([Gpu(index=i, uuid="", name="mock-cuda-device", memory=0)
                          for i in range(count)], shares_per_device, mock=True,
                         shares_enforced=False)


def host_nodes_present() -> list[str]:
    return sorted(glob.glob("/dev/nvidia[0-9]*"))
