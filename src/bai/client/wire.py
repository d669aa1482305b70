"""A small HTTP/1.1 client on asyncio streams: requests, WebSocket and streamed bodies (stdlib only).

Why not aiohttp here: importing aiohttp costs about 200 ms of CPU (some 180 modules and two
SSL contexts loaded with the system's CA bundle), more than the whole budget of
``backend.ai run --rm -c 'print(1)' python``. The CLI speaks to one manager with a handful of
requests; this module does exactly that and no more:

* keep-alive connections, reused per (scheme, host, port) once an answer was read to its end;
* bodies by ``Content-Length``, ``Transfer-Encoding: chunked`` or until the connection closes,
  read whole (``Response.read``) or line by line (``Response.readline``, for SSE);
* request bodies from bytes or from files, streamed (``FilePart`` multipart uploads);
* WebSocket (RFC 6455) client connections: masked frames, ping/pong, close handshake,
  fragmented messages;
* TLS and proxies as ``bai.client.network`` sets them (CA bundle, skip-verify, ``HTTPS_PROXY``).

A failure to *connect* raises ``ConnectFailed`` (the caller may try another endpoint); anything
after the request was sent raises ``WireError``.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bai.client import http1
from bai.client.http1 import (  # noqa: F401 - re-exported: callers catch them from here
    CHUNK,
    ConnectFailed,
    HandshakeFailed,
    WireError,
)

#: reads of a file sent as a body (fewer, larger writes move a GiB faster)
FILE_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FilePart:
    """One multipart/form-data part whose content is a file on disk."""

    name: str
    filename: str
    path: str
    content_type: str = "application/octet-stream"


async def open_stream(scheme: str, host: str, port: int, limit: int
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``host:port``, through the proxy the environment names and with TLS
    for ``https`` (``bai.client.network``)."""
    from bai.client import network

    ctx = network.ssl_context() if scheme == "https" else None
    proxy = network.proxy_for(scheme, host)
    if proxy is None:
        return await asyncio.open_connection(host, port, ssl=ctx, limit=limit)
    reader, writer = await asyncio.open_connection(proxy[0], proxy[1], limit=limit)
    try:
        writer.write(network.connect_request(host, port, proxy[2]))
        await writer.drain()
        network.connect_status(await reader.readuntil(b"\r\n\r\n"), proxy, host, port)
        if ctx is not None:
            await writer.start_tls(ctx, server_hostname=host)
    except BaseException:
        writer.close()
        raise
    return reader, writer


