"""What this node offers: resource slots from the host (cpu, mem) and the (mock) accelerator,
each overridable in the agent's settings (``slot_cpu``, ``slot_mem``, ``slot_cuda_device``,
``slot_cuda_shares``)."""

from __future__ import annotations

import os
from decimal import Decimal

import psutil

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
