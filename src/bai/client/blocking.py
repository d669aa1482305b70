"""A blocking HTTP/1.1 + WebSocket client on plain sockets (the express paths: ``run``,
``start``, ``ps``, ``vfolder``; the WebSocket itself is ``bai.client.websocket``).

The same requests as the click path's httpx/websockets transport (``bai.client.connection``),
framed by ``bai.client.http1``, without asyncio: importing asyncio alone costs about as much CPU
as ``backend.ai run`` may spend in total. One keep-alive connection per (scheme, host, port),
bodies read whole.
"""

from __future__ import annotations

import os
from _io import BufferedReader, _RawIOBase

# ``_socket``, not ``socket``: the module imports ``enum`` and ``selectors`` (~2.5 ms of the
# ~20 ms of CPU a ``backend.ai start --enqueue-only`` spends); TLS (``ssl``) loads it anyway.
import _socket

from bai.client import http1
from bai.client.http1 import ConnectFailed, HandshakeFailed, ReadTimeout, WireError

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bai.client.websocket import WebSocket


class _SocketReader(_RawIOBase):
    """``socket.makefile("rb")``'s raw layer: reads are ``recv_into`` (a timeout raises
    TimeoutError, as there). On ``io.RawIOBase``'s C base: a subclass of the ABC costs
    twice as much to create."""

    def __init__(self, sock: Any) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._sock.recv_into(b)


class _Conn:
    def __init__(self, key: tuple[str, str, int], sock: Any) -> None:
        self.key = key
        self.sock = sock
        self.rfile = BufferedReader(_SocketReader(sock))

    def close(self) -> None:
        for closing in (self.rfile.close, self.sock.close):
            try:
                closing()
            except OSError:
                pass


