"""Benchmark 5: from a status change to an SSE client, with many subscribers.

    python bench/events.py [--subscribers 100] [--sessions 30] [--procs 4] [--batch 1000]
                           [--rounds 20] [--part latency|publish|both]

A real manager daemon (SQLite) with one ``dummy`` agent in this process. ``--subscribers``
admin clients follow ``GET /events/session?scope=session`` (every session's lifecycle events),
each on its own connection, spread over ``--procs`` subscriber processes so that the clients
are not the bottleneck being measured: a subscriber only stamps ``time.time()`` on every chunk
of bytes as it arrives and parses the SSE stream after the run (the message's receive time is
the arrival time of the chunk that completed it). Then ``--sessions`` sessions are started and
removed one after the other (each walks PENDING -> SCHEDULED -> PREPARING -> PREPARED ->
CREATING -> RUNNING -> TERMINATING -> TERMINATED). The latency of one delivery is that receive
time minus the time of the status change in the session's history (the manager stamps the
transition inside its transaction, so commit and fan-out are both inside the figure; both clocks
are this machine's wall clock). Target: p99 <= 20 ms with 100 subscribers.

Then the cost of ``publish_many`` on the in-process bus: batches of ``--batch`` events, with 0
and with ``--subscribers`` real SSE streams (the manager's own handler on loopback), in
microseconds of the publish call per event; and on the Redis bus when ``BAI_TEST_REDIS_URL``
is set (``source /tmp/bai-ci/services.env``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from urllib.parse import urlsplit

from harness import ManagerProcess, cpu_seconds, figures, line, print_conditions

PATH = "/events/session?scope=session"


# -- the subscriber processes -------------------------------------------------------------------

class SSEParser:
    """HTTP response (chunked or not) -> SSE messages, fed chunk by chunk."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.body = bytearray()
        self.headers_done = False
        self.chunked = False

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return []
            head = bytes(self.raw[:end]).lower()
            self.chunked = b"transfer-encoding: chunked" in head
            del self.raw[:end + 4]
            self.headers_done = True
        if self.chunked:
            while True:
                eol = self.raw.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(self.raw[:eol]).split(b";")[0], 16)
                if len(self.raw) < eol + 2 + size + 2:
                    break
                self.body += self.raw[eol + 2:eol + 2 + size]
                del self.raw[:eol + 2 + size + 2]
        else:
            self.body += self.raw
            self.raw.clear()
        out = []
        while (end := self.body.find(b"\n\n")) >= 0:
            block = bytes(self.body[:end]).decode()
            del self.body[:end + 2]
            event, data = "message", []
            for row in block.split("\n"):
                name, _, value = row.partition(":")
                if name == "event":
                    event = value.strip()
                elif name == "data":
                    data.append(value.removeprefix(" "))
            if data:
                out.append((event, "\n".join(data)))
        return out


class Recorder(asyncio.Protocol):
    """One subscriber connection: keeps (arrival time, bytes) and nothing else while it runs."""

    def __init__(self, first: asyncio.Future) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.first = first

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.time(), data))
        if not self.first.done():
            self.first.set_result(None)

    def deliveries(self) -> list[tuple[float, str, str]]:
        parser = SSEParser()
        out = []
        for at, data in self.chunks:
            for event, payload in parser.feed(data):
                try:
                    body = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(body, dict) and body.get("sessionId"):
                    out.append((at, body["sessionId"], event))
        return out


async def worker(endpoint: str, count: int, ak: str, sk: str) -> None:
    from bai.common.auth import make_headers

    parts = urlsplit(endpoint)
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        headers = make_headers(ak, sk, "GET", PATH, parts.netloc, "application/octet-stream")
        headers.update({"Host": parts.netloc, "Accept": "text/event-stream",
                        "X-BackendAI-Domain": "default"})
        request = f"GET {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        first = loop.create_future()
        transport, proto = await loop.create_connection(lambda f=first: Recorder(f),
                                                        parts.hostname, parts.port)
        transport.write((request + "\r\n").encode())
        conns.append((transport, proto, first))
    # the first bytes (a keep-alive comment) are written once the stream is subscribed
    await asyncio.wait_for(asyncio.gather(*(f for _, _, f in conns)), 60)
    print("ready", flush=True)
    cpu = []
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        cpu.append(time.process_time())
        if cmd in ("stop", ""):
            break
    for transport, _, _ in conns:
        transport.close()
    deliveries = [d for _, proto, _ in conns for d in proto.deliveries()]
    json.dump({"deliveries": deliveries, "cpu": cpu[-1] - cpu[0]}, sys.stdout)
    sys.stdout.flush()


