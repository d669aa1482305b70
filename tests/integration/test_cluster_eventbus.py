"""The Redis Streams event bus against a real Redis: broadcast to every replica, agent events
handled once and in order per agent, a killed replica's pending events taken over.

Needs ``BAI_TEST_REDIS_URL`` (``scripts/services.sh start``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from bai.common.events import KernelEvent, SessionEvent
from bai.manager.eventbus.redis import PARTITIONS, RedisEventBus, partition_of

REDIS_URL = os.environ.get("BAI_TEST_REDIS_URL")
pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not REDIS_URL, reason="BAI_TEST_REDIS_URL is not set (scripts/services.sh start)"),
]


@pytest.fixture
async def stream():
    name = f"bai-test:{uuid.uuid4().hex[:12]}"
    yield name
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    keys = [k async for k in r.scan_iter(match=f"{name}*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
async def make_bus(stream):
    made: list[RedisEventBus] = []

    def make(**kw) -> RedisEventBus:
        kw.setdefault("lease_ttl", 1.0)
        kw.setdefault("block_ms", 200)
        bus = RedisEventBus(REDIS_URL, stream=stream, **kw)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


def kev(agent: str, kernel: str, name: str, seq: int) -> KernelEvent:
    return KernelEvent(name=name, agent_id=agent, kernel_id=kernel, session_id=kernel,
                       reason=str(seq))


class Recorder:
    """A kernel-event handler that records what it applied, optionally failing now and then."""

    def __init__(self, fail_every: int = 0) -> None:
        self.seen: list[KernelEvent] = []
        self.fail_every = fail_every
        self.calls = 0

    async def __call__(self, ev: KernelEvent) -> None:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("injected failure")
        self.seen.append(ev)


async def wait_for(cond, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_session_events_reach_every_replica(make_bus):
    a, b = make_bus(), make_bus()
    await a.start()
    await b.start()
    async with a.subscribe() as sa, b.subscribe() as sb, b.subscribe() as sb2:
        sent = [SessionEvent(f"session_{n}", str(uuid.uuid4()), f"s{i}", "AK", reason=str(i))
                for i, n in enumerate(["enqueued", "scheduled", "started", "terminated"] * 5)]
        for ev in sent[:10]:
            await a.publish(ev)
        for ev in sent[10:]:
            await b.publish(ev)
        for sub in (sa, sb, sb2):
            got = [await sub.get(timeout=10) for _ in sent]
            # per publisher order is kept; every event arrives once and intact
            assert [g.session_id for g in got if g.session_name in {e.session_name for e in sent[:10]}][:10] == \
                [e.session_id for e in sent[:10]]
            assert sorted(g.session_id for g in got) == sorted(e.session_id for e in sent)
            assert {g.session_id: g.payload() for g in got} == {e.session_id: e.payload() for e in sent}
            assert await sub.get(timeout=0.3) is None


async def test_subscriber_sees_events_published_right_after_subscribing(make_bus):
    a = make_bus()  # not started: subscribe() alone must start reading
    async with a.subscribe() as sub:
        ev = SessionEvent("session_enqueued", "sid", "s", "AK")
        await a.publish(ev)
        got = await sub.get(timeout=10)
        assert got is not None and got.session_id == "sid"


async def test_agent_events_are_handled_once_and_in_order_per_agent(make_bus):
    handlers = [Recorder(), Recorder()]
    buses = [make_bus(), make_bus()]
    for bus, h in zip(buses, handlers):
        bus.set_kernel_handler(h)
        await bus.start()
    # both replicas own partitions before events flow, so the work is really shared
    await wait_for(lambda: all(b.owned_partitions for b in buses)
                   and len(buses[0].owned_partitions | buses[1].owned_partitions) == PARTITIONS)
    assert not buses[0].owned_partitions & buses[1].owned_partitions

    agents = [f"agent-{i}" for i in range(12)]
    assert len({partition_of(a) for a in agents}) > 1
    expected: dict[str, list[str]] = {a: [] for a in agents}
    for seq in range(25):
        batch = []
        for a in agents:
            ev = kev(a, f"k-{a}", "kernel_started", seq)
            expected[a].append(ev.reason)
            batch.append(ev)
        # the replica receiving the agent's POST is arbitrary
        await buses[seq % 2].dispatch(batch)

    total = 25 * len(agents)
    await wait_for(lambda: sum(len(h.seen) for h in handlers) >= total)
    await asyncio.sleep(0.5)  # anything duplicated would show up now
    seen = handlers[0].seen + handlers[1].seen
    assert len(seen) == total
    assert all(h.seen for h in handlers), "both replicas should have handled some partitions"
    for a in agents:
        # one agent's events are handled by one replica, in the order they were sent
        owners = [i for i, h in enumerate(handlers) if any(e.agent_id == a for e in h.seen)]
        assert len(owners) == 1
        assert [e.reason for e in handlers[owners[0]].seen if e.agent_id == a] == expected[a]


async def test_failed_handling_is_retried_without_reordering(make_bus):
    h = Recorder(fail_every=3)
    bus = make_bus()
    bus.set_kernel_handler(h)
    await bus.start()
    for seq in range(20):
        await bus.dispatch([kev("agent-x", "k1", "kernel_creating", seq)])
    await wait_for(lambda: len({e.reason for e in h.seen}) == 20)
    # a retried entry re-applies its events (at least once), but never goes backwards
    order = [int(e.reason) for e in h.seen]
    assert order == sorted(order)
    assert sorted(set(order)) == list(range(20))


CRASHING_REPLICA = textwrap.dedent("""
    import asyncio, sys
    from bai.manager.eventbus.redis import RedisEventBus

    async def main(url, stream, log):
        bus = RedisEventBus(url, stream=stream, consumer="doomed", lease_ttl=1.0, block_ms=200)

        async def handler(ev):
            if ev.reason == "stall":
                print("stalled", flush=True)
                await asyncio.Event().wait()   # never returns: killed with entries pending
            with open(log, "a") as f:
                f.write(ev.reason + "\\n")

        bus.set_kernel_handler(handler)
        await bus.start()
        while len(bus.owned_partitions) < bus.partitions:
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_a_killed_replicas_pending_events_are_taken_over(make_bus, stream, tmp_path):
    log = tmp_path / "doomed.log"
    args = [sys.executable, "-c", CRASHING_REPLICA, REDIS_URL, stream, str(log)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        assert proc.stdout.readline().strip() == "ready"
        sender = make_bus()
        events = [kev("agent-1", "k1", "kernel_creating", i) for i in range(5)]
        events.append(KernelEvent("kernel_started", "agent-1", "k1", "k1", reason="stall"))
        events += [kev("agent-1", "k1", "kernel_terminated", i) for i in range(5, 10)]
        for ev in events:
            await sender.dispatch([ev])
        assert proc.stdout.readline().strip() == "stalled"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    handled_by_dead = log.read_text().split()
    assert handled_by_dead == [str(i) for i in range(5)]

    survivor = make_bus()
    h = Recorder()
    survivor.set_kernel_handler(h)
    await survivor.start()
    # the stalled entry and everything after it, in order, once
    await wait_for(lambda: len(h.seen) >= 6)
    await asyncio.sleep(0.5)
    assert [e.reason for e in h.seen] == ["stall"] + [str(i) for i in range(5, 10)]
    await wait_for(lambda: survivor.owned_partitions == frozenset(range(PARTITIONS)))


async def test_partitions_are_rebalanced_when_a_replica_joins_and_leaves(make_bus):
    a = make_bus()
    a.set_kernel_handler(Recorder())
    await a.start()
    await wait_for(lambda: len(a.owned_partitions) == PARTITIONS)
    b = make_bus()
    hb = Recorder()
    b.set_kernel_handler(hb)
    await b.start()
    await wait_for(lambda: len(a.owned_partitions) == len(b.owned_partitions) == PARTITIONS // 2)
    await b.close()
    await wait_for(lambda: len(a.owned_partitions) == PARTITIONS)


async def test_publish_many_keeps_the_order_across_replicas_and_session_filters_apply(make_bus, monkeypatch):
    from bai.manager.eventbus import redis as redis_bus

    monkeypatch.setattr(redis_bus, "BATCH_ENTRY", 7)  # several entries per call
    a, b = make_bus(), make_bus()
    batches: list[list[str]] = []

    class Recorder:
        def deliver(self, events, shared):
            batches.append([e.reason for e in events])

        def close(self):
            pass

    async with a.subscribe() as every, b.subscribe() as on_b, b.subscribe(session_id="s1") as one, \
            b.listen(Recorder()):
        sent = [SessionEvent("session_scheduled", "s1" if i % 4 == 0 else "s2", "n", "AK", reason=str(i))
                for i in range(400)]
        await a.publish_many(sent[:1])
        await a.publish_many(sent[1:300])
        await b.publish(sent[300])
        await b.publish_many(sent[301:])
        for sub in (every, on_b):
            got = [await sub.get(timeout=10) for _ in sent]
            assert [g.reason for g in got] == [str(i) for i in range(400)]
            assert {g.reason: g.payload() for g in got} == {e.reason: e.payload() for e in sent}
        mine = [await one.get(timeout=10) for _ in range(100)]
        assert [g.reason for g in mine] == [str(i) for i in range(0, 400, 4)]
        assert await one.get(timeout=0.3) is None
    # the listener saw everything once, in order, in as many batches as the reader made
    assert [r for batch in batches for r in batch] == [str(i) for i in range(400)]
    assert all(batches)
