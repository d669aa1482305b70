"""The in-process event bus (embedded deployment, tests), and the fan-out every bus shares.

A bus hands each published batch to its listeners synchronously, from the publish call (the
Redis bus: from its reader task), so that a listener such as an SSE stream can write to its
socket at once, without a task wake-up per listener and event:

* ``subscribe()`` gives a ``Subscription``, an async iterator with its own queue (create waiters);
* ``listen(listener)`` registers any object with ``deliver(events, shared)`` and ``close()``
  (the SSE streams of ``bai.manager.api.events``).

Either can be limited to one session's events (``session_id=``), which the fan-out finds with
one dictionary look-up per event instead of offering every event to every listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from bai.common.events import SessionEvent

log = logging.getLogger(__name__)

#: A subscription that falls this far behind loses its oldest events rather than the manager's memory.
QUEUE_LIMIT = 10_000


class Listener(Protocol):
    """What ``listen()`` accepts. ``deliver`` runs inside the publish call: it must not block,
    must not raise, and must be cheap (``shared`` is one dict per batch for listeners to share
    work, e.g. an encoding, keyed by what they need)."""

    def deliver(self, events: Sequence[SessionEvent], shared: dict[Any, Any]) -> None: ...

    def close(self) -> None: ...


class Subscription:
    """What ``subscribe()`` yields: an async iterator over events published after it began."""

    def __init__(self) -> None:
        self._queue: deque[SessionEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._told_closed = False
        self.dropped = 0

    def deliver(self, events: Sequence[SessionEvent], shared: dict[Any, Any]) -> None:
        self._queue.extend(events)
        extra = len(self._queue) - QUEUE_LIMIT
        if extra > 0:
            for _ in range(extra):
                self._queue.popleft()
            self.dropped += extra
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        self._closed = True
        self._wake()

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self

    async def __anext__(self) -> SessionEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> SessionEvent | None:
        """The next event, or None after ``timeout`` seconds or when the bus closed.

        The close is told once; later calls wait out their timeout as on a quiet bus, so that
        a caller polling the database between calls does not spin."""
        if self._closed and not self._queue:
            if not self._told_closed:
                self._told_closed = True
                return None
            if timeout is None:
                await asyncio.get_running_loop().create_future()  # never: as the old queue did
            await asyncio.sleep(timeout)
            return None
        try:
            async with asyncio.timeout(timeout):
                return await anext(self)
        except TimeoutError:
            return None
        except StopAsyncIteration:
            self._told_closed = True
            return None


class FanOut:
    """The listeners of one bus and the delivery of a batch to them."""

    def __init__(self) -> None:
        self._all: set[Listener] = set()
        self._by_session: dict[str, set[Listener]] = {}
        self._where: dict[Listener, str | None] = {}

    def __len__(self) -> int:
        return len(self._where)

    def add(self, listener: Listener, session_id: str | None = None) -> None:
        self.remove(listener)
        self._where[listener] = session_id = None if session_id is None else str(session_id)
        if session_id is None:
            self._all.add(listener)
        else:
            self._by_session.setdefault(session_id, set()).add(listener)

    def remove(self, listener: Listener) -> None:
        if listener not in self._where:
            return
        session_id = self._where.pop(listener)
        if session_id is None:
            self._all.discard(listener)
            return
        group = self._by_session.get(session_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._by_session[session_id]

    def deliver(self, events: Sequence[SessionEvent]) -> None:
        """Hand ``events`` (in order) to every listener that wants them."""
        if not events:
            return
        shared: dict[Any, Any] = {}
        for listener in list(self._all):
            self._call(listener, events, shared)
        if self._by_session:
            matched: dict[Listener, list[SessionEvent]] = {}
            for ev in events:
                group = self._by_session.get(ev.session_id)
                if group:
                    for listener in group:
                        matched.setdefault(listener, []).append(ev)
            for listener, evs in matched.items():
                self._call(listener, evs, shared)

    @staticmethod
    def _call(listener: Listener, events: Sequence[SessionEvent], shared: dict) -> None:
        try:
            listener.deliver(events, shared)
        except Exception:  # one broken listener must not cost the others their events
            log.exception("an event listener failed")

    def close(self) -> None:
        for listener in [*self._all, *(x for g in self._by_session.values() for x in g)]:
            listener.close()

    @contextlib.contextmanager
    def registered(self, listener: Listener, session_id: str | None = None):
        self.add(listener, session_id)
        try:
            yield listener
        finally:
            self.remove(listener)


class EventBus:
    """Interface of every bus."""

    async def publish(self, event: SessionEvent) -> None:
        raise NotImplementedError

    async def publish_many(self, events: Sequence[SessionEvent]) -> None:
        """Publish a batch in order, as one fan-out (in-process) or one round trip (Redis)."""
        for ev in events:
            await self.publish(ev)

    def subscribe(self, session_id: str | None = None) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Events published from now on (only ``session_id``'s when given), as an iterator."""
        raise NotImplementedError

    def listen(self, listener: Listener,
               session_id: str | None = None) -> contextlib.AbstractAsyncContextManager[Listener]:
        """Have ``listener.deliver`` called with every batch published from now on."""
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def ping(self) -> None:
        """Raise when the bus cannot be reached (readiness)."""

    async def close(self) -> None:
        pass


class LocalEventBus(EventBus):
    def __init__(self) -> None:
        self.fanout = FanOut()

    async def publish(self, event: SessionEvent) -> None:
        self.fanout.deliver((event,))

    async def publish_many(self, events: Sequence[SessionEvent]) -> None:
        self.fanout.deliver(events)

    @contextlib.asynccontextmanager
    async def subscribe(self, session_id: str | None = None) -> AsyncIterator[Subscription]:
        with self.fanout.registered(Subscription(), session_id) as sub:
            yield sub

    @contextlib.asynccontextmanager
    async def listen(self, listener: Listener, session_id: str | None = None) -> AsyncIterator[Listener]:
        with self.fanout.registered(listener, session_id):
            yield listener

    async def close(self) -> None:
        self.fanout.close()
