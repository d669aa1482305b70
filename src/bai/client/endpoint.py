"""What both transports share: request targets, signed headers, endpoint order, answers.

``bai.client.connection`` (asyncio) and ``bai.client.cli.express`` (blocking) sign and decode
through this module, so they send byte-identical requests. Cheap to import: errors are imported
only when one is raised.
"""

from __future__ import annotations

from bai.client import jsonwire
from bai.client.http1 import quote_plain, split_url, url_parts
from bai.common.signing import API_VERSION, make_headers, now_iso

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

USER_AGENT = "bai-client/0.1 (Backend.AI Client for Python 23.09.10 compatible)"

Params = list[tuple[str, str]] | dict[str, object] | None

#: Seconds to wait for an answer to a request (not for the stream of an execution or of
#: events, nor for a create that waits until the session starts); ``BAI_READ_TIMEOUT`` sets it,
#: 0 means no limit. Longer than the manager's longest own wait (a destroy: 15 s).
DEFAULT_READ_TIMEOUT = 60.0


def read_timeout() -> float | None:
    import os

    text = os.environ.get("BAI_READ_TIMEOUT", "").strip()
    try:
        value = float(text) if text else DEFAULT_READ_TIMEOUT
    except ValueError:
        from bai.client.errors import ConfigError

        raise ConfigError(f"BAI_READ_TIMEOUT must be a number of seconds, got {text!r}") from None
    return value if value > 0 else None


def create_timeout(body: dict, base: float | None | Any = ...) -> float | None:
    """The read timeout of ``POST /session``: it answers once the session started, after at
    most ``maxWaitSeconds`` (unbounded when 0), or at once with ``enqueueOnly``. ``base``: the
    read timeout (default ``read_timeout()``)."""
    if base is ...:
        base = read_timeout()
    if base is None or body.get("enqueueOnly"):
        return base
    wait = float(body.get("maxWaitSeconds") or 0)
    return base + wait if wait > 0 else None


def encode_query(params: Params) -> str:
    """``a=1&scope=*``: values percent-encoded, ``*`` kept literal as the official client does."""
    if not params:
        return ""
    items = params.items() if isinstance(params, dict) else params
    parts = [
        f"{quote_plain(str(k))}={quote_plain(str(v), safe='*')}" for k, v in items if v is not None
    ]
    return "&".join(parts)


def session_path(name_or_id: str, suffix: str = "") -> str:
    """``/session/<quoted name>`` + suffix."""
    return f"/session/{quote_plain(str(name_or_id))}{suffix}"


class Endpoints:
    """The configured managers, the one that answered last, and how to sign for each."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.active = 0  # index of the endpoint that answered last

    @property
    def current(self) -> str:
        return self.config.endpoints[self.active]

    def order(self) -> list[int]:
        n = len(self.config.endpoints)
        return [(self.active + i) % n for i in range(n)]

    def local_sockets(self) -> dict[tuple[str, str, int], str]:
        """``BlockingHTTP``'s ``local``: the configuration's ``api_socket`` for the first
        endpoint, a plain ``http`` one (the socket speaks what the port speaks)."""
        cfg = self.config
        if not cfg.api_socket or not cfg.endpoints[0].startswith("http://"):
            return {}
        scheme, host, port, _, _ = split_url(cfg.endpoints[0])
        return {(scheme, host, port): cfg.api_socket}

    def target(self, idx: int, path: str, params: Params) -> tuple[str, str]:
        """(full URL, signed path+query) for ``path`` on endpoint ``idx``."""
        scheme, netloc, prefix, *_ = url_parts(self.config.endpoints[idx])
        path_qs = prefix.rstrip("/") + path
        qs = encode_query(params)
        if qs:
            path_qs += "?" + qs
        return f"{scheme}://{netloc}{path_qs}", path_qs

    def signed(self, idx: int, method: str, path_qs: str, sign_type: str,
               body: bytes | None = None, host: str | None = None) -> dict[str, str]:
        """Signed headers; with ``body`` (b"" for none) the signature covers its hash too.
        ``host``: the ``Host`` header the request will carry (default: the endpoint's netloc)."""
        cfg = self.config
        headers = {"X-BackendAI-Domain": cfg.domain, "X-BackendAI-Version": API_VERSION}
        if cfg.access_key:
            headers.update(make_headers(cfg.access_key, cfg.secret_key, method, path_qs,
                                        host or url_parts(cfg.endpoints[idx])[1], sign_type,
                                        body=body))
        else:  # anonymous mode still carries the Date and the version
            headers["Date"] = now_iso()
        return headers

    def prepare(self, idx: int, method: str, path: str, params: Params, json_body: Any,
                multipart: bool = False) -> tuple[str, dict[str, str], bytes | None]:
        """(URL, headers, body) of a signed request; ``multipart`` bodies are the caller's."""
        url, path_qs = self.target(idx, path, params)
        if multipart:
            sign_type, data, ctype = "multipart/form-data", None, None
        elif json_body is not None:
            sign_type, ctype = "application/json", "application/json"
            data = jsonwire.dumps(json_body).encode("utf-8")
        else:
            sign_type, data, ctype = "text/plain", None, "text/plain"
        headers = self.signed(idx, method, path_qs, sign_type,
                              body=None if multipart else data or b"")
        if ctype is not None:
            headers["Content-Type"] = ctype
        return url, headers, data

    def unreachable(self, detail: str) -> Exception:
        from bai.client.errors import ManagerUnreachable

        return ManagerUnreachable(self.config.endpoints, detail)

    def timed_out(self, idx: int, seconds: float) -> Exception:
        from bai.client.errors import ManagerTimeout

        where = self.config.endpoints[idx]
        return ManagerTimeout(f"the manager at {where} did not answer within {seconds:g} s"
                              " (BAI_READ_TIMEOUT sets the limit; 0 = none)")

    def lost(self, idx: int, e: Exception) -> Exception:
        from bai.client.errors import ConnectionLost

        where = self.config.endpoints[idx]
        return ConnectionLost(f"lost the connection to the manager at {where}: {e}".strip())


def decode_answer(status: int, reason: str, content_type: str, text: str) -> Any:
    """The decoded JSON body of an answer (text when it is not JSON); errors raised typed."""
    body: Any = None
    if text:
        try:
            body = jsonwire.loads(text)
        except ValueError:
            body = None
    if status >= 300:
        raise problem_error(status, reason or "", body, text)
    if body is None and text and content_type != "application/json":
        return text
    return body


def problem_error(status: int, reason: str, body: Any, text: str = "") -> Exception:
    """A typed error for an error answer, whatever its body looks like."""
    from bai.common.errors import error_from_problem

    if not isinstance(body, dict):
        snippet = " ".join(text.split())[:300] if text else ""
        body = {"title": snippet or f"HTTP {status} {reason}".strip()}
    elif "title" not in body:
        body = {**body, "title": str(body.get("msg") or body.get("error") or f"HTTP {status}")}
    return error_from_problem(status, body)


def handshake_error(e: Any) -> Exception:
    """A refused WebSocket upgrade (``HandshakeFailed``): the server's problem JSON if sent."""
    body: Any = None
    if e.content_type.split(";")[0].strip().endswith("json"):  # "...+json; charset=utf-8"
        try:
            body = jsonwire.loads(e.body.decode("utf-8", "replace"))
        except ValueError:
            body = None
    return problem_error(e.status, e.reason, body, f"{e.status} {e.reason}")
