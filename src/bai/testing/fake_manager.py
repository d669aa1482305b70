"""A stand-in manager for agent tests: records heartbeats and events on loopback.

``known_kernels`` (when not None) is put into every heartbeat answer, like a real manager telling
the agent which of its kernels to keep; ``idle_interval`` (when not None) likewise, the seconds
the agent may wait between heartbeats while it has nothing new to say. ``fail_events`` makes
the events route answer 503 so retries can be observed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

TOKEN_HEADER = "X-BAI-Cluster-Token"


class FakeManager:
    def __init__(self, cluster_token: str):
        self.token = cluster_token
        self.heartbeats: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.known_kernels: list[str] | None = None
        self.idle_interval: float | None = None
        self.fail_events = False
        self.refused = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/internal/agents/heartbeat", self._heartbeat)
        app.router.add_post("/internal/agents/events", self._events)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _heartbeat(self, request: web.Request) -> web.Response:
        if request.headers.get(TOKEN_HEADER) != self.token:
            self.refused += 1
            return web.json_response({"title": "bad token"}, status=401)
        self.heartbeats.append(await request.json())
        await self._notify()
        answer: dict[str, Any] = {"ok": True}
        if self.known_kernels is not None:
            answer["known_kernels"] = list(self.known_kernels)
        if self.idle_interval is not None:
            answer["idle_interval"] = self.idle_interval
        return web.json_response(answer)

    async def _events(self, request: web.Request) -> web.Response:
        if request.headers.get(TOKEN_HEADER) != self.token:
            self.refused += 1
            return web.json_response({"title": "bad token"}, status=401)
        if self.fail_events:
            return web.json_response({"title": "try later"}, status=503)
        self.events.extend((await request.json())["events"])
        await self._notify()
        return web.json_response({"ok": True})

    def event_names(self, kernel_id: str | None = None) -> list[str]:
        return [e["name"] for e in self.events if kernel_id in (None, e["kernel_id"])]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds (raises TimeoutError otherwise)."""
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        await asyncio.wait_for(_wait(), timeout)
