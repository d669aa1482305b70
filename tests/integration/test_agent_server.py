"""The agent daemon's HTTP API against a fake manager on loopback (it records heartbeats and
events; a fake is the point here: the real manager has its own tests)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_support import HEADERS, TOKEN, manager  # noqa: F401 - manager: the fixture
from bai.agent.server import Agent
from bai.agent.settings import AgentSettings
from bai.testing.fake_manager import FakeManager


@pytest.fixture
async def make_agent(manager: FakeManager, tmp_path: Path):
    agents: list[Agent] = []

    async def make(runtime: str = "dummy", **kw: Any) -> Agent:
        values = dict(agent_id=f"a-{uuid.uuid4().hex[:6]}", port=0, cluster_token=TOKEN,
                      manager_endpoints=manager.url, scratch_root=str(tmp_path / "scratch"),
                      runtime=runtime, heartbeat_interval=0.2, monitor_interval=0.1)
        values.update(kw)
        agent = Agent(AgentSettings.load(None, **values))
        await agent.start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        for kid in list(agent.registry.records):
            await agent.registry.destroy(kid)
        await agent.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        yield s


def kernel_body(**kw: Any) -> dict[str, Any]:
    body = {"kernel_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4()),
            "session_name": "s1", "session_type": "INTERACTIVE", "image": "python:3.11-debian12",
            "slots": {"cpu": "1", "mem": "268435456"}, "environ": {}}
    body.update(kw)
    return body


async def started(manager: FakeManager, kid: str) -> list[str]:
    await manager.wait_for(lambda m: {"kernel_started", "kernel_creation_failed"}
                           & set(m.event_names(kid)))
    return manager.event_names(kid)


async def execute(http: aiohttp.ClientSession, agent: Agent, kid: str, first: dict[str, Any],
                  answers: list[str] | None = None) -> list[dict[str, Any]]:
    answers = list(answers or [])
    frames = []
    async with http.ws_connect(f"{agent.address}/v1/kernels/{kid}/execute") as ws:
        await ws.send_json(first)
        async for msg in ws:
            frame = json.loads(msg.data)
            frames.append(frame)
            if frame["status"] == "waiting-input":
                await ws.send_str(answers.pop(0))
            if frame["status"] == "finished":
                break
    return frames


def console(frames: list[dict[str, Any]], kind: str) -> str:
    return "".join(d for f in frames for k, d in f["console"] if k == kind)


async def test_every_route_needs_the_cluster_token(make_agent, manager: FakeManager) -> None:
    agent = await make_agent(slot_cuda_device="2", slot_cuda_shares="4", slot_cpu="2")
    async with aiohttp.ClientSession() as anon:
        for method, path in [("GET", "/v1/info"), ("GET", "/v1/kernels"), ("POST", "/v1/kernels"),
                             ("DELETE", "/v1/kernels/x"), ("GET", "/v1/kernels/x/logs")]:
            async with anon.request(method, agent.address + path,
                                    headers={"X-BAI-Cluster-Token": "wrong"}) as r:
                assert r.status == 401
                assert (await r.json())["type"].endswith("/auth-failed")
    async with aiohttp.ClientSession(headers=HEADERS) as http:
        async with http.get(agent.address + "/v1/info") as r:
            info = await r.json()
    assert info["available_slots"]["cuda.device"] == "2"
    assert info["available_slots"]["cuda.shares"] == "4"
    assert info["available_slots"]["cpu"] == "2"
    assert info["runtime"] == "dummy"
    await manager.wait_for(lambda m: len(m.heartbeats) >= 2)
    assert manager.heartbeats[0]["agent_id"] == agent.agent_id
    assert manager.heartbeats[0]["address"] == agent.address


async def test_dummy_kernel_lifecycle(make_agent, manager: FakeManager, http) -> None:
    agent = await make_agent()
    body = kernel_body()
    kid = body["kernel_id"]
    for _ in range(2):  # idempotent
        async with http.post(agent.address + "/v1/kernels", json=body) as r:
            assert r.status == 202 and (await r.json()) == {"kernel_id": kid}
    assert await started(manager, kid) == [
        "kernel_preparing", "kernel_prepared", "kernel_creating", "kernel_started"]
    frames = await execute(http, agent, kid, {"code": "print(1)", "mode": "query", "options": {}})
    assert frames[-1] == {"status": "finished", "console": [["stdout", "print(1)\n"]],
                          "exitCode": 0, "options": {}, "files": []}
    frames = await execute(http, agent, kid, {"code": "input()", "mode": "query", "options": {}},
                           answers=["typed"])
    assert frames[0]["status"] == "waiting-input" and frames[0]["options"] == {"is_password": False}
    assert console(frames, "stdout") == "typed\n"
    async with http.get(agent.address + "/v1/kernels") as r:
        assert [(k["kernel_id"], k["status"]) for k in (await r.json())["kernels"]] == \
            [(kid, "RUNNING")]
    for _ in range(2):
        async with http.delete(f"{agent.address}/v1/kernels/{kid}?reason=user-requested") as r:
            assert r.status == 200
            answer = await r.json()
            assert answer["kernel_id"] == kid and answer["stats"]["status"] == "terminated"
    async with http.delete(f"{agent.address}/v1/kernels/{uuid.uuid4()}") as r:
        assert r.status == 200
    await agent.link.flush()
    assert manager.event_names(kid).count("kernel_terminated") == 1
    terminated = [e for e in manager.events if e["kernel_id"] == kid][-1]
    assert terminated["reason"] == "user-requested"


async def test_an_execute_asked_while_its_kernel_starts_runs_once_it_has(
        make_agent, manager: FakeManager, http) -> None:
    """An execute asked right after the create (the manager's run stream) waits for the
    kernel's start and runs the code (fails: refused as not running); a kernel whose creation
    fails is refused once it has."""
    agent = await make_agent(dummy_create_delay=0.3)
    body = kernel_body()
    async with http.post(agent.address + "/v1/kernels", json=body) as r:
        assert r.status == 202
    assert agent.registry.get(body["kernel_id"]).instance is None
    frames = await execute(http, agent, body["kernel_id"],
                           {"code": "print(1)", "mode": "query", "options": {}})
    assert frames[-1]["status"] == "finished" and console(frames, "stdout") == "print(1)\n"
    failing = kernel_body(image_labels={"bai.dummy.fail": "image is not present"})
    async with http.post(agent.address + "/v1/kernels", json=failing) as r:
        assert r.status == 202
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await execute(http, agent, failing["kernel_id"], {"code": "1", "mode": "query"})
    assert (await started(manager, failing["kernel_id"]))[-1] == "kernel_creation_failed"


async def test_creation_failure_is_reported(make_agent, manager: FakeManager, http) -> None:
    agent = await make_agent()
    body = kernel_body(image_labels={"bai.dummy.fail": "image is not present"})
    async with http.post(agent.address + "/v1/kernels", json=body) as r:
        assert r.status == 202
    names = await started(manager, body["kernel_id"])
    assert names[-1] == "kernel_creation_failed"
    assert manager.events[-1]["reason"] == "image is not present"
    async with http.post(agent.address + "/v1/kernels", json={"kernel_id": "x"}) as r:
        assert r.status == 400 and (await r.json())["type"].endswith("/invalid-api-params")
    big = kernel_body(slots={"cpu": "1000"})
    async with http.post(agent.address + "/v1/kernels", json=big) as r:
        assert r.status == 202
    await started(manager, big["kernel_id"])
    assert "not enough cpu" in manager.events[-1]["reason"]


async def test_events_are_kept_and_retried_in_order(make_agent, manager: FakeManager, http) -> None:
    manager.fail_events = True
    agent = await make_agent(slot_cpu="8")
    kids = []
    for _ in range(3):
        body = kernel_body()
        kids.append(body["kernel_id"])
        async with http.post(agent.address + "/v1/kernels", json=body) as r:
            assert r.status == 202
    await asyncio.sleep(0.5)
    assert manager.events == [] and agent.link.pending > 0
    manager.fail_events = False
    await manager.wait_for(lambda m: m.event_names().count("kernel_started") == 3)
    for kid in kids:
        assert manager.event_names(kid) == [
            "kernel_preparing", "kernel_prepared", "kernel_creating", "kernel_started"]


async def test_kernels_the_manager_forgot_are_destroyed(make_agent, manager: FakeManager,
                                                        http) -> None:
    agent = await make_agent()
    keep, drop = kernel_body(), kernel_body()
    for body in (keep, drop):
        async with http.post(agent.address + "/v1/kernels", json=body) as r:
            assert r.status == 202
        await started(manager, body["kernel_id"])
    manager.known_kernels = [keep["kernel_id"]]
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(drop["kernel_id"]))
    assert manager.events[-1]["reason"] == "terminated-unknown-kernel"
    assert list(agent.registry.records) == [keep["kernel_id"]]


async def test_process_kernel_over_the_api(make_agent, manager: FakeManager, http,
                                           tmp_path: Path) -> None:
    agent = await make_agent("process")
    body = kernel_body()
    kid = body["kernel_id"]
    async with http.post(agent.address + "/v1/kernels", json=body) as r:
        assert r.status == 202
    assert (await started(manager, kid))[-1] == "kernel_started"

    form = aiohttp.FormData()
    form.add_field("src", b"import sys\nprint('args', *sys.argv[1:])\n", filename="my script.py",
                   content_type="application/octet-stream")
    form.add_field("src", b"data", filename="data/input.txt")
    async with http.post(f"{agent.address}/v1/kernels/{kid}/upload", data=form) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["files"] == ["my script.py", "data/input.txt"]

    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = agent.registry.get(kid).instance.workdir
    os.symlink(outside, workdir / "link")
    for name in ("../escape.txt", "/etc/escape.txt", "link/escape.txt", "data/../../x.txt",
                 ".bai/runner.sock"):
        form = aiohttp.FormData()
        form.add_field("src", b"x", filename=name)
        async with http.post(f"{agent.address}/v1/kernels/{kid}/upload", data=form) as r:
            assert r.status == 400, name
            assert (await r.json())["type"].endswith("/invalid-api-params")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()

    frames = await execute(http, agent, kid, {"code": "", "mode": "batch", "options": {
        "clean": "*", "build": "*", "buildLog": False, "exec": "python 'my script.py' 1 2"}})
    assert console(frames, "stdout") == "args 1 2\n" and frames[-1]["exitCode"] == 0

    frames = await execute(http, agent, kid, {"mode": "query", "options": {}, "code": (
        "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)")})
    assert len([f for f in frames if f["console"]]) >= 3
    frames = await execute(http, agent, kid, {"mode": "query", "options": {},
                                              "code": "import getpass\np = getpass.getpass()"},
                           answers=["pw"])
    assert frames[0]["options"] == {"is_password": True}
    frames = await execute(http, agent, kid, {"mode": "query", "options": {}, "code": "p * 2"})
    assert console(frames, "stdout") == "'pwpw'\n"

    async with http.get(f"{agent.address}/v1/kernels/{kid}/files?path=data") as r:
        assert [f["filename"] for f in (await r.json())["files"]] == ["input.txt"]
    async with http.get(f"{agent.address}/v1/kernels/{kid}/stats") as r:
        stats = await r.json()
        assert stats["status"] == "running" and stats["cpu_used"] >= 0
    async with http.get(f"{agent.address}/v1/kernels/{kid}/logs") as r:
        assert isinstance((await r.json())["logs"], str)
    async with http.delete(f"{agent.address}/v1/kernels/{kid}") as r:
        assert r.status == 200
    assert not workdir.exists()


@pytest.mark.skipif(not os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                    and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
                    reason="no cgroups")
async def test_out_of_memory_is_reported(make_agent, manager: FakeManager, http) -> None:
    agent = await make_agent("process")
    if agent.backend.isolation()["memory"] != "cgroup":
        pytest.skip("no memory cgroup")
    body = kernel_body(slots={"cpu": "1", "mem": str(64 * 2**20)})
    kid = body["kernel_id"]
    async with http.post(agent.address + "/v1/kernels", json=body) as r:
        assert r.status == 202
    await started(manager, kid)
    frames = await execute(http, agent, kid, {"mode": "query", "options": {},
                                              "code": "x = b'1' * (512 * 1024 * 1024)"})
    assert frames[-1]["status"] == "finished" and frames[-1]["exitCode"] == 137
    assert "ran out of memory" in console(frames, "stderr")
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(kid))
    ev = [e for e in manager.events if e["kernel_id"] == kid][-1]
    assert (ev["reason"], ev["exit_code"]) == ("oom-killed", 137)


async def test_restarted_agent_adopts_running_kernels(make_agent, manager: FakeManager,
                                                      http) -> None:
    agent = await make_agent("process")
    alive, dying = kernel_body(), kernel_body()
    for body in (alive, dying):
        async with http.post(agent.address + "/v1/kernels", json=body) as r:
            assert r.status == 202
        await started(manager, body["kernel_id"])
    frames = await execute(http, agent, alive["kernel_id"],
                           {"mode": "query", "options": {}, "code": "x = 'kept'"})
    dying_pid = int(agent.registry.get(dying["kernel_id"]).instance.container_id.split(":")[1])
    settings = agent.settings
    await agent.stop()
    os.killpg(dying_pid, 9)  # ends while no agent watches

    again = await make_agent("process", agent_id=settings.agent_id)
    await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(dying["kernel_id"]))
    async with http.get(again.address + "/v1/kernels") as r:
        listed = {k["kernel_id"]: k["status"] for k in (await r.json())["kernels"]}
    assert listed[alive["kernel_id"]] == "RUNNING"
    assert listed[dying["kernel_id"]] == "TERMINATED"
    frames = await execute(http, again, alive["kernel_id"],
                           {"mode": "query", "options": {}, "code": "print(x)"})
    assert console(frames, "stdout") == "kept\n"
    assert again.registry.occupied()["cpu"] == 1  # slots restored from the labels


async def test_batch_create_starts_the_good_specs_and_names_the_bad(manager, make_agent, http):
    agent = await make_agent()
    good = [kernel_body(session_name=f"b{i}", slots={"cpu": "0.1", "mem": "1048576"})
            for i in range(3)]
    bad = kernel_body(image="")
    async with http.post(f"{agent.address}/v1/kernels/batch",
                         json={"kernels": [good[0], bad, good[1], "nonsense", good[2]]}) as r:
        assert r.status == 202
        answer = await r.json()
    assert answer["accepted"] == [g["kernel_id"] for g in good]
    assert [x["kernel_id"] for x in answer["refused"]] == [bad["kernel_id"], None]
    assert "missing image" in answer["refused"][0]["title"]
    for g in good:
        assert (await started(manager, g["kernel_id"]))[-1] == "kernel_started"
    assert bad["kernel_id"] not in agent.registry.records


async def test_batch_create_refuses_a_body_without_a_list(make_agent, http):
    agent = await make_agent()
    async with http.post(f"{agent.address}/v1/kernels/batch", json={"kernels": {}}) as r:
        assert r.status == 400
        problem = await r.json()
    assert problem["type"].endswith("invalid-api-params") and "kernels" in problem["title"] + problem.get("msg", "")


async def test_an_agent_with_nothing_new_to_say_beats_as_seldom_as_the_manager_allows(
        manager: FakeManager, make_agent):
    """After a heartbeat that said what the last answered one did, the agent waits the answer's
    ``idle_interval`` (at most twice ``heartbeat_interval``); after one that says something
    new, one the manager did not answer, or without the advice, ``heartbeat_interval``."""
    agent = await make_agent(heartbeat_interval=100.0)  # the loop's own beat: its first only
    await manager.wait_for(lambda m: m.heartbeats)
    assert agent.beat_every == 100.0  # nothing to compare with yet
    await agent.heartbeat()
    assert agent.beat_every == 100.0  # the same, but the manager gave no advice
    manager.idle_interval = 150.0
    await agent.heartbeat()
    assert agent.beat_every == 150.0
    manager.idle_interval = 1000.0
    await agent.heartbeat()
    assert agent.beat_every == 200.0  # at most twice heartbeat_interval
    manager.idle_interval = 10.0
    await agent.heartbeat()
    assert agent.beat_every == 100.0  # at least heartbeat_interval
    manager.idle_interval = 150.0
    agent.capacity["cpu"] += 1  # something new: the next one soon
    await agent.heartbeat()
    assert agent.beat_every == 100.0
    await agent.heartbeat()
    assert agent.beat_every == 150.0
    agent.link.endpoints = ["http://127.0.0.1:1"]  # no manager answers
    await agent.heartbeat()
    assert agent.beat_every == 100.0
    agent.link.endpoints = [manager.url]
    await agent.heartbeat()
    assert agent.beat_every == 100.0  # answered, but after one that was not
    await agent.heartbeat()
    assert agent.beat_every == 150.0