class _Conn:
    def __init__(self, key: tuple[str, str, int], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class Response:
    """An answer's status line and headers; the body is read on demand."""

    def __init__(self, client: HTTPClient, conn: _Conn, status: int, reason: str,
                 headers: list[tuple[str, str]], head_only: bool) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self.status = status
        self.reason = reason
        self.raw_headers = headers
        self.headers = {k.lower(): v for k, v in headers}
        framing = http1.BodyFraming(status, self.headers, head_only)
        self._chunked = framing.chunked
        self._left = framing.left
        self._eof = framing.eof
        self._keep_alive = framing.keep_alive
        self._chunk_left = 0
        self._buf = b""
        if self._eof:
            self.release()

    @property
    def content_type(self) -> str:
        return http1.content_type_of(self.headers)

    @property
    def charset(self) -> str:
        return http1.charset_of(self.headers)

    async def _chunk(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self._eof or self._conn is None:
            return b""
        reader = self._conn.reader
        try:
            if self._chunked:
                if self._chunk_left == 0:
                    size_line = await reader.readline()
                    if not size_line:
                        raise WireError("the connection closed inside a chunked body")
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while await reader.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailer fields
                        self._finish()
                        return b""
                    self._chunk_left = size
                data = await reader.read(min(self._chunk_left, CHUNK))
                if not data:
                    raise WireError("the connection closed inside a chunked body")
                self._chunk_left -= len(data)
                if self._chunk_left == 0:
                    await reader.readexactly(2)  # CRLF after each chunk
                return data
            if self._left is None:  # until the server closes
                data = await reader.read(CHUNK)
                if not data:
                    self._finish()
                return data
            data = await reader.read(min(self._left, CHUNK))
            if not data:
                raise WireError("the connection closed before the end of the body")
            self._left -= len(data)
            if self._left == 0:
                self._finish()
            return data
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self._abort()
            raise WireError(f"reading the answer failed: {e}") from None

    def _finish(self) -> None:
        self._eof = True
        self.release()

    def _abort(self) -> None:
        self._eof = True
        self._keep_alive = False
        self.release()

    async def read(self) -> bytes:
        parts = [self._buf]
        self._buf = b""
        while chunk := await self._chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self):  # -> AsyncIterator[bytes]
        """The body piece by piece as it arrives (constant memory)."""
        if self._buf:
            buf, self._buf = self._buf, b""
            yield buf
        while chunk := await self._chunk():
            yield chunk

    async def text(self, errors: str = "strict") -> str:
        return (await self.read()).decode(self.charset, errors)

    async def readline(self) -> bytes:
        """One line of the body including its ``\\n`` (the last may lack it); b"" at the end."""
        while b"\n" not in self._buf:
            chunk = await self._chunk()
            if not chunk:
                line, self._buf = self._buf, b""
                return line
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def release(self) -> None:
        """Give the connection back (if the body was read to its end) or close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._eof and self._keep_alive and not self._buf:
            self._client._put(conn)
        else:
            conn.close()


class WSMsgType(enum.IntEnum):
    TEXT = 1
    BINARY = 2
    PING = 9
    PONG = 10
    CLOSE = 8
    CLOSED = 257
    ERROR = 258


@dataclass(frozen=True)
class WSMessage:
    type: WSMsgType
    data: Any
    extra: Any = None


class WebSocket:
    """A client WebSocket; ``async for msg in ws`` yields TEXT/BINARY messages until it closes."""

    def __init__(self, conn: _Conn, max_size: int = 0) -> None:
        self._conn = conn
        self.max_size = max_size
        self.closed = False
        self.close_code: int | None = None
        self._close_sent = False

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        self._conn.writer.write(http1.ws_frame(opcode, payload))
        await self._conn.writer.drain()

    async def send_str(self, text: str) -> None:
        if self.closed:
            raise WireError("the WebSocket is closed")
        await self._send_frame(0x1, text.encode("utf-8"))

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise WireError("the WebSocket is closed")
        await self._send_frame(0x2, data)

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        reader = self._conn.reader
        b1, b2 = await reader.readexactly(2)
        ext = http1.ws_length(b2)
        n = http1.ws_payload_length(b2, await reader.readexactly(ext) if ext else b"")
        if self.max_size and n > self.max_size:
            raise WireError(f"WebSocket frame of {n} bytes exceeds {self.max_size}")
        mask = await reader.readexactly(4) if b2 & 0x80 else None
        payload = await reader.readexactly(n) if n else b""
        if mask:
            payload = http1.unmask(payload, mask)
        return bool(b1 & 0x80), b1 & 0x0F, payload

    async def receive(self) -> WSMessage:
        if self.closed:
            return WSMessage(WSMsgType.CLOSED, None)
        message = http1.Reassembly()
        try:
            while True:
                fin, op, payload = await self._read_frame()
                if op == 0x9:  # ping: answer at once
                    await self._send_frame(0xA, payload)
                    continue
                if op == 0xA:
                    continue
                if op == 0x8:
                    code = http1.ws_close_code(payload)
                    self.close_code = code
                    await self._close(code)
                    return WSMessage(WSMsgType.CLOSE, code, payload[2:].decode("utf-8", "replace"))
                whole = message.add(fin, op, payload)
                if whole is not None:
                    opcode, data = whole
                    if opcode == 0x1:
                        return WSMessage(WSMsgType.TEXT, data.decode("utf-8"))
                    return WSMessage(WSMsgType.BINARY, data)
        except (asyncio.IncompleteReadError, OSError, UnicodeDecodeError, WireError) as e:
            self.closed = True
            self._conn.close()
            return WSMessage(WSMsgType.ERROR, e)

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> WSMessage:
        msg = await self.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            raise StopAsyncIteration
        return msg

    async def _close(self, code: int) -> None:
        if not self._close_sent:
            self._close_sent = True
            try:
                await self._send_frame(0x8, http1.ws_close_payload(code))
            except OSError:
                pass
        self.closed = True
        self._conn.close()

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        if not self._close_sent:
            self._close_sent = True
            try:
                await self._send_frame(0x8, http1.ws_close_payload(code))
                # wait briefly for the server's close frame so it sees a clean close
                await asyncio.wait_for(self._drain_until_close(), 2.0)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError):
                pass
        self.closed = True
        self._conn.close()

    async def _drain_until_close(self) -> None:
        while True:
            _fin, op, _payload = await self._read_frame()
            if op == 0x8:
                return


class HTTPClient:
    """Keep-alive HTTP/1.1 connections to a few hosts; ``close()`` ends them."""

    def __init__(self, *, headers: dict[str, str] | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.default_headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    def _put(self, conn: _Conn) -> None:
        if self._closed or not conn.usable():
            conn.close()
            return
        self._idle.setdefault(conn.key, []).append(conn)

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        key = (scheme, host, port)
        idle = self._idle.get(key) or []
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                open_stream(scheme, host, port, limit=2**20), self.connect_timeout)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{port} timed out") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        return _Conn(key, reader, writer)

    _split = staticmethod(http1.split_url)

    def _head(self, method: str, target: str, netloc: str, headers: dict[str, str],
              length: int | None) -> bytes:
        return http1.request_head(method, target, netloc, {**self.default_headers, **headers},
                                  length)

    async def _read_head(self, conn: _Conn) -> tuple[int, str, list[tuple[str, str]]]:
        reader = conn.reader
        while True:
            code, reason = http1.parse_status_line(await reader.readline())
            headers: list[tuple[str, str]] = []
            while (pair := http1.parse_header_line(await reader.readline())) is not None:
                headers.append(pair)
            if code != 100:  # skip interim 100 Continue answers
                return code, reason, headers

    async def _exchange(self, conn: _Conn, send) -> tuple[int, str, list[tuple[str, str]]]:
        """Write a request with ``send()`` and read the answer's head; the connection is
        closed if anything fails."""
        try:
            await send()
            await conn.writer.drain()
            return await self._read_head(conn)
        except (OSError, asyncio.IncompleteReadError) as e:
            conn.close()
            raise WireError(f"the request failed: {e}") from None
        except BaseException:
            conn.close()
            raise

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: bytes | None = None,
                      parts: Sequence[FilePart] | None = None,
                      file_range: tuple[str, int, int] | None = None) -> Response:
        """Send one request and read the answer's head; read the body from the Response.
        ``file_range`` = (path, offset, length): the body is that part of a file, sent in
        chunks (memory stays constant whatever its size)."""
        scheme, host, port, netloc, target = self._split(url)
        conn = await self._connect(scheme, host, port)
        hdrs = dict(headers or {})

        async def send() -> None:
            if parts is not None:
                boundary = os.urandom(16).hex()
                heads, length = http1.multipart_heads(parts, boundary)
                hdrs["Content-Type"] = f"multipart/form-data; boundary={boundary}"
                conn.writer.write(self._head(method, target, netloc, hdrs, length))
                for part, head in zip(parts, heads):
                    conn.writer.write(head)
                    with open(part.path, "rb") as f:  # noqa: ASYNC230 - a local file, read in chunks
                        while data := f.read(CHUNK):
                            conn.writer.write(data)
                            await conn.writer.drain()
                    conn.writer.write(b"\r\n")
                conn.writer.write(f"--{boundary}--\r\n".encode())
            elif file_range is not None:
                path, offset, length = file_range
                conn.writer.write(self._head(method, target, netloc, hdrs, length))
                with open(path, "rb") as f:  # noqa: ASYNC230 - a local file, read in chunks
                    f.seek(offset)
                    left = length
                    while left > 0 and (data := f.read(min(FILE_CHUNK, left))):
                        conn.writer.write(data)
                        left -= len(data)
                        await conn.writer.drain()
                if left > 0:
                    raise OSError(f"{path} became shorter while it was sent")
            else:
                length = len(body) if body is not None else (
                    0 if method in ("POST", "PUT", "PATCH") else None)
                conn.writer.write(self._head(method, target, netloc, hdrs, length) + (body or b""))

        status, reason, raw_headers = await self._exchange(conn, send)
        return Response(self, conn, status, reason, raw_headers, method == "HEAD")

    async def websocket(self, url: str, *, headers: dict[str, str] | None = None,
                        max_size: int = 0) -> WebSocket:
        """Open a WebSocket (``http``/``https`` URL); HandshakeFailed on any answer but 101."""
        scheme, host, port, netloc, target = self._split(url)
        conn = await self._connect(scheme, host, port)
        key, hdrs = http1.ws_handshake(headers)

        async def send() -> None:
            conn.writer.write(self._head("GET", target, netloc, hdrs, None))

        status, reason, raw_headers = await self._exchange(conn, send)
        if status != 101:
            resp = Response(self, conn, status, reason, raw_headers, False)
            try:
                body = await resp.read()
            except WireError:
                body = b""
            raise HandshakeFailed(status, reason, body, resp.content_type)
        if not http1.ws_accept_ok(key, raw_headers):
            conn.close()
            raise HandshakeFailed(status, "invalid Sec-WebSocket-Accept", b"", "")
        return WebSocket(conn, max_size)

