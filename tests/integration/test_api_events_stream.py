"""SSE events, the execute WebSocket proxy, upload and ls through the whole manager app.

The manager is real (``create_app``: store, scheduler, state machine, routes). The agent is a
small aiohttp app speaking the agent HTTP API: kernel creation reports its events on demand (that
is the point of the fake), while execute/upload/files are served over real HTTP and WebSocket so
the proxy code runs for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from api_support import Signed

from bai.common.events import KernelEvent, SessionEvent
from bai.manager.app import ROOT, create_app
from bai.manager.services.bootstrap import bootstrap
from bai.manager.services.rpc import AgentClient
from bai.manager.settings import ManagerSettings


class FakeAgent(AgentClient):
    """Real HTTP to the fake agent server; kernel lifecycle reported straight to the manager."""

    def __init__(self, root, token: str) -> None:
        super().__init__(token)
        self.root = root
        self.auto_start = True
        self.specs: dict[str, dict] = {}

    def _ev(self, name, spec, **kw):
        return KernelEvent(name, "agent-1", spec["kernel_id"], spec["session_id"], **kw)

    async def create_kernel(self, address, spec):
        self.specs[spec["kernel_id"]] = spec
        if self.auto_start:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.start(spec)))
        return {"kernel_id": spec["kernel_id"]}

    async def create_kernels(self, address, specs):
        for spec in specs:
            await self.create_kernel(address, spec)
        return {"accepted": [s["kernel_id"] for s in specs], "refused": []}

    async def start(self, spec):
        await self.root.agents.handle_events([self._ev(n, spec) for n in (
            "kernel_preparing", "kernel_prepared", "kernel_creating", "kernel_started")])

    async def destroy_kernel(self, address, kernel_id, reason):
        spec = self.specs.pop(kernel_id, None)
        if spec is not None:
            await self.root.agents.handle_events([self._ev("kernel_terminated", spec, reason=reason, exit_code=0)])
        return {"kernel_id": kernel_id, "exit_code": 0, "stats": None}


def agent_app(received: dict) -> web.Application:
    async def execute(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = json.loads((await ws.receive()).data)
        received["first"] = first
        await ws.send_str(json.dumps({"status": "continued", "console": None}))
        if received.get("end_early"):  # as a kernel that died under the code
            await ws.close()
            return ws
        await ws.send_str(json.dumps({"status": "waiting-input", "console": [["stdout", "name? "]],
                                      "options": {"is_password": False}}))
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:  # the manager closed it: the run is interrupted
            received["interrupted"] = True
            return ws
        line = msg.data
        await ws.send_str(json.dumps({"status": "finished", "console": [["stdout", f"hi {line}\n"]],
                                      "exitCode": 0}))
        await ws.close()
        return ws

    async def upload(request):
        reader = await request.multipart()
        names = []
        while (part := await reader.next()) is not None:
            name = unquote(part.filename)  # aiohttp's client percent-encodes it again on the way
            names.append(name)
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
            received.setdefault("files", {})[name] = bytes(data)
        received["uploads_done"] = received.get("uploads_done", 0) + 1
        return web.json_response({"files": names})

    async def files(request):
        received["ls"] = request.query["path"]
        return web.json_response({"files": [{"filename": "main.py", "size": 3, "mtime": 1.0, "mode": "-rw-r--r--"}]})

    async def download(request):
        received["download"] = request.query["path"]
        return web.Response(body=b"TAR:" + request.query["path"].encode(), content_type="application/x-tar")

    app = web.Application()
    app.router.add_get("/v1/kernels/{kid}/download", download)
    app.router.add_get("/v1/kernels/{kid}/execute", execute)
    app.router.add_post("/v1/kernels/{kid}/upload", upload)
    app.router.add_get("/v1/kernels/{kid}/files", files)
    return app


@pytest.fixture
async def env(tmp_path):
    received: dict = {}
    agent_server = TestServer(agent_app(received), host="127.0.0.1", port=0)
    await agent_server.start_server()
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/bai.db", cluster_token="t",
                               schedule_interval=0.2)
    app = create_app(settings)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    root = app[ROOT]
    keys = await bootstrap(root.store, max_sessions=0)
    await root.agents.rpc.close()
    root.agents.rpc = FakeAgent(root, "t")
    await root.agents.heartbeat({"agent_id": "agent-1", "address": str(agent_server.make_url("")).rstrip("/"),
                                 "available_slots": {"cpu": "4", "mem": str(8 * 2**30)}})
    user = Signed(client, (keys["user"]["access_key"], keys["user"]["secret_key"]))
    admin = Signed(client, (keys["admin"]["access_key"], keys["admin"]["secret_key"]))
    yield root, client, user, admin, received
    await root.agents.rpc.close()
    await client.close()
    await agent_server.close()


async def create(c: Signed, name: str, **kw) -> dict:
    resp = await c.request("POST", "/session", {"name": name, "image": "python", "config": {"resources": {}},
                                                "type": "interactive", **kw})
    body = await resp.json()
    assert resp.status in (200, 201), body
    return body


async def read_sse(resp, stop_after: str | None = "server_close", limit: int = 50,
                   out: list | None = None) -> list[tuple[str, dict]]:
    """Parse SSE messages until ``stop_after`` (or the end of the stream), into ``out`` (a
    list the caller may watch while this runs) when given."""
    out, fields = [] if out is None else out, {}
    while len(out) < limit:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line == "":
            if "event" in fields:
                out.append((fields["event"], json.loads(fields["data"])))
                if fields.get("retry") is not None:
                    out[-1][1]["__retry"] = fields["retry"]
                if fields["event"] == stop_after:
                    break
            fields = {}
            continue
        key, _, value = line.partition(":")
        fields[key] = value.lstrip(" ")
    return out


async def sse(c: Signed, query: str):
    path = f"/events/session?{query}"
    return await c.client.get(path, headers=c.headers("GET", path, "application/octet-stream"))


async def test_events_replay_a_finished_session_then_close(env):
    root, _client, user, _, _ = env
    made = await create(user, "ev-done")
    assert made["status"] == "RUNNING"
    resp = await user.request("DELETE", "/session/ev-done")
    assert resp.status == 200, await resp.text()
    for _ in range(100):
        async with root.store.connect() as conn:
            import sqlalchemy as sa

            from bai.manager.store.tables import sessions
            status = (await conn.execute(sa.select(sessions.c.status).where(sessions.c.name == "ev-done"))).scalar()
        if status == "TERMINATED":
            break
        await asyncio.sleep(0.05)
    resp = await sse(user, "sessionName=ev-done&scope=*")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = await read_sse(resp)
    names = [n for n, _ in events]
    assert names[0] == "session_enqueued" and events[0][1]["__retry"] == "5"
    for expected in ("session_scheduled", "kernel_started", "session_started", "session_terminating",
                     "kernel_terminated", "session_terminated"):
        assert expected in names
    assert names.index("session_started") < names.index("session_terminated")
    assert names[-1] == "server_close" and events[-1][1] == {}
    assert all(d.get("sessionName") == "ev-done" for n, d in events[:-1])
    assert await resp.content.read() == b""  # the stream ended


async def test_events_follow_live_and_end_with_the_session(env):
    root, _client, user, _, _ = env
    root.agents.rpc.auto_start = False
    made = await create(user, "ev-live", enqueueOnly=True)
    for _ in range(100):  # wait until the kernel was asked for
        if root.agents.rpc.specs:
            break
        await asyncio.sleep(0.05)
    resp = await sse(user, f"sessionId={made['sessionId']}&scope=session")
    spec = next(iter(root.agents.rpc.specs.values()))
    await root.agents.rpc.start(spec)
    await asyncio.sleep(0.2)
    assert (await user.request("DELETE", "/session/ev-live")).status == 200
    events = await read_sse(resp)
    names = [n for n, _ in events]
    assert all(n.startswith("session_") or n == "server_close" for n in names), names
    assert names.count("session_started") == 1 and names.count("session_scheduled") == 1
    assert names[-2:] == ["session_terminated", "server_close"]


async def test_events_of_someone_elses_session_are_refused(env):
    _, _, user, admin, _ = env
    await create(admin, "admins-own")
    resp = await sse(user, "sessionName=admins-own&scope=*")
    assert resp.status == 404
    assert (await resp.json())["title"]
    resp = await sse(user, "sessionName=admins-own&owner_access_key=" + admin.access_key)
    assert resp.status == 403


async def test_execute_proxy_relays_frames_and_input(env):
    _, client, user, _, received = env
    made = await create(user, "exec-1")
    path = f"/stream/session/{made['sessionId']}/execute"
    ws = await client.ws_connect(path, headers=user.headers("GET", path, "application/octet-stream"))
    await ws.send_str(json.dumps({"code": "input()", "mode": "query", "options": {}}))
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frame = json.loads(msg.data)
        frames.append(frame)
        if frame["status"] == "waiting-input":
            await ws.send_str("world")
        if frame["status"] == "finished":
            break
    await ws.close()
    assert received["first"] == {"code": "input()", "mode": "query", "options": {}}
    assert frames[0]["console"] == []  # null from the agent, a list for the client
    assert frames[-1] == {"status": "finished", "console": [["stdout", "hi world\n"]], "exitCode": 0,
                          "options": None, "files": None}


async def _run_stream(client, user, first: dict, stdin: str | None = None,
                      destroy: bool | dict = True) -> list[dict]:
    """``GET /stream/session/_/run``: every frame the manager sent, in order. A first frame
    that asks for the destroy sends no destroy step after the ``finished`` frame."""
    path = "/stream/session/_/run"
    ws = await client.ws_connect(path, headers=user.headers("GET", path, "application/octet-stream"))
    await ws.send_str(json.dumps(first))
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frames.append(json.loads(msg.data))
        if frames[-1].get("status") == "waiting-input":
            await ws.send_str(stdin or "")
        if frames[-1].get("status") == "finished" or frames[-1].get("ended"):
            if not destroy:
                break
            if first.get("destroy") and frames[-1].get("status") == "finished":
                continue
            await ws.send_str(json.dumps(destroy if isinstance(destroy, dict)
                                         else {"destroy": True}))
    await ws.close()
    return frames


async def _status_after(user, name: str, wanted: str) -> str:
    """The session's status once it is ``wanted``, or after 10 s."""
    for _ in range(200):
        resp = await user.request("GET", f"/session/{name}")
        if (status := (await resp.json())["status"]) == wanted:
            break
        await asyncio.sleep(0.05)
    return status


