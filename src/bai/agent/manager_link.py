"""The agent's link to the managers: heartbeats and the ordered, retried event queue.

Events are delivered at least once and in the order they were put, while the agent lives: a batch
leaves the queue only after a manager answered 2xx. With several manager endpoints the link
sticks to one that answers and moves to the next on a failure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import aiohttp

from bai.common.events import KernelEvent

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-BAI-Cluster-Token"
BATCH = 1000
#: seconds a manager may take to apply a batch (it queues batches when many agents post at
#: once); a timeout means the batch is sent again
EVENTS_TIMEOUT = 60.0
MAX_QUEUE = 100_000
#: answers that mean "this body will never be accepted"
PERMANENT = frozenset({400, 404, 405, 413, 422})


class ManagerLink:
    def __init__(
        self,
        endpoints: list[str],
        cluster_token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        retry_max: float = 2.0,
    ):
        self.endpoints = list(endpoints)
        self.token = cluster_token
        self._session = session
        self._own_session = session is None
        self._current = 0
        self._queue: collections.deque[KernelEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._retry_max = retry_max

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=3))
            self._own_session = True
        return self._session

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_loop())

    async def close(self, flush_timeout: float = 2.0) -> None:
        if self._task is not None:
            await self.flush(flush_timeout)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._own_session and self._session is not None:
            await self._session.close()

    # --- events ----------------------------------------------------------------------------

    def post_event(self, event: KernelEvent) -> None:
        if len(self._queue) >= MAX_QUEUE:
            dropped = self._queue.popleft()
            log.error("event queue full; dropped %s of kernel %s", dropped.name, dropped.kernel_id)
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was delivered; False on timeout."""
        if not self.endpoints:
            return not self._queue
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _send_loop(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self.endpoints:
                batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                body = {"events": [e.to_json() for e in batch]}
                if await self._post("/internal/agents/events", body, timeout=EVENTS_TIMEOUT) is not None:
                    for _ in batch:
                        self._queue.popleft()
                    delay = 0.1
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max)
            if not self._queue:
                self._idle.set()

    # --- requests --------------------------------------------------------------------------

    async def heartbeat(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Send one heartbeat; the manager's answer, or None when no manager answered."""
        return await self._post("/internal/agents/heartbeat", payload)

    async def _post(self, path: str, body: dict[str, Any],
                    timeout: float | None = None) -> dict[str, Any] | None:
        """POST to the current endpoint, trying each once; the JSON answer or None."""
        for _ in range(len(self.endpoints)):
            url = self.endpoints[self._current] + path
            try:
                extra = {"timeout": aiohttp.ClientTimeout(total=timeout, connect=3)} if timeout else {}
                async with self.session.post(url, json=body, headers={TOKEN_HEADER: self.token},
                                             **extra) as r:
                    if r.status < 300:
                        try:
                            answer = await r.json(content_type=None)
                        except ValueError:
                            answer = None
                        return answer if isinstance(answer, dict) else {}
                    text = await r.text()
                    if r.status in PERMANENT:
                        # retrying cannot help; do not let one bad batch block the queue
                        log.error("manager %s refused %s (%s): %s", url, path, r.status, text[:500])
                        return {"rejected": r.status}
                    log.warning("manager %s answered %s to %s: %s", url, r.status, path, text[:200])
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                log.debug("manager %s unreachable: %s", url, e)
            self._current = (self._current + 1) % len(self.endpoints)
        return None
