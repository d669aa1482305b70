"""Event buses: fan-out of ``SessionEvent`` to every subscriber (SSE streams, create waiters).

``make_bus(settings)`` picks the in-process bus, or the Redis Streams bus when
``settings.redis_url`` is set. Both have the same interface::

    await bus.publish(event)
    await bus.publish_many(events)    # a batch, in order: one fan-out pass / one Redis pipeline
    async with bus.subscribe() as sub:             # or subscribe(session_id=...)
        async for ev in sub:      # every event published after subscribing
            ...
    async with bus.listen(listener):  # listener.deliver(events, shared) called from the publish
        ...
"""

from __future__ import annotations

from bai.manager.eventbus.local import (
    EventBus,
    FanOut,
    Listener,
    LocalEventBus,
    Subscription,
)


def make_bus(settings) -> EventBus:
    if getattr(settings, "redis_url", None):
        from bai.manager.eventbus.redis import RedisEventBus

        return RedisEventBus(settings.redis_url, stream=f"bai:events:{_db_tag(settings)}")
    return LocalEventBus()


def _db_tag(settings) -> str:
    import hashlib

    # Managers sharing a database share a stream; a test database gets its own.
    return hashlib.sha1(str(settings.db_url).encode()).hexdigest()[:12]


__all__ = ["EventBus", "FanOut", "Listener", "LocalEventBus", "Subscription", "make_bus"]
