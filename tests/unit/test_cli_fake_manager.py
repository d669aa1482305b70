"""A tiny recording fake of the manager's public wire, for the CLI's unit tests.

It verifies every request's HMAC signature exactly as the real manager does (raw path, the
request's content type, the configured host) and records method, raw path, headers, JSON bodies,
multipart parts, WebSocket frames. Answers are steered through ``FakeManager.knobs``. A fake is
the point here: it lets the tests check what the CLI sends and how it prints answers, without a
manager. End-to-end behaviour is tested against the real stack in tests/e2e/test_cli_*.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from bai.common.auth import BODY_HASH_HEADER, EMPTY_SHA256, parse_authorization, verify

ADMIN_AK, ADMIN_SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
USER_AK, USER_SK = "AKIAUSER000000000001", "usersecretusersecretusersecretusersecret"
KEYS = {ADMIN_AK: ADMIN_SK, USER_AK: USER_SK}


def make_session(i: int, ak: str = ADMIN_AK, status: str = "RUNNING") -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=i + 1)), "name": f"sess-{i:02d}", "access_key": ak,
        "main_kernel_id": str(uuid.UUID(int=1000 + i)), "group_name": "default",
        "image": "python:3.11-debian12", "type": "INTERACTIVE", "status": status,
        "status_info": "insufficient-resources: cpu requested 2, free 0" if status == "PENDING"
        else None,
        "status_data": json.dumps({"scheduler": {"position": 1}} if status == "PENDING" else {}),
        "status_changed": f"2026-01-01T00:00:{59 - i:02d}+00:00",
        "created_at": "2026-01-01T00:00:00+00:00", "result": "UNDEFINED", "tag": None,
        "occupying_slots": json.dumps({"cpu": "1", "mem": "268435456"}),
        "dependencies": [], "idle_checks": json.dumps({}), "terminated_at": None,
    }


@dataclass
class Recorded:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: Any = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    ws_in: list[str] = field(default_factory=list)
    signature_ok: bool | None = None
    unix: bool = False  # came over the unix socket (``serve_unix``), not TCP


class FakeManager:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.sessions: list[dict[str, Any]] = [make_session(i) for i in range(15)]
        self.knobs: dict[str, Any] = {
            "is_admin": True,
            "create_status": "RUNNING",
            "ws_frames": [
                {"status": "continued", "console": [["stdout", "hello "]]},
                {"status": "finished", "console": [["stdout", "world\n"], ["stderr", "warn\n"]],
                 "exitCode": 0},
            ],
            "destroy_answer": {"stats": {"status": "terminated"}},
            "sse_events": [("session_enqueued", {"sessionName": "s1"}),
                           ("session_started", {"sessionName": "s1"})],
            "forbid_admin": False,
            "run_stream": False,  # serve GET /stream/session/_/run (create+execute+destroy)
            # the run stream takes the destroy the first frame asks for (False: an older one)
            "stream_destroys": True,
            "create_line": False,  # enqueue-only answers carry statusInfo/statusData
            "bulk_destroy": True,
            "stall": (),  # path prefixes the fake takes and never answers (until it stops)
            "mute": (),  # path prefixes whose stream's head goes out, then nothing (no pong)
            "history": [{"from": None, "to": "PENDING", "reason": "enqueued", "cause": "user:AK",
                         "at": "2026-01-01T00:00:00+00:00"},
                        {"from": "PENDING", "to": "SCHEDULED", "reason": "scheduled",
                         "cause": "scheduler", "at": "2026-01-01T00:00:01+00:00"}],
        }
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)

    async def _start(self) -> None:
        self._unstall = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_post("/admin/gql", self.gql)
        r.add_post("/session", self.create)
        r.add_post("/session/{name}/upload", self.upload)
        r.add_delete("/session/{name}", self.destroy)
        r.add_post("/session/_/destroy", self.destroy_many)
        r.add_get("/session/{name}/history", self.history)
        r.add_get("/session/{name}/logs", self.logs)
        r.add_get("/stream/session/_/run", self.run_stream)
        r.add_get("/stream/session/{sid}/execute", self.execute)
        r.add_get("/session/{name}/download", self.logs)  # only ever muted (knobs["mute"])
        r.add_get("/events/session", self.events)
        r.add_route("*", "/admin/{tail:.*}", self.admin)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def serve_unix(self, path: str) -> None:
        """Serve the same wire on the unix socket ``path`` too (the manager's api_socket)."""
        async def up() -> None:
            await web.UnixSite(self._runner, path).start()  # type: ignore[arg-type]

        asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)  # type: ignore[arg-type]

    def stop(self) -> None:
        async def down() -> None:
            self._unstall.set()
            await self._runner.cleanup()  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)  # type: ignore[arg-type]
        self._loop.call_soon_threadsafe(self._loop.stop)  # type: ignore[union-attr]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        rec = Recorded(request.method, request.raw_path, dict(request.headers))
        sock = request.transport.get_extra_info("socket") if request.transport else None
        rec.unix = sock is not None and sock.family == socket.AF_UNIX
        auth = parse_authorization(request.headers.get("Authorization", ""))
        if auth is not None:
            body_hash = request.headers.get(BODY_HASH_HEADER)
            rec.signature_ok = verify(
                KEYS.get(auth.access_key, ""), auth.signature, request.method, request.raw_path,
                request.headers.get("Date", ""), f"127.0.0.1:{self.port}",
                request.content_type, request.headers.get("X-BackendAI-Version", ""),
                body_hash or EMPTY_SHA256,
            ) and (body_hash is None
                   or hashlib.sha256(await request.read()).hexdigest() == body_hash)
        self.requests.append(rec)
        request["rec"] = rec
        if not rec.signature_ok:
            return web.json_response({"type": "https://api.backend.ai/probs/auth-failed",
                                      "title": "Credential/signature mismatch."}, status=401)
        request["ak"] = auth.access_key  # type: ignore[union-attr]
        if any(request.path.startswith(p) for p in self.knobs["stall"]):
            await self._unstall.wait()
            return web.Response(status=503)
        if any(request.path.startswith(p) for p in self.knobs["mute"]):
            return await self._mute(request)
        return await handler(request)

    async def _mute(self, request: web.Request) -> web.StreamResponse:
        """A stalled manager after a stream's head: the upgrade or the answer's head, then
        silence (no keep-alive, no answer to pings) until the fake stops."""
        resp: web.StreamResponse
        if request.headers.get("Upgrade", "").lower() == "websocket":
            resp = web.WebSocketResponse(autoping=False)
        else:
            ctype = ("multipart/mixed; boundary=x" if request.path.endswith("/download")
                     else "text/event-stream")
            resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        await self._unstall.wait()
        return resp

    def of(self, method: str, prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.raw_path.startswith(prefix)]

    # -- handlers ------------------------------------------------------------------------------

    async def gql(self, request: web.Request) -> web.Response:
        body = await request.json()
        request["rec"].body = body
        q, v = body["query"], body["variables"]
        if "keypair" in q and "compute_session" not in q:
            return web.json_response({"data": {"keypair": {
                "user_id": "admin@x", "access_key": request["ak"], "secret_key": "x",
                "is_active": True, "is_admin": self.knobs["is_admin"]}}})
        m = re.search(r"items \{ (.*) \}\n", q) or re.search(r"compute_session\(id: \$id\) \{(.*)\}\}",
                                                            q, re.S)
        fields = [f for f in re.sub(r"\{[^}]*\}", "", m.group(1)).split() if f]  # type: ignore[union-attr]
        if "compute_session_list" in q:
            st = set(v["status"].split(","))
            rows = [s for s in self.sessions if s["status"] in st]
            if v.get("access_key"):
                rows = [s for s in rows if s["access_key"] == v["access_key"]]
            fm = re.match(r'name == "(.*)"', v.get("filter") or "")
            if fm:
                rows = [s for s in rows if s["name"] == fm.group(1)]
            page = rows[v["offset"]:v["offset"] + v["limit"]]
            items = [{f: s.get(f) for f in fields} for s in page]
            return web.json_response({"data": {"compute_session_list": {
                "items": items, "total_count": len(rows)}}})
        found = next((s for s in self.sessions if s["id"] == v["id"]), None)
        item = {f: found.get(f) for f in fields} if found else None
        return web.json_response({"data": {"compute_session": item}})

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        request["rec"].body = body
        answer, status = self._create(body)
        return web.json_response(answer, status=status)

    def _create(self, body: dict) -> tuple[dict, int]:
        status = self.knobs["create_status"]
        if status == "unknown-image":
            return {
                "type": "https://api.backend.ai/probs/image-not-found", "title": "Unknown image.",
                "msg": f"unknown image {body['image']!r}; available images: python:3.11-debian12;"
                       " aliases: python -> python:3.11-debian12",
                "data": {"available": ["python:3.11-debian12"]}}, 404
        sid = str(uuid.uuid4())
        pending = status in ("PENDING", "TIMEOUT")
        sess = {**make_session(99, status="PENDING" if pending else status),
                "id": sid, "name": body["name"],
                "status": "PENDING" if pending else status,
                "status_info": "insufficient-resources: cpu requested 2, free 0"
                if status in ("PENDING", "TIMEOUT") else "oom-killed" if status == "ERROR" else None}
        self.sessions.insert(0, sess)
        answer = {"sessionId": sid, "sessionName": body["name"], "status": status,
                  "servicePorts": [], "created": True}
        if self.knobs["create_line"] and body.get("enqueueOnly") and status == "PENDING":
            # as a manager that wrote the session's queue line in its create
            answer.update(statusInfo=sess["status_info"],
                          statusData=json.loads(sess["status_data"]))
        return answer, 201

    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        async for part in reader:
            request["rec"].parts.append({"name": part.name, "filename": unquote(part.filename or ""),
                                         "raw_filename": part.filename,
                                         "data": (await part.read()).decode()})
        return web.Response(status=204)

    async def destroy(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "missing":
            return web.json_response({"type": "https://api.backend.ai/probs/session-not-found",
                                      "title": "No such session.",
                                      "msg": "no such session: missing"}, status=404)
        return web.json_response(self.knobs["destroy_answer"])

    async def destroy_many(self, request: web.Request) -> web.Response:
        body = await request.json()
        request["rec"].body = body
        if not self.knobs["bulk_destroy"]:
            return web.json_response({"type": "https://api.backend.ai/probs/not-found",
                                      "title": "Not found."}, status=404)
        results = [{"name": n, "error": {"type": "https://api.backend.ai/probs/session-not-found",
                                         "title": "No such session.", "status": 404,
                                         "msg": f"no such session: {n}"}}
                   if n == "missing" else {"name": n, **self.knobs["destroy_answer"]}
                   for n in body["names"]]
        return web.json_response({"results": results})

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response({"result": self.knobs["history"]})

    async def logs(self, request: web.Request) -> web.Response:
        return web.json_response({"result": {"logs": "line1\nline2\n"}})

    async def execute(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_str()
        request["rec"].ws_in.append(first)
        for frame in self.knobs["ws_frames"]:
            if frame == "CLOSE":
                break
            await ws.send_str(json.dumps(frame))
            if frame["status"] == "waiting-input":
                request["rec"].ws_in.append(await ws.receive_str())
        await ws.close()
        return ws

    async def run_stream(self, request: web.Request) -> web.StreamResponse:
        """The manager's run stream: the create body and the code in the first frame (recorded
        as the body and the first ``ws_in``), the execute frames, then ``{"destroy": true}``.
        A destroy the first frame asks for (``stream_destroys``) is recorded as the step it
        stands for once the code finished, and any step sent after it too."""
        if not self.knobs["run_stream"]:  # an older manager: the try is not recorded
            self.requests.remove(request["rec"])
            return web.json_response({"type": "https://api.backend.ai/probs/not-found",
                                      "title": "Not found."}, status=404)
        rec = request["rec"]
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = json.loads(await ws.receive_str())
        rec.body = first.pop("create")
        asked = None
        if self.knobs["stream_destroys"] and first.pop("destroy", None) is True:
            asked = ('{"destroy": true, "wait": false}' if first.pop("wait", None) is False
                     else '{"destroy": true}')
        rec.ws_in.append(json.dumps(first))
        answer, status = self._create(rec.body)
        if status >= 300:
            await ws.send_str(json.dumps({"problem": answer, "httpStatus": status}))
            await ws.close()
            return ws
        await ws.send_str(json.dumps({"created": answer, "httpStatus": status,
                                      **({"destroys": True} if asked else {})}))
        if answer["status"] != "RUNNING":
            await ws.close()
            return ws
        for frame in self.knobs["ws_frames"]:
            if frame == "CLOSE":
                await ws.send_str(json.dumps({"ended": True}))
                asked = None  # the client's step then
                break
            await ws.send_str(json.dumps(frame))
            if frame["status"] == "waiting-input":
                rec.ws_in.append(await ws.receive_str())
        if asked:
            rec.ws_in.append(asked)
            await ws.send_str(json.dumps({"destroyed": self.knobs["destroy_answer"]}))
        msg = await ws.receive()
        if msg.type == web.WSMsgType.TEXT:
            rec.ws_in.append(msg.data)
            if not asked:
                await ws.send_str(json.dumps({"destroyed": self.knobs["destroy_answer"]}))
        await ws.close()
        return ws

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")
        for name, data in self.knobs["sse_events"]:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await resp.write(b"event: server_close\ndata: {}\n\n")
        return resp

    async def admin(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            request["rec"].body = await request.json()
        if self.knobs["forbid_admin"]:
            return web.json_response({"type": "https://api.backend.ai/probs/forbidden",
                                      "title": "Admin privilege required."}, status=403)
        path = request.path
        if request.method == "GET" and path == "/admin/images":
            return web.json_response({"images": [{"name": "python:3.11-debian12",
                                                  "runtimes": ["process"], "labels": {},
                                                  "min_slots": {"cpu": "1"}, "aliases": ["python"]}]})
        if request.method == "POST" and path == "/admin/keypairs":
            return web.json_response({"keypair": {"access_key": "AKIANEW", "secret_key": "SECRET",
                                                  "user_email": "a@b.c", "is_admin": False,
                                                  "resource_policy": "default"}}, status=201)
        if request.method == "POST" and path == "/admin/aliases":
            return web.json_response({"alias": request["rec"].body}, status=201)
        if request.method == "PATCH" and path.startswith("/admin/agents/"):
            return web.json_response({"agent": {"id": path.rsplit("/", 1)[-1]}})
        return web.json_response({"ok": True})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    fm = FakeManager()
    fm.start()
    for k in ("BAI_PROFILE", "BACKEND_DOMAIN", "BACKEND_GROUP"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("BAI_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("BACKEND_ENDPOINT", fm.endpoint)
    monkeypatch.setenv("BACKEND_ACCESS_KEY", ADMIN_AK)
    monkeypatch.setenv("BACKEND_SECRET_KEY", ADMIN_SK)
    monkeypatch.chdir(tmp_path)
    yield fm
    fm.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str


def invoke(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> Result:
    """Run ``backend.ai ARGS`` in-process through the real entry point (error boundary included)."""
    import io
    import sys

    from bai.client.cli.main import main

    capsys.readouterr()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        sys.stdin = old_stdin
    cap = capsys.readouterr()
    return Result(code, cap.out, cap.err)


def test_fake_refuses_a_bad_signature(fake, capsys, monkeypatch):
    monkeypatch.setenv("BACKEND_SECRET_KEY", "wrong")
    r = invoke(capsys, "ps")
    assert r.code == 1
    assert r.err.startswith("Error: Credential/signature mismatch.")
    assert len(r.err.strip().splitlines()) == 1
