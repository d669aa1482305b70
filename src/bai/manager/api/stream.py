"""Execution and files of a running session: the execute WebSocket, upload, ls and download.

* ``GET /stream/session/{x}/execute`` (WebSocket, client-protocol 6.3): proxied frame by frame
  to the agent's ``/v1/kernels/{kid}/execute``. Client frames go up unchanged (the first is the
  JSON ``{"code","mode","options"}``, a plain text frame is stdin input); agent frames come down
  as JSON objects that always have ``status`` and a ``console`` list (never null: the official
  client fails on null).
* ``POST /session/{x}/upload``: multipart, one part named ``src`` per file, the filename a
  percent-encoded relative path (aiohttp's client encodes ``data/in.txt`` as ``data%2Fin.txt``);
  absolute paths and ``..`` are refused with a 400 problem before anything reaches the agent.
* ``GET /session/{x}/files`` with a JSON body ``{"path"}`` (the official client sends a GET
  with a body) answers ``{"files": "<JSON string of a list>", "errors": "", "abspath"}``.
* ``GET /session/{x}/download`` with a JSON body ``{"files": [...]}`` answers a multipart
  response whose parts are tar archives, one per requested path.

Uploads and downloads stream through the manager (constant memory) and carry at most
``session_file_max`` bytes, apparent size (413 ``files-too-large`` past it).

Every call counts as activity for the idle timeout (``sessions.touch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import secrets
import uuid
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web

from bai.common import opensockets
from bai.common.errors import BaiError, FilesTooLarge, InvalidAPIParameters
from bai.common.streams import KEEPALIVE_SECONDS
from bai.manager.api.middleware import caller_of
from bai.manager.api.models import DownloadFiles, ListFiles
from bai.manager.api.params import body_of

#: the agent's answer to a download states the apparent size of what its tar holds
SIZE_HEADER = "X-BAI-Apparent-Size"

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024


def safe_relpath(raw: str | None) -> str:
    """A percent-decoded upload filename as a clean relative path, or a 400 problem."""
    if not raw:
        raise InvalidAPIParameters("Every uploaded part needs a filename (a relative path).")
    name = unquote(raw).replace("\\", "/")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidAPIParameters(
            f"Upload path {name!r} holds a control character (NUL, newline, ...).",
            title="Upload path refused.", data={"field": "filename"},
        )
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidAPIParameters(
            f"Upload path {name!r} is absolute; only paths relative to the work directory are allowed.",
            title="Upload path refused.",
        )
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidAPIParameters(
            f"Upload path {name!r} leaves the work directory ('..' is not allowed).",
            title="Upload path refused.",
        )
    if not parts:
        raise InvalidAPIParameters(f"Upload path {name!r} names no file.", title="Upload path refused.")
    return "/".join(parts)


#: Where the official client believes a kernel's work directory is (upstream mounts it there).
WORKDIR_MOUNT = "/home/work"


def work_relative(path: str) -> str:
    """``/home/work/x`` -> ``x``: the official client names files under the upstream mount point."""
    path = (path or "").strip() or "."
    if path == WORKDIR_MOUNT or path == WORKDIR_MOUNT + "/":
        return "."
    if path.startswith(WORKDIR_MOUNT + "/"):
        return path[len(WORKDIR_MOUNT) + 1:] or "."
    return path


async def _touch(root: Any, session_id: Any) -> None:
    try:
        result = root.sessions.touch(session_id)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # activity bookkeeping must never break the user's call
        log.warning("touch of session %s failed: %s", session_id, exc)


async def _target(request: web.Request) -> tuple[Any, dict[str, Any], str, str]:
    from bai.manager.app import ROOT

    root = request.app[ROOT]
    caller = caller_of(request)
    sess = await root.sessions.resolve(
        caller, request.match_info["session"], owner_access_key=request.query.get("owner_access_key")
    )
    address, kernel_id = await root.agents.kernel_target(sess)
    return root, sess, address, kernel_id


def client_frame(raw: str) -> str:
    """An agent frame as the official client needs it: a JSON object with status and console."""
    try:
        frame = json.loads(raw)
    except ValueError:
        frame = {"status": "continued", "console": [["stdout", raw]]}
    if not isinstance(frame, dict):
        frame = {"status": "continued", "console": [["stdout", str(frame)]]}
    frame.setdefault("status", "continued")
    if not isinstance(frame.get("console"), list):
        frame["console"] = []
    frame.setdefault("exitCode", None)
    frame.setdefault("options", None)
    frame.setdefault("files", None)
    return json.dumps(frame)


def _error_frame(text: str) -> str:
    return json.dumps({
        "status": "finished",
        "console": [["stderr", text.rstrip("\n") + "\n"]],
        "exitCode": 1,
        "options": None,
        "files": None,
    })


async def _pump_up(ws: web.WebSocketResponse, upstream: Any, root: Any, sid: Any) -> None:
    """Client -> agent: the first JSON frame, then stdin lines."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await upstream.send_str(msg.data)
            await _touch(root, sid)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await upstream.send_bytes(msg.data)
        else:
            break