async def test_the_run_stream_creates_runs_and_destroys_in_one_connection(env):
    root, client, user, _, received = env
    body = {"name": "run-1", "image": "python", "config": {"resources": {}}, "type": "interactive"}
    frames = await _run_stream(client, user, {"create": body, "code": "input()", "mode": "query",
                                              "options": {}}, stdin="world")
    assert frames[0]["httpStatus"] == 201 and frames[0]["created"]["status"] == "RUNNING"
    assert received["first"] == {"code": "input()", "mode": "query", "options": {}}
    assert frames[-2] == {"status": "finished", "console": [["stdout", "hi world\n"]],
                          "exitCode": 0, "options": None, "files": None}
    assert frames[-1] == {"destroyed": {"stats": {"status": "terminated"}}}
    resp = await user.request("GET", "/session/run-1")
    assert (await resp.json())["status"] == "TERMINATED"
    # without the destroy step the session stays
    frames = await _run_stream(client, user, {"create": {**body, "name": "run-2"}, "code": "1",
                                              "mode": "query", "options": {}}, destroy=False)
    assert frames[-1]["status"] == "finished"
    resp = await user.request("GET", "/session/run-2")
    assert (await resp.json())["status"] == "RUNNING"


async def test_the_run_stream_answers_a_destroy_without_wait_once_it_is_terminating(env):
    """``{"destroy": true, "wait": false}``: answered while the agent still destroys the
    kernel (held here), the session TERMINATING; it ends TERMINATED once the agent is done.
    Fails when the stream ignores ``wait`` (the answer waits for the held destroy)."""
    root, client, user, _, _ = env
    gate, destroy = asyncio.Event(), root.agents.rpc.destroy_kernel

    async def held(*args):
        await gate.wait()
        return await destroy(*args)

    root.agents.rpc.destroy_kernel = held
    body = {"name": "run-early", "image": "python", "config": {"resources": {}}}
    frames = await asyncio.wait_for(_run_stream(
        client, user, {"create": body, "code": "input()", "mode": "query", "options": {}},
        stdin="x", destroy={"destroy": True, "wait": False}), 10)
    assert frames[-2]["status"] == "finished"
    assert frames[-1] == {"destroyed": {"stats": {"status": "terminating"}}}
    resp = await user.request("GET", "/session/run-early")
    assert (await resp.json())["status"] == "TERMINATING"
    gate.set()
    assert await _status_after(user, "run-early", "TERMINATED") == "TERMINATED"


