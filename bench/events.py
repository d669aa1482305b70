"""Benchmark 5: from a status change to an SSE client, with many subscribers.

    python bench/events.py [--subscribers 100] [--sessions 30]

A real manager daemon (SQLite) with one ``dummy`` agent in this process. ``--subscribers``
admin clients follow ``GET /events/session?scope=session`` (every session's lifecycle events),
each on its own connection. Then ``--sessions`` sessions are started and removed one after the
other (each walks PENDING -> SCHEDULED -> PREPARING -> PREPARED -> CREATING -> RUNNING ->
TERMINATING -> TERMINATED). The latency of one delivery is the time a subscriber parsed the
event minus the time of that status change in the session's history (the manager stamps the
transition inside its transaction, so commit and fan-out are both inside the figure).
Target: p99 <= 20 ms with 100 subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime

from harness import ManagerProcess, cpu_seconds, line, print_conditions


async def subscriber(cfg, received: list, ready: asyncio.Event, count: list) -> None:
    from bai.client.connection import Connection

    async with Connection(cfg) as conn:
        first = True
        async for msg in conn.sse("/events/session", [("scope", "session")]):
            now = time.time()
            if first:
                first = False
                count[0] += 1
                if count[0] >= count[1]:
                    ready.set()
            data = msg.json()
            if isinstance(data, dict) and data.get("sessionId"):
                received.append((now, data["sessionId"], msg.event))


async def measure(mgr: ManagerProcess, subscribers: int, sessions: int) -> None:
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI
    from bai.manager.services.transitions import SESSION_EVENT
    from bai.testing.agents import AgentFleet

    to_status = {name: str(status) for status, name in SESSION_EVENT.items()}
    to_status["session_enqueued"] = "PENDING"
    received: list[tuple[float, str, str]] = []
    async with AgentFleet(1, manager_endpoints=[mgr.endpoint], cluster_token=mgr.token,
                          slot_cpu="64", slot_mem="64g"):
        cfg = mgr.client_config()
        ready = asyncio.Event()
        count = [0, subscribers]
        tasks = [asyncio.create_task(subscriber(cfg, received, ready, count))
                 for _ in range(subscribers)]
        async with Connection(cfg) as conn:
            api = SessionAPI(conn)
            # a first session shows every subscriber is connected (its events reach them all)
            while not ready.is_set():
                warm = await api.create(CreateSpec(image="python", name=f"warm-{time.time_ns()}",
                                                   enqueue_only=True))
                await api.destroy(warm.session_id)
                try:
                    await asyncio.wait_for(ready.wait(), 10)
                except TimeoutError:
                    print(f"   ... {count[0]} of {subscribers} subscribers heard an event")
            await asyncio.sleep(0.5)
            received.clear()
            cpu0 = cpu_seconds(mgr.pid)
            ids = []
            for i in range(sessions):
                created = await api.create(CreateSpec(image="python", name=f"ev-{i}"))
                await api.destroy(created.name)
                ids.append(created.session_id)
            await asyncio.sleep(1.0)  # let the last deliveries arrive
            cpu = cpu_seconds(mgr.pid) - cpu0
            at: dict[tuple[str, str], float] = {}
            for sid in ids:
                for h in await api.history(sid):
                    at[(sid, h.to_status)] = datetime.fromisoformat(h.at).timestamp()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = []
    for now, sid, name in received:
        status = to_status.get(name)
        if status and (sid, status) in at:
            latencies.append((now - at[(sid, status)]) * 1000)
    expected = sum(1 for (sid, _st) in at) * subscribers
    print(f"{len(latencies)} deliveries measured ({expected} status changes x subscribers)")
    print(line(f"status change -> SSE client ({subscribers} subscribers)", latencies,
               target="p99 <= 20 ms"))
    print(f"manager CPU (user+system) while the sessions ran: {cpu:.2f} s, "
          f"{cpu * 1000 / max(1, len(received)):.2f} ms per delivery", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=30)
    args = ap.parse_args()
    print_conditions("events", db="SQLite", subscribers=args.subscribers, sessions=args.sessions,
                     agent="1 dummy agent (AgentFleet, in the benchmark process)",
                     subscribers_process="all subscribers share the benchmark's event loop")
    with ManagerProcess("sqlite+aiosqlite:///{dir}/bench.db") as mgr:
        asyncio.run(measure(mgr, args.subscribers, args.sessions))


if __name__ == "__main__":
    main()
