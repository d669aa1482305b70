"""The ``dummy`` runtime backend: nothing runs, so hundreds of agents fit in one process.

Knobs (agent settings): ``dummy_create_delay`` / ``dummy_destroy_delay`` (seconds),
``dummy_fail_rate`` (probability that a create fails), ``dummy_fail_images`` (images whose creation
always fails), ``dummy_lifetime`` (kernels end by themselves with exit code 0 after that long). An
image label ``bai.dummy.fail`` makes creation of that image fail with its text as the reason.
A kernel with a ``startup_command`` ends by itself (``self-terminated``) after ``dummy_lifetime``
(at once when that is 0), with exit code N when the command is ``exit N``, else 0 -- enough to
play batch sessions that succeed or fail.

Executions answer with canned output through an in-memory channel: query mode echoes the code on
stdout (code containing ``input(``/``getpass`` first asks for input and echoes the answer);
batch mode reports each given step (``build: <cmd>``, ``exec: <cmd>``) with exit code 0.

Instances live in a ``DummyRuntime`` shared by every backend object of the same agent id in this
process, the way a container engine outlives an agent: a fresh backend object's ``list()`` finds
what an earlier one made.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import bai.kernel
from bai.agent.backends.base import (
    ExitCallback,
    Instance,
    InstanceState,
    KernelCreationFailed,
    KernelSpec,
    RuntimeBackend,
)
from bai.agent.runner_channel import RunnerChannel, RunnerUnavailable
from bai.agent.settings import AgentSettings
from bai.common.errors import KernelNotFound

FAIL_LABEL = "bai.dummy.fail"


class DummyRuntime:
    """The pretend container engine: instances by kernel id."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}


_RUNTIMES: dict[str, DummyRuntime] = {}


def runtime_for(agent_id: str) -> DummyRuntime:
    return _RUNTIMES.setdefault(agent_id, DummyRuntime())