async def test_a_first_frame_that_asks_for_the_destroy_has_it_once_the_code_finished(env):
    """``"destroy": true`` in the first frame (``run --rm``): ``created`` says
    ``"destroys": true`` and the ``destroyed`` answer follows the ``finished`` frame with no
    step from the client (fails: the read waits for a frame that never comes); after an early
    end the manager waits for the client's step, and a client that closes keeps its session."""
    root, client, user, _, received = env
    body = {"name": "run-asks", "image": "python", "config": {"resources": {}}}
    ask = {"code": "input()", "mode": "query", "options": {}, "destroy": True, "wait": False}
    frames = await _run_stream(client, user, {"create": body, **ask}, stdin="x")
    assert frames[0]["destroys"] is True and frames[0]["created"]["status"] == "RUNNING"
    assert frames[-2]["status"] == "finished"
    assert frames[-1] == {"destroyed": {"stats": {"status": "terminating"}}}
    assert received["first"] == {"code": "input()", "mode": "query", "options": {}}
    assert await _status_after(user, "run-asks", "TERMINATED") == "TERMINATED"
    received["end_early"] = True
    frames = await _run_stream(client, user, {"create": {**body, "name": "run-ended"}, **ask},
                               destroy=False)
    assert frames[-1] == {"ended": True}
    resp = await user.request("GET", "/session/run-ended")
    assert (await resp.json())["status"] == "RUNNING"


