"""The in-process event bus: order, batches, per-session subscriptions, listeners."""

from __future__ import annotations

import asyncio

from bai.common.events import SessionEvent
from bai.manager.eventbus import LocalEventBus
from bai.manager.eventbus.local import QUEUE_LIMIT


def ev(sid: str, n: int, name: str = "session_scheduled") -> SessionEvent:
    return SessionEvent(name, sid, f"s-{sid}", "AK", reason=str(n))


async def drain(sub, n: int) -> list[SessionEvent]:
    out = [await sub.get(timeout=5) for _ in range(n)]
    assert None not in out
    return out


async def test_every_subscriber_gets_publish_and_publish_many_in_order():
    bus = LocalEventBus()
    async with bus.subscribe() as a, bus.subscribe() as b:
        await bus.publish(ev("x", 0))
        await bus.publish_many([ev("x", i) for i in range(1, 500)])
        await bus.publish(ev("x", 500))
        await bus.publish_many([])
        for sub in (a, b):
            got = await drain(sub, 501)
            assert [g.reason for g in got] == [str(i) for i in range(501)]
            assert await sub.get(timeout=0.05) is None


async def test_a_session_subscription_sees_only_its_session():
    bus = LocalEventBus()
    async with bus.subscribe(session_id="s1") as one, bus.subscribe() as every:
        batch = [ev("s1" if i % 3 == 0 else "s2", i) for i in range(30)]
        await bus.publish_many(batch)
        got = await drain(one, 10)
        assert [g.reason for g in got] == [str(i) for i in range(0, 30, 3)]
        assert await one.get(timeout=0.05) is None
        assert [g.reason for g in await drain(every, 30)] == [str(i) for i in range(30)]
    # leaving removes the index entry; publishing afterwards reaches nobody
    assert not bus.fanout._by_session and not bus.fanout._all
    await bus.publish(ev("s1", 99))


async def test_listeners_get_whole_batches_and_a_failing_one_does_not_stop_the_rest():
    bus = LocalEventBus()
    calls: list[list[str]] = []

    class Broken:
        def deliver(self, events, shared):
            raise RuntimeError("boom")

        def close(self):
            pass

    class Recorder:
        closed = False

        def deliver(self, events, shared):
            shared.setdefault("seen-by", []).append(self)
            calls.append([e.reason for e in events])

        def close(self):
            self.closed = True

    rec = Recorder()
    async with bus.listen(Broken()), bus.listen(rec), bus.listen(Recorder(), session_id="b"):
        await bus.publish_many([ev("a", 1), ev("b", 2), ev("a", 3)])
        await bus.publish(ev("a", 4))
        await bus.close()
    assert calls == [["1", "2", "3"], ["2"], ["4"]]
    assert rec.closed


async def test_a_waiting_iterator_wakes_and_ends_when_the_bus_closes():
    bus = LocalEventBus()
    async with bus.subscribe() as sub:
        got: list = []

        async def consume():
            async for e in sub:
                got.append(e.reason)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        await bus.publish_many([ev("a", 1), ev("a", 2)])
        await bus.close()
        await asyncio.wait_for(task, 5)
    assert got == ["1", "2"]


async def test_a_subscription_that_never_reads_keeps_only_the_newest():
    bus = LocalEventBus()
    async with bus.subscribe() as sub:
        await bus.publish_many([ev("a", i) for i in range(QUEUE_LIMIT + 5)])
        assert sub.dropped == 5
        assert (await sub.get(timeout=1)).reason == "5"


async def test_get_gives_up_after_its_timeout_and_can_be_cancelled():
    bus = LocalEventBus()
    async with bus.subscribe() as sub:
        assert await sub.get(timeout=0.01) is None
        task = asyncio.create_task(sub.get(timeout=None))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        await bus.publish(ev("a", 1))  # the cancelled wait left nothing behind
        assert (await sub.get(timeout=1)).reason == "1"


async def test_get_tells_the_close_once_then_waits_like_a_quiet_bus():
    bus = LocalEventBus()
    async with bus.subscribe() as sub:
        await bus.publish(ev("a", 1))
        await bus.close()
        assert (await asyncio.wait_for(sub.get(), 1)).reason == "1"  # what came before the close
        assert await asyncio.wait_for(sub.get(), 1) is None  # the close
        later = asyncio.create_task(sub.get())  # a polling caller does not get None at once again
        done, _ = await asyncio.wait([later], timeout=0.05)
        assert not done
        later.cancel()
        assert await sub.get(timeout=0.01) is None
