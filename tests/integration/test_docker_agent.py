"""A real agent daemon on the docker runtime (``BAI_TEST_DOCKER_HOST``), driven over its HTTP API:
an OOM kill reaches the manager as ``kernel_terminated`` with reason ``oom-killed``; ``kill -9`` of
the agent loses no container, and a kernel the manager forgot meanwhile leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiodocker
import aiohttp
import pytest
from stacks import free_port

from bai.testing.docker import docker_host_or_skip, test_image
from bai.testing.fake_manager import FakeManager

pytestmark = pytest.mark.docker

TOKEN = "docker-agent-token"
#: the agent's own start after a ``code`` given to ``Agent.start``
HAND_OVER = ("\nimport runpy, sys\nsys.argv = ['bai.agent', 'serve']\n"
             "runpy.run_module('bai.agent', run_name='__main__')\n")
#: an agent that never hands a claimed standby's runner its kernel (it waits at that step)
HOLD_CLAIM = ("import asyncio\nfrom bai.agent.backends import docker_pool\n"
              "async def hold(*args, **kwargs):\n    await asyncio.Event().wait()\n"
              "docker_pool.send_claim = hold\n")


class Agent:
    """``python -m bai.agent serve`` with the docker runtime, restartable."""

    def __init__(self, manager: FakeManager, scratch: Path, engine: str):
        port = free_port()
        self.address = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "BAI_AGENT_AGENT_ID": f"dk-{uuid.uuid4().hex[:8]}",
                    "BAI_AGENT_PORT": str(port), "BAI_AGENT_CLUSTER_TOKEN": TOKEN,
                    "BAI_AGENT_MANAGER_ENDPOINTS": manager.url, "BAI_AGENT_RUNTIME": "docker",
                    "BAI_AGENT_DOCKER_HOST": engine, "BAI_AGENT_SCRATCH_ROOT": str(scratch),
                    "BAI_AGENT_HEARTBEAT_INTERVAL": "0.2"}
        self.proc: subprocess.Popen | None = None

    def start(self, code: str = "") -> None:
        """``code``: run before the agent (e.g. a patch that holds a step back)."""
        argv = ["-c", code + HAND_OVER] if code else ["-m", "bai.agent", "serve"]
        self.proc = subprocess.Popen([sys.executable, *argv], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def agent_id(self) -> str:
        return self.env["BAI_AGENT_AGENT_ID"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture
async def setup(tmp_path: Path):
    engine = await docker_host_or_skip()
    manager = FakeManager(TOKEN)
    await manager.start()
    agent = Agent(manager, tmp_path / "scratch", engine)
    agent.start()
    http = aiohttp.ClientSession(headers={"X-BAI-Cluster-Token": TOKEN})
    try:
        await manager.wait_for(lambda m: len(m.heartbeats) >= 1, timeout=20)
        yield manager, agent, http, engine
    finally:
        for kid in manager.heartbeats[-1]["kernels"] if manager.heartbeats else []:
            async with http.delete(f"{agent.address}/v1/kernels/{kid}"):
                pass
        await http.close()
        agent.kill(signal.SIGTERM)  # a stopped agent removes its standby containers
        await manager.stop()
        assert await standbys_of(engine, agent.agent_id) == []


async def create(manager: FakeManager, http: aiohttp.ClientSession, agent: Agent,
                 mem: int = 256 * 2**20) -> str:
    kid = str(uuid.uuid4())
    body = {"kernel_id": kid, "session_id": str(uuid.uuid4()), "session_name": "dkagent",
            "image": test_image(), "slots": {"cpu": "0.5", "mem": str(mem)}}
    async with http.post(agent.address + "/v1/kernels", json=body) as r:
        assert r.status == 202
    await manager.wait_for(lambda m: "kernel_started" in m.event_names(kid), timeout=30)
    return kid


async def execute(http: aiohttp.ClientSession, agent: Agent, kid: str, code: str) -> str:
    out = []
    async with http.ws_connect(f"{agent.address}/v1/kernels/{kid}/execute") as ws:
        await ws.send_json({"code": code, "mode": "query", "options": {}})
        async for msg in ws:
            frame = json.loads(msg.data)
            out += [d for k, d in frame["console"] if k == "stdout"]
            if frame["status"] == "finished":
                break
    return "".join(out)


async def containers_of(engine: str, kid: str) -> list:
    """The kernel's container: by label when it was created for the kernel, by name when the
    kernel took over a standby container (whose labels cannot change)."""
    async with aiodocker.Docker(url=engine) as d:
        by_label = await d.containers.list(
            all=True, filters=json.dumps({"label": [f"ai.bai.kernel_id={kid}"]}))
        by_name = await d.containers.list(
            all=True, filters=json.dumps({"name": [f"^/bai-kernel-{kid}$"]}))
        return list({c.id: c for c in by_label + by_name}.values())


async def gone(engine: str, kid: str) -> bool:
    return await containers_of(engine, kid) == []


async def standbys_of(engine: str, agent_id: str) -> list:
    """Unclaimed standby containers of the agent."""
    async with aiodocker.Docker(url=engine) as d:
        found = await d.containers.list(all=True, filters=json.dumps(
            {"label": [f"ai.bai.agent_id={agent_id}", "ai.bai.pool"]}))
        return [c for c in found if c._container["Names"][0].startswith("/bai-standby-")]


async def wait_until(probe, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_oom_kill_reaches_the_manager(setup) -> None:
    manager, agent, http, _ = setup
    kid = await create(manager, http, agent, mem=128 * 2**20)
    await execute(http, agent, kid, "x = bytearray(400 * 2**20)")
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(kid), timeout=20)
    (ev,) = [e for e in manager.events if e["kernel_id"] == kid and e["name"] == "kernel_terminated"]
    assert "oom-killed" in json.dumps(ev)


async def test_kill_9_and_restart_keeps_containers(setup) -> None:
    manager, agent, http, engine = setup
    kept, forgotten = await create(manager, http, agent), await create(manager, http, agent)
    assert await execute(http, agent, kept, "x = 'still here'") == ""
    await wait_until(lambda: standbys_of(engine, agent.agent_id))  # the pool refilled

    agent.kill()
    manager.known_kernels = [kept]  # `forgotten` was removed while the agent was down
    before = len(manager.heartbeats)
    agent.start()
    await manager.wait_for(lambda m: len(m.heartbeats) > before + 1, timeout=30)
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(forgotten), timeout=30)
    assert await execute(http, agent, kept, "print(x)") == "still here\n"
    await wait_until(lambda: gone(engine, forgotten))  # the engine removes it after the kill
    assert len(await containers_of(engine, kept)) == 1
    assert await standbys_of(engine, agent.agent_id) == []  # the killed agent's are gone

    async with http.delete(f"{agent.address}/v1/kernels/{kept}") as r:
        assert r.status == 200
    await wait_until(lambda: gone(engine, kept))


async def test_an_agent_killed_before_a_standby_claim_fails_the_kernel_with_a_reason(
        setup) -> None:
    """``kill -9`` of the agent while a kernel's standby is renamed to it but its runner has
    not got the claim (held there): the restarted agent never adopts it as running; the
    manager hears ``kernel_terminated`` with the reason and the container goes."""
    from bai.agent.backends.docker import INTERRUPTED

    manager, agent, http, engine = setup
    agent.kill()
    before = len(manager.heartbeats)
    agent.start(HOLD_CLAIM)
    await manager.wait_for(lambda m: len(m.heartbeats) > before + 1, timeout=30)
    await create(manager, http, agent)  # the pool follows this image
    held = ""
    for _ in range(5):  # a standby may not be ready yet: then the kernel is made and starts
        await wait_until(lambda: standbys_of(engine, agent.agent_id), timeout=60)
        await asyncio.sleep(0.5)  # its runner listening: the agent's pool has it
        kid = str(uuid.uuid4())
        body = {"kernel_id": kid, "session_id": str(uuid.uuid4()), "session_name": "held",
                "image": test_image(), "slots": {"cpu": "0.5", "mem": str(256 * 2**20)}}
        async with http.post(agent.address + "/v1/kernels", json=body) as r:
            assert r.status == 202
        claimed = False  # a standby renamed to the kernel's (a made container has no pool label)
        for _ in range(300):
            found = await containers_of(engine, kid)
            claimed = any("ai.bai.pool" in (c._container.get("Labels") or {}) for c in found)
            if claimed or "kernel_started" in manager.event_names(kid):
                break
            await asyncio.sleep(0.1)
        if claimed:  # its claim is held: it never gets past it
            held = kid
            break
        await manager.wait_for(lambda m: "kernel_started" in m.event_names(kid), timeout=60)
    assert held, "no create took a standby in 5 tries"

    agent.kill()  # between the standby's rename and its runner's claim
    agent.start()
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(held), timeout=60)
    (ev,) = [e for e in manager.events
             if e["kernel_id"] == held and e["name"] == "kernel_terminated"]
    assert INTERRUPTED in json.dumps(ev), ev
    assert "kernel_started" not in manager.event_names(held)
    await wait_until(lambda: gone(engine, held))
    await manager.wait_for(lambda m: held not in (m.heartbeats[-1]["kernels"] or []),
                           timeout=30)