async def test_the_code_reaches_the_agent_once_it_took_the_create_and_waits_for_running(env):
    """The run stream opens the agent's execute stream and sends the code once the agent has
    taken the kernel's create request, before the session is RUNNING (fails: the code waits
    for RUNNING); the client still hears ``created`` first, then the frames. A session that
    ends in ERROR instead closes that stream (the run is interrupted) and says so alone."""
    root, client, user, _, received = env
    root.agents.rpc.auto_start = False
    body = {"name": "run-soon", "image": "python", "config": {"resources": {}}}
    first = {"create": body, "code": "input()", "mode": "query", "options": {}}
    running = asyncio.ensure_future(_run_stream(client, user, first, stdin="x"))
    for _ in range(200):
        if "first" in received:
            break
        await asyncio.sleep(0.05)
    assert received.pop("first") == {"code": "input()", "mode": "query", "options": {}}
    resp = await user.request("GET", "/session/run-soon")
    assert (await resp.json())["status"] == "PREPARING"
    spec = root.agents.rpc.specs.pop(next(iter(root.agents.rpc.specs)))
    await root.agents.rpc.start(spec)
    frames = await asyncio.wait_for(running, 10)
    assert frames[0]["created"]["status"] == "RUNNING"
    assert [f.get("status") for f in frames[1:]] == [
        "continued", "waiting-input", "finished", None]
    assert frames[-2]["console"] == [["stdout", "hi x\n"]] and "destroyed" in frames[-1]
    failing = asyncio.ensure_future(_run_stream(
        client, user, {**first, "create": {**body, "name": "run-fails"}}))
    for _ in range(200):
        if "first" in received and root.agents.rpc.specs:
            break
        await asyncio.sleep(0.05)
    spec = root.agents.rpc.specs.pop(next(iter(root.agents.rpc.specs)))
    await root.agents.handle_events([root.agents.rpc._ev(
        "kernel_creation_failed", spec, reason="no room", data={"error": "no room"})])
    frames = await asyncio.wait_for(failing, 10)
    assert [f["created"]["status"] for f in frames] == ["ERROR"]
    for _ in range(200):
        if received.get("interrupted"):
            break
        await asyncio.sleep(0.05)
    assert received.get("interrupted") is True