class Subscribers:
    """``procs`` worker processes holding ``total`` SSE connections between them."""

    def __init__(self, endpoint: str, keys: dict, total: int, procs: int) -> None:
        procs = max(1, min(procs, total))
        share = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", endpoint, str(n),
                              keys["access_key"], keys["secret_key"]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for n in share
        ]

    def wait_ready(self) -> None:
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a subscriber process failed to connect")

    def say(self, cmd: str) -> None:
        for p in self.procs:
            p.stdin.write(cmd + "\n")
            p.stdin.flush()

    def results(self) -> tuple[list, float]:
        self.say("stop")
        deliveries, cpu = [], 0.0
        for p in self.procs:
            out = json.loads(p.stdout.read())
            p.wait(30)
            deliveries += out["deliveries"]
            cpu += out["cpu"]
        return deliveries, cpu

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- status change -> subscriber --------------------------------------------------------------

async def measure(mgr: ManagerProcess, subs: Subscribers, subscribers: int, sessions: int) -> None:
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI
    from bai.manager.services.transitions import SESSION_EVENT
    from bai.testing.agents import AgentFleet

    to_status = {name: str(status) for status, name in SESSION_EVENT.items()}
    to_status["session_enqueued"] = "PENDING"
    async with AgentFleet(1, manager_endpoints=[mgr.endpoint], cluster_token=mgr.token,
                          slot_cpu="64", slot_mem="64g"):
        await asyncio.to_thread(subs.wait_ready)
        async with Connection(mgr.client_config()) as conn:
            api = SessionAPI(conn)
            warm = await api.create(CreateSpec(image="python", name=f"warm-{time.time_ns()}"))
            await api.destroy(warm.session_id)
            await asyncio.sleep(0.5)
            subs.say("go")
            cpu0, own0 = cpu_seconds(mgr.pid), time.process_time()
            ids = []
            for i in range(sessions):
                created = await api.create(CreateSpec(image="python", name=f"ev-{i}"))
                await api.destroy(created.name)
                ids.append(created.session_id)
            await asyncio.sleep(1.0)  # let the last deliveries arrive
            cpu, own = cpu_seconds(mgr.pid) - cpu0, time.process_time() - own0
            load_end = os.getloadavg()[0]
            received, sub_cpu = await asyncio.to_thread(subs.results)
            at: dict[tuple[str, str], float] = {}
            for sid in ids:
                for h in await api.history(sid):
                    at[(sid, h.to_status)] = datetime.fromisoformat(h.at).timestamp()
    latencies = []
    per_change: dict[tuple[str, str], list[float]] = {}
    for now, sid, name in received:
        status = to_status.get(name)
        if status and (sid, status) in at:
            latencies.append((now - at[(sid, status)]) * 1000)
            per_change.setdefault((sid, status), []).append(latencies[-1])
    expected = len(at) * subscribers
    n = max(1, len(latencies))
    print(f"{len(latencies)} deliveries measured ({expected} status changes x subscribers); "
          f"load average (1 min) at the end {load_end:.2f}")
    print(line(f"status change -> SSE client ({subscribers} subscribers)", latencies,
               target="p99 <= 20 ms"))
    # where the time goes: until the first subscriber has it (commit, publish), then the fan-out
    print(line("  ... to the first subscriber", [min(v) for v in per_change.values()]))
    print(line("  ... last minus first subscriber", [max(v) - min(v) for v in per_change.values()]))
    for status in sorted({st for _, st in per_change}):
        print(line(f"  ... to {status}", [x for (_, st), v in per_change.items() if st == status
                                           for x in v]))
    print(f"CPU while the sessions ran: manager {cpu:.2f} s ({cpu * 1000 / n:.3f} ms per delivery); "
          f"subscriber processes {sub_cpu:.2f} s; this process (client + dummy agent) {own:.2f} s",
          flush=True)


# -- publish_many cost ----------------------------------------------------------------------

def sample_events(n: int, sessions: int = 100) -> list:
    import uuid

    from bai.common.events import SessionEvent

    sids = [str(uuid.uuid4()) for _ in range(sessions)]
    return [SessionEvent("session_scheduled", sids[i % sessions], f"s{i % sessions}", "AKIA",
                         reason="scheduled", status="SCHEDULED") for i in range(n)]


