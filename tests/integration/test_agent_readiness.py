"""An agent is ready while a manager accepts its heartbeats, and says so unsigned; its
/metrics needs the cluster token."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp

from agent_support import TOKEN, manager  # noqa: F401 - manager: the fixture
from bai.agent.server import Agent
from bai.agent.settings import AgentSettings
from bai.testing.fake_manager import FakeManager


async def started(manager: FakeManager, tmp_path: Path, token: str) -> Agent:
    agent = Agent(AgentSettings.load(
        None, agent_id=f"a-{uuid.uuid4().hex[:6]}", port=0, cluster_token=token,
        manager_endpoints=manager.url, scratch_root=str(tmp_path / "scratch"), runtime="dummy",
        heartbeat_interval=0.2))
    await agent.start()
    return agent


async def readiness(http: aiohttp.ClientSession, agent: Agent) -> tuple[int, dict]:
    async with http.get(f"{agent.address}/health/ready") as r:
        return r.status, await r.json()


async def wait_status(http, agent: Agent, want: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await readiness(http, agent)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"readiness stayed {status}: {body}"
        await asyncio.sleep(0.2)


async def test_ready_while_a_manager_takes_its_heartbeats(manager, tmp_path):
    good = await started(manager, tmp_path, TOKEN)
    refused = await started(manager, tmp_path, "not-the-token")
    try:
        async with aiohttp.ClientSession() as http:
            assert (await wait_status(http, good, 200)) == {
                "ready": True, "checks": {"registered": "ok"}}
            async with http.get(f"{good.address}/metrics") as r:
                assert r.status == 401  # no cluster token
            async with http.get(f"{good.address}/metrics",
                                headers={"X-BAI-Cluster-Token": TOKEN}) as r:
                assert r.status == 200 and "bai_agent_registered 1.0" in await r.text()
            # a manager that refuses its heartbeats does not make an agent ready
            deadline = time.monotonic() + 60
            while manager.refused < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            status, body = await readiness(http, refused)
            assert status == 503 and body["checks"]["registered"] != "ok"
            # nor does a manager that is gone
            await manager.stop()
            body = await wait_status(http, good, 503)
            assert body["ready"] is False
            async with http.get(f"{good.address}/health/live") as r:
                assert r.status == 200
    finally:
        await good.stop()
        await refused.stop()