async def test_the_run_stream_finds_its_kernel_where_the_scheduler_placed_it(env,
                                                                          monkeypatch):
    """The run stream's execute goes to the agent the scheduler just placed the kernel on,
    without reading the kernel's row again; a placement is used once, and only while fresh."""
    root, client, user, _, _ = env
    placed: dict[str, str] = {}
    keep = root.agents.placed
    monkeypatch.setattr(root.agents, "placed",
                        lambda kid, address: (placed.update({kid: address}), keep(kid, address)))
    body = {"name": "run-placed", "image": "python", "config": {"resources": {}}}
    frames = await _run_stream(client, user, {"create": body, "code": "input()", "mode": "query",
                                              "options": {}}, stdin="x")
    assert frames[-2]["status"] == "finished" and "destroyed" in frames[-1]
    assert len(placed) == 1 and not root.agents._placed  # placed, then taken by the stream

    def no_read():
        raise AssertionError("the kernel's row was read")

    row = {"status": "RUNNING", "name": "s", "main_kernel_id": "k-1"}
    root.agents.placed("k-1", "http://agent:1")
    monkeypatch.setattr(root.store, "connect", no_read)
    assert await root.agents.kernel_target(row, just_placed=True) == ("http://agent:1", "k-1")
    with pytest.raises(AssertionError):  # once only
        await root.agents.kernel_target(row, just_placed=True)
    root.agents.placed("k-1", "http://agent:1")
    with pytest.raises(AssertionError):  # an ordinary ask reads (and drops the placement)
        await root.agents.kernel_target(row)
    monkeypatch.setattr("bai.manager.services.agents.PLACED_SECONDS", 0.0)
    root.agents.placed("k-1", "http://agent:1")
    with pytest.raises(AssertionError):  # too old
        await root.agents.kernel_target(row, just_placed=True)


async def test_the_run_stream_answers_a_refused_create_as_post_session_does(env):
    _, client, user, _, _ = env
    body = {"name": "run-bad", "image": "no-such-image", "config": {"resources": {}}}
    frames = await _run_stream(client, user, {"create": body, "code": "1"})
    resp = await user.request("POST", "/session", body)
    assert frames == [{"problem": await resp.json(), "httpStatus": resp.status}]
    assert resp.status >= 400
    frames = await _run_stream(client, user, {"create": {"name": 5}, "code": "1"})
    assert frames[0]["httpStatus"] == 400 and frames[0]["problem"]["title"]