async def execute(request: web.Request) -> web.WebSocketResponse:
    root, sess, address, kernel_id = await _target(request)  # refusals happen before the upgrade
    ws = opensockets.WebSocket(max_msg_size=MAX_FRAME)
    await ws.prepare(request)
    sid = sess["id"]
    await _touch(root, sid)
    pinger = asyncio.create_task(_keep_alive(ws))
    try:
        async with root.agents.rpc.ws_connect(address, kernel_id) as upstream:
            await _relay(ws, upstream, root, sid)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, BaiError) as exc:
        log.warning("execute stream of session %s: agent %s failed: %s", sid, address, exc)
        if not ws.closed:
            await ws.send_str(_error_frame(f"bai: the session's agent cannot run the code: {exc}"))
    except Exception:  # after the upgrade only a frame can tell the client
        log.exception("execute stream of session %s failed", sid)
        if not ws.closed:
            await ws.send_str(_error_frame("bai: the manager failed while relaying; see its log"))
    finally:
        pinger.cancel()
        await _touch(root, sid)
        if not ws.closed:
            await ws.close()
    return ws


async def _relay(ws: web.WebSocketResponse, upstream: Any, root: Any, sid: Any,
                 *, until_finished: bool = False) -> bool:
    """Client <-> agent until either side ends (or, with ``until_finished``, until the agent's
    ``finished`` frame went down): whether that frame went down. Agent frames go down
    normalised (``client_frame``); activity is noted when an execution step ends, except on
    the run stream (its session was created a moment ago, and ends or is touched after)."""
    finished = False

    async def down() -> None:
        nonlocal finished
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = client_frame(msg.data)
                await ws.send_str(frame)
                step = '"finished"' in frame or '"waiting-input"' in frame
                if step and not until_finished:
                    await _touch(root, sid)
                if '"finished"' in frame and json.loads(frame).get("status") == "finished":
                    finished = True
                    if until_finished:
                        return
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                return

    tasks = {asyncio.create_task(_pump_up(ws, upstream, root, sid)), asyncio.create_task(down())}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in (*done, *pending):
        try:
            await task
        except (asyncio.CancelledError, ConnectionResetError):
            pass
    return finished


def _problem_frame(exc: BaseException) -> str:
    """A failed step of ``run`` as the frame ``{"problem", "httpStatus"}``: what the request of
    that step (``POST /session``, ``DELETE /session/{x}``) would have answered."""
    from bai.manager.api.middleware import unexpected_problem

    if isinstance(exc, BaiError):
        return json.dumps({"problem": exc.to_problem(), "httpStatus": exc.status})
    log.error("run stream failed", exc_info=exc)
    return json.dumps({"problem": unexpected_problem(), "httpStatus": 500})


