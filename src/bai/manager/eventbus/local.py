"""The in-process event bus (embedded deployment, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bai.common.events import SessionEvent

log = logging.getLogger(__name__)

#: A subscriber that falls this far behind loses its oldest events rather than the manager's memory.
QUEUE_LIMIT = 10_000


class Subscription:
    """What ``subscribe()`` yields: an async iterator over events published after it began."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[SessionEvent | None] = asyncio.Queue()
        self.dropped = 0

    def _put(self, ev: SessionEvent | None) -> None:
        if ev is not None and self._queue.qsize() >= QUEUE_LIMIT:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.dropped += 1
        self._queue.put_nowait(ev)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self

    async def __anext__(self) -> SessionEvent:
        ev = await self._queue.get()
        if ev is None:
            raise StopAsyncIteration
        return ev

    async def get(self, timeout: float | None = None) -> SessionEvent | None:
        """The next event, or None after ``timeout`` seconds or when the bus closed."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


class EventBus:
    """Interface of every bus."""

    async def publish(self, event: SessionEvent) -> None:
        raise NotImplementedError

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class LocalEventBus(EventBus):
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    async def publish(self, event: SessionEvent) -> None:
        self._deliver(event)

    def _deliver(self, event: SessionEvent) -> None:
        for sub in list(self._subs):
            sub._put(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    async def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