def connect_tcp(host: bytes | str, port: int, timeout: float | None) -> Any:
    """``socket.create_connection((host, port), timeout)`` on ``_socket``: the first address
    that takes the connection; the first address's error if none does."""
    errors = []
    for family, kind, proto, _name, addr in _socket.getaddrinfo(host, port, 0,
                                                                _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as e:
            errors.append(e)
            sock.close()
    if errors:
        raise errors[0]
    raise OSError("getaddrinfo returns an empty list")


def connect_local(path: str, timeout: float | None) -> Any:
    """A ``_socket`` connected to the unix socket ``path``; None where nothing answers there
    (no such file, no access, a server that stopped)."""
    from bai.common.unixsock import connect_unix

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        connect_unix(sock, path)
    except OSError:
        sock.close()
        return None
    return sock


class Answer:
    """A whole answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return http1.content_type_of(self.headers)

    def text(self, errors: str = "strict") -> str:
        return self.body.decode(http1.charset_of(self.headers), errors)


def open_socket(scheme: str, host: str, port: int, timeout: float, lean: bool = False) -> Any:
    """A connected ``socket.socket`` to ``host:port``, through the environment's proxy and with
    TLS for ``https`` (``bai.client.network``). ``lean``: a connection without TLS stays the
    ``_socket.socket`` it was made as (no ``sendfile``/``makefile``; no ``socket`` import)."""
    proxy = None
    # only the variables the proxy choice reads, by name: a scan of the whole environment
    # decodes each name in Python (~0.1 ms for 40 variables)
    if any(map(os.environ.get, http1.PROXY_VARIABLES)):  # else the module need not load
        from bai.client import network

        proxy = network.proxy_for(scheme, host)
    target = proxy[:2] if proxy else (host, port)
    # an ASCII host as bytes: getaddrinfo would load the idna codec for a str
    addr = target[0].encode("ascii") if target[0].isascii() else target[0]
    sock = connect_tcp(addr, target[1], timeout)
    try:
        if proxy is not None:
            from bai.client import network

            sock.sendall(network.connect_request(host, port, proxy[2]))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk or len(head) > 65536:
                    break
                head += chunk
            network.connect_status(head, proxy, host, port)
        if scheme == "https" or not lean:
            import socket

            # the same connection as a socket.socket, as create_connection gives it
            family, kind, proto = sock.family, sock.type, sock.proto
            sock = socket.socket(family, kind, proto, sock.detach())
            sock.settimeout(timeout)
        if scheme == "https":
            from bai.client import network

            sock = network.ssl_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


class BlockingHTTP:
    """Keep-alive connections to a few hosts; ``close()`` ends them."""

    def __init__(self, *, headers: dict[str, str] | None = None,
                 connect_timeout: float = 10.0, read_timeout: float | None = None,
                 local: dict[tuple[str, str, int], str] | None = None) -> None:
        self.default_headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # None: wait as long as the answer takes
        #: (scheme, host, port) -> the unix socket where that server listens on this machine
        #: too (``Endpoints.local_sockets``): tried first, whatever proxy the environment names
        self.local = dict(local or {})
        self._idle: dict[tuple[str, str, int], _Conn] = {}

    def close(self) -> None:
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()

    def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        key = (scheme, host, port)
        conn = self._idle.pop(key, None)
        if conn is not None:
            return conn
        path = self.local.get(key)
        if path is not None:
            sock = connect_local(path, self.connect_timeout)
            if sock is not None:
                sock.settimeout(self.read_timeout)
                return _Conn(key, sock)
        try:
            sock = open_socket(scheme, host, port, self.connect_timeout, lean=True)
            sock.settimeout(self.read_timeout)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        if scheme != "https":
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return _Conn(key, sock)

    def _exchange(self, conn: _Conn, data: bytes) -> tuple[int, str, list[tuple[str, str]]]:
        try:
            conn.sock.sendall(data)
            while True:
                code, reason = http1.parse_status_line(conn.rfile.readline())
                headers: list[tuple[str, str]] = []
                while (pair := http1.parse_header_line(conn.rfile.readline())) is not None:
                    headers.append(pair)
                if code != 100:
                    return code, reason, headers
        except TimeoutError:
            seconds = conn.sock.gettimeout()
            conn.close()
            raise ReadTimeout(seconds) from None
        except OSError as e:
            conn.close()
            raise WireError(f"the request failed: {e}") from None
        except BaseException:
            conn.close()
            raise

    def _body(self, conn: _Conn, framing: http1.BodyFraming) -> bytes:
        rfile = conn.rfile
        try:
            if framing.eof:
                return b""
            if framing.chunked:
                parts = []
                while True:
                    size_line = rfile.readline()
                    if not size_line:
                        raise WireError("the connection closed inside a chunked body")
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailer fields
                        return b"".join(parts)
                    data = rfile.read(size + 2)
                    if len(data) != size + 2:
                        raise WireError("the connection closed inside a chunked body")
                    parts.append(data[:-2])
            if framing.left is None:
                return rfile.read()
            data = rfile.read(framing.left)
            if len(data) != framing.left:
                raise WireError("the connection closed before the end of the body")
            return data
        except TimeoutError:
            seconds = conn.sock.gettimeout()
            conn.close()
            raise ReadTimeout(seconds) from None
        except (OSError, ValueError) as e:
            conn.close()
            raise WireError(f"reading the answer failed: {e}") from None

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, timeout: float | None | object = ...) -> Answer:
        """Send one request and read the whole answer; ReadTimeout when the server is silent
        for ``timeout`` seconds (default: the client's read_timeout; None: no limit)."""
        scheme, host, port, netloc, target = http1.split_url(url)
        conn = self._connect(scheme, host, port)
        conn.sock.settimeout(self.read_timeout if timeout is ... else timeout)
        length = len(body) if body is not None else (
            0 if method in ("POST", "PUT", "PATCH") else None)
        head = http1.request_head(method, target, netloc,
                                  {**self.default_headers, **(headers or {})}, length)
        status, reason, raw = self._exchange(conn, head + (body or b""))
        hdrs = {k.lower(): v for k, v in raw}
        framing = http1.BodyFraming(status, hdrs, method == "HEAD")
        data = self._body(conn, framing)
        if framing.keep_alive:
            self._idle[conn.key] = conn
        else:
            conn.close()
        return Answer(status, reason, hdrs, data)

    def websocket(self, url: str, *, headers: dict[str, str] | None = None) -> WebSocket:
        """Open a WebSocket (``bai.client.websocket``); HandshakeFailed on any answer but 101."""
        from bai.client import websocket

        scheme, host, port, netloc, target = http1.split_url(url)
        conn = self._connect(scheme, host, port)
        conn.sock.settimeout(self.read_timeout)  # for the handshake; the stream has no limit
        key, hdrs = websocket.ws_handshake({**self.default_headers, **(headers or {})})
        status, reason, raw = self._exchange(
            conn, http1.request_head("GET", target, netloc, hdrs, None))
        if status != 101:
            hmap = {k.lower(): v for k, v in raw}
            try:
                body = self._body(conn, http1.BodyFraming(status, hmap, False))
            except WireError:
                body = b""
            conn.close()
            raise HandshakeFailed(status, reason, body, http1.content_type_of(hmap))
        if not websocket.ws_accept_ok(key, raw):
            conn.close()
            raise HandshakeFailed(status, "invalid Sec-WebSocket-Accept", b"", "")
        # the stream: the manager pings every KEEPALIVE_SECONDS (bai.common.streams), so a
        # silence as long as the read timeout is a stalled manager (ReadTimeout from receive)
        conn.sock.settimeout(self.read_timeout)
        return websocket.WebSocket(conn)