def _destroy_step(text: str) -> dict | None:
    """The client's ``{"destroy": true[, "wait": false]}`` step, or None for anything else."""
    try:
        step = json.loads(text)
    except ValueError:
        return None
    return step if isinstance(step, dict) and step.get("destroy") is True else None


async def run(request: web.Request) -> web.WebSocketResponse:
    """``GET /stream/session/_/run`` (WebSocket): ``backend.ai run [--rm] -c CODE`` in one
    connection instead of three requests (create, execute, destroy), each step as the request
    it replaces would answer it:

    1. client: ``{"create": <POST /session body>, "code", "mode", "options"}``; server:
       ``{"created": <its answer>, "httpStatus"}`` (``servicePorts`` as requested: the session
       is not read again once it started) or ``{"problem", "httpStatus"}`` (and closes).
    2. if the session is RUNNING, the code runs at once: the frames of
       ``/stream/session/{x}/execute`` down, stdin frames up, until the ``finished`` frame (or
       ``{"ended": true}`` when the agent's stream ended without it).
    3. client: ``{"destroy": true}``; server: ``{"destroyed": <DELETE's answer>}`` or a
       problem frame, and closes. A client that closes instead keeps its session. With
       ``"wait": false`` the answer comes once the session is TERMINATING (its stats say
       ``terminating``) and the manager ends it after (``Lifecycle.terminate``): as srun
       returns while slurmd cleans up. The session keeps its name until TERMINATED, so the
       CLI asks so only for a name it made up.

    A first frame with ``"destroy": true`` (and ``"wait"``) asks for step 3 already: the
    ``created`` frame then says ``"destroys": true``, and once the ``finished`` frame went
    down the destroy starts without waiting for the client (``run --rm``: the client's
    round trip off its wait); after ``{"ended": true}`` the client asks as in step 3.
    """
    from bai.manager.api.models import CreateSession
    from bai.manager.api.params import validate
    from bai.manager.app import ROOT

    root = request.app[ROOT]
    caller = caller_of(request)
    ws = opensockets.WebSocket(max_msg_size=MAX_FRAME)
    await ws.prepare(request)
    pinger = asyncio.create_task(_keep_alive(ws))
    try:
        first = await ws.receive()
        if first.type != aiohttp.WSMsgType.TEXT:
            return ws
        try:
            step = json.loads(first.data)
            if not isinstance(step, dict):
                raise InvalidAPIParameters("the first frame must be a JSON object")
            params = validate(CreateSession, step.get("create")).model_dump(exclude_unset=True)
            code = json.dumps({k: step.get(k) for k in ("code", "mode", "options")})
            answer, row, upstream = await _create_running(root, caller, params, code)
        except Exception as exc:  # noqa: BLE001 - the client hears it as POST /session would
            await ws.send_str(_problem_frame(exc))
            return ws
        destroys = step.get("destroy") is True  # step 3 asked for in the first frame
        try:
            await ws.send_str(json.dumps({"created": answer,
                                          "httpStatus": 201 if answer.get("created") else 200,
                                          **({"destroys": True} if destroys else {})}))
            if answer.get("status") != "RUNNING" or row is None:
                return ws
            sid = row["id"]
            try:
                if upstream is None:
                    address, kernel_id = await root.agents.kernel_target(row, just_placed=True)
                    upstream = await root.agents.rpc.ws_connect(address, kernel_id)
                    await upstream.send_str(code)
                finished = await _relay(ws, upstream, root, sid, until_finished=True)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, BaiError) as exc:
                log.warning("run stream of session %s failed: %s", sid, exc)
                await ws.send_str(
                    _error_frame(f"bai: the session's agent cannot run the code: {exc}"))
                finished = True
        finally:
            if upstream is not None:
                await upstream.close()
        if ws.closed:
            return ws
        if not finished:
            await ws.send_str(json.dumps({"ended": True}))
        if destroys and finished:
            ask = step
        else:
            nxt = await ws.receive()
            ask = _destroy_step(nxt.data) if nxt.type == aiohttp.WSMsgType.TEXT else None
        if ask is None:
            await _touch(root, sid)  # the session stays: its last activity was now
            return ws
        try:
            result = await root.sessions.destroy_row(caller, row,
                                                     wait=ask.get("wait") is not False)
        except Exception as exc:  # noqa: BLE001 - as DELETE /session/{x} would answer
            await ws.send_str(_problem_frame(exc))
            return ws
        await ws.send_str(json.dumps({"destroyed": result}))
        return ws
    finally:
        pinger.cancel()
        if not ws.closed:
            await ws.close()


