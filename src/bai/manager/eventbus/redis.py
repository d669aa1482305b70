"""The Redis Streams event bus (cluster deployment: several manager replicas).

Two deliveries, as the upstream manager does them (manager-semantics §5.1):

* **Broadcast** — ``publish(SessionEvent)`` appends an entry to the stream ``<stream>``
  (``publish_many``: entries of up to ``BATCH_ENTRY`` events, in one pipeline). Every replica
  runs one reader task doing a plain ``XREAD`` from the position it started at and hands each
  read's entries to its local listeners in one fan-out pass, so a client's SSE stream or
  create-wait on *any* replica sees the events that another replica produced.

* **Anycast** — ``dispatch(KernelEvent...)`` (agent observations) appends to one of ``PARTITIONS``
  streams ``<stream>:k:<n>``, chosen by the agent id, and exactly one replica handles each entry:
  a replica reads a partition only while it holds the partition's *lease* (a Redis key with a
  TTL, renewed by its owner), through ``XREADGROUP`` in the consumer group ``manager``, and
  ``XACK``s an entry once the handler has applied all of its events. Holding a lease keeps one
  agent's events in order, which the handler relies on (``kernel_started`` before the
  ``kernel_terminated`` of a fast batch job). When a replica dies (``kill -9``) its leases run
  out; the replica that takes a partition over first ``XAUTOCLAIM``s the entries still pending
  for the dead consumer, in stream order, then reads new ones. A handler that raises leaves the
  entry pending; it is retried with a growing pause (``MAX_ATTEMPTS`` times, about a minute),
  then logged and dropped so that one poisoned entry cannot stop a partition. Delivery is
  therefore at least once: handlers are idempotent.

Partitions are spread over the live replicas (each takes at most its fair share, counted from
a membership set every replica refreshes), so adding a replica spreads the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from bai.common.events import KernelEvent, SessionEvent
from bai.manager.eventbus.local import EventBus, FanOut, Listener, Subscription

log = logging.getLogger(__name__)

KernelHandler = Callable[[KernelEvent], Awaitable[None]]

#: Streams the agent events are spread over; a partition is the unit of ordering and ownership.
PARTITIONS = 8
GROUP = "manager"
#: Broadcast entries kept (clients only read new ones; this bounds memory).
BROADCAST_MAXLEN = 10_000
#: Events per broadcast entry written by ``publish_many``.
BATCH_ENTRY = 500
#: Anycast entries kept, acknowledged or not; far above any backlog a healthy cluster has.
ANYCAST_MAXLEN = 200_000
#: Tries of one entry (backing off up to 10 s between them: about a minute) before it is dropped.
MAX_ATTEMPTS = 10

# Renew a lease only while it is still ours (a replica that stalled past the TTL lost it).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def partition_of(agent_id: str, partitions: int = PARTITIONS) -> int:
    """The partition an agent's events go to (stable across processes and hosts)."""
    return zlib.crc32(agent_id.encode()) % partitions


