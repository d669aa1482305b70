"""Apps of a running session: the official client's tunnel wire (client 23.9.10, ``cli/app.py``).

* ``GET /stream/session/{x}/apps``: ``[{"name", "protocol", "ports", "url_template"?}]``, the
  session's service ports (its image's and the user's own, ``bai.common.services``).
* ``GET /stream/session/{x}/tcpproxy?app=NAME``: one TCP connection of the client's local port:
  a WebSocket (BINARY frames both ways: the official client) or, asked with ``Upgrade: tcp``
  by bai's CLI, the raw bytes (``bai.common.rawstream``); on to the agent's
  ``/v1/kernels/{kid}/service`` (``agent/apps.py``) always as a raw upgraded stream, and to the
  service inside the session's sandbox. Between raw ends the bytes move by ``splice``.
* ``open_app_stream(root, sess, app)``: the same stream to the agent as a (reader, writer), for
  routes that proxy an app themselves (the browser's).
* ``GET /stream/session/{x}/pty?rows=R&cols=C`` (WebSocket, bai's ``shell``): a new shell on a
  pseudo-terminal; BINARY frames are the terminal's bytes, TEXT frames control
  (``{"type": "resize", "rows", "cols"}`` up, ``{"type": "exit", "exit_code"}`` down, last).

* The local path (bai's CLI, the manager and the session's agent on one machine): bai's CLI
  sends ``X-BAI-Local: fd`` with its raw upgrade; where the agent said in its heartbeats that
  it serves an apps socket on this machine's boot (``note_local_agent``), the answer is
  ``200 {"local_socket", "ticket"}`` instead of the 101: the ticket (random, single use, good
  for ``TICKET_SECONDS``) names what this request was allowed to open. The CLI sends
  ``{"op": "app", "ticket"}`` on the manager's unix socket (the one of folder transfers,
  ``api/storage.py``); ``serve_local`` takes the socket the kernel's runner connected inside
  the session's network namespace from the agent's apps socket (``agent/apps.py``
  ``LocalApps``) and hands it on (``SCM_RIGHTS``), so the CLI splices its client to the
  service with nothing relayed here or in the agent. Why: with three relays 1 GiB moved at
  24 % of direct on a quiet machine; in one run at load 16 (bench/apps_tunnel.py --rounds 5)
  56 % through the local path vs 39 % through the relays, bai's CPU 0.34 vs 1.07 s per GiB;
  see docs/internals.md. The CLI
  then writes a byte on that unix connection every ``TOUCH_EVERY`` seconds of traffic (the
  session's activity) and closes it at the end. Anything that fails on the way (no socket, a
  used ticket, another machine): the CLI asks again without the header and gets the relay.

Only the session's owner (or an admin naming it with ``owner_access_key``) gets past ``_target``;
every refusal (unknown session or app, a session that is not running, a service that does not
answer) is a problem answer before the upgrade. The relay reaches nothing but the named
session's own loopback: the agent asks that kernel's runner for the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from bai.common import opensockets, rawstream, services
from bai.common.errors import (
    AgentError,
    AppNotFound,
    BaiError,
    InvalidAPIParameters,
    error_from_problem,
)
from bai.manager.api.stream import _target, _touch
from bai.ops.logs import REQUEST_ID, REQUEST_ID_HEADER
from bai.ops.upgrade import take_over

log = logging.getLogger(__name__)

MAX_FRAME = 4 * 1024 * 1024
#: largest read from the agent's stream sent as one WebSocket frame
CHUNK = 1024 * 1024
#: an open tunnel with traffic keeps its session from the idle timeout
TOUCH_EVERY = 30.0
#: bai's CLI asks with this header (value ``fd``) for the service's socket itself
LOCAL_HEADER = "X-BAI-Local"
#: a ticket of the local path is used at once, once
TICKET_SECONDS = 30.0
#: how long the agent may take to hand a socket over (a service bai starts: up to 90 s)
AGENT_ANSWER_SECONDS = 120.0
#: agent address -> its apps socket, for agents of this machine (``note_local_agent``)
LOCAL_AGENTS = web.AppKey("apps_local_agents", dict)
#: ticket -> what it opens (``_Opens``), single use
TICKETS = web.AppKey("apps_local_tickets", dict)
_BOOT_ID = rawstream.boot_id()
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
        out.append(services.app_info(entry, _token(root, kernel_id, entry), sess["id"]))
    return web.json_response(out)


def _app(sess: dict[str, Any], name: str) -> dict[str, Any]:
    entry = services.find(sess.get("service_ports") or [], name)
    if entry is None:
        names = ", ".join(str(p.get("name")) for p in sess.get("service_ports") or []) or "none"
        raise AppNotFound(f"session {sess['name']} offers no app {name!r}; it offers: {names}",
                          data={"app": name})
    return services.normalize(entry)


def _params(root: Any, kernel_id: str, entry: dict[str, Any]) -> dict[str, str]:
    params = {"name": entry["name"], "protocol": entry["protocol"]}
    if entry["ports"]:
        params["port"] = str(entry["ports"][0])
    token = _token(root, kernel_id, entry)
    if token:
        params["token"] = token
    return params


async def _open_raw(root: Any, address: str, kernel_id: str, params: dict[str, str]
                    ) -> rawstream.Raw:
    """The agent's raw byte stream to the service (``Upgrade: tcp``); its refusal raised
    as the problem it carries. Opening may wait for a service to start."""
    from bai.manager.services.rpc import TOKEN_HEADER

    base = urlsplit(address)
    host, port = base.hostname or "127.0.0.1", base.port or 80
    target = base.path.rstrip("/") + f"/v1/kernels/{kernel_id}/service?" + urlencode(params)
    netloc = base.netloc
    headers = {TOKEN_HEADER: root.settings.cluster_token or ""}
    rid = REQUEST_ID.get()
    if rid is not None:
        headers[REQUEST_ID_HEADER] = rid
    try:
        # no read limit: the agent answers once the service listens (jupyter: up to 90 s)
        got = await rawstream.open_upgraded(host, port, target, netloc, headers, timeout=None)
    except (OSError, ConnectionError) as e:
        raise AgentError(f"agent at {address} is unreachable: {e}") from None
    if isinstance(got, rawstream.Raw):
        return got
    try:
        body = json.loads(got.body) if got.body else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        raise error_from_problem(got.status, body)
    raise AgentError(f"the session's agent refused the app: HTTP {got.status}")


async def open_app_stream(root: Any, sess: dict[str, Any], app: str
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A byte stream to the app ``app`` of ``sess`` (see /work/wt/CONTRACTS.md): the caller
    has already checked the caller may use the session. Starts a service bai starts (jupyter)
    on first use. Raises the ``BaiError`` of a refusal before any byte; the caller closes
    ``writer``. Traffic does not touch the session (``stream._touch``)."""
    address, kernel_id = await root.agents.kernel_target(sess)
    entry = _app(sess, app)
    up = await _open_raw(root, address, kernel_id, _params(root, kernel_id, entry))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 16, loop=loop)
    if up.tail:
        reader.feed_data(up.tail)
    try:
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), sock=up.sock)
    except BaseException:
        up.sock.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def app_token(root: Any, sess: dict[str, Any], app: str) -> str | None:
    """The secret bai gave the service ``app`` of ``sess`` it starts (jupyter's token), or
    None for a service without one."""
    _address, kernel_id = await root.agents.kernel_target(sess)
    return _token(root, kernel_id, _app(sess, app))


