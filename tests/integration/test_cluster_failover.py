"""Two manager replicas on one PostgreSQL database and one Redis; one is killed with ``kill -9``
in the middle of 200 session creations made through the comma-separated endpoint list.

Afterwards every session is accounted for exactly once, none is placed twice (one kernel, on one
agent, slots counted once) and none is stuck. Agents run the dummy runtime on two
network-namespace hosts; see ``cluster_support.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from decimal import Decimal

from cluster_support import Cluster, make_cluster, requires_cluster

pytestmark = requires_cluster()

N = 200
KILL_AFTER = 70  # creations answered before the first replica dies
TRANSITIONAL = ("PENDING", "SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING",
                "TERMINATING")
OCCUPYING = ("SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING", "RUNNING",
             "TERMINATING")


def slots(value) -> dict[str, Decimal]:
    obj = json.loads(value) if isinstance(value, str) else (value or {})
    return {k: Decimal(str(v)) for k, v in obj.items() if Decimal(str(v))}


def add(a: dict[str, Decimal], b: dict[str, Decimal]) -> dict[str, Decimal]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, Decimal(0)) + v
    return {k: v for k, v in out.items() if v}


async def create_all(cl: Cluster, names: list[str]) -> dict[str, str]:
    """Create the sessions 8 at a time through the endpoint list; kill manager 0 midway.

    A creation whose connection died with the manager has an unknown outcome; it is sent again
    with the same name (``reuseIfExists``, as the official client sends it): the manager answers
    with the session that already exists, or creates it if the first attempt never got written.
    """
    from bai.client.connection import Connection
    from bai.client.errors import ConnectionLost
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI

    outcome: dict[str, str] = {}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in names:
        queue.put_nowait(n)
    answered = 0
    killed = asyncio.Event()

    async with Connection(cl.client_config()) as conn:
        api = SessionAPI(conn)

        async def create(name: str) -> str:
            spec = CreateSpec(image="python", name=name, resources={"cpu": "1", "mem": "64m"},
                              max_wait=120)
            for attempt in range(3):
                try:
                    created = await api.create(spec)
                    return created.status if attempt == 0 else f"retried:{created.status}"
                except ConnectionLost:
                    continue
            raise AssertionError(f"{name}: no manager took the creation")

        async def worker() -> None:
            nonlocal answered
            while not queue.empty():
                name = queue.get_nowait()
                outcome[name] = await create(name)
                answered += 1
                if answered >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    cl.managers[0].stop(signal.SIGKILL)

        await asyncio.gather(*(worker() for _ in range(8)))
    assert killed.is_set() and not cl.managers[0].alive()
    return outcome


async def test_kill_9_of_one_manager_during_200_creations():
    cl = await make_cluster("a1", "a2", heartbeat_timeout=6.0)
    # short deadlines: a session that the dead replica left half-way must move on quickly
    cl.manager_extra = {"deadline_scheduled": 5.0, "deadline_preparing": 10.0,
                        "deadline_prepared": 10.0, "deadline_creating": 10.0}
    try:
        await cl.start_manager()
        await cl.start_manager()
        for host in ("a1", "a2"):
            await cl.start_agent(host, runtime="dummy", slot_cpu="400", slot_mem="100g",
                                 dummy_create_delay=0.05)
        await cl.wait_agents_alive("a1", "a2")

        names = [f"fo-{i:03d}" for i in range(N)]
        outcome = await create_all(cl, names)
        assert sorted(outcome) == names

        async def settled():
            rows = await cl.sql("SELECT status FROM sessions WHERE name LIKE 'fo-%'")
            return len(rows) >= N and not [r for r in rows if r["status"] in TRANSITIONAL]

        await cl.wait(settled, 120, "sessions did not settle (stuck in a transitional status)")

        sessions = await cl.sql(
            "SELECT id::text AS id, name, status, status_info, occupying_slots, "
            "main_kernel_id::text AS kid FROM sessions WHERE name LIKE 'fo-%'")
        # every creation is accounted for exactly once
        assert sorted(s["name"] for s in sessions) == names
        # none is stuck; a session that did not make it says why
        for s in sessions:
            assert s["status"] in ("RUNNING", "ERROR", "CANCELLED", "TERMINATED"), s
            if s["status"] != "RUNNING":
                assert s["status_info"], s
        running = {s["id"]: s for s in sessions if s["status"] == "RUNNING"}
        print(f"{len(running)} running; others:",
              [(s["name"], s["status"], s["status_info"]) for s in sessions if s["status"] != "RUNNING"])
        assert len(running) >= N - 10, (
            f"only {len(running)} of {N} sessions run: "
            f"{[(s['name'], s['status'], s['status_info']) for s in sessions if s['status'] != 'RUNNING']}")

        # none is placed twice: one kernel per running session, on the agent the manager recorded
        kernels = await cl.sql(
            "SELECT k.id::text AS id, k.session_id::text AS sid, k.agent_id, k.status "
            "FROM kernels k JOIN sessions s ON s.id = k.session_id WHERE s.name LIKE 'fo-%'")
        live_rows = [k for k in kernels if k["status"] in OCCUPYING]
        assert len({k["sid"] for k in live_rows}) == len(live_rows)
        recorded = {k["sid"]: k["agent_id"] for k in live_rows}
        seen: dict[str, str] = {}
        for host in cl.agents:
            status, body = await cl.agent_kernels(host)
            assert status == 200
            for k in body["kernels"]:
                if k.get("status") in ("TERMINATED", "EXITED"):
                    continue
                assert k["session_id"] not in seen, f"session {k['session_id']} placed twice"
                seen[k["session_id"]] = f"agent-{host}"
        assert seen == {sid: recorded[sid] for sid in running}

        # slots are counted once: each agent holds exactly what its live sessions hold
        agents = await cl.agent_rows()
        for agent_id, row in agents.items():
            held: dict[str, Decimal] = {}
            for s in sessions:
                if s["status"] in OCCUPYING and recorded.get(s["id"]) == agent_id:
                    held = add(held, slots(s["occupying_slots"]))
            if slots(row["occupied_slots"]) != held:
                odd = await cl.sql(
                    "SELECT s.name, s.status, s.status_info, s.occupying_slots, "
                    "array_agg(coalesce(h.from_status, '') || '>' || h.to_status || ':' || h.reason "
                    "|| '@' || h.cause ORDER BY h.id) AS story FROM sessions s "
                    "JOIN session_history h ON h.session_id = s.id WHERE s.name LIKE 'fo-%' "
                    "GROUP BY s.id HAVING bool_or(h.to_status IN ('PENDING', 'ERROR') AND "
                    "h.from_status IS NOT NULL) OR s.status <> 'RUNNING'")
                raise AssertionError(f"{agent_id}: occupied {row['occupied_slots']} but its "
                                     f"sessions hold {held}; unusual sessions: {odd}")

        # the surviving replica serves everything, including what the dead one created
        assert cl.managers[1].alive()
    except BaseException:
        print(cl.logs())
        raise
    finally:
        await cl.close()


async def test_a_client_on_either_replica_sees_the_events_of_sessions_the_other_serves():
    """Session events are broadcast: an SSE stream open on manager 1 (all sessions, live only)
    sees the lifecycle of a session created through manager 0, and the reverse."""
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI

    cl = await make_cluster("a1")
    try:
        await cl.start_manager()
        await cl.start_manager()
        await cl.start_agent("a1", runtime="dummy", slot_cpu="8", slot_mem="8g")
        await cl.wait_agents_alive("a1")

        def on(i: int) -> ClientConfig:
            return ClientConfig.load(env=cl.client_env(endpoints=cl.managers[i].url))

        for watcher, creator in ((1, 0), (0, 1)):
            name = f"bc-{creator}"
            seen: list[tuple[str, str]] = []
            async with Connection(on(watcher)) as wconn, Connection(on(creator)) as cconn:
                async def watch(name=name, seen=seen):
                    async for msg in wconn.sse("/events/session", [("sessionName", "*")]):
                        data = msg.json()
                        if isinstance(data, dict) and data.get("sessionName") == name:
                            seen.append((msg.event, data.get("sessionName")))
                            if msg.event == "session_started":
                                return

                task = asyncio.create_task(watch())
                await asyncio.sleep(1.0)  # the stream is open before anything happens
                created = await SessionAPI(cconn).create(
                    CreateSpec(image="python", name=name, resources={"cpu": "1", "mem": "64m"}))
                assert created.status == "RUNNING"
                await asyncio.wait_for(task, 30)
            names = [e for e, _ in seen]
            assert names[0] == "session_enqueued" and names[-1] == "session_started", names
            assert "kernel_started" in names
    except BaseException:
        print(cl.logs())
        raise
    finally:
        await cl.close()
