"""Apps: the agent's end of the tunnel (``GET /v1/kernels/{kid}/service``, a WebSocket).

The manager names the service in the query: ``protocol`` (``http``/``tcp``/``preopen``: a port;
``pty``: a new shell on a pseudo-terminal), ``port``, ``name`` and, for services bai starts
(``jupyter``), ``token``. Everything that can fail (no runner, nothing listening, an unknown
service) is said in the first frame, as a problem the manager passes on before it upgrades its
client's connection.

The kernel's runner does the reaching in (it lives in the session's network namespace, see
``bai.kernel.services``): it hands over a connected socket, or a pty master, over the runner socket
and the agent relays WebSocket frames to and from that descriptor. So nothing of the host's network
and no other session is ever reachable: only the loopback of the kernel's own namespace.

Frames: BINARY both ways is the stream. For ``pty``, TEXT frames carry control as JSON: from the
client ``{"type": "resize", "rows", "cols"}``; to the client, last, ``{"type": "exit",
"exit_code": n}``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bai.agent.backends.base import Instance, RuntimeBackend
from bai.common import rawstream
from bai.common.errors import AppUnavailable, BaiError, InvalidAPIParameters
from bai.ops.upgrade import take_over

log = logging.getLogger(__name__)

#: how long a service bai starts (jupyter) may take to answer on its port
SERVICE_START_SECONDS = 90.0
RUNNER_TIMEOUT = 10.0
CHUNK = 256 * 1024
MAX_FRAME = 4 * 1024 * 1024
_MAX_UNIX_PATH = 100


def _call_runner(path: Path, msg: dict[str, Any], timeout: float
                 ) -> tuple[dict[str, Any], int | None, socket.socket, bytes]:
    """Blocking: send ``msg`` to the runner at ``path``; (its first answer, the descriptor that
    came with it or None, the still open connection, bytes after the answer's line)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    fd: int | None = None
    try:
        target, dir_fd = str(path), -1
        if len(target) > _MAX_UNIX_PATH:
            dir_fd = os.open(path.parent, os.O_PATH)
            target = f"/proc/self/fd/{dir_fd}/{path.name}"
        try:
            sock.connect(target)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        sock.sendall(json.dumps(msg).encode() + b"\n")
        buf = b""
        while b"\n" not in buf and len(buf) < 65536:
            data, anc, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                    for extra in fds:  # the runner is the session's: keep one, close the rest
                        if fd is None:
                            fd = extra
                        else:
                            os.close(extra)
            if not data:
                break
            buf += data
        line, _, rest = buf.partition(b"\n")
        answer = json.loads(line) if line else {"status": "error", "error": "no answer"}
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        return answer, fd, sock, rest
    except BaseException:
        sock.close()
        if fd is not None:
            os.close(fd)
        raise


async def call_runner(instance: Instance, msg: dict[str, Any], timeout: float = RUNNER_TIMEOUT
                      ) -> tuple[dict[str, Any], int | None, socket.socket, bytes]:
    try:
        return await asyncio.to_thread(_call_runner, instance.runner_socket, msg, timeout)
    except (OSError, ValueError) as e:
        raise AppUnavailable(f"the session's runner does not answer: {e}") from None


def _checked(answer: dict[str, Any], fd: int | None, kind: int) -> int:
    """The descriptor when the runner said ok and it is of the expected ``kind`` (S_IFSOCK or
    S_IFCHR): anything else from the session's runner is refused."""
    if answer.get("status") != "ok" or fd is None:
        if fd is not None:
            os.close(fd)
        raise AppUnavailable(str(answer.get("error") or "the session refused the connection"))
    if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
        os.close(fd)
        raise AppUnavailable("the session's runner handed over something unexpected")
    return fd


async def open_port(instance: Instance, port: int) -> socket.socket:
    answer, fd, chan, _ = await call_runner(instance, {"op": "connect", "port": port})
    chan.close()
    fd = _checked(answer, fd, stat.S_IFSOCK)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def start_service(instance: Instance, name: str, port: int, token: str,
                        alive: Any = lambda: True) -> socket.socket:
    """Start ``name`` unless it runs, then wait until it answers on ``port``."""
    answer, fd, chan, _ = await call_runner(
        instance, {"op": "service", "name": name, "port": port, "token": token})
    chan.close()
    if fd is not None:
        os.close(fd)
    if answer.get("status") not in ("started", "running"):
        raise AppUnavailable(str(answer.get("error") or f"cannot start {name}"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVICE_START_SECONDS
    while True:
        try:
            return await open_port(instance, port)
        except AppUnavailable:
            if loop.time() > deadline or not alive():
                raise AppUnavailable(
                    f"{name} did not start within {SERVICE_START_SECONDS:g}s "
                    "(see `backend.ai logs SESSION`)") from None
        await asyncio.sleep(0.2)


def _int(request: web.Request, key: str, default: int | None = None) -> int:
    raw = request.query.get(key)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise InvalidAPIParameters(f"{key} must be a whole number") from None


async def _open(request: web.Request, backend: RuntimeBackend, rec: Any
                ) -> tuple[socket.socket | None, tuple[int, socket.socket, bytes] | None]:
    """The descriptor of the service the query names: (socket, None) or (None, pty)."""
    if backend.name == "dummy":
        raise AppUnavailable("the dummy runtime runs nothing: it has no apps")
    instance = rec.instance
    protocol = request.query.get("protocol", "tcp")
    if protocol == "pty":
        answer, fd, chan, rest = await call_runner(instance, {
            "op": "pty", "rows": _int(request, "rows", 24), "cols": _int(request, "cols", 80),
            "term": request.query.get("term", "xterm-256color")})
        try:
            return None, (_checked(answer, fd, stat.S_IFCHR), chan, rest)
        except BaseException:
            chan.close()
            raise
    port = _int(request, "port")
    if not 1 <= port <= 65535:
        raise InvalidAPIParameters("port must be within 1-65535")
    if request.query.get("token"):
        return await start_service(instance, request.query.get("name", ""), port,
                                   request.query["token"], lambda: rec.status == "RUNNING"), None
    return await open_port(instance, port), None


async def serve(request: web.Request, backend: RuntimeBackend, rec: Any) -> web.StreamResponse:
    """A raw upgrade (``Upgrade: tcp``, ``bai.common.rawstream``) for a port: a refusal is
    the HTTP answer itself (problem JSON), else 101 and the service's bytes as they are.
    A WebSocket (pty, or a manager that asks for one): upgrade, then a first TEXT frame: ``{"type": "ready"}``, or ``{"type": "error",
    "status", "problem"}`` and the end (so the manager can answer its client with the problem
    before upgrading that connection), then the relay."""
    if rawstream.wants_raw(request.headers) and request.query.get("protocol") != "pty":
        return await _serve_raw(request, backend, rec)
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30)
    await ws.prepare(request)
    try:
        sock, pty = await _open(request, backend, rec)
    except BaiError as e:
        await ws.send_str(json.dumps({"type": "error", "status": e.status,
                                      "problem": e.to_problem()}))
        await ws.close()
        return ws
    await ws.send_str('{"type": "ready"}')
    if pty is not None:
        return await _relay_pty(ws, *pty)
    assert sock is not None
    return await _relay_socket(ws, sock)


async def _serve_raw(request: web.Request, backend: RuntimeBackend, rec: Any
                     ) -> web.StreamResponse:
    sock, _ = await _open(request, backend, rec)  # a refusal: the problem answer
    assert sock is not None
    try:
        conn, tail, resp = await take_over(request)
    except BaseException:
        sock.close()
        raise
    try:
        await rawstream.relay(conn, sock, tail)
    finally:
        rawstream.close(sock)
        rawstream.close(conn)
    return resp


async def _relay_socket(ws: web.WebSocketResponse, sock: socket.socket) -> web.WebSocketResponse:
    try:
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
    except BaseException:
        sock.close()
        raise

    async def up() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type != WSMsgType.TEXT:
                break

    async def down() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)

    await rawstream.first_ends(up(), down())
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    await ws.close()
    return ws


async def _relay_pty(ws: web.WebSocketResponse, master: int, chan: socket.socket,
                     rest: bytes) -> web.WebSocketResponse:
    from bai.kernel.services import set_winsize

    loop = asyncio.get_running_loop()
    writer_fd = os.dup(master)
    os.set_blocking(master, False)
    try:
        reader = asyncio.StreamReader(limit=CHUNK)
        rtransport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", buffering=0))
        wtransport, wproto = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(writer_fd, "wb", buffering=0))
    except BaseException:
        chan.close()
        with contextlib.suppress(OSError):
            os.close(master)
        with contextlib.suppress(OSError):
            os.close(writer_fd)
        raise
    chan.setblocking(False)
    exit_reader, exit_writer = await asyncio.open_connection(sock=chan)

    async def up() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                wtransport.write(msg.data)
                await wproto._drain_helper()
            elif msg.type == WSMsgType.TEXT:
                with contextlib.suppress(ValueError, TypeError, AttributeError, OSError):
                    ctl = json.loads(msg.data)
                    if ctl.get("type") == "resize":
                        set_winsize(writer_fd, ctl.get("rows"), ctl.get("cols"))
            else:
                break

    async def down() -> None:
        with contextlib.suppress(OSError):  # EIO: every holder of the slave side is gone
            while data := await reader.read(CHUNK):
                await ws.send_bytes(data)

    results = await rawstream.first_ends(up(), down())
    client_left = results[0] is None
    code: int | None = None
    if not client_left:
        buf = rest
        with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
            async with asyncio.timeout(10):
                while b"\n" not in buf:
                    data = await exit_reader.read(4096)
                    if not data:
                        break
                    buf += data
            for line in buf.split(b"\n"):
                if line.strip():
                    said = json.loads(line)
                    if said.get("status") == "exited":
                        code = int(said.get("exit_code"))
    wtransport.close()
    rtransport.close()
    exit_writer.close()
    if not ws.closed:
        with contextlib.suppress(Exception):
            await ws.send_str(json.dumps({"type": "exit", "exit_code": code}))
        await ws.close()
    return ws