async def tcpproxy(request: web.Request) -> web.StreamResponse:
    """One tunnelled TCP connection: a WebSocket (the official client) or, for bai's CLI, the
    raw upgrade (``bai.common.rawstream``); either way a raw stream on to the agent. bai's
    CLI on this machine may get a ticket for the service's socket instead (``_local_offer``)."""
    root, sess, address, kernel_id = await _target(request)
    entry = _app(sess, request.query.get("app", ""))
    refused = _settings_given(request, entry)
    if refused is not None:
        return refused
    params = _params(root, kernel_id, entry)
    if entry["protocol"] == "pty":  # a raw shell on the local port: the agent's pty WebSocket
        return await _relay(request, root, sess, address, kernel_id, params)
    # raw only for a signed request: a browser (cookie) cannot ask for it anyway
    raw = rawstream.wants_raw(request.headers) and bool(request.headers.get("Authorization"))
    if raw and request.headers.get(LOCAL_HEADER) == "fd":
        offer = _local_offer(request, sess, address, kernel_id, params)
        if offer is not None:
            return offer
    up = await _open_raw(root, address, kernel_id, params)
    await _touch(root, sess["id"])

    def touch():
        return _touch(root, sess["id"])

    try:
        if raw:
            conn, tail, resp = await take_over(request)
            try:
                await rawstream.relay(conn, up.sock, tail, up.tail, touch=touch,
                                      touch_every=TOUCH_EVERY)
            finally:
                rawstream.close(conn)
            return resp
        return await _relay_ws(request, up, touch, sess["id"])
    finally:
        rawstream.close(up.sock)
        await _touch(root, sess["id"])


