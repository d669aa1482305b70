"""`kill -9` of a real agent daemon (process runtime) loses nothing: a restarted agent adopts the
running kernels, which still execute code with their state, and removes the ones the manager
forgot meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp

from agent_support import HEADERS, TOKEN, manager  # noqa: F401 - manager: the fixture
from stacks import free_port
from bai.testing.fake_manager import FakeManager


async def run(http: aiohttp.ClientSession, address: str, kid: str, code: str) -> str:
    out = []
    async with http.ws_connect(f"{address}/v1/kernels/{kid}/execute") as ws:
        await ws.send_json({"code": code, "mode": "query", "options": {}})
        async for msg in ws:
            frame = json.loads(msg.data)
            out += [d for k, d in frame["console"] if k == "stdout"]
            if frame["status"] == "finished":
                break
    return "".join(out)


async def test_kill_9_and_restart(manager: FakeManager, tmp_path: Path) -> None:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    scratch = tmp_path / "scratch"
    env = {**os.environ, "BAI_AGENT_AGENT_ID": "restart-agent", "BAI_AGENT_PORT": str(port),
           "BAI_AGENT_CLUSTER_TOKEN": TOKEN, "BAI_AGENT_MANAGER_ENDPOINTS": manager.url,
           "BAI_AGENT_RUNTIME": "process", "BAI_AGENT_SCRATCH_ROOT": str(scratch),
           "BAI_AGENT_HEARTBEAT_INTERVAL": "0.2"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bai.agent", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    agent = start()
    try:
        await manager.wait_for(lambda m: len(m.heartbeats) >= 1, timeout=20)
        kept, forgotten = str(uuid.uuid4()), str(uuid.uuid4())
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for kid in (kept, forgotten):
                body = {"kernel_id": kid, "session_id": str(uuid.uuid4()), "image": "python",
                        "slots": {"cpu": "0.5", "mem": "134217728"}}
                async with http.post(address + "/v1/kernels", json=body) as r:
                    assert r.status == 202
                await manager.wait_for(lambda m, k=kid: "kernel_started" in m.event_names(k),
                                       timeout=20)
            assert await run(http, address, kept, "x = 'still here'") == ""

            agent.send_signal(signal.SIGKILL)
            agent.wait()
            manager.known_kernels = [kept]  # `forgotten` was removed while the agent was down
            before = len(manager.heartbeats)
            agent = start()
            await manager.wait_for(lambda m: len(m.heartbeats) > before + 1, timeout=20)
            await manager.wait_for(lambda m: "kernel_terminated" in m.event_names(forgotten),
                                   timeout=20)
            assert await run(http, address, kept, "print(x)") == "still here\n"
            assert manager.heartbeats[-1]["kernels"] == [kept]
            assert not (scratch / forgotten).exists()
            async with http.delete(f"{address}/v1/kernels/{kept}") as r:
                assert r.status == 200
            assert not (scratch / kept).exists()
    finally:
        agent.terminate()  # a stopping agent ends its pooled runners; a killed one leaves them
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
