"""Fixtures of the runtime-backend contract suite (helpers live in ``bai.testing.contract``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bai.testing.contract import Harness

KINDS = ["dummy", "process", "docker"]


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path):
    h = Harness(request.param, tmp_path / "scratch")
    if request.param == "docker":  # needs BAI_TEST_DOCKER_HOST and the image; skips otherwise
        from bai.testing.docker import docker_host_or_skip

        h.docker_host = await docker_host_or_skip()
    yield h
    for backend in h.backends:
        for inst in await backend.list():
            await backend.destroy(inst.kernel_id)
        await backend.stop()