@dataclass(frozen=True)
class _Opens:
    """What a ticket of the local path opens: checked when it was handed out."""
    deadline: float
    session_id: Any
    session: str
    app: str
    kernel_id: str
    params: dict[str, str]
    agent_socket: str


class _LocalPathBroken(AgentError):
    """The local path cannot be taken (the CLI asks again for the relay)."""


def note_local_agent(app: web.Application, payload: dict[str, Any]) -> None:
    """Remember, from an agent's heartbeat, the apps socket it serves when it runs on this
    machine (the same boot id: descriptors can pass), keyed by its address."""
    agents = app.get(LOCAL_AGENTS)
    if agents is None:
        return
    address, path = str(payload.get("address") or ""), payload.get("apps_socket")
    if isinstance(path, str) and path and _BOOT_ID and payload.get("boot_id") == _BOOT_ID:
        agents[address] = path
    else:
        agents.pop(address, None)


def _local_offer(request: web.Request, sess: dict[str, Any], address: str, kernel_id: str,
                 params: dict[str, str]) -> web.Response | None:
    """A ticket for the service's socket where the local path can be taken: this manager
    serves its unix socket and the session's agent its apps socket on this machine."""
    from bai.manager.api.storage import LOCAL

    local = request.app.get(LOCAL)
    agent_socket = request.app[LOCAL_AGENTS].get(address)
    if (local is None or getattr(local, "sock", None) is None or "app" not in local.ops
            or not agent_socket or not os.path.exists(agent_socket)):
        return None
    tickets: dict[str, _Opens] = request.app[TICKETS]
    now = time.monotonic()
    for old in [t for t, o in tickets.items() if o.deadline < now]:
        del tickets[old]
    ticket = secrets.token_urlsafe(32)
    tickets[ticket] = _Opens(now + TICKET_SECONDS, sess["id"], str(sess["name"]),
                             params["name"], kernel_id, params, agent_socket)
    return web.json_response({"local_socket": local.path, "ticket": ticket},
                             headers={"Cache-Control": "no-store"})


def _from_agent(path: str, cluster_token: str, kernel_id: str, params: dict[str, str]) -> int:
    """Blocking: the descriptor of the socket the kernel's runner connected to the service,
    from the agent's apps socket at ``path``; its refusal raised as the problem it carries."""
    from bai.common.unixsock import connect_unix

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds: list[int] = []
    try:
        sock.settimeout(10.0)
        connect_unix(sock, path)
        if not rawstream.trusted_peer(sock):  # not the agent: it gets no cluster token
            raise _LocalPathBroken(f"{path} is served by another user")
        sock.sendall(json.dumps({"cluster_token": cluster_token, "kernel_id": kernel_id,
                                 "query": params}).encode() + b"\n")
        sock.settimeout(AGENT_ANSWER_SECONDS)  # a service bai starts may take 90 s
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 1)
        answer = json.loads(msg.partition(b"\n")[0]) if msg else None
    except (OSError, ValueError) as e:
        raise _LocalPathBroken(f"the agent's apps socket {path}: {e}") from None
    finally:
        sock.close()
    try:
        if (isinstance(answer, dict) and answer.get("ok") is True and len(fds) == 1
                and stat.S_ISSOCK(os.fstat(fds[0]).st_mode)):
            return fds.pop()
        if isinstance(answer, dict) and isinstance(answer.get("status"), int):
            if answer["status"] == 401:  # this manager is not one the agent trusts here
                raise _LocalPathBroken(str(answer.get("title") or "refused"))
            raise error_from_problem(answer["status"], answer)
        raise _LocalPathBroken("the agent handed over nothing usable")
    finally:
        for fd in fds:
            os.close(fd)


