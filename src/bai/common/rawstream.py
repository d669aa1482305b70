"""A raw byte stream over an HTTP/1.1 upgrade (``Upgrade: tcp``), for the apps tunnel.

A WebSocket relay costs a frame parse, an unmask and a copy per frame at each of its three hops
(CLI, manager, agent); a tunnelled TCP connection needs none of it. The hops that are bai's own
(the CLI to the manager, the manager to the agent) ask for ``Upgrade: tcp`` instead: the
request is an ordinary signed GET; a ``101 Switching Protocols`` answer turns the connection
into the tunnelled connection's bytes, as they are, both ways, each direction closed on its own
(``shutdown(SHUT_WR)``). Any other answer is the refusal (a problem JSON), before any byte.
The client sends nothing before it read the 101 (aiohttp's C parser drops bytes that come in
the same read as the head of an upgrade other than WebSocket); the server may send at once.
The official client keeps its WebSocket to the manager.

* ``bai.ops.upgrade.take_over(request)``: the server's end (aiohttp, a server dependency: not
  here, ``bai.common`` is part of the client): answers 101 and returns the connection's socket.
* ``open_upgraded(...)``: the client's end: connects, sends the request, reads the answer's head;
  a ``Raw`` (socket, bytes after the head) on 101, else ``Refused`` (status, headers, body).
* ``relay(a, b)``: both directions between two sockets until both ended; bytes move through a
  pipe with ``splice(2)`` where Linux has it (they never enter Python), else ``recv``/``send``.
* ``boot_id()``, ``peer_uid(sock)``, ``trusted_peer(sock)``: for the local path, where the
  agent, the manager and bai's CLI share one machine and hand the service's connected socket
  on by ``SCM_RIGHTS`` instead of relaying its bytes (``manager/api/apps.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: aiohttp hands the bytes after the head of an upgrade over only for "tcp" and "websocket"
UPGRADE = "tcp"
log = logging.getLogger(__name__)
#: largest read or splice at once
CHUNK = 1024 * 1024
#: a refusal's body is read up to this size
MAX_REFUSAL = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH)


def boot_id() -> str:
    """This kernel's boot id: two processes that read the same one can pass descriptors over
    a unix socket whose path both see (empty where it cannot be read)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of the unix socket ``sock``."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", raw)[1]


def trusted_peer(sock: socket.socket) -> bool:
    """Whether the other end of the unix socket ``sock`` runs as root or as this process's
    own user (the manager and the agent of one machine trust nobody else)."""
    return peer_uid(sock) in (0, os.geteuid())


def wants_raw(headers: Any) -> bool:
    """Whether a request asks for the raw upgrade."""
    return (headers.get("Upgrade", "").strip().lower() == UPGRADE
            and "upgrade" in headers.get("Connection", "").lower())


@dataclass
class Raw:
    sock: socket.socket
    tail: bytes = b""


@dataclass
class Refused:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