async def _create_running(root: Any, caller: Any, params: dict, code: str
                          ) -> tuple[dict, dict | None, Any]:
    """The run stream's create: ``create_row``'s answer and row, and the agent's execute
    stream when it was opened while the session started. Once the agent has taken the
    kernel's create request, the stream is asked for (the agent opens it when the kernel has
    started) and given ``code``, so that the code runs while the manager records RUNNING; its
    frames wait in the stream until the session is RUNNING (an answer other than RUNNING
    closes it, and the code is interrupted). None: not opened (the session did not start
    on this replica's placement, or the agent refused; the stream is then opened as before)."""
    sid = uuid.uuid4()
    accepted = root.agents.await_accepted(str(sid))
    creating = asyncio.ensure_future(
        root.sessions.create_row(caller, params, reread=False, sid=sid))
    opening = None
    try:
        await asyncio.wait((creating, accepted), return_when=asyncio.FIRST_COMPLETED)
        if accepted.done() and not creating.done():
            opening = asyncio.ensure_future(_open_execute(root, *accepted.result(), code))
        answer, row = await creating
        if opening is not None and answer.get("status") == "RUNNING" and row is not None:
            upstream, opening = await opening, None
            return answer, row, upstream
        return answer, row, None
    finally:
        accepted.cancel()
        creating.cancel()  # (when this task was)
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                if (upstream := await opening) is not None:
                    await upstream.close()


async def _open_execute(root: Any, address: str, kernel_id: str, code: str) -> Any:
    """The agent's execute stream of ``kernel_id``, given ``code``; None where it cannot be
    opened (the kernel did not start: the session's answer says why)."""
    try:
        upstream = await root.agents.rpc.ws_connect(address, kernel_id)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        log.debug("execute stream of kernel %s not opened early: %s", kernel_id, exc)
        return None
    try:
        await upstream.send_str(code)
    except (aiohttp.ClientError, OSError, ConnectionResetError):
        await upstream.close()
        return None
    return upstream


async def _keep_alive(ws: web.WebSocketResponse) -> None:
    """A ping every ``KEEPALIVE_SECONDS`` while the stream is open, so a client sees a live
    manager during a long silent execution (and proxies keep the connection). A missing pong
    is not held against the client: the official one answers only while it reads, and it
    blocks while the user types input."""
    while not ws.closed:
        await asyncio.sleep(KEEPALIVE_SECONDS)
        try:
            await ws.ping()
        except (ConnectionResetError, RuntimeError):
            return