async def serve_local(app: web.Application, conn: socket.socket, req: dict[str, Any]) -> None:
    """``{"op": "app", "ticket"}`` on the manager's unix socket: ``{"ok": true}`` with the
    service's socket, or a problem (``"fallback": true`` where the relay may still work)."""
    from bai.manager.app import ROOT

    root = app[ROOT]
    opens = app[TICKETS].pop(str(req.get("ticket") or ""), None)
    fd = None
    try:
        try:
            if opens is None or opens.deadline < time.monotonic():
                raise _LocalPathBroken("an unknown, used or expired ticket")
            fd = await asyncio.to_thread(_from_agent, opens.agent_socket,
                                         root.settings.cluster_token or "", opens.kernel_id,
                                         opens.params)
        except BaiError as e:
            answer = {"status": e.status, **e.to_problem()}
            if isinstance(e, _LocalPathBroken):
                log.info("local app path not taken: %s", e)
                answer["fallback"] = True
            await asyncio.to_thread(conn.sendall, json.dumps(answer).encode() + b"\n")
            return
        await asyncio.to_thread(socket.send_fds, conn, [b'{"ok": true}\n'], [fd])
    finally:
        if fd is not None:
            os.close(fd)
    log.info("app %s of session %s: its socket handed to a local client (no relay)",
             opens.app, opens.session)
    await _touch(root, opens.session_id)
    conn.setblocking(False)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while await loop.sock_recv(conn, 256):  # a byte per TOUCH_EVERY s of traffic
            await _touch(root, opens.session_id)
    await _touch(root, opens.session_id)


def _settings_given(request: web.Request, entry: dict[str, Any]) -> web.Response | None:
    """The official client's ``--arg``/``--env`` (query ``arguments``/``envs``, JSON objects)
    refused in words: no service of bai takes them (jupyter runs with bai's own settings, a
    user's server with the ones it was started with). The client shows only the status and
    the headers of a refused WebSocket, so the sentence is in ``X-BAI-Refused`` too."""
    given = [k for k in ("arguments", "envs") if request.query.get(k, "").strip() not in ("", "{}")]
    if not given:
        return None
    name = entry["name"]
    how = ("bai starts it with its own settings" if name in services.STARTED_BY_BAI
           else "it is a server started in the session, with the options it was started with")
    text = (f"app {name} takes no {' or '.join('--arg' if k == 'arguments' else '--env' for k in given)}: "
            f"{how}; start your own server in the session with the options you need "
            "(start --service NAME:PORT) and open that app")
    exc = InvalidAPIParameters(text, data={"app": name, "given": given})
    from bai.manager.api.middleware import problem_response

    resp = problem_response(exc.status, exc.to_problem())
    resp.headers["X-BAI-Refused"] = text
    return resp


async def _relay_ws(request: web.Request, up: rawstream.Raw, touch: Any, sid: Any
                    ) -> web.WebSocketResponse:
    """The client's WebSocket (BINARY frames) to and from the agent's raw stream."""
    ws = opensockets.WebSocket(max_msg_size=MAX_FRAME, heartbeat=30)
    await ws.prepare(request)
    loop = asyncio.get_running_loop()
    sock = up.sock
    touched = [loop.time()]

    async def traffic() -> None:
        if loop.time() - touched[0] > TOUCH_EVERY:
            touched[0] = loop.time()
            await touch()

    async def upward() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await loop.sock_sendall(sock, msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await loop.sock_sendall(sock, msg.data.encode())
            else:
                break
            await traffic()

    async def downward() -> None:
        if up.tail:
            await ws.send_bytes(up.tail)
        while data := await loop.sock_recv(sock, CHUNK):
            await ws.send_bytes(data)
            await traffic()

    await rawstream.first_ends(upward(), downward(), quiet=(BaiError,),
                              what=f" of session {sid}")
    if not ws.closed:
        await ws.close()
    return ws


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
    ws = opensockets.WebSocket(max_msg_size=MAX_FRAME, heartbeat=30)
    try:
        await ws.prepare(request)
        await _touch(root, sess["id"])

        def touch():
            return _touch(root, sess["id"])

        await rawstream.first_ends(_pipe(ws, upstream, touch), _pipe(upstream, ws, touch),
                                  quiet=(BaiError,), what=f" of session {sess['id']}")
    finally:
        await upstream.close()
        await _touch(root, sess["id"])
        if ws.prepared and not ws.closed:  # not prepared: not a WebSocket request (400)
            await ws.close()
    return ws


def setup(app: web.Application) -> None:
    from bai.manager.api.storage import LOCAL_OPS

    app[LOCAL_AGENTS] = {}
    app[TICKETS] = {}
    app.setdefault(LOCAL_OPS, {})["app"] = serve_local
    app.router.add_get("/stream/session/{session}/apps", list_apps)
    app.router.add_get("/stream/session/{session}/tcpproxy", tcpproxy)
    app.router.add_get("/stream/session/{session}/pty", pty)