async def open_upgraded(host: str, port: int, target: str, netloc: str,
                        headers: dict[str, str], timeout: float | None = 30.0) -> Raw | Refused:
    """GET ``target`` on ``host:port`` asking for the raw upgrade (plain TCP); OSError when no
    connection could be made, ``ConnectionError`` when it broke before the answer's head."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    sock: socket.socket | None = None
    for family, kind, proto, _name, addr in infos:
        s = socket.socket(family, kind, proto)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, addr), timeout)
            sock = s
            break
        except (OSError, asyncio.TimeoutError) as e:
            s.close()
            last = e if isinstance(e, OSError) else TimeoutError(f"connect to {netloc} timed out")
    if sock is None:
        raise last or OSError(f"cannot resolve {host}")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = "".join(f"{k}: {v}\r\n" for k, v in {
            "Host": netloc, **headers, "Connection": "Upgrade", "Upgrade": UPGRADE}.items())
        head = f"GET {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1")
        await loop.sock_sendall(sock, head)
        buf = b""

        async def more() -> bytes:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            return data

        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in buf:
                if len(buf) > 65536:
                    raise ConnectionResetError("the server's answer has no end of its head")
                buf += await more()
            raw_head, _, rest = buf.partition(b"\r\n\r\n")
            lines = raw_head.split(b"\r\n")
            version, _, rest_line = lines[0].decode("latin-1").partition(" ")
            code, _, reason = rest_line.partition(" ")
            if not version.startswith("HTTP/") or not code.isdigit():
                raise ConnectionResetError(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(code)
            got: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.decode("latin-1").partition(":")
                got[name.strip().lower()] = value.strip()
            if status == 101 and got.get("upgrade", "").lower() == UPGRADE:
                return Raw(sock, rest)
            body = rest
            length = int(got.get("content-length") or 0) if got.get(
                "content-length", "").isdigit() else None
            with contextlib.suppress(ConnectionError, OSError):
                while (length is None or len(body) < length) and len(body) < MAX_REFUSAL:
                    body += await more()
            sock.close()
            return Refused(status, reason, got, body[:length] if length is not None else body)
    except BaseException:
        sock.close()
        raise


def close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _end_write(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class _Splicer:
    """``src``'s bytes onto ``dst`` through a pipe (``splice(2)``), driven by the loop's
    callbacks: the reader of ``src`` stays registered while ``dst`` takes what comes, the
    writer of ``dst`` only while it does not. ``done`` ends with None at ``src``'s end."""

    def __init__(self, src: socket.socket, dst: socket.socket,
                 traffic: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.traffic = traffic
        self.r = self.w = -1
        self.held = 0  # bytes in the pipe
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(self.sfd, self._readable)

    def _finish(self, exc: BaseException | None = None) -> None:
        self.loop.remove_reader(self.sfd)
        self.loop.remove_writer(self.dfd)
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def _readable(self) -> None:
        try:
            if self.w < 0:  # a pipe only for connections that carry something
                self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                with contextlib.suppress(OSError):
                    fcntl.fcntl(self.w, _F_SETPIPE_SZ, CHUNK)
            for _ in range(16):  # what keeps coming, up to 16 MiB per wake-up
                try:
                    n = os.splice(self.sfd, self.w, CHUNK, flags=_SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    return
                if n == 0:
                    self._finish()
                    return
                self.traffic()
                self.held = n
                if not self._drain():
                    self.loop.remove_reader(self.sfd)
                    self.loop.add_writer(self.dfd, self._writable)
                    return
        except BaseException as e:
            self._finish(e)

    def _writable(self) -> None:
        try:
            if self._drain():
                self.loop.remove_writer(self.dfd)
                self.loop.add_reader(self.sfd, self._readable)
        except BaseException as e:
            self._finish(e)

    def _drain(self) -> bool:
        """Whether the pipe is empty (all of it went to ``dst``)."""
        while self.held:
            try:
                self.held -= os.splice(self.r, self.dfd, self.held, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return False
        return True


async def _splice_pump(src: socket.socket, dst: socket.socket,
                       traffic: Callable[[], None]) -> None:
    splicer = _Splicer(src, dst, traffic)
    try:
        await splicer.done
    finally:
        splicer._finish()


async def _copy_pump(src: socket.socket, dst: socket.socket,
                     traffic: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(src, CHUNK):
        traffic()
        await loop.sock_sendall(dst, data)


async def pump(src: socket.socket, dst: socket.socket, first: bytes = b"",
               traffic: Callable[[], None] = lambda: None) -> None:
    """``first``, then ``src``'s bytes onto ``dst`` until ``src`` ends; then ``dst``'s
    writing side is closed (the peer reads the end). A reset on either side ends it too."""
    loop = asyncio.get_running_loop()
    try:
        if first:
            await loop.sock_sendall(dst, first)
        try:
            await (_splice_pump if SPLICE else _copy_pump)(src, dst, traffic)
        except OSError as e:
            if e.errno == errno.EINVAL and SPLICE:  # not a socket splice can read (TLS, unix)
                await _copy_pump(src, dst, traffic)
            else:
                raise
    except OSError as e:
        if e.errno not in _GONE and not isinstance(e, ConnectionError):
            raise
    finally:
        _end_write(dst)


async def relay(a: socket.socket, b: socket.socket, a_first: bytes = b"", b_first: bytes = b"",
                touch: Callable[[], Awaitable[None]] | None = None,
                touch_every: float = 30.0) -> None:
    """Both directions between ``a`` and ``b`` (``a_first``: bytes already read from ``a``)
    until both ended; ``touch`` is awaited at most every ``touch_every`` seconds while bytes
    move. The sockets stay open (the caller closes them)."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    pending: set[asyncio.Task] = set()

    def traffic() -> None:
        now = loop.time()
        if touch is not None and now - last[0] > touch_every:
            last[0] = now
            task = asyncio.ensure_future(touch())
            pending.add(task)
            task.add_done_callback(pending.discard)

    ends = [asyncio.ensure_future(pump(a, b, a_first, traffic)),
            asyncio.ensure_future(pump(b, a, b_first, traffic))]
    try:
        await asyncio.gather(*ends)
    finally:
        for t in ends:
            t.cancel()
        await asyncio.gather(*ends, *pending, return_exceptions=True)


async def first_ends(*coros: Any, quiet: tuple[type[BaseException], ...] = (), what: str = ""
                     ) -> list[Any]:
    """Run the pumps until the first ends (either side closed), then stop the others; their
    results (an unexpected exception is logged, ``quiet`` ones are not)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(
                r, (asyncio.CancelledError, ConnectionError, OSError, *quiet)):
            log.warning("app relay%s ended with %r", what, r)
    return results
