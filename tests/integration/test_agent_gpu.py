"""An agent on a host with (fake) NVIDIA GPUs: what it offers, which GPU each kernel gets, what
the kernel sees, and what a restarted agent rebuilds. NVML is a behaviour-named fake
(``bai.testing.fake_nvml``) put where ``import pynvml`` finds it: no NVIDIA library here."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_support import HEADERS, TOKEN, manager  # noqa: F401 - manager: the fixture
from bai.agent.server import Agent
from bai.agent.settings import AgentSettings
from bai.testing.fake_manager import FakeManager
from bai.testing.fake_nvml import GIB, FakeNvml

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml",
                        FakeNvml([("NVIDIA H200", 140 * GIB), ("NVIDIA H200", 140 * GIB)]))
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: f"/usr/bin/{name}"
                        if name == "nvidia-cuda-mps-control" else _which(name, *a, **k))


_which = __import__("shutil").which


def body(**slots: str) -> dict[str, Any]:
    return {"kernel_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4()),
            "session_name": "g", "session_type": "INTERACTIVE", "image": "python:3.11-debian12",
            "slots": {"cpu": "0.5", "mem": "268435456", **slots}, "environ": {}}


async def test_gpus_are_offered_picked_seen_and_rebuilt_after_a_restart(
        gpus: None, manager: FakeManager, tmp_path: Path) -> None:
    values = dict(agent_id=f"g-{uuid.uuid4().hex[:6]}", port=0, cluster_token=TOKEN,
                  manager_endpoints=manager.url, scratch_root=str(tmp_path / "scratch"),
                  runtime="process", heartbeat_interval=0.2, monitor_interval=0.1,
                  process_pool_size=0)
    agents: list[Agent] = []

    async def start() -> Agent:
        agent = Agent(AgentSettings.load(None, **values))
        await agent.start()
        agents.append(agent)
        return agent

    async def create(agent: Agent, http: aiohttp.ClientSession, b: dict[str, Any]) -> str:
        kid = b["kernel_id"]
        async with http.post(agent.address + "/v1/kernels", json=b) as r:
            assert r.status == 202
        await manager.wait_for(lambda m: {"kernel_started", "kernel_creation_failed"}
                               & set(m.event_names(kid)), timeout=120)
        return kid

    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            agent = await start()
            async with http.get(agent.address + "/v1/info") as r:
                info = await r.json()
            assert info["available_slots"]["cuda.device"] == "2"
            assert info["available_slots"]["cuda.shares"] == "8"  # 4 shares a GPU
            assert info["isolation"]["accelerators"] == ["cuda:0 NVIDIA H200 140g",
                                                         "cuda:1 NVIDIA H200 140g"]
            half = await create(agent, http, body(**{"cuda.shares": "2"}))
            whole = await create(agent, http, body(**{"cuda.device": "1"}))
            assert "kernel_started" in manager.event_names(half)
            spec = agent.registry.get(half).spec
            assert spec.environ["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0"
            assert spec.environ["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={70 * 1024}M"
            assert spec.device_nodes[0] == "/dev/nvidia0"
            assert agent.registry.get(whole).spec.environ["CUDA_VISIBLE_DEVICES"] == "GPU-fake-1"
            async with http.get(f"{agent.address}/v1/kernels/{half}/stats") as r:
                assert (await r.json())["cuda_devices"] == "cuda:0 NVIDIA H200 (2/4 shares)"
            await agent.stop()

            again = await start()  # rebuilt from the kernels' labels
            assert again.devices is not None
            assert (again.devices.used(0), again.devices.used(1)) == (2, 4)
            # the device still free by the slot count is not whole: refused, naming the slot
            refused = await create(again, http, body(**{"cuda.device": "1"}))
            failed = [e for e in manager.events if e["kernel_id"] == refused
                      and e["name"] == "kernel_creation_failed"]
            assert failed and "cuda.device" in failed[0]["reason"], failed
            # a share packs next to the other one (best fit)
            third = await create(again, http, body(**{"cuda.shares": "2"}))
            assert again.registry.get(third).spec.environ["CUDA_VISIBLE_DEVICES"] == "GPU-fake-0"
            for kid in (half, whole, third):
                await again.registry.destroy(kid)
            assert again.devices.held == {}  # every device freed
    finally:
        for agent in agents:
            for kid in list(agent.registry.records):
                await agent.registry.destroy(kid)
            await agent.stop()