async def test_a_silent_execution_stream_carries_keep_alive_pings(env, monkeypatch):
    """While the code waits (here for input) the manager pings, so a client can tell a silent
    execution from a stalled manager (fails when the manager sends nothing)."""
    monkeypatch.setattr("bai.manager.api.stream.KEEPALIVE_SECONDS", 0.2)
    _, client, user, _, _ = env
    made = await create(user, "exec-quiet")
    path = f"/stream/session/{made['sessionId']}/execute"
    ws = await client.ws_connect(path, autoping=False,
                                 headers=user.headers("GET", path, "application/octet-stream"))
    await ws.send_str(json.dumps({"code": "input()", "mode": "query", "options": {}}))
    for want in ("continued", "waiting-input"):
        assert json.loads((await asyncio.wait_for(ws.receive(), 10)).data)["status"] == want
    pings = [await asyncio.wait_for(ws.receive(), 10) for _ in range(2)]
    assert [m.type for m in pings] == [aiohttp.WSMsgType.PING] * 2
    await ws.send_str("world")  # the execution goes on after the pings
    while (msg := await asyncio.wait_for(ws.receive(), 10)).type != aiohttp.WSMsgType.TEXT:
        pass
    assert json.loads(msg.data)["status"] == "finished"
    await ws.close()


async def test_execute_on_a_session_that_is_not_running(env):
    root, client, user, _, _ = env
    root.agents.rpc.auto_start = False
    made = await create(user, "exec-pending", enqueueOnly=True)
    path = f"/stream/session/{made['sessionId']}/execute"
    resp = await client.get(path, headers=user.headers("GET", path, "application/octet-stream"))
    assert resp.status == 409
    assert "not RUNNING" in (await resp.json())["msg"]


async def test_upload_unquotes_paths_and_refuses_escapes(env):
    _, client, user, _, received = env
    await create(user, "up-1")
    path = "/session/up-1/upload"

    async def upload(*names):
        form = aiohttp.FormData()
        for n in names:
            form.add_field("src", b"data", filename=n, content_type="application/octet-stream")
        return await client.post(path, data=form, headers={
            k: v for k, v in user.headers("POST", path, "multipart/form-data").items() if k != "Content-Type"})

    resp = await upload("main.py", "data/input.txt")
    assert resp.status == 200, await resp.text()
    assert set(received["files"]) == {"main.py", "data/input.txt"}
    for bad in ("../evil.py", "/etc/passwd", "a/../../b"):
        resp = await upload(bad)
        body = await resp.json()
        assert resp.status == 400 and body["title"] == "Upload path refused.", body


