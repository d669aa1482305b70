"""Helpers of the runtime-backend contract suite (``tests/contract``): one ``Harness`` per
backend kind, and ``run`` to drive one execution over a runner channel.

To add a backend to the suite: add its name to ``KINDS`` in ``tests/contract/conftest.py`` and a
branch in ``Harness.make`` (and in ``failing_spec`` if it fails differently).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from bai.agent.backends.base import Instance, KernelSpec, RuntimeBackend
from bai.agent.runner_channel import RunnerChannel
from bai.agent.settings import AgentSettings


class Harness:
    def __init__(self, kind: str, scratch: Path):
        self.kind = kind
        self.scratch = scratch
        self.agent_id = f"contract-{uuid.uuid4().hex[:8]}"
        self.exits: list[Instance] = []
        self.backends: list[RuntimeBackend] = []
        #: engine URL for the docker kind (set by the fixture from BAI_TEST_DOCKER_HOST)
        self.docker_host: str | None = None

    @property
    def real_code(self) -> bool:
        """Whether code really runs (dummy only echoes it)."""
        return self.kind != "dummy"

    async def make(self) -> RuntimeBackend:
        """A fresh backend object on the same node state (like a restarted agent)."""
        settings = AgentSettings.load(
            None, agent_id=self.agent_id, scratch_root=str(self.scratch), runtime=self.kind,
            monitor_interval=0.1)
        if self.kind == "dummy":
            from bai.agent.backends.dummy import DummyBackend

            backend: RuntimeBackend = DummyBackend(settings)
        elif self.kind == "process":
            from bai.agent.backends.process import ProcessBackend

            backend = ProcessBackend(settings)
        elif self.kind == "docker":
            from bai.agent.backends.docker import DockerBackend

            settings.docker_host = self.docker_host
            backend = DockerBackend.from_settings(settings)
        else:  # pragma: no cover
            raise ValueError(self.kind)

        async def on_exit(inst: Instance) -> None:
            self.exits.append(inst)

        await backend.start(on_exit)
        self.backends.append(backend)
        return backend

    def spec(self, **kw: Any) -> KernelSpec:
        values: dict[str, Any] = dict(
            kernel_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()), session_name="contract",
            session_type="INTERACTIVE", image="python:3.11-debian12",
            slots={"cpu": Decimal(1), "mem": Decimal(256 * 2**20)})
        values.update(kw)
        return KernelSpec(**values)

    def failing_spec(self) -> KernelSpec:
        return self.spec(image="bai-test/missing:1", image_labels={
            "bai.dummy.fail": "image bai-test/missing:1 is not present",
            "bai.process.interpreter": "/nonexistent/bin/python3"})


async def run(channel: RunnerChannel, msg: dict[str, Any],
              answers: list[str] | None = None) -> tuple[str, str, int | None, list[dict]]:
    """Send one execute and collect (stdout, stderr, exit code, frames) until finished."""
    answers = list(answers or [])
    await channel.send({"op": "execute", **msg})
    frames: list[dict] = []
    while True:
        frame = await channel.receive()
        assert frame is not None, f"runner closed the channel after {frames}"
        frames.append(frame)
        assert isinstance(frame["console"], list)
        if frame["status"] == "waiting-input":
            await channel.send({"op": "input", "text": answers.pop(0)})
        if frame["status"] == "finished":
            break
    out = "".join(d for f in frames for k, d in f["console"] if k == "stdout")
    err = "".join(d for f in frames for k, d in f["console"] if k == "stderr")
    return out, err, frames[-1]["exitCode"], frames
