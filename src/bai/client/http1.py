"""HTTP/1.1 framing of the express path's blocking client (``bai.client.blocking``): bytes
in, bytes out, the wire's errors, and the URL helpers both transports share (the WebSocket's
framing is ``bai.client.websocket``).

Written here rather than taken from a library because of what ``backend.ai run`` may spend:
stdlib only and cheap to import (no asyncio, no urllib.parse); httpx alone costs more CPU to
import than the whole express run (docs/operations.md, "The client's transport"). The click
path uses httpx and websockets (``bai.client.connection``).
"""

from __future__ import annotations

#: the environment variables that may name a proxy (``bai.client.network.proxy_url``)
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                   "ALL_PROXY")


class WireError(Exception):
    """The exchange failed after the connection was made (reset, malformed answer ...)."""


class ReadTimeout(WireError):
    """The server did not answer within the read timeout (``seconds``)."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__(f"no answer within {seconds or 0:g} s")
        self.seconds = seconds or 0.0


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


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-~")


def quote_plain(text: str, safe: str = "") -> str:
    """``urllib.parse.quote``; names made of unreserved characters skip importing it."""
    if all(c in _PLAIN for c in text):
        return text
    from urllib.parse import quote

    return quote(text, safe=safe)


#: ``url_parts``' answers by URL (a client asks again and again for the same few)
_parts: dict[str, tuple[str, str, str, str, str | None, int | None]] = {}


def url_parts(url: str) -> tuple[str, str, str, str, str | None, int | None]:
    """(scheme, netloc, path, query, host, port) as ``urllib.parse.urlsplit`` gives them.

    Plain ``scheme://host[:port]/path?query`` URLs are split here: ``urllib.parse`` costs
    ~9 ms to import (it builds a dozen named tuples and loads ``ipaddress``), a tenth of what
    ``backend.ai run`` may spend. Anything else (user info, IPv6, fragments) goes to it.
    """
    parts = _parts.get(url)
    if parts is None:
        if len(_parts) >= 256:
            _parts.clear()
        parts = _parts[url] = _url_parts(url)
    return parts


def _url_parts(url: str) -> tuple[str, str, str, str, str | None, int | None]:
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    host, colon, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if (not sep or not scheme.isalpha() or any(c in rest for c in "@[]#\\")
            or "?" in netloc or (colon and not port.isdigit()) or not host):
        from urllib.parse import urlsplit

        p = urlsplit(url)
        return p.scheme.lower(), p.netloc, p.path, p.query, p.hostname, p.port
    path, _, query = (slash + tail).partition("?")
    return scheme.lower(), netloc, path, query, host.lower(), int(port) if colon else None


def split_url(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, netloc, target) of an ``http``/``https`` URL."""
    scheme, netloc, path, query, host, port = url_parts(url)
    port = port or (443 if scheme == "https" else 80)
    target = path or "/"
    if query:
        target += "?" + query
    return scheme, host or "127.0.0.1", port, netloc, target


def request_head(method: str, target: str, netloc: str, headers: dict[str, str],
                 length: int | None) -> bytes:
    """The request line and header block (``Host`` first, then ``headers``)."""
    merged = {"Host": netloc, **headers}
    if length is not None:
        merged["Content-Length"] = str(length)
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_status_line(raw: bytes | str) -> tuple[int, str]:
    """(status, reason) of ``HTTP/1.1 200 OK`` (bytes, or str decoded as latin-1); WireError
    for anything else."""
    if not raw:
        raise WireError("the server closed the connection without an answer")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    version, _, rest = text.strip().partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise WireError(f"not an HTTP answer: {raw[:80]!r}")
    return int(code), reason


def parse_header_line(raw: bytes) -> tuple[str, str] | None:
    """One ``Name: value`` line; None at the blank line that ends the block."""
    if raw in (b"\r\n", b"\n"):
        return None
    if not raw:
        raise WireError("the connection closed inside the answer's headers")
    name, _, value = raw.decode("latin-1").partition(":")
    return name.strip(), value.strip()


class BodyFraming:
    """How an answer's body is delimited: ``chunked``, ``length`` (bytes left), or until close."""

    def __init__(self, status: int, headers: dict[str, str], head_only: bool) -> None:
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.left: int | None = None
        self.eof = head_only or status in (204, 304) or 100 <= status < 200
        if not self.eof and not self.chunked:
            self.left = int(length) if length is not None and length.strip().isdigit() else None
            if self.left == 0:
                self.eof = True
        self.keep_alive = "close" not in headers.get("connection", "").lower() and (
            self.chunked or self.left is not None or self.eof)


def content_type_of(headers: dict[str, str]) -> str:
    return headers.get("content-type", "application/octet-stream").split(";")[0].strip()


def charset_of(headers: dict[str, str]) -> str:
    for part in headers.get("content-type", "").split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            return v.strip('"')
    return "utf-8"
