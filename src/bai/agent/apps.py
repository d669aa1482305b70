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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bai.agent.backends.base import Instance, RuntimeBackend
from bai.common import opensockets, rawstream
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


def _int(query: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = query.get(key)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise InvalidAPIParameters(f"{key} must be a whole number") from None


async def _open(query: Mapping[str, str], backend: RuntimeBackend, rec: Any
                ) -> tuple[socket.socket | None, tuple[int, socket.socket, bytes] | None]:
    """The descriptor of the service the query names: (socket, None) or (None, pty)."""
    if backend.name == "dummy":
        raise AppUnavailable("the dummy runtime runs nothing: it has no apps")
    instance = rec.instance
    protocol = query.get("protocol", "tcp")
    if protocol == "pty":
        answer, fd, chan, rest = await call_runner(instance, {
            "op": "pty", "rows": _int(query, "rows", 24), "cols": _int(query, "cols", 80),
            "term": query.get("term", "xterm-256color")})
        try:
            return None, (_checked(answer, fd, stat.S_IFCHR), chan, rest)
        except BaseException:
            chan.close()
            raise
    port = _int(query, "port")
    if not 1 <= port <= 65535:
        raise InvalidAPIParameters("port must be within 1-65535")
    if query.get("token"):
        return await start_service(instance, query.get("name", ""), port,
                                   query["token"], lambda: rec.status == "RUNNING"), None
    return await open_port(instance, port), None


async def serve(request: web.Request, backend: RuntimeBackend, rec: Any) -> web.StreamResponse:
    """A raw upgrade (``Upgrade: tcp``, ``bai.common.rawstream``) for a port: a refusal is
    the HTTP answer itself (problem JSON), else 101 and the service's bytes as they are.
    A WebSocket (pty, or a manager that asks for one): upgrade, then a first TEXT frame: ``{"type": "ready"}``, or ``{"type": "error",
    "status", "problem"}`` and the end (so the manager can answer its client with the problem
    before upgrading that connection), then the relay."""
    if rawstream.wants_raw(request.headers) and request.query.get("protocol") != "pty":
        return await _serve_raw(request, backend, rec)
    ws = opensockets.WebSocket(max_msg_size=MAX_FRAME, heartbeat=30)
    await ws.prepare(request)
    try:
        sock, pty = await _open(request.query, backend, rec)
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
    sock, _ = await _open(request.query, backend, rec)  # a refusal: the problem answer
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


class LocalApps:
    """The agent's unix socket (``apps_socket`` in its settings) for a manager on the same
    machine: one JSON line ``{"cluster_token", "kernel_id", "query"}`` (``query`` as the
    ``/service`` route's, ports only) is answered ``{"ok": true}`` with the descriptor of the
    socket the kernel's runner connected inside the session's network namespace
    (``SCM_RIGHTS``, the same ``_open`` as the route), or a problem object and no descriptor.
    Why: the manager hands that socket on to bai's CLI of the same machine, which splices its
    client to the service with no relay in the manager or here (bench/apps_tunnel.py, 1 GiB:
    24 % of direct with three relays on a quiet machine; in one run at load 16, 56 % through
    the local path vs 39 % through the relays, 0.34 vs 1.07 s of bai's CPU per GiB; see
    docs/internals.md). Only the manager may ask: the
    socket is 0600, the peer must run as root or as the agent's user (``SO_PEERCRED``) and
    present the cluster token."""

    def __init__(self, path: str, cluster_token: str, registry: Any, backend: RuntimeBackend
                 ) -> None:
        self.path, self.cluster_token = path, cluster_token
        self.registry, self.backend = registry, backend
        self.boot_id = rawstream.boot_id()
        self.sock: socket.socket | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> bool:
        """Listen at ``path`` (a stale socket of a stopped agent is replaced); False where
        it cannot (the manager then relays as it does for another machine's agent)."""
        from bai.common.unixsock import unix_address

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dfd = None
        try:
            addr, dfd = unix_address(self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)
            old = os.umask(0o177)
            try:
                sock.bind(addr)
            finally:
                os.umask(old)
            os.chmod(addr, 0o600)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.warning("no local apps socket at %s: %s", self.path, e)
            return False
        finally:
            if dfd is not None:
                os.close(dfd)
        self.sock = sock
        self.task = asyncio.create_task(self._serve(), name="agent-local-apps")
        return True

    async def stop(self) -> None:
        from bai.common.unixsock import remove_unix

        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.sock is not None:
            self.sock.close()
            remove_unix(self.path)
        self.sock = self.task = None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task] = set()
        try:
            while True:
                conn, _ = await loop.sock_accept(self.sock)
                task = asyncio.create_task(self._one(conn))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for t in running:
                t.cancel()

    async def _one(self, conn: socket.socket) -> None:
        from bai.common.auth import cluster_token_ok
        from bai.common.errors import AuthFailed, SessionNotRunning

        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            conn.setblocking(False)
            try:
                buf = b""
                async with asyncio.timeout(RUNNER_TIMEOUT):
                    while b"\n" not in buf and len(buf) < 65536:
                        data = await loop.sock_recv(conn, 65536)
                        if not data:
                            return
                        buf += data
                if not rawstream.trusted_peer(conn):  # the request read first: answered
                    raise AuthFailed("only the agent's own user may use its apps socket")
                try:
                    req = json.loads(buf.partition(b"\n")[0])
                    query = {str(k): str(v) for k, v in dict(req["query"]).items()}
                    kernel_id, token = str(req["kernel_id"]), req.get("cluster_token")
                except (ValueError, KeyError, TypeError):
                    raise InvalidAPIParameters("send {cluster_token, kernel_id, query}") from None
                if not cluster_token_ok(self.cluster_token, token if isinstance(token, str)
                                        else None):
                    raise AuthFailed("missing or wrong cluster token")
                if query.get("protocol") == "pty":
                    raise InvalidAPIParameters("a pty is relayed, not handed over")
                rec = self.registry.get(kernel_id)
                if rec.status != "RUNNING" or rec.instance is None:
                    raise SessionNotRunning(f"kernel {rec.kernel_id} is {rec.status}")
                sock, _ = await _open(query, self.backend, rec)
            except BaiError as e:
                line = json.dumps({"status": e.status, **e.to_problem()}).encode() + b"\n"
                await loop.sock_sendall(conn, line)
                return
            assert sock is not None
            conn.setblocking(True)
            conn.settimeout(RUNNER_TIMEOUT)
            await asyncio.to_thread(socket.send_fds, conn, [b'{"ok": true}\n'], [sock.fileno()])
        except (OSError, asyncio.TimeoutError) as e:
            log.info("a local app request failed: %s", e)
        finally:
            if sock is not None:
                sock.close()
            conn.close()
