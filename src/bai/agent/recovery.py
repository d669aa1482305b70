"""Rebuilding the agent's view after a restart, and dropping kernels the manager forgot.

On start the agent asks its backend for every instance it made (``list()``, from labels):
running ones are adopted (slots, devices and uploaded files restored from the labels and the work
dir), ones that ended while no agent watched are reported as ``kernel_terminated`` and cleaned up.

The manager's heartbeat answer may carry ``known_kernels``: the kernels of this agent it wants kept.
Running kernels that were in the heartbeat but are not in that list are destroyed with reason
``terminated-unknown-kernel`` (sessions removed while the agent was down leave nothing behind).
"""

from __future__ import annotations

import logging

from bai.agent.backends.base import InstanceState, RuntimeBackend
from bai.agent.kernels import KernelRegistry

log = logging.getLogger(__name__)


async def recover(registry: KernelRegistry, backend: RuntimeBackend) -> dict[str, int]:
    adopted = ended = 0
    for inst in await backend.list():
        if inst.kernel_id in registry.records:
            continue
        if inst.state == InstanceState.RUNNING:
            registry.adopt(inst)
            adopted += 1
        else:
            await registry.report_ended(inst)
            ended += 1
    if adopted or ended:
        log.info("recovered %d running kernel(s); %d ended while the agent was away", adopted, ended)
    return {"adopted": adopted, "ended": ended}


async def drop_unknown(registry: KernelRegistry, sent: list[str], known: list[str]) -> list[str]:
    """Destroy the running kernels that were reported in ``sent`` but are not ``known``."""
    keep = {str(k) for k in known}
    stale = [k for k in sent if k not in keep and k in registry.records
             and registry.records[k].status == "RUNNING"]
    for kernel_id in stale:
        log.info("kernel %s is unknown to the manager; destroying it", kernel_id)
        try:
            await registry.destroy(kernel_id, reason="terminated-unknown-kernel")
        except Exception:
            log.exception("could not destroy stale kernel %s", kernel_id)
    return stale
