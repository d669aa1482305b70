"""Many agents in one process, for scheduler-scale tests and benchmarks (dummy runtime).

    async with AgentFleet(200, manager_endpoints=[url], cluster_token=tok) as fleet:
        fleet.addresses  # one http://127.0.0.1:<port> per agent

All agents share one event loop and one HTTP client session; each dummy agent holds only its
aiohttp app, a listening socket and a few dicts.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from bai.agent.server import Agent
from bai.agent.settings import AgentSettings


class AgentFleet:
    def __init__(self, count: int, *, manager_endpoints: list[str] | str = "",
                 cluster_token: str, prefix: str = "dummy", **settings: Any):
        self.count = count
        self.common = {"manager_endpoints": manager_endpoints, "cluster_token": cluster_token,
                       "runtime": "dummy", "host": "127.0.0.1", "port": 0, **settings}
        self.prefix = prefix
        self.agents: list[Agent] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def addresses(self) -> list[str]:
        return [a.address for a in self.agents]

    async def start(self) -> AgentFleet:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=3),
                                           connector=aiohttp.TCPConnector(limit=0))
        for i in range(self.count):
            settings = AgentSettings.load(None, agent_id=f"{self.prefix}-{i}", **self.common)
            agent = Agent(settings, http=self._http)
            await agent.start()
            self.agents.append(agent)
        return self

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        self.agents.clear()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> AgentFleet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