class Drain(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = 0
        self.first = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if not self.first.done():
            self.first.set_result(None)


async def local_publish_cost(subscribers: int, batch: int, rounds: int) -> list[float]:
    """µs per event of ``LocalEventBus.publish_many`` feeding the real SSE handler's streams."""
    from aiohttp import web

    from bai.manager.api import events as sse
    from bai.manager.api.middleware import CALLER_KEY
    from bai.manager.app import ROOT
    from bai.manager.context import Caller
    from bai.manager.eventbus import LocalEventBus

    bus = LocalEventBus()
    admin = Caller("AKIA", __import__("uuid").uuid4(), "a@b", "default", True, "superadmin", "default")

    @web.middleware
    async def as_admin(request, handler):
        request[CALLER_KEY] = admin
        return await handler(request)

    app = web.Application(middlewares=[as_admin])
    app[ROOT] = type("Root", (), {"bus": bus})()
    sse.setup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    readers = []
    for _ in range(subscribers):
        transport, proto = await loop.create_connection(Drain, "127.0.0.1", port)
        transport.write(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        readers.append((transport, proto))
    await asyncio.gather(*(p.first for _, p in readers))
    costs = []
    for _ in range(rounds):
        events = sample_events(batch)
        t0 = time.perf_counter()
        await bus.publish_many(events)
        costs.append((time.perf_counter() - t0) * 1e6 / batch)
        await asyncio.sleep(0.05 if subscribers else 0)  # let the readers take the bytes
    for transport, _ in readers:
        transport.close()
    await bus.close()
    await runner.cleanup()
    return costs


async def redis_publish_cost(url: str, batch: int, rounds: int) -> list[float]:
    from bai.manager.eventbus.redis import RedisEventBus

    stream = f"bai-bench:{time.time_ns()}"
    bus = RedisEventBus(url, stream=stream)
    costs = []
    try:
        for _ in range(rounds):
            events = sample_events(batch)
            t0 = time.perf_counter()
            await bus.publish_many(events)
            costs.append((time.perf_counter() - t0) * 1e6 / batch)
        await bus._redis.delete(stream)
    finally:
        await bus.close()
    return costs


def cost_line(label: str, costs: list[float]) -> str:
    f = figures(costs)
    return (f"{label:<38} median {f['median']:8.2f} µs/event  p90 {f['p90']:8.2f}  "
            f"max {f['max']:8.2f}  ({f['n']} calls)")


async def publish_costs(subscribers: int, batch: int, rounds: int) -> None:
    for n in (0, subscribers):
        costs = await local_publish_cost(n, batch, rounds)
        print(cost_line(f"local publish_many, {n} SSE streams", costs))
    url = os.environ.get("BAI_TEST_REDIS_URL")
    if url:
        costs = await redis_publish_cost(url, batch, rounds)
        print(cost_line("redis publish_many (XADD pipeline)", costs))
    else:
        print("redis publish_many: BAI_TEST_REDIS_URL is not set, skipped")
    sys.stdout.flush()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        endpoint, count, ak, sk = sys.argv[2:6]
        asyncio.run(worker(endpoint, int(count), ak, sk))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--procs", type=int, default=4, help="subscriber processes")
    ap.add_argument("--batch", type=int, default=1000, help="events per publish_many call")
    ap.add_argument("--rounds", type=int, default=20, help="publish_many calls measured")
    ap.add_argument("--part", choices=("latency", "publish", "both"), default="both")
    args = ap.parse_args()
    procs = max(1, min(args.procs, args.subscribers))
    print_conditions("events", db="SQLite", subscribers=args.subscribers, sessions=args.sessions,
                     agent="1 dummy agent (AgentFleet, in the benchmark process)",
                     subscriber_processes=f"{procs} processes, arrival stamped with time.time() "
                                          "per received chunk, SSE parsed after the run",
                     publish_many=f"batches of {args.batch}, {args.rounds} rounds")
    if args.part in ("latency", "both"):
        with ManagerProcess("sqlite+aiosqlite:///{dir}/bench.db") as mgr:
            subs = Subscribers(mgr.endpoint, mgr.keys["admin"], args.subscribers, procs)
            try:
                asyncio.run(measure(mgr, subs, args.subscribers, args.sessions))
            finally:
                subs.kill()
    if args.part in ("publish", "both"):
        asyncio.run(publish_costs(args.subscribers, args.batch, args.rounds))


if __name__ == "__main__":
    main()
