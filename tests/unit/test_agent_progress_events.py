"""A kernel creation's events: progress (preparing ... creating) is held briefly so that a quick
start reports it in the same batch as kernel_started; a slow one reports progress first."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from bai.agent import kernels
from bai.agent.backends.base import KernelSpec
from bai.agent.backends.dummy import DummyBackend
from bai.agent.kernels import KernelRegistry
from bai.agent.settings import AgentSettings
from bai.common.resources import ResourceSlot


class BatchingLink:
    """Groups the events posted in one run of the event loop, as the real link's sender sees
    them when it wakes."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._open = False

    def post_event(self, event) -> None:
        if not self._open:
            self.batches.append([])
            self._open = True
            asyncio.get_running_loop().call_soon(self._close)
        self.batches[-1].append(event.name)

    def _close(self) -> None:
        self._open = False


def spec() -> KernelSpec:
    return KernelSpec(kernel_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()),
                      session_name="s", session_type="INTERACTIVE", image="python",
                      slots={"cpu": Decimal(1)})


async def _created(delay: float, fail: bool = False) -> list[list[str]]:
    backend = DummyBackend(AgentSettings.load(None, dummy_create_delay=delay))
    link = BatchingLink()
    reg = KernelRegistry("a1", backend, link, ResourceSlot({"cpu": Decimal(4)}))  # type: ignore[arg-type]
    if fail:
        async def broken(_spec):
            await asyncio.sleep(delay)
            raise RuntimeError("no")

        backend.create = broken  # type: ignore[method-assign]
    rec = reg.create(spec())
    await rec.task
    await asyncio.sleep(0)
    return link.batches


async def test_a_quick_start_sends_its_progress_with_kernel_started() -> None:
    assert await _created(0.005) == [
        ["kernel_preparing", "kernel_prepared", "kernel_creating", "kernel_started"]]


async def test_a_slow_start_sends_its_progress_first() -> None:
    batches = await _created(kernels.PROGRESS_HOLD_SECONDS * 4)
    assert batches == [["kernel_preparing", "kernel_prepared", "kernel_creating"],
                       ["kernel_started"]]


@pytest.mark.parametrize("delay", [0.005, kernels.PROGRESS_HOLD_SECONDS * 4])
async def test_a_failed_creation_still_reports_its_progress_in_order(delay) -> None:
    batches = await _created(delay, fail=True)
    flat = [name for batch in batches for name in batch]
    assert flat == ["kernel_preparing", "kernel_prepared", "kernel_creating",
                    "kernel_creation_failed"]
