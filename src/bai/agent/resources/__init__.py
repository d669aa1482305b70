"""What this node offers: resource slots from the host (cpu, mem) and its NVIDIA GPUs
(``accelerator.py``), each overridable in the agent's settings (``slot_cpu``, ``slot_mem``; the
``slot_cuda_*`` overrides make a MOCK accelerator instead of the detected one)."""

from __future__ import annotations

import os
from decimal import Decimal

import psutil

from bai.agent.resources.accelerator import (
    CudaDevices,
    bypass_gap,
    MockCudaDevices,
    detect_nvidia,
    mps_gap,
)
from bai.agent.settings import AgentSettings
from bai.common.resources import ResourceSlot, parse_amount


def host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_memory() -> int:
    return int(psutil.virtual_memory().total)


def detect_slots(settings: AgentSettings) -> ResourceSlot:
    """The node's capacity: host cpu and mem, with the settings' overrides and mock devices."""
    slots = ResourceSlot({"cpu": Decimal(host_cpus()), "mem": Decimal(host_memory())})
    for slot, raw in settings.slot_overrides().items():
        slots[slot] = parse_amount(slot, raw)
    return slots


def detect_accelerator(settings: AgentSettings, nvml: object = None
                       ) -> tuple[CudaDevices | None, list[str]]:
    """The node's CUDA devices and the gap lines about them: a mock when the settings give
    ``slot_cuda_device``, else the GPUs NVML finds (none, without an error, where there is no
    library, driver or GPU). ``cuda.shares`` is offered only where MPS can enforce it."""
    overrides = settings.slot_overrides()
    if "cuda.device" in overrides or "cuda.shares" in overrides:
        n = int(parse_amount("cuda.device", overrides.get("cuda.device", "0")))
        return (MockCudaDevices(n, settings.cuda_shares_per_device) if n > 0 else None), []
    if not settings.cuda_detect:
        return None, []
    found = detect_nvidia(nvml)
    if not found.gpus:
        return None, []
    gap = mps_gap(found.gpus)
    gaps = [gap] if gap else [g for g in [bypass_gap(found.gpus)] if g]
    return CudaDevices(found.gpus, settings.cuda_shares_per_device, shares_enforced=not gap,
                       mps_pipe_dir=settings.cuda_mps_pipe_dir), gaps


def accelerator_slots(devices: CudaDevices | None) -> dict[str, Decimal]:
    if devices is None or devices.mock:
        return {}  # a mock's slots are the settings' overrides
    return devices.slots(offer_shares=devices.shares_enforced)
