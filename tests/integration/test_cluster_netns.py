"""Cluster mode on real hosts (issue 6): a manager on PostgreSQL + Redis, agents on two
network-namespace hosts that register with their own addresses.

* 20 sessions with the ``dispersed`` strategy spread over both agents and all run code;
* unplugging one agent host: its sessions leave RUNNING with a reason and its slots are
  released; plugging it back brings the agent back without duplicate kernels;
* agent RPCs and agent events without the cluster token are refused;
* a storage host that is a shared directory (the same path on every agent host): a folder
  written by a session on one agent is read and changed by a session on the other.

Runs as root with ``ip netns`` (CI); see ``cluster_support.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import aiohttp
import pytest
import pytest_asyncio
from cluster_support import TOKEN_HEADER, Cluster, make_cluster, requires_cluster

pytestmark = [*requires_cluster(), pytest.mark.asyncio(loop_scope="module")]

LIVE = ("SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING", "RUNNING", "TERMINATING")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster():
    cl = await make_cluster("a1", "a2", heartbeat_timeout=4.0)
    try:
        # the storage host every agent mounts at the same path (here: the hosts share a disk)
        shared = cl.work / "shared-storage"
        cl.manager_extra["storage_hosts"] = {"shared": str(shared)}
        await cl.start_manager()
        for host in ("a1", "a2"):
            await cl.start_agent(host, runtime="process", slot_cpu="16", slot_mem="8g",
                                 storage_roots={"shared": str(shared)})
        await cl.wait_agents_alive("a1", "a2")
        yield cl
    finally:
        await cl.close()


async def create_sessions(cl: Cluster, prefix: str, n: int, **spec: object) -> dict[str, str]:
    """Create ``n`` interactive sessions through the SDK; wait until RUNNING; name -> id."""
    from bai.client.connection import Connection
    from bai.client.models import CreateSpec
    from bai.client.session import SessionAPI

    async with Connection(cl.client_config()) as conn:
        api = SessionAPI(conn)
        specs = [CreateSpec(image="python", name=f"{prefix}-{i:02d}", enqueue_only=True,
                            resources={"cpu": "1", "mem": "128m"}, **spec) for i in range(n)]
        created = await asyncio.gather(*(api.create(s) for s in specs))
    ids = {c.name: c.session_id for c in created}

    async def all_running():
        rows = await cl.sql("SELECT name, status, status_info FROM sessions WHERE name = ANY($1)",
                            list(ids))
        bad = [r for r in rows if r["status"] in ("ERROR", "CANCELLED", "TERMINATED")]
        assert not bad, f"sessions failed to start: {bad}\n{cl.logs()}"
        return len(rows) == n and all(r["status"] == "RUNNING" for r in rows)

    await cl.wait(all_running, 120, f"{n} sessions did not all become RUNNING")
    return ids


async def placements(cl: Cluster, ids) -> dict[str, str]:
    """session id -> agent id of its kernel (from the manager's database)."""
    rows = await cl.sql(
        "SELECT s.id::text AS sid, k.agent_id FROM sessions s JOIN kernels k ON k.session_id = s.id "
        "WHERE s.id::text = ANY($1)", list(ids))
    return {r["sid"]: r["agent_id"] for r in rows}


async def run_code(cl: Cluster, session_id: str, code: str) -> str:
    from bai.client.connection import Connection
    from bai.client.session import SessionAPI

    out = []
    async with Connection(cl.client_config()) as conn:
        async for frame in SessionAPI(conn).execute(session_id, code=code):
            out += [str(text) for kind, text in frame.console if kind == "stdout"]
    return "".join(out)


async def live_kernels(cl: Cluster) -> dict[str, list[dict]]:
    """host -> kernels its agent reports running (over the agent's own API)."""
    out = {}
    for host in cl.agents:
        status, body = await cl.agent_kernels(host)
        assert status == 200, body
        out[host] = [k for k in body["kernels"] if k.get("status") not in ("TERMINATED", "EXITED")]
    return out


def slots_total(rows) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    for r in rows:
        for k, v in (json.loads(r) if isinstance(r, str) else (r or {})).items():
            total[k] = total.get(k, Decimal(0)) + Decimal(str(v))
    return {k: v for k, v in total.items() if v}


async def test_agents_register_with_their_reachable_addresses(cluster: Cluster):
    rows = await cluster.agent_rows()
    for host, addr in cluster.hosts.items():
        row = rows[f"agent-{host}"]
        assert row["status"] == "ALIVE"
        assert row["address"] == f"http://{addr}:6011"
        # and that address is another host's, reachable over the bridge
        assert addr != cluster.bridge and not addr.startswith("127.")


async def test_dispersed_sessions_spread_over_both_agents_and_run_code(cluster: Cluster):
    ids = await create_sessions(cluster, "disp", 20)
    placed = await placements(cluster, ids.values())
    per_agent = {a: list(placed.values()).count(a) for a in ("agent-a1", "agent-a2")}
    assert sum(per_agent.values()) == 20
    # dispersed: each placement goes to the agent with the most free capacity
    assert abs(per_agent["agent-a1"] - per_agent["agent-a2"]) <= 2, per_agent

    outputs = await asyncio.gather(*(
        run_code(cluster, sid, f"import socket; print('{name}', 6 * 7)") for name, sid in ids.items()
    ))
    for (name, _), out in zip(ids.items(), outputs):
        assert out.strip() == f"{name} 42"

    # every kernel runs on the agent the manager placed it on, once
    kernels = await live_kernels(cluster)
    where = {}
    for host, ks in kernels.items():
        for k in ks:
            assert k["session_id"] not in where, f"session {k['session_id']} runs twice"
            where[k["session_id"]] = f"agent-{host}"
    for sid, agent in placed.items():
        assert where.get(sid) == agent


async def test_a_shared_storage_host_carries_a_folder_between_agent_hosts(cluster: Cluster):
    from bai.client.connection import Connection

    async with Connection(cluster.client_config()) as conn:
        await conn.request("POST", "/folders", json_body={"name": "shared-data",
                                                          "host": "shared"})
    ids = await create_sessions(cluster, "stor", 2, mounts=["shared-data"])
    placed = await placements(cluster, ids.values())
    assert sorted(placed.values()) == ["agent-a1", "agent-a2"], placed
    by_agent = {agent: sid for sid, agent in placed.items()}
    out = await run_code(cluster, by_agent["agent-a1"], (
        "import socket\n"
        "_ = open('shared-data/note.txt', 'w').write('from ' + socket.gethostname())\n"
        "print('ok')"))
    assert out.strip() == "ok"
    out = await run_code(cluster, by_agent["agent-a2"], (
        "print(open('shared-data/note.txt').read())\n"
        "_ = open('shared-data/note.txt', 'a').write(' and a2')"))
    assert out.strip() == "from bai-kernel"
    found = list((cluster.work / "shared-storage").rglob("note.txt"))
    assert [p.read_text() for p in found] == ["from bai-kernel and a2"]


async def test_apps_tunnel_from_the_manager_host_to_an_agent_host(cluster: Cluster):
    """apps in cluster mode: the manager relays to the agent on its own host, which reaches
    the service inside the session (a user's web server; a shell on a pty with its exit)."""
    from bai.client.connection import Connection, WSMsgType

    ids = await create_sessions(cluster, "apps", 1,
                                services=[{"name": "web", "protocol": "http", "ports": [8000]}])
    sid = next(iter(ids.values()))
    await run_code(cluster, sid, "open('index.html', 'w').write('cluster-app-page')\n"
                   "import subprocess, sys\n"
                   "subprocess.Popen([sys.executable, '-m', 'http.server', '8000'], "
                   "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)")

    async def fetch() -> bytes:
        got = b""
        async with Connection(cluster.client_config()) as conn:
            async with conn.websocket(f"/stream/session/{sid}/tcpproxy",
                                      params={"app": "web"}) as ws:
                await ws.send_bytes(b"GET /index.html HTTP/1.0\r\n\r\n")
                async for msg in ws:
                    if msg.type == WSMsgType.BINARY:
                        got += msg.data
        return got

    async def served() -> bool:
        try:
            return b"cluster-app-page" in await fetch()
        except Exception:  # the server is not up yet: the app answers 502
            return False

    await cluster.wait(served, 60, "the session's web server never answered through the tunnel")
    out, code = b"", None
    async with Connection(cluster.client_config()) as conn:
        async with conn.websocket(f"/stream/session/{sid}/pty", params={"rows": "24"}) as ws:
            await ws.send_bytes(b"echo hi$((1+1)); exit 4\n")
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    out += msg.data
                else:
                    code = json.loads(msg.data).get("exit_code")
    assert b"hi2" in out and code == 4, (out, code)


async def test_unplugged_agent_host_loses_its_sessions_and_comes_back_clean(cluster: Cluster):
    ids = await create_sessions(cluster, "cut", 6)
    placed = await placements(cluster, ids.values())
    on_a1 = [sid for sid, a in placed.items() if a == "agent-a1"]
    on_a2 = [sid for sid, a in placed.items() if a == "agent-a2"]
    assert on_a1 and on_a2, placed

    cluster.link("a1", up=False)
    try:
        async def a1_lost():
            # every session on a1 (the earlier tests' too), each released in its own transaction
            rows = await cluster.sql(
                "SELECT s.id::text AS sid, s.status, s.status_info, s.occupying_slots "
                "FROM sessions s JOIN kernels k ON k.session_id = s.id "
                "WHERE k.agent_id = 'agent-a1'")
            return all(r["status"] not in LIVE for r in rows) and [
                r for r in rows if r["sid"] in on_a1]

        # the configured heartbeat timeout plus the liveness check's period and some slack
        rows = await cluster.wait(a1_lost, cluster.heartbeat_timeout + 20,
                                  "sessions on the unplugged agent did not leave RUNNING")
        assert len(rows) == len(on_a1)
        for r in rows:
            assert r["status_info"], "a session that left RUNNING must say why"
            assert "agent" in r["status_info"] and "lost" in r["status_info"], r
            assert not slots_total([r["occupying_slots"]])
        agents = await cluster.agent_rows()
        assert agents["agent-a1"]["status"] == "LOST"
        # a1's slots are released: it holds only what live sessions placed there hold
        live_on_a1 = await cluster.sql(
            "SELECT s.occupying_slots FROM sessions s JOIN kernels k ON k.session_id = s.id "
            "WHERE k.agent_id = 'agent-a1' AND s.status = ANY($1)", list(LIVE))
        assert slots_total([agents["agent-a1"]["occupied_slots"]]) == slots_total(
            [r["occupying_slots"] for r in live_on_a1]) == {}
        # the other host was not affected
        others = await cluster.sql("SELECT status FROM sessions WHERE id::text = ANY($1)", on_a2)
        assert {r["status"] for r in others} == {"RUNNING"}
    finally:
        cluster.link("a1", up=True)

    await cluster.wait_agents_alive("a1")

    async def no_leftovers():
        # the agent's kernels of sessions that were lost meanwhile are cleaned away
        kernels = await live_kernels(cluster)
        return not [k for k in kernels["a1"] if k["session_id"] in on_a1]

    await cluster.wait(no_leftovers, 30, "kernels of lost sessions kept running on the agent")
    kernels = await live_kernels(cluster)
    running = await cluster.sql(
        "SELECT s.id::text AS sid, k.agent_id FROM sessions s JOIN kernels k ON k.session_id = s.id "
        "WHERE s.status = 'RUNNING'")
    seen: dict[str, str] = {}
    for host, ks in kernels.items():
        for k in ks:
            assert k["session_id"] not in seen, f"duplicate kernel for session {k['session_id']}"
            seen[k["session_id"]] = f"agent-{host}"
    # exactly the RUNNING sessions have a kernel, on the agent the manager thinks
    assert seen == {r["sid"]: r["agent_id"] for r in running}

    # the agent is back in service: new sessions are placed on it again
    again = await create_sessions(cluster, "back", 2)
    assert "agent-a1" in (await placements(cluster, again.values())).values()


async def test_agent_rpc_and_events_without_the_cluster_token_are_refused(cluster: Cluster):
    url = cluster.agents["a1"].url
    spec = {"kernel_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4()), "session_name": "x",
            "session_type": "INTERACTIVE", "image": "python", "slots": {"cpu": "1"}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for headers in ({}, {TOKEN_HEADER: "not-the-token"}):
            async with http.get(f"{url}/v1/kernels", headers=headers) as r:
                assert r.status == 401
                assert "type" in await r.json(content_type=None)
            async with http.post(f"{url}/v1/kernels", json=spec, headers=headers) as r:
                assert r.status == 401
        status, body = await cluster.agent_kernels("a1")
        assert status == 200
        assert spec["kernel_id"] not in {k["kernel_id"] for k in body["kernels"]}

        # the manager: forged heartbeats and events, sent from an agent host
        running = await cluster.sql(
            "SELECT s.id::text AS sid, s.main_kernel_id::text AS kid, k.agent_id FROM sessions s "
            "JOIN kernels k ON k.id = s.main_kernel_id WHERE s.status = 'RUNNING' LIMIT 1")
        if not running:
            await create_sessions(cluster, "auth", 1)
            running = await cluster.sql(
                "SELECT s.id::text AS sid, s.main_kernel_id::text AS kid, k.agent_id FROM sessions s "
                "JOIN kernels k ON k.id = s.main_kernel_id WHERE s.status = 'RUNNING' LIMIT 1")
        victim = running[0]
        forged = {"events": [{"name": "kernel_terminated", "agent_id": victim["agent_id"],
                              "kernel_id": victim["kid"], "session_id": victim["sid"],
                              "reason": "forged", "exit_code": 0}]}
        beat = {"agent_id": "agent-evil", "address": "http://10.77.0.99:6011", "runtime": "dummy",
                "available_slots": {"cpu": "1000"}, "kernels": []}
        manager = cluster.managers[0].url
        for headers in ({}, {TOKEN_HEADER: "not-the-token"}):
            async with http.post(f"{manager}/internal/agents/events", json=forged, headers=headers) as r:
                assert r.status == 401
            async with http.post(f"{manager}/internal/agents/heartbeat", json=beat, headers=headers) as r:
                assert r.status == 401
    await asyncio.sleep(1.0)  # anything accepted would have been applied by now
    rows = await cluster.sql("SELECT status FROM sessions WHERE id::text = $1", victim["sid"])
    assert rows[0]["status"] == "RUNNING"
    assert "agent-evil" not in await cluster.agent_rows()
