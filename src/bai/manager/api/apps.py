"""Apps of a running session: the official client's tunnel wire (client 23.9.10, ``cli/app.py``).

* ``GET /stream/session/{x}/apps``: ``[{"name", "protocol", "ports", "url_template"?}]``, the
  session's service ports (its image's and the user's own, ``bai.common.services``).
* ``GET /stream/session/{x}/tcpproxy?app=NAME`` (WebSocket): one TCP connection of the client's
  local port, BINARY frames both ways, relayed to the agent's ``/v1/kernels/{kid}/service``
  (``agent/apps.py``) and on to the service inside the session's sandbox.
* ``GET /stream/session/{x}/pty?rows=R&cols=C`` (WebSocket, bai's ``shell``): a new shell on a
  pseudo-terminal; BINARY frames are the terminal's bytes, TEXT frames control
  (``{"type": "resize", "rows", "cols"}`` up, ``{"type": "exit", "exit_code"}`` down, last).

Only the session's owner (or an admin naming it with ``owner_access_key``) gets past ``_target``;
every refusal (unknown session or app, a session that is not running, a service that does not
answer) is a problem answer before the upgrade. The relay reaches nothing but the named
session's own loopback: the agent asks that kernel's runner for the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

import aiohttp
from aiohttp import web

from bai.common import services
from bai.common.errors import AgentError, AppNotFound, BaiError, error_from_problem
from bai.manager.api.stream import _target, _touch

log = logging.getLogger(__name__)

MAX_FRAME = 4 * 1024 * 1024
#: an open tunnel with traffic keeps its session from the idle timeout
TOUCH_EVERY = 30.0
#: used when the cluster has no shared token (one manager only): tokens differ per process
_FALLBACK_SECRET = secrets.token_hex(32)


def _secret(root: Any) -> str:
    return root.settings.cluster_token or _FALLBACK_SECRET


def _token(root: Any, kernel_id: str, entry: dict[str, Any]) -> str | None:
    if entry["name"] not in services.STARTED_BY_BAI:
        return None
    return services.service_token(_secret(root), kernel_id, entry["name"])


async def list_apps(request: web.Request) -> web.Response:
    root, sess, _address, kernel_id = await _target(request)
    out = []
    for raw in sess.get("service_ports") or []:
        try:
            entry = services.normalize(raw)
        except services.ServiceSpecError:
            continue
        out.append(services.app_info(entry, _token(root, kernel_id, entry)))
    return web.json_response(out)


def _app(sess: dict[str, Any], name: str) -> dict[str, Any]:
    entry = services.find(sess.get("service_ports") or [], name)
    if entry is None:
        names = ", ".join(str(p.get("name")) for p in sess.get("service_ports") or []) or "none"
        raise AppNotFound(f"session {sess['name']} offers no app {name!r}; it offers: {names}",
                          data={"app": name})
    return services.normalize(entry)


async def tcpproxy(request: web.Request) -> web.StreamResponse:
    root, sess, address, kernel_id = await _target(request)
    entry = _app(sess, request.query.get("app", ""))
    params = {"name": entry["name"], "protocol": entry["protocol"]}
    if entry["ports"]:
        params["port"] = str(entry["ports"][0])
    token = _token(root, kernel_id, entry)
    if token:
        params["token"] = token
    return await _relay(request, root, sess, address, kernel_id, params)


async def pty(request: web.Request) -> web.StreamResponse:
    root, sess, address, kernel_id = await _target(request)
    params = {"name": "shell", "protocol": "pty"}
    for key in ("rows", "cols", "term"):
        if request.query.get(key):
            params[key] = request.query[key][:64]
    return await _relay(request, root, sess, address, kernel_id, params)


async def _open_upstream(root: Any, address: str, kernel_id: str, params: dict[str, str]):
    """The agent's service WebSocket once it said ``ready``; its refusal raised as the
    problem it carries."""
    try:
        upstream = await root.agents.rpc.service_connect(address, kernel_id, params)
    except aiohttp.WSServerHandshakeError as e:
        raise AgentError(f"the session's agent refused the app: HTTP {e.status}") from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise AgentError(f"agent at {address} is unreachable: {e}") from None
    try:
        first = await upstream.receive()
        said = json.loads(first.data) if first.type == aiohttp.WSMsgType.TEXT else {}
        if said.get("type") == "error":
            raise error_from_problem(int(said.get("status") or 502), said.get("problem"))
        if said.get("type") != "ready":
            raise AgentError("the session's agent ended the app's connection")
    except BaseException:
        await upstream.close()
        raise
    return upstream


async def _pipe(src: Any, dst: Any, touch: Any) -> None:
    """Frames of one WebSocket onto the other, as they are, until ``src`` closes; traffic
    counts as the session's activity (at most every TOUCH_EVERY seconds)."""
    loop = asyncio.get_running_loop()
    touched = loop.time()
    async for msg in src:
        if loop.time() - touched > TOUCH_EVERY:
            touched = loop.time()
            await touch()
        if msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        else:
            break


async def _relay(request: web.Request, root: Any, sess: dict[str, Any], address: str,
                 kernel_id: str, params: dict[str, str]) -> web.StreamResponse:
    upstream = await _open_upstream(root, address, kernel_id, params)
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30)
    try:
        await ws.prepare(request)
        await _touch(root, sess["id"])

        def touch():
            return _touch(root, sess["id"])

        tasks = [asyncio.ensure_future(_pipe(ws, upstream, touch)),
                 asyncio.ensure_future(_pipe(upstream, ws, touch))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(
                        r, (asyncio.CancelledError, ConnectionError, BaiError)):
                    log.warning("app relay of session %s ended with %r", sess["id"], r)
    finally:
        await upstream.close()
        await _touch(root, sess["id"])
        if not ws.closed:
            await ws.close()
    return ws


def setup(app: web.Application) -> None:
    app.router.add_get("/stream/session/{session}/apps", list_apps)
    app.router.add_get("/stream/session/{session}/tcpproxy", tcpproxy)
    app.router.add_get("/stream/session/{session}/pty", pty)
