"""Fixtures of the runtime-backend contract suite (helpers live in ``bai.testing.contract``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bai.testing.contract import Harness

KINDS = ["dummy", "process"]


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path):
    h = Harness(request.param, tmp_path / "scratch")
    yield h
    for backend in h.backends:
        for inst in await backend.list():
            await backend.destroy(inst.kernel_id)
        await backend.stop()
