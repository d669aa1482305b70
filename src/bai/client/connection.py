"""The transport of the click path: signed HTTP, WebSocket and SSE requests to the manager.

HTTP goes through httpx, WebSockets through websockets (both maintained, pure Python), except
plain requests (``request`` without files) to an endpoint reached without a proxy: those go
over ``bai.client.http1_async``, keep-alive HTTP/1.1 on asyncio streams, an eighth of httpx's
CPU per request (what an SDK submitting sessions in a loop spends). httpx and websockets were
chosen over aiohttp, the server's HTTP library, by measurement: importing aiohttp costs
about twice the CPU of importing both (docs/operations.md, "The client's transport"), and
``backend.ai ps`` spends most of its time importing. The express path of ``backend.ai run``
keeps its own blocking client (``bai.client.blocking``) for the same reason, with the same
timeouts, proxies, TLS and endpoint order.

Requests are signed exactly as the official Backend.AI 23.09 client signs them
(``bai.common.auth``): ``host`` is the configured endpoint's netloc (sent as the ``Host``
header), the signed path is the endpoint's path prefix plus the request path and query *as
sent*, and the signed content type is ``application/json`` for JSON bodies, ``text/plain`` for
body-less requests (which also send that header), ``multipart/form-data`` for uploads and
``application/octet-stream`` for WebSocket and SSE requests (which send no Content-Type).

Several endpoints may be configured: they are tried in order, and an endpoint that refuses the
connection is skipped (only connection failures move on: a request that reached a manager is
never sent twice). Non-2xx answers become typed errors through
``bai.common.errors.error_from_problem``.

Timeouts: ``BAI_READ_TIMEOUT`` (``bai.client.endpoint.read_timeout``) bounds the wait for an
answer; on a stream (events, an execution, a download) it bounds each silence, and the manager
sends keep-alives on them (``bai.common.streams``), so only a stalled manager reaches it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar


def _placeholder(name: str) -> types.ModuleType | None:
    """httpx imports its command-line tool (rich's syntax highlighting, pygments) whenever
    click and rich are installed, as they always are beside this CLI: ~50 ms of CPU on every
    command for code that never runs. An empty module in its place makes that import fail as
    it does without them (httpx catches the ImportError); ``_drop`` removes it again."""
    if "httpx" in sys.modules or name in sys.modules:
        return None
    sys.modules[name] = module = types.ModuleType(name)
    return module


def _drop(name: str, module: types.ModuleType | None) -> None:
    if module is not None and sys.modules.get(name) is module:
        del sys.modules[name]


_cli = _placeholder("httpx._main")
try:
    import httpx
finally:
    _drop("httpx._main", _cli)

if TYPE_CHECKING:  # websockets is imported by the first WebSocket (only executions use one)
    from websockets.asyncio.client import ClientConnection

from bai.client import network
from bai.client.blocking import Answer
from bai.client.config import ClientConfig
from bai.client.endpoint import (
    USER_AGENT,
    Endpoints,
    Params,
    decode_answer,
    encode_query,
    problem_error,
    read_timeout,
    session_path,
)
from bai.client.http1 import ConnectFailed, HandshakeFailed, WireError, quote_plain, split_url
from bai.client.http1_async import AsyncHTTP
from bai.common.streams import KEEPALIVE_SECONDS

T = TypeVar("T")


@dataclass(frozen=True)
class FilePart:
    """One multipart/form-data part whose content is a file on disk."""

    name: str
    filename: str
    path: str
    content_type: str = "application/octet-stream"


@dataclass
class SSEMessage:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.data) if self.data else {}
        except ValueError:
            return self.data


class Connection:
    """One client session against the manager; use as ``async with Connection(cfg) as conn``."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self._http: httpx.AsyncClient | None = None
        self._plain: AsyncHTTP | None = None
        #: (scheme, host, port) of the endpoints reached without a proxy
        self._direct: set[tuple[str, str, int]] = set()
        self.endpoints = Endpoints(config)
        self.read_timeout = read_timeout()

    async def __aenter__(self) -> Connection:
        self._http = self._client()
        self._plain = AsyncHTTP(headers={"User-Agent": USER_AGENT}, connect_timeout=10.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> httpx.AsyncClient:
        """One httpx client for every endpoint: the proxy each endpoint's host gets
        (``bai.client.network.proxy_url``, so NO_PROXY means what it means on the express path)
        is a mounted transport; no environment is read by httpx itself."""
        https = any(e.lower().startswith("https:") for e in self.config.endpoints)
        # verify=False for plain-http endpoints: no TLS happens, and httpx would otherwise load
        # the CA bundle (tens of ms) for a context that is never used
        verify: Any = network.ssl_context() if https else False
        mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
        for ep in self.config.endpoints:
            scheme, host, port, _netloc, _ = split_url(ep)
            try:
                proxy = network.proxy_url(scheme, host)
            except ConnectFailed as e:
                raise self.endpoints.unreachable(str(e)) from None
            if proxy is not None:
                mounts[f"{scheme}://{host}:{port}"] = httpx.AsyncHTTPTransport(
                    verify=verify, proxy=proxy, retries=0)
            else:
                self._direct.add((scheme, host, port))
        return httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT}, verify=verify, trust_env=False, mounts=mounts,
            timeout=httpx.Timeout(None, connect=10.0), follow_redirects=False)

    async def close(self) -> None:
        if self._plain is not None:
            await self._plain.close()
            self._plain = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def endpoint(self) -> str:
        return self.endpoints.current

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("Connection used outside 'async with'")
        return self._http

    # -- the endpoints in turn ------------------------------------------------------------------

    async def _first(self, attempt: Callable[[int], Awaitable[T]], limit: float | None) -> T:
        """``attempt(idx)`` on each endpoint in turn, starting at the one that answered last,
        until one takes the connection (it becomes the active one); ``limit``: seconds for
        the attempt, past which ManagerTimeout. Any failure after the connection was made
        ends here as a typed error: the request is never sent twice."""
        last_error = ""
        eps = self.endpoints
        for idx in eps.order():
            try:
                async with asyncio.timeout(limit):
                    result = await attempt(idx)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError,
                    ConnectFailed) as e:
                last_error = _reason(e)
                continue
            except (TimeoutError, httpx.TimeoutException):
                raise eps.timed_out(idx, limit or 0) from None
            except HandshakeFailed as e:
                from bai.client.endpoint import handshake_error

                raise handshake_error(e) from None
            except (httpx.TransportError, httpx.StreamError, WireError) as e:
                raise eps.lost(idx, _reason(e)) from None
            except Exception as e:
                if type(e).__module__.startswith("websockets."):  # a handshake that went wrong
                    raise eps.lost(idx, _reason(e)) from None
                raise
            eps.active = idx
            return result
        raise eps.unreachable(last_error)

    def _stream_failed(self, e: Exception) -> Exception:
        """The typed error of a stream that broke or went silent after its head."""
        eps = self.endpoints
        if isinstance(e, httpx.TimeoutException):
            return eps.timed_out(eps.active, self.read_timeout or 0)
        return eps.lost(eps.active, _reason(e))

    # -- plain requests ---------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json_body: Any = None,
        form: list[FilePart] | None = None,
        signed: bool = True,
        timeout: float | None | Any = ...,
    ) -> Any:
        """Send one request; answer the decoded JSON body (None for an empty answer).

        ``form``: files sent as ``multipart/form-data`` parts (no read timeout: the upload
        takes what it takes). ``timeout``: seconds to wait for the whole answer (default
        ``read_timeout``; None: no limit); past it ManagerTimeout.
        """
        method = method.upper()
        limit = None if form is not None else self.read_timeout if timeout is ... else timeout

        async def attempt(idx: int) -> Any:
            url, headers, data = self.endpoints.prepare(idx, method, path, params, json_body,
                                                        multipart=form is not None)
            if not signed:
                headers = {}
            if form is None and self._plain is not None:
                if split_url(url)[:3] in self._direct:  # (Host: the netloc, as httpx sends)
                    return answer_of(await self._plain.request(method, url, headers=headers,
                                                               body=data))
            headers["Host"] = _netloc(url)
            with ExitStack() as files:
                parts = None if form is None else [
                    (p.name, (quote_plain(p.filename), files.enter_context(open(p.path, "rb")),
                              p.content_type)) for p in form]
                resp = await self.http.request(method, url, headers=headers, content=data,
                                               files=parts)
            return answer_of(resp)

        return await self._first(attempt, limit)

    # -- streams ------------------------------------------------------------------------------

    async def _open_stream(self, method: str, build: Callable[[int], tuple[str, dict, Any]]
                           ) -> httpx.Response:
        """The head of a streamed answer from the first endpoint that takes it (within the
        read timeout); its body is read with each silence bounded by the read timeout."""
        limit = self.read_timeout

        async def attempt(idx: int) -> httpx.Response:
            url, headers, data = build(idx)
            headers["Host"] = _netloc(url)
            req = self.http.build_request(method, url, headers=headers, content=data,
                                          timeout=httpx.Timeout(limit, connect=10.0))
            resp = await self.http.send(req, stream=True)
            if resp.status_code >= 300:
                try:
                    await resp.aread()
                finally:
                    await resp.aclose()
                answer_of(resp)  # raises the typed error
            return resp

        return await self._first(attempt, limit)

    @asynccontextmanager
    async def streamed(self, method: str, path: str, *, params: Params = None,
                       json_body: Any = None) -> AsyncIterator[httpx.Response]:
        """``async with conn.streamed(...) as resp``: a successful answer whose body is read
        with ``resp.aiter_bytes()``; an error answer raises its typed error."""
        method = method.upper()
        resp = await self._open_stream(
            method, lambda i: self.endpoints.prepare(i, method, path, params, json_body))
        try:
            yield resp
        except (httpx.TransportError, httpx.StreamError) as e:
            raise self._stream_failed(e) from None
        finally:
            await resp.aclose()

    @asynccontextmanager
    async def websocket(self, path: str, params: Params = None) -> AsyncIterator[WebSocket]:
        """An open WebSocket to ``path``; the handshake has the read timeout. While it is open
        the client pings (every ``KEEPALIVE_SECONDS`` or a quarter of the read timeout, the
        shorter); a manager that answers no ping within the read timeout ends it with
        ConnectionLost. Server pings are answered by the library."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        eps = self.endpoints
        limit = self.read_timeout

        async def attempt(idx: int) -> ClientConnection:
            url, path_qs = eps.target(idx, path, params)
            scheme, host, _port, netloc, _ = split_url(url)
            # websockets writes Host itself, without a default port: sign what it sends
            sent_host = _ws_host(scheme, host, netloc)
            headers = eps.signed(idx, "GET", path_qs, "application/octet-stream", host=sent_host)
            try:
                return await connect(
                    "ws" + url[4:], additional_headers=headers, user_agent_header=USER_AGENT,
                    ssl=network.ssl_context() if scheme == "https" else None,
                    proxy=network.proxy_url(scheme, host), open_timeout=None,
                    ping_interval=min(KEEPALIVE_SECONDS, limit / 4) if limit else KEEPALIVE_SECONDS,
                    ping_timeout=limit, close_timeout=2.0, max_size=None, compression=None)
            except InvalidStatus as e:
                r = e.response
                raise HandshakeFailed(r.status_code, r.reason_phrase, r.body or b"",
                                      r.headers.get("Content-Type", "")) from None
            except OSError as e:  # refused, unreachable, TLS: another endpoint may take it
                raise ConnectFailed(f"cannot connect to {netloc}: {_reason(e)}") from None

        ws = await self._first(attempt, limit)
        try:
            yield WebSocket(ws, self)
        finally:
            await ws.close()

    async def sse(self, path: str, params: Params = None) -> AsyncIterator[SSEMessage]:
        """Messages of a ``text/event-stream`` answer until the server closes it; a silence
        longer than the read timeout (no event, no keep-alive) is ManagerTimeout."""
        eps = self.endpoints

        def build(idx: int) -> tuple[str, dict[str, str], None]:
            url, path_qs = eps.target(idx, path, params)
            headers = eps.signed(idx, "GET", path_qs, "application/octet-stream")
            headers["Accept"] = "text/event-stream"
            return url, headers, None

        resp = await self._open_stream("GET", build)
        try:
            event, data, msg_id, retry = "message", [], None, None
            lines = resp.aiter_lines()
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    return
                except httpx.TimeoutException as e:
                    raise self._stream_failed(e) from None
                except (httpx.TransportError, httpx.StreamError):
                    return  # the stream broke: it ends here, as a server close would
                if not line:
                    if data or event != "message":
                        yield SSEMessage(event, "\n".join(data), msg_id, retry)
                    event, data = "message", []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    msg_id = value
                elif name == "retry":
                    try:
                        retry = int(value)
                    except ValueError:
                        pass
        finally:
            await resp.aclose()


class WSMsgType(enum.IntEnum):
    TEXT = 1
    BINARY = 2


@dataclass(frozen=True)
class WSMessage:
    type: WSMsgType
    data: str | bytes


class WebSocket:
    """An open WebSocket stream: ``send_str``/``send_bytes``, and ``async for msg in ws`` over
    its text and binary messages (``WSMessage``) until the server closes it. A stream that
    breaks ends the iteration, as a close would; one whose manager stopped answering pings
    raises ConnectionLost."""

    def __init__(self, ws: ClientConnection, conn: Connection) -> None:
        self._ws = ws
        self._conn = conn

    async def send_str(self, text: str) -> None:
        await self._send(text)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, message: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(message)
        except ConnectionClosed as e:
            raise self._conn._stream_failed(e) from None

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> WSMessage:
        from websockets.exceptions import ConnectionClosed

        try:
            msg = await self._ws.recv()
        except ConnectionClosed as e:
            sent = e.sent
            if sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
                eps = self._conn.endpoints
                raise eps.lost(eps.active, "no answer to keep-alive pings within "
                               f"{self._conn.read_timeout or 0:g} s") from None
            raise StopAsyncIteration from None
        return WSMessage(WSMsgType.TEXT if isinstance(msg, str) else WSMsgType.BINARY, msg)


def answer_of(resp: httpx.Response | Answer) -> Any:
    """The decoded body of a read answer; an error answer raises its typed error."""
    if isinstance(resp, Answer):
        return decode_answer(resp.status, resp.reason, resp.content_type, resp.text("replace"))
    text = resp.content.decode(resp.encoding or "utf-8", "replace")
    ctype = resp.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    return decode_answer(resp.status_code, resp.reason_phrase or "", ctype, text)


def _netloc(url: str) -> str:
    return split_url(url)[3]


def _ws_host(scheme: str, host: str, netloc: str) -> str:
    """The ``Host`` websockets sends for ``netloc``: the port left out when it is the
    scheme's default."""
    default = ":443" if scheme == "https" else ":80"
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


def _reason(e: BaseException) -> str:
    """A failure in words: the innermost cause that says something (httpx wraps the OS's and
    the TLS library's errors, whose text names what went wrong)."""
    text = str(e)
    cause = e.__cause__ or e.__context__
    while cause is not None and not text:
        text = str(cause)
        cause = cause.__cause__ or cause.__context__
    return text or type(e).__name__


__all__ = ["Connection", "FilePart", "SSEMessage", "WSMessage", "WSMsgType", "WebSocket",
           "answer_of", "encode_query", "httpx", "problem_error", "session_path"]
