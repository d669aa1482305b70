"""Keep-alive HTTP/1.1 on asyncio streams: the plain requests of ``bai.client.connection``
(a JSON or empty body out, the whole answer in) to a manager reached without a proxy.

httpx carries the rest (uploads, streamed answers, proxies). This is here because of what one
plain request costs in httpx/httpcore: ~2 ms of CPU on this 2-core machine with 16 requests in
flight, most of it in the pool's bookkeeping (each request checks every pooled connection and
retries importing sniffio), as much as the manager's whole work on a ``POST /session``
(``bench/session_create.py`` prints both). The framing is ``bai.client.http1``'s, as on the
express path (``bai.client.blocking``): request head, status line, headers, body by length,
chunks or close.

A connection carries one request at a time and goes back to the pool once its answer was read
whole; any failure or cancellation closes it. At most ``MAX_CONNECTIONS`` are open at once (as
httpx's pool): further requests wait for one. A request is sent once: a connection that breaks
after the request was written is ``WireError``, never a second try (the caller decides).
"""

from __future__ import annotations

import asyncio

from bai.client import http1
from bai.client.blocking import Answer
from bai.client.http1 import ConnectFailed, WireError

#: the longest answer head read (status line and headers)
HEAD_LIMIT = 1 << 16
#: connections open at once, all hosts together (httpx's default): more requests wait
MAX_CONNECTIONS = 100


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """False once the server closed it (an idle keep-alive connection it timed out)."""
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


class AsyncHTTP:
    """Keep-alive connections per (scheme, host, port); ``await close()`` ends them."""

    def __init__(self, *, headers: dict[str, str] | None = None,
                 connect_timeout: float = 10.0, max_connections: int = MAX_CONNECTIONS) -> None:
        self.default_headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self._busy = asyncio.Semaphore(max_connections)  # a request holds one while it runs
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                await conn.writer.wait_closed()
            except OSError:  # (a TLS failure too)
                pass

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        idle = self._idle.get((scheme, host, port))
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        tls = None
        if scheme == "https":  # the trust the environment says (BAI_CA_BUNDLE ...), as httpx's
            from bai.client import network

            tls = network.ssl_context()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the connection when
        # the caller is cancelled as it completes, losing the cancel (a ``start``'s status
        # watcher, stopped as its poll connected, then polled on and ``start`` never ended)
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None,
                    limit=HEAD_LIMIT)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{port} timed out") from None
        except OSError as e:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        return _Conn(reader, writer)

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> Answer:
        """Send one request and read its whole answer. ``ConnectFailed`` when no connection
        could be made (nothing was sent), ``WireError`` when it broke after that. No time
        limit of its own beyond the connect timeout: the caller bounds the wait."""
        async with self._busy:
            return await self._request(method, url, headers, body)

    async def _request(self, method: str, url: str, headers: dict[str, str] | None,
                       body: bytes | None) -> Answer:
        scheme, host, port, netloc, target = http1.split_url(url)
        conn = await self._connect(scheme, host, port)
        length = len(body) if body is not None else (
            0 if method in ("POST", "PUT", "PATCH") else None)
        head = http1.request_head(method, target, netloc,
                                  {**self.default_headers, **(headers or {})}, length)
        try:
            conn.writer.write(head + body if body else head)
            status, reason, hdrs = await self._head(conn.reader)
            framing = http1.BodyFraming(status, hdrs, method == "HEAD")
            data = await self._body(conn.reader, framing)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            conn.close()
            raise WireError(_failure(e)) from None
        except BaseException:  # a WireError, a cancellation (the caller's time limit)
            conn.close()
            raise
        if framing.keep_alive:
            self._idle.setdefault((scheme, host, port), []).append(conn)
        else:
            conn.close()
        return Answer(status, reason, hdrs, data)

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise WireError("the server closed the connection without an answer"
                                    ) from None
                raise WireError("the connection closed inside the answer's headers") from None
            lines = raw.decode("latin-1").split("\r\n")
            status, reason = http1.parse_status_line(lines[0])
            if status == 100:
                continue
            headers: dict[str, str] = {}
            for line in lines[1:-2]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return status, reason, headers

    @staticmethod
    async def _body(reader: asyncio.StreamReader, framing: http1.BodyFraming) -> bytes:
        if framing.eof:
            return b""
        if framing.left is not None:
            return await reader.readexactly(framing.left)
        if not framing.chunked:
            return await reader.read()
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return b"".join(parts)
            parts.append((await reader.readexactly(size + 2))[:-2])


def _failure(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "the connection closed before the end of the answer"
    if isinstance(e, asyncio.LimitOverrunError):
        return "the answer's head is too long"
    if isinstance(e, ValueError):
        return f"malformed answer: {e}"
    return f"the request failed: {getattr(e, 'strerror', None) or e}"