def default_consumer_name() -> str:
    """Unique per process: two replicas must never share a consumer (their PELs would mix)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisEventBus(EventBus):
    """Session events broadcast to every replica; agent events handled once by one replica.

    ``stream`` names the broadcast stream and prefixes every other key, so managers that share
    a database must share it and unrelated clusters (or test runs) must not.
    ``lease_ttl`` bounds how long the agent events of a dead replica wait for a new owner.
    """

    def __init__(
        self,
        url: str,
        stream: str = "bai:events",
        *,
        consumer: str | None = None,
        partitions: int = PARTITIONS,
        lease_ttl: float = 5.0,
        block_ms: int = 1000,
    ) -> None:
        self.url = url
        self.stream = stream
        self.consumer = consumer or default_consumer_name()
        self.partitions = partitions
        self.lease_ttl = lease_ttl
        self.block_ms = block_ms
        self._redis: aioredis.Redis = aioredis.from_url(url)
        self.fanout = FanOut()
        self._handler: KernelHandler | None = None
        self._owned: set[int] = set()
        self._giving_back: set[int] = set()
        self._attempts: dict[tuple[int, bytes], int] = {}
        self._reader: asyncio.Task | None = None
        self._reader_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    # -- keys --------------------------------------------------------------------------------

    def partition_stream(self, n: int) -> str:
        return f"{self.stream}:k:{n}"

    def _lease_key(self, n: int) -> str:
        return f"{self.stream}:lease:{n}"

    @property
    def _members_key(self) -> str:
        return f"{self.stream}:members"

    @property
    def owned_partitions(self) -> frozenset[int]:
        """Partitions whose agent events this replica handles now (tests, diagnostics)."""
        return frozenset(self._owned)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin reading broadcasts; begin consuming agent events if a handler is set."""
        await self._ensure_reader()
        if self._handler is not None and not self._tasks:
            self._tasks = [
                asyncio.create_task(self._lease_loop(), name="redis-bus-leases"),
                asyncio.create_task(self._consume_loop(), name="redis-bus-consume"),
            ]

    async def ping(self) -> None:
        await self._redis.ping()

    def set_kernel_handler(self, handler: KernelHandler) -> None:
        """The function that applies one agent event (called before ``start``)."""
        self._handler = handler

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._reader, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._reader, self._tasks = None, []
        # hand our partitions over at once instead of after the TTL
        with contextlib.suppress(RedisError, OSError):
            for n in list(self._owned):
                await self._redis.eval(_RELEASE, 1, self._lease_key(n), self.consumer)
            await self._redis.zrem(self._members_key, self.consumer)
        self._owned.clear()
        self.fanout.close()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    # -- broadcast -----------------------------------------------------------------------------

    async def publish(self, event: SessionEvent) -> None:
        await self._redis.xadd(self.stream, {"e": json.dumps(event.to_json())},
                               maxlen=BROADCAST_MAXLEN, approximate=True)

    async def publish_many(self, events: Sequence[SessionEvent]) -> None:
        """The batch in order, in one round trip: entries of up to ``BATCH_ENTRY`` events each
        (field ``b``, a JSON list), sent as one pipeline. An entry per event would cost ~30 µs
        of client-side command handling each; this is a few µs per event."""
        if len(events) <= 1:
            if events:
                await self.publish(events[0])
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(events), BATCH_ENTRY):
                body = json.dumps([ev.to_json() for ev in events[i:i + BATCH_ENTRY]])
                pipe.xadd(self.stream, {"b": body}, maxlen=BROADCAST_MAXLEN, approximate=True)
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def subscribe(self, session_id: str | None = None) -> AsyncIterator[Subscription]:
        await self._ensure_reader()
        with self.fanout.registered(Subscription(), session_id) as sub:
            yield sub

    @contextlib.asynccontextmanager
    async def listen(self, listener: Listener, session_id: str | None = None) -> AsyncIterator[Listener]:
        await self._ensure_reader()
        with self.fanout.registered(listener, session_id):
            yield listener

    async def _ensure_reader(self) -> None:
        async with self._reader_lock:
            if self._reader is None and not self._closed:
                # The position is taken before this returns, so nothing published afterwards is
                # missed ("$" would be resolved only when XREAD first runs; a time-based id would
                # depend on this host's clock agreeing with Redis's).
                start = await self._last_id()
                self._reader = asyncio.create_task(self._read_loop(start), name="redis-bus-read")

    async def _last_id(self) -> str:
        try:
            info = await self._redis.xinfo_stream(self.stream)
        except ResponseError:  # no such stream yet: everything in it will be new
            return "0-0"
        last = info.get("last-generated-id") or b"0-0"
        return last.decode() if isinstance(last, bytes) else str(last)

    async def _read_loop(self, last_id: str) -> None:
        while not self._closed:
            try:
                reply = await self._redis.xread({self.stream: last_id}, count=500, block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("reading %s failed (%s); retrying", self.stream, e)
                await asyncio.sleep(0.5)
                continue
            batch: list[SessionEvent] = []
            for _name, entries in reply or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    batch += _decode_session_events(fields)
            self.fanout.deliver(batch)  # one fan-out pass per read

    # -- anycast -------------------------------------------------------------------------------

    async def dispatch(self, events: Iterable[KernelEvent]) -> None:
        """Queue agent events for exactly one replica to handle; returns once they are stored.

        Events of one agent keep their order (one entry per agent and call, one partition per
        agent).
        """
        by_agent: dict[str, list[dict]] = {}
        for ev in events:
            by_agent.setdefault(ev.agent_id, []).append(ev.to_json())
        if not by_agent:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id, batch in by_agent.items():
                pipe.xadd(
                    self.partition_stream(partition_of(agent_id, self.partitions)),
                    {"events": json.dumps(batch)},
                    maxlen=ANYCAST_MAXLEN,
                    approximate=True,
                )
            await pipe.execute()

    async def _ensure_group(self, n: int) -> None:
        try:
            await self._redis.xgroup_create(self.partition_stream(n), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _fair_share(self) -> int:
        secs, micros = await self._redis.time()  # Redis's clock: replicas' clocks may differ
        now = secs + micros / 1e6
        await self._redis.zadd(self._members_key, {self.consumer: now})
        # A replica is live while it refreshes (every TTL/3); a dead one drops out when its
        # leases run out, so the survivors' share grows just as its partitions come free.
        await self._redis.zremrangebyscore(self._members_key, "-inf", now - self.lease_ttl)
        live = max(1, await self._redis.zcard(self._members_key))
        return math.ceil(self.partitions / live)

    async def _lease_round(self) -> None:
        ttl_ms = int(self.lease_ttl * 1000)
        share = await self._fair_share()
        for n in sorted(self._owned):
            if not await self._redis.eval(_RENEW, 1, self._lease_key(n), self.consumer, ttl_ms):
                log.warning("lost the lease of agent-event partition %d", n)
                self._owned.discard(n)
        # Give back what is above our share (a new replica joined). The consume loop lets go
        # between two entries, so the next owner never handles one we are still applying.
        excess = len(self._owned) - share
        self._giving_back = set(sorted(self._owned, reverse=True)[:max(excess, 0)])
        # Start at a replica-specific offset so that replicas starting together spread out.
        offset = zlib.crc32(self.consumer.encode()) % self.partitions
        for i in range(self.partitions):
            if len(self._owned) - len(self._giving_back) >= share:
                break
            n = (offset + i) % self.partitions
            if n in self._owned:
                continue
            key = self._lease_key(n)
            if await self._redis.set(key, self.consumer, nx=True, px=ttl_ms):
                await self._ensure_group(n)
                self._owned.add(n)
                log.info("%s now handles agent-event partition %d", self.consumer, n)

    async def _lease_loop(self) -> None:
        while not self._closed:
            try:
                await self._lease_round()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("agent-event leases: %s", e)
            await asyncio.sleep(self.lease_ttl / 3)

    async def _give_back(self) -> None:
        for n in sorted(self._giving_back):
            await self._redis.eval(_RELEASE, 1, self._lease_key(n), self.consumer)
            self._owned.discard(n)
            log.info("%s gave agent-event partition %d back", self.consumer, n)
        self._giving_back = set()

    async def _consume_loop(self) -> None:
        while not self._closed:
            try:
                if self._giving_back:
                    await self._give_back()
                if not self._owned:
                    await asyncio.sleep(0.1)
                    continue
                busy = False
                for n in sorted(self._owned):
                    busy |= await self._drain_pending(n)
                if not busy:
                    await self._read_new()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("consuming agent events: %s", e)
                await asyncio.sleep(0.5)

    async def _drain_pending(self, n: int) -> bool:
        """Handle entries already delivered but not acknowledged (ours, or a dead owner's).

        Returns True when it found any. Stops at the first failure to keep the order.
        """
        stream = self.partition_stream(n)
        try:
            reply = await self._redis.xautoclaim(stream, GROUP, self.consumer, min_idle_time=0,
                                                 start_id="0-0", count=100)
        except ResponseError as e:
            if "NOGROUP" in str(e):
                await self._ensure_group(n)
                return False
            raise
        entries = reply[1] if reply else []
        for entry_id, fields in entries:
            if n not in self._owned:
                break
            if fields is None:  # trimmed away while pending
                await self._redis.xack(stream, GROUP, entry_id)
                continue
            if not await self._handle(n, entry_id, fields):
                # back off: a database that is down for a while must not cost us the events
                await asyncio.sleep(min(0.2 * 2 ** self._attempts.get((n, entry_id), 1), 10.0))
                break
        return bool(entries)

    async def _read_new(self) -> None:
        owned = sorted(self._owned)
        try:
            reply = await self._redis.xreadgroup(
                GROUP, self.consumer, {self.partition_stream(n): ">" for n in owned},
                count=100, block=self.block_ms,
            )
        except ResponseError as e:
            if "NOGROUP" in str(e):
                for n in owned:
                    await self._ensure_group(n)
                return
            raise
        for name, entries in reply or ():
            n = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            for entry_id, fields in entries:
                # a failure leaves this and later entries pending: _drain_pending retries them
                if n not in self._owned or not await self._handle(n, entry_id, fields):
                    break

    async def _handle(self, n: int, entry_id: bytes, fields: dict) -> bool:
        """Apply one entry's events and acknowledge it; False when the handler failed."""
        assert self._handler is not None
        stream = self.partition_stream(n)
        try:
            batch = json.loads(fields[b"events"])
            events = [KernelEvent.from_json(obj) for obj in batch]
        except (KeyError, ValueError, TypeError):
            log.error("dropping a malformed agent-event entry %s in %s", entry_id, stream)
            await self._redis.xack(stream, GROUP, entry_id)
            return True
        try:
            for ev in events:
                await self._handler(ev)
        except asyncio.CancelledError:
            raise
        except Exception:
            key = (n, entry_id)
            self._attempts[key] = self._attempts.get(key, 0) + 1
            if self._attempts[key] < MAX_ATTEMPTS:
                log.warning("handling agent events %s failed (attempt %d); will retry",
                            entry_id, self._attempts[key], exc_info=True)
                return False
            log.exception("dropping agent events %s after %d failed attempts: %s",
                          entry_id, MAX_ATTEMPTS, batch)
        self._attempts.pop((n, entry_id), None)
        await self._redis.xack(stream, GROUP, entry_id)
        return True


def _decode_session_events(fields: dict) -> list[SessionEvent]:
    """The events of one broadcast entry: ``e`` holds one, ``b`` a list (``publish_many``)."""
    try:
        if b"b" in fields:
            return [SessionEvent.from_json(obj) for obj in json.loads(fields[b"b"])]
        return [SessionEvent.from_json(json.loads(fields[b"e"]))]
    except (KeyError, ValueError, TypeError, AttributeError):
        log.error("ignoring a malformed session event entry on the bus: %r", fields)
        return []