class DummyChannel(RunnerChannel):
    """Canned answers to the runner protocol."""

    def __init__(self) -> None:
        self._out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending_input: str | None = None

    @staticmethod
    def _frame(status: str, text: str = "", code: int | None = None,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
        console = [["stdout", text]] if text else []
        return {"status": status, "console": console, "exitCode": code,
                "options": options or {}, "files": []}

    async def send(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ping":
            self._out.put_nowait({"status": "pong", "ready": True})
        elif op == "execute" and msg.get("mode") == "batch":
            opts = msg.get("options") or {}
            for step in ("clean", "build"):
                if str(opts.get(step) or "*") != "*":
                    self._out.put_nowait(self._frame(f"{step}-finished", f"{step}: {opts[step]}\n", 0))
            cmd = str(opts.get("exec") or "*")
            if cmd == "*":
                cmd = next((f for f in msg.get("uploaded") or [] if f.endswith(".py")), "*")
            self._out.put_nowait(self._frame("finished", f"exec: {cmd}\n", 0))
        elif op == "execute":
            code = str(msg.get("code") or "")
            if "input(" in code or "getpass" in code:
                self._pending_input = code
                self._out.put_nowait(self._frame(
                    "waiting-input", options={"is_password": "getpass" in code}))
            else:
                self._out.put_nowait(self._frame("finished", code if code.endswith("\n") or not code
                                                 else code + "\n", 0))
        elif op == "input" and self._pending_input is not None:
            self._pending_input = None
            self._out.put_nowait(self._frame("finished", str(msg.get("text", "")) + "\n", 0))
        elif op == "interrupt" and self._pending_input is not None:
            self._pending_input = None
            self._out.put_nowait(self._frame("finished", "", 130))

    async def receive(self) -> dict[str, Any] | None:
        return await self._out.get()

    async def close(self) -> None:
        self._out.put_nowait(None)


class DummyBackend(RuntimeBackend):
    name = "dummy"

    def __init__(self, settings: AgentSettings, runtime: DummyRuntime | None = None):
        self.settings = settings
        self.runtime = runtime or runtime_for(settings.agent_id)
        self.root = Path(settings.scratch_root).absolute() / "dummy" / settings.agent_id
        self.fail_images = {i.strip() for i in settings.dummy_fail_images.split(",") if i.strip()}
        self._on_exit: ExitCallback | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def start(self, on_exit: ExitCallback) -> None:
        self._on_exit = on_exit
        for inst in self.runtime.instances.values():
            spec = json.loads(inst.labels.get("bai.spec", "{}"))
            if inst.state == InstanceState.RUNNING and (
                    self.settings.dummy_lifetime > 0 or spec.get("startup_command")):
                self._schedule_exit(inst.kernel_id)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def isolation(self) -> dict[str, Any]:
        return {"runtime": "dummy", "cgroup": None, "memory": None, "cpu": None}

    async def ensure_image(self, spec: KernelSpec) -> bool:
        return False

    async def create(self, spec: KernelSpec) -> Instance:
        existing = self.runtime.instances.get(spec.kernel_id)
        if existing is not None:
            return replace(existing)
        if self.settings.dummy_create_delay > 0:
            await asyncio.sleep(self.settings.dummy_create_delay)
        reason = (spec.image_labels or {}).get(FAIL_LABEL)
        if reason or spec.image in self.fail_images:
            raise KernelCreationFailed(str(reason or f"dummy failure for image {spec.image}"))
        if self.settings.dummy_fail_rate > 0 and random.random() < self.settings.dummy_fail_rate:
            raise KernelCreationFailed("dummy failure (injected)")
        workdir = self.root / spec.kernel_id / "work"
        inst = Instance(
            kernel_id=spec.kernel_id,
            session_id=spec.session_id,
            state=InstanceState.RUNNING,
            workdir=workdir,
            runner_socket=workdir / bai.kernel.STATE_DIR / bai.kernel.SOCKET_NAME,
            container_id=f"dummy:{spec.kernel_id[:12]}",
            labels={"bai.kernel_id": spec.kernel_id, "bai.session_id": spec.session_id,
                    "bai.spec": json.dumps(spec.to_json())},
        )
        self.runtime.instances[spec.kernel_id] = inst
        if self.settings.dummy_lifetime > 0 or spec.startup_command:
            self._schedule_exit(spec.kernel_id)
        return replace(inst)

    def _schedule_exit(self, kernel_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._timers[kernel_id] = loop.call_later(
            max(self.settings.dummy_lifetime, 0.05),
            lambda: asyncio.ensure_future(self._exit(kernel_id)))

    async def _exit(self, kernel_id: str) -> None:
        self._timers.pop(kernel_id, None)
        inst = self.runtime.instances.get(kernel_id)
        if inst is None or inst.state != InstanceState.RUNNING:
            return
        spec = json.loads(inst.labels.get("bai.spec", "{}"))
        match = re.fullmatch(r"\s*exit\s+(\d+)\s*", spec.get("startup_command") or "")
        code = int(match.group(1)) if match else 0
        inst.state, inst.exit_code, inst.exit_reason = InstanceState.EXITED, code, "self-terminated"
        if self._on_exit is not None:
            await self._on_exit(replace(inst))

    async def destroy(self, kernel_id: str) -> Instance | None:
        inst = self.runtime.instances.pop(kernel_id, None)
        if inst is None:
            return None
        timer = self._timers.pop(kernel_id, None)
        if timer is not None:
            timer.cancel()
        if self.settings.dummy_destroy_delay > 0:
            await asyncio.sleep(self.settings.dummy_destroy_delay)
        if inst.workdir.parent.exists():
            await asyncio.to_thread(shutil.rmtree, inst.workdir.parent, True)
        return replace(inst, state=InstanceState.EXITED)

    async def inspect(self, kernel_id: str) -> Instance:
        inst = self.runtime.instances.get(kernel_id)
        if inst is None:
            raise KernelNotFound(f"no kernel {kernel_id} on this node")
        return replace(inst)

    async def list(self) -> list[Instance]:
        return [replace(i) for i in self.runtime.instances.values()]

    async def stats(self, kernel_id: str) -> dict[str, Any]:
        await self.inspect(kernel_id)
        return {"cpu_used": 0, "mem_max_bytes": 0, "mem_cur_bytes": 0}

    async def logs(self, kernel_id: str) -> str:
        await self.inspect(kernel_id)
        return ""

    async def open_channel(self, instance: Instance) -> RunnerChannel:
        if instance.kernel_id not in self.runtime.instances:
            raise RunnerUnavailable(f"kernel {instance.kernel_id} is gone")
        return DummyChannel()