async def test_a_chunked_upload_past_the_limit_is_cut_off_and_refused(env):
    root, client, user, _, received = env
    await create(user, "up-2")
    root.settings.session_file_max = 4 * 1024**2
    path = "/session/up-2/upload"
    sent = []

    async def body():  # no Content-Length: the manager finds out while relaying
        yield (b'--b0\r\nContent-Disposition: form-data; name="src"; filename="big.bin"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(16):
            sent.append(1)
            yield b"z" * 1024**2
        yield b"\r\n--b0--\r\n"

    headers = {k: v for k, v in user.headers("POST", path, "multipart/form-data").items()
               if k != "Content-Type"}
    headers["Content-Type"] = "multipart/form-data; boundary=b0"
    resp = await client.post(path, data=body(), headers=headers)
    problem = await resp.json()
    assert resp.status == 413 and problem["type"].endswith("files-too-large"), problem
    assert "session_file_max" in problem["title"] + problem.get("msg", "")
    assert "uploads_done" not in received  # the agent never saw a whole request: it keeps nothing


async def test_ls_takes_a_json_body_on_get(env):
    _, client, user, _, received = env
    await create(user, "ls-1")
    path = "/session/ls-1/files"
    resp = await client.get(path, data=json.dumps({"path": "/home/work"}),
                            headers=user.headers("GET", path, "application/json"))
    body = await resp.json()
    assert resp.status == 200, body
    assert received["ls"] == "."  # the official client's default, the upstream mount point
    assert json.loads(body["files"])[0]["filename"] == "main.py" and body["errors"] == ""


async def test_download_answers_one_tar_part_per_file(env):
    _, client, user, _, _received = env
    await create(user, "dl-1")
    path = "/session/dl-1/download"
    resp = await client.get(path, data=json.dumps({"files": ["main.py", "out/result.txt"]}),
                            headers=user.headers("GET", path, "application/json"))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "multipart/mixed"
    reader = aiohttp.MultipartReader.from_response(resp)
    parts = []
    while (part := await reader.next()) is not None:
        parts.append((part.filename, await part.read()))
    assert parts == [("main.py.tar", bytearray(b"TAR:main.py")), ("result.txt.tar", bytearray(b"TAR:out/result.txt"))]
    resp = await client.get(path, data=b"{}", headers=user.headers("GET", path, "application/json"))
    assert resp.status == 400


# -- fan-out: many streams, filters, slow clients (events published straight on the bus) ------

def bus_event(i: int, owner: str, name: str = "session_scheduled", sid: str | None = None,
              **kw) -> SessionEvent:
    return SessionEvent(name, sid or f"sid-{i}", f"sess-{i}", owner, reason=str(i), **kw)


async def test_every_stream_gets_every_event_it_may_see_in_order(env):
    root, _, user, admin, _ = env
    everything = [await sse(admin, "scope=*") for _ in range(5)]
    own = await sse(user, "scope=session")
    kernels = await sse(admin, "scope=kernel")
    sent = [bus_event(i, user.access_key if i % 2 else admin.access_key,
                      "kernel_started" if i % 5 == 0 else "session_scheduled")
            for i in range(300)]
    await root.bus.publish(sent[0])
    for i in range(1, 300, 50):
        await root.bus.publish_many(sent[i:i + 50])
    got = await asyncio.gather(*(read_sse(r, None, limit=300) for r in everything))
    for stream in got:
        assert [d["reason"] for _, d in stream] == [str(i) for i in range(300)]
        assert [n for n, _ in stream] == [e.name for e in sent]
    mine = await read_sse(own, None, limit=len([e for e in sent[1::2] if e.name.startswith("session_")]))
    assert [d["reason"] for _, d in mine] == [e.reason for e in sent
                                              if e.access_key == user.access_key and e.name.startswith("session_")]
    ks = await read_sse(kernels, None, limit=60)
    assert [d["reason"] for _, d in ks] == [str(i) for i in range(0, 300, 5)]
    assert all(n == "kernel_started" for n, _ in ks)


class TightSSE:
    """An SSE client on a socket with a tiny receive buffer, so that the server's side backs up
    as soon as it stops reading (the kernel's buffers hold at most ~4 MB here)."""

    @classmethod
    async def open(cls, c: Signed, query: str) -> TightSSE:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (c.client.host, c.client.port))
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        path = f"/events/session?{query}"
        headers = {**c.headers("GET", path, "application/octet-stream"), "Host": c.host}
        self.writer.write((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                           + "\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        return self

    async def read(self, n: int) -> list[tuple[str, dict]]:
        out, body = [], b""
        while len(out) < n:
            size = int((await asyncio.wait_for(self.reader.readline(), 10)).strip(), 16)
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)  # the chunk's CRLF
            *messages, body = body.split(b"\n\n")
            for msg in messages:
                fields = dict(line.split(": ", 1) for line in msg.decode().split("\n") if not line.startswith(":"))
                if "event" in fields:
                    out.append((fields["event"], json.loads(fields["data"])))
        return out

    def close(self) -> None:
        self.writer.close()


async def test_a_slow_stream_neither_holds_up_the_others_nor_loses_events(env):
    root, _, _, admin, _ = env
    fast = [await sse(admin, "scope=session") for _ in range(3)]
    slow = await TightSSE.open(admin, "scope=session")  # not read until the others have all
    n = 3000  # ~12 MB per stream: far more than the kernel's socket buffers hold
    sent = [bus_event(i, admin.access_key, extra={"pad": "x" * 4000}) for i in range(n)]
    readers = [asyncio.create_task(read_sse(r, None, limit=n)) for r in fast]
    for i in range(0, n, 100):
        await root.bus.publish_many(sent[i:i + 100])
        await asyncio.sleep(0.01)  # give the readers a turn, as a real publisher would
    got = await asyncio.wait_for(asyncio.gather(*readers), 120)
    for stream in got:
        assert [d["reason"] for _, d in stream] == [str(i) for i in range(n)]
    from bai.manager.api.events import LiveStream

    streams = [x for x in root.bus.fanout._all if isinstance(x, LiveStream)]
    assert len(streams) == 4 and max(s.queued for s in streams) > 0  # the slow path did run
    late = await slow.read(n)
    slow.close()
    assert [d["reason"] for _, d in late] == [str(i) for i in range(n)]
    assert all(d["pad"] == "x" * 4000 for _, d in late)


async def test_a_session_stream_takes_its_events_out_of_a_batch_and_ends_at_the_final_one(env):
    root, _, user, _, _ = env
    root.agents.rpc.auto_start = False
    made = await create(user, "ev-batch", enqueueOnly=True)
    sid = made["sessionId"]
    resp = await sse(user, f"sessionId={sid}&scope=session")
    batch = []
    for i in range(40):
        batch.append(bus_event(i, user.access_key))  # other sessions
        if i == 10:
            batch.append(bus_event(i, user.access_key, "session_started", sid=sid, status="RUNNING"))
        if i == 20:
            batch.append(bus_event(i, user.access_key, "kernel_terminated", sid=sid))  # out of scope
        if i == 30:
            batch.append(bus_event(i, user.access_key, "session_terminated", sid=sid, status="TERMINATED"))
    await root.bus.publish_many(batch)
    events = await read_sse(resp)
    live = [(n, d["reason"]) for n, d in events if d.get("reason") in {"10", "20", "30"}]
    assert live == [("session_started", "10"), ("session_terminated", "30")]
    assert all(d.get("sessionId") in (sid, None) for _, d in events)
    assert events[-1] == ("server_close", {})
    assert await resp.content.read() == b""


async def test_a_client_that_stops_reading_is_cut_off_and_the_others_carry_on(env, monkeypatch):
    from bai.manager.api import events as sse_api

    monkeypatch.setattr(sse_api, "QUEUE_LIMIT", 3)
    root, _, _, admin, _ = env
    fast = await sse(admin, "scope=session")
    stuck = await sse(admin, "scope=session")
    n = 3000
    sent = [bus_event(i, admin.access_key, extra={"pad": "x" * 12000}) for i in range(n)]
    seen: list = []
    reader = asyncio.create_task(read_sse(fast, None, limit=n, out=seen))
    for i in range(0, n, 100):
        await root.bus.publish_many(sent[i:i + 100])
        # the reading client has read what was sent before more comes: however slow this
        # machine is, only the one that stopped reading falls QUEUE_LIMIT writes behind
        for _ in range(2400):
            if len(seen) >= i + 100 or reader.done():
                break
            await asyncio.sleep(0.05)
    got = await asyncio.wait_for(reader, 120)
    assert [d["reason"] for _, d in got] == [str(i) for i in range(n)]
    for _ in range(200):  # the stuck one leaves the bus (its handler ends on its next turn)
        streams = [x for x in root.bus.fanout._all if isinstance(x, sse_api.LiveStream)]
        if len(streams) == 1:
            break
        await asyncio.sleep(0.05)
    assert [s.cut_off for s in streams] == [False], [(s.cut_off, s.queued) for s in streams]
    try:  # its connection was dropped: it ends short of the whole story
        late = await read_sse(stuck, None, limit=n)
    except aiohttp.ClientError:
        late = []
    assert len(late) < n
