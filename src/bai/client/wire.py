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
* TLS through ``ssl.create_default_context()``, made only when an ``https`` URL is used.

A failure to *connect* raises ``ConnectFailed`` (the caller may try another endpoint); anything
after the request was sent raises ``WireError``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 64 * 1024


class WireError(Exception):
    """The exchange failed after the connection was made (reset, malformed answer ...)."""


class ConnectFailed(WireError):
    """No connection could be made (refused, unreachable, timed out, TLS failure)."""


class HandshakeFailed(WireError):
    """The server answered a WebSocket upgrade with something other than 101."""

    def __init__(self, status: int, reason: str, body: bytes, content_type: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body
        self.content_type = content_type


@dataclass(frozen=True)
class FilePart:
    """One multipart/form-data part whose content is a file on disk."""

    name: str
    filename: str
    path: str
    content_type: str = "application/octet-stream"


_ssl_context: Any = None


def _ssl() -> Any:
    global _ssl_context
    if _ssl_context is None:
        import ssl

        _ssl_context = ssl.create_default_context()
    return _ssl_context


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
        te = self.headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        length = self.headers.get("content-length")
        self._left: int | None = None
        self._eof = head_only or status in (204, 304) or 100 <= status < 200
        if not self._eof and not self._chunked:
            self._left = int(length) if length is not None and length.strip().isdigit() else None
            if self._left == 0:
                self._eof = True
        self._keep_alive = "close" not in self.headers.get("connection", "").lower() and (
            self._chunked or self._left is not None or self._eof)
        self._chunk_left = 0
        self._buf = b""
        if self._eof:
            self.release()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";")[0].strip()

    @property
    def charset(self) -> str:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip('"')
        return "utf-8"

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
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head.append(0x80 | 126)
            head += struct.pack("!H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack("!Q", n)
        mask = os.urandom(4)
        head += mask
        if n:
            masked = (int.from_bytes(payload, "big") ^ int.from_bytes(
                (mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        else:
            masked = b""
        self._conn.writer.write(bytes(head) + masked)
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
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        if self.max_size and n > self.max_size:
            raise WireError(f"WebSocket frame of {n} bytes exceeds {self.max_size}")
        mask = await reader.readexactly(4) if b2 & 0x80 else None
        payload = await reader.readexactly(n) if n else b""
        if mask:
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(
                (mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        return bool(b1 & 0x80), b1 & 0x0F, payload

    async def receive(self) -> WSMessage:
        if self.closed:
            return WSMessage(WSMsgType.CLOSED, None)
        parts: list[bytes] = []
        opcode = 0
        try:
            while True:
                fin, op, payload = await self._read_frame()
                if op == 0x9:  # ping: answer at once
                    await self._send_frame(0xA, payload)
                    continue
                if op == 0xA:
                    continue
                if op == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.close_code = code
                    await self._close(code)
                    return WSMessage(WSMsgType.CLOSE, code, payload[2:].decode("utf-8", "replace"))
                if op in (0x1, 0x2):
                    opcode, parts = op, [payload]
                elif op == 0x0:
                    parts.append(payload)
                if fin and opcode:
                    data = b"".join(parts)
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
                await self._send_frame(0x8, struct.pack("!H", code if code != 1005 else 1000))
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
                await self._send_frame(0x8, struct.pack("!H", code))
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
                asyncio.open_connection(host, port, ssl=_ssl() if scheme == "https" else None,
                                        limit=2**20),
                self.connect_timeout)
        except TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        return _Conn(key, reader, writer)

    @staticmethod
    def _split(url: str) -> tuple[str, str, int, str, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return scheme, host, port, parts.netloc, target

    def _head(self, method: str, target: str, netloc: str, headers: dict[str, str],
              length: int | None) -> bytes:
        merged = {"Host": netloc, **self.default_headers, **headers}
        if length is not None:
            merged["Content-Length"] = str(length)
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in merged.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _read_head(self, conn: _Conn) -> tuple[int, str, list[tuple[str, str]]]:
        reader = conn.reader
        while True:
            status_line = await reader.readline()
            if not status_line:
                raise WireError("the server closed the connection without an answer")
            version, _, rest = status_line.decode("latin-1").strip().partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/") or not code.isdigit():
                raise WireError(f"not an HTTP answer: {status_line[:80]!r}")
            headers: list[tuple[str, str]] = []
            while True:
                raw = await reader.readline()
                if raw in (b"\r\n", b"\n"):
                    break
                if not raw:
                    raise WireError("the connection closed inside the answer's headers")
                name, _, value = raw.decode("latin-1").partition(":")
                headers.append((name.strip(), value.strip()))
            if int(code) != 100:  # skip interim 100 Continue answers
                return int(code), reason, headers

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
                      parts: Sequence[FilePart] | None = None) -> Response:
        """Send one request and read the answer's head; read the body from the Response."""
        scheme, host, port, netloc, target = self._split(url)
        conn = await self._connect(scheme, host, port)
        hdrs = dict(headers or {})

        async def send() -> None:
            if parts is not None:
                boundary = os.urandom(16).hex()
                heads, length = _multipart_heads(parts, boundary)
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
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = {**(headers or {}), "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
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
        accept = {k.lower(): v for k, v in raw_headers}.get("sec-websocket-accept", "")
        expected = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if accept != expected:
            conn.close()
            raise HandshakeFailed(status, "invalid Sec-WebSocket-Accept", b"", "")
        return WebSocket(conn, max_size)


def _multipart_heads(parts: Sequence[FilePart], boundary: str) -> tuple[list[bytes], int]:
    """Each part's head (boundary line and headers) and the whole body's length.

    The file name is percent-encoded as aiohttp's ``FormData(quote_fields=True)`` does, which
    the manager's upload handler undoes.
    """
    heads = []
    total = 0
    for p in parts:
        head = (f"--{boundary}\r\n"
                f"Content-Type: {p.content_type}\r\n"
                f'Content-Disposition: form-data; name="{p.name}"; '
                f'filename="{quote(p.filename, "")}"\r\n\r\n').encode("latin-1")
        heads.append(head)
        total += len(head) + os.path.getsize(p.path) + 2
    total += len(f"--{boundary}--\r\n")
    return heads, total