async def upload(request: web.Request) -> web.Response:
    """Relay the parts to the agent as they arrive (constant memory); each name is checked
    before its bytes go on. Past ``session_file_max`` the agent drops every file of the request
    and the answer is 413 (before reading anything when the Content-Length already says so)."""
    root, sess, address, kernel_id = await _target(request)
    if not request.content_type.startswith("multipart/"):
        raise InvalidAPIParameters("Upload files as multipart/form-data parts named 'src'.")
    limit = root.settings.session_file_max
    if request.content_length is not None and request.content_length > limit + 1024**2:
        raise FilesTooLarge.over(limit)
    reader = await request.multipart()
    boundary = secrets.token_hex(16)
    names: list[str] = []
    failed: list[BaseException] = []

    async def body():
        sent = 0
        try:
            while (part := await reader.next()) is not None:
                if getattr(part, "name", None) != "src":
                    continue
                name = safe_relpath(part.filename)
                names.append(name)
                yield _part_head(boundary, name)
                while chunk := await part.read_chunk(1024 * 1024):
                    sent += len(chunk)
                    if sent > limit:
                        raise FilesTooLarge.over(limit)
                    yield chunk
                yield b"\r\n"
            if not names:
                raise InvalidAPIParameters(
                    "No files: send one multipart part named 'src' per file.")
            yield f"--{boundary}--\r\n".encode()
        except BaiError as e:  # a refused name or size: what the client must hear
            failed.append(e)
            raise

    try:
        reply = await root.agents.rpc.upload(address, kernel_id, body(), boundary, limit)
    except BaiError:
        if failed:  # the body failed, whatever the agent made of it
            raise failed[0] from None
        raise
    if failed:
        raise failed[0]
    await _touch(root, sess["id"])
    return web.json_response({"files": (reply or {}).get("files") or names})


def _part_head(boundary: str, name: str) -> bytes:
    quoted = quote(name, safe="")
    return (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f'Content-Disposition: form-data; name="src"; filename="{quoted}"\r\n\r\n').encode()


async def list_files(request: web.Request) -> web.Response:
    root, sess, address, kernel_id = await _target(request)
    body = await body_of(request, ListFiles)
    path = body.path or request.query.get("path") or "."
    files = await root.agents.rpc.list_files(address, kernel_id, work_relative(path))
    await _touch(root, sess["id"])
    return web.json_response({"files": json.dumps(files), "errors": "", "abspath": path})


async def download(request: web.Request) -> web.StreamResponse:
    """A multipart answer with one tar part per path, relayed from the agent as it comes.
    Every path is measured by the agent before the first byte goes out: together past
    ``session_file_max`` the answer is a 413 problem and nothing is sent."""
    root, sess, address, kernel_id = await _target(request)
    body = await body_of(request, DownloadFiles)
    paths = body.files or request.query.getall("file", [])
    if isinstance(paths, str):
        paths = [paths]
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise InvalidAPIParameters('Name the files to download: {"files": ["path", ...]}.')
    left = root.settings.session_file_max
    boundary = secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        tars = []
        for path in paths:
            upstream = await stack.enter_async_context(
                root.agents.rpc.download(address, kernel_id, work_relative(path), left))
            left -= int(upstream.headers.get(SIZE_HEADER, "0"))
            tars.append((path, upstream))
        resp = web.StreamResponse(
            headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
        await resp.prepare(request)
        try:
            for path, upstream in tars:
                filename = path.rstrip("/").rsplit("/", 1)[-1] + ".tar"
                await resp.write(
                    f"--{boundary}\r\nContent-Type: application/x-tar\r\n"
                    f"Content-Disposition: attachment; filename=\"{quote(filename)}\"\r\n\r\n"
                    .encode())
                async for chunk in upstream.content.iter_chunked(1024 * 1024):
                    await resp.write(chunk)
                await resp.write(b"\r\n")
            await resp.write(f"--{boundary}--\r\n".encode())
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, BaiError) as exc:
            # after the head only a cut connection tells the client the answer is incomplete
            log.warning("download from session %s: agent %s failed: %s", sess["id"], address, exc)
            if request.transport is not None:
                request.transport.close()
            return resp
    await resp.write_eof()
    await _touch(root, sess["id"])
    return resp


def setup(app: web.Application) -> None:
    app.router.add_get("/stream/session/_/run", run)
    app.router.add_get("/stream/session/{session}/execute", execute)
    app.router.add_post("/session/{session}/upload", upload)
    app.router.add_get("/session/{session}/files", list_files)
    app.router.add_get("/session/{session}/download", download)
