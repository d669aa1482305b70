"""The blocking client's WebSocket (RFC 6455): the upgrade's key and accept, the frames, and
``WebSocket``, the stream ``bai.client.blocking.BlockingHTTP.websocket`` opens.

Only ``backend.ai run`` streams; ``start``, ``ps`` and ``vfolder`` send requests on
``bai.client.blocking`` without loading this module (its byte code and classes cost ~0.3 M
instructions, 1 % of such a call).
"""

from __future__ import annotations

import os

from bai.client.http1 import ReadTimeout, WireError

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bai.client.blocking import _Conn

# The handshake's base64 and SHA-1 come from ``binascii`` and the builtin ``_sha1``:
# ``base64`` imports ``re`` (with enum, functools: ~4 ms) and ``hashlib`` OpenSSL (~2.5 ms),
# a tenth of what ``backend.ai run --rm -c`` spends on its own.

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- WebSocket --------------------------------------------------------------------------------

def ws_handshake(headers: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """(key, headers) of a client upgrade request."""
    from binascii import b2a_base64

    key = b2a_base64(os.urandom(16), newline=False).decode()  # base64.b64encode
    return key, {**(headers or {}), "Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}


def ws_accept_ok(key: str, raw_headers: list[tuple[str, str]]) -> bool:
    from binascii import b2a_base64

    try:
        from _sha1 import sha1
    except ImportError:  # pragma: no cover - a build without the builtin digests
        from hashlib import sha1
    accept = {k.lower(): v for k, v in raw_headers}.get("sec-websocket-accept", "")
    digest = sha1(key.encode() + WS_GUID).digest()
    return accept == b2a_base64(digest, newline=False).decode()


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    return (int.from_bytes(payload, "big") ^ int.from_bytes(
        (mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    head = bytearray([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    mask = os.urandom(4)
    return bytes(head) + mask + unmask(payload, mask)


def ws_close_payload(code: int) -> bytes:
    return (code if code != 1005 else 1000).to_bytes(2, "big")


def ws_length(b2: int) -> int:
    """How many extended-length bytes follow the second header byte (0, 2 or 8)."""
    n = b2 & 0x7F
    return 2 if n == 126 else 8 if n == 127 else 0


def ws_payload_length(b2: int, ext: bytes) -> int:
    """The payload length from the second header byte and its extended-length bytes."""
    if len(ext) in (2, 8):
        return int.from_bytes(ext, "big")
    return b2 & 0x7F


class Reassembly:
    """A data message put back together from its fragments (opcodes 1/2, then 0s)."""

    def __init__(self) -> None:
        self.opcode = 0
        self.parts: list[bytes] = []

    def add(self, fin: bool, op: int, payload: bytes) -> tuple[int, bytes] | None:
        """(opcode, data) once the message is whole, else None."""
        if op in (0x1, 0x2):
            self.opcode, self.parts = op, [payload]
        elif op == 0x0:
            self.parts.append(payload)
        if not (fin and self.opcode):
            return None
        done = (self.opcode, b"".join(self.parts))
        self.opcode, self.parts = 0, []
        return done


def ws_close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


class WebSocket:
    """A blocking client WebSocket: ``receive()`` answers ("text"|"binary"|"close"|"error",
    data)."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.closed = False
        self._close_sent = False

    def _send(self, opcode: int, payload: bytes) -> None:
        self._conn.sock.sendall(ws_frame(opcode, payload))

    def send_str(self, text: str) -> None:
        if self.closed:
            raise WireError("the WebSocket is closed")
        try:
            self._send(0x1, text.encode("utf-8"))
        except OSError as e:
            raise WireError(f"sending failed: {e}") from None

    def _read_exactly(self, n: int) -> bytes:
        data = self._conn.rfile.read(n) if n else b""
        if len(data) != n:
            raise WireError("the connection closed inside a WebSocket frame")
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read_exactly(2)
        ext = ws_length(b2)
        n = ws_payload_length(b2, self._read_exactly(ext))
        mask = self._read_exactly(4) if b2 & 0x80 else None
        payload = self._read_exactly(n)
        if mask:
            payload = unmask(payload, mask)
        return bool(b1 & 0x80), b1 & 0x0F, payload

    def receive(self) -> tuple[str, Any]:
        """The next message; ReadTimeout after the socket's timeout of silence (no message,
        no ping)."""
        if self.closed:
            return "close", None
        message = Reassembly()
        try:
            while True:
                fin, op, payload = self._frame()
                if op == 0x9:  # ping: answer at once
                    self._send(0xA, payload)
                    continue
                if op == 0xA:
                    continue
                if op == 0x8:
                    self._finish(ws_close_code(payload))
                    return "close", None
                whole = message.add(fin, op, payload)
                if whole is not None:
                    opcode, data = whole
                    return ("text", data.decode("utf-8")) if opcode == 0x1 else ("binary", data)
        except TimeoutError:
            seconds = self._conn.sock.gettimeout()
            self.closed = True
            self._conn.close()
            raise ReadTimeout(seconds) from None
        except (OSError, UnicodeDecodeError, WireError, ValueError) as e:
            self.closed = True
            self._conn.close()
            return "error", e

    def _finish(self, code: int) -> None:
        if not self._close_sent:
            self._close_sent = True
            try:
                self._send(0x8, ws_close_payload(code))
            except OSError:
                pass
        self.closed = True
        self._conn.close()

    def close(self, code: int = 1000) -> None:
        """Send a close frame and wait briefly for the server's, so it sees a clean close."""
        if self.closed:
            return
        if not self._close_sent:
            self._close_sent = True
            try:
                self._send(0x8, ws_close_payload(code))
                self._conn.sock.settimeout(2.0)
                while self._frame()[1] != 0x8:
                    pass
            except (OSError, WireError, ValueError):
                pass
        self.closed = True
        self._conn.close()

