"""The transport: signed HTTP, WebSocket and SSE requests to the manager (``bai.client.wire``).

Requests are signed exactly as the official Backend.AI 23.09 client signs them
(``bai.common.auth``): ``host`` is the configured endpoint's netloc, the signed path is the
endpoint's path prefix plus the request path and query *as sent*, and the signed content type is
``application/json`` for JSON bodies, ``text/plain`` for body-less requests (which also send that
header), ``multipart/form-data`` for uploads and ``application/octet-stream`` for WebSocket and
SSE requests (which send no Content-Type).

Several endpoints may be configured: they are tried in order, and an endpoint that refuses the
connection is skipped (only connection failures move on: a request that reached a manager is
never sent twice). Non-2xx answers become typed errors through
``bai.common.errors.error_from_problem``.

The HTTP client is ``bai.client.wire`` (stdlib asyncio streams), not aiohttp: importing aiohttp
alone costs more CPU than the whole hello-world budget of ``backend.ai run``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from bai.client import wire
from bai.client.config import ClientConfig
from bai.client.errors import ConnectionLost, ManagerUnreachable
from bai.common.auth import API_VERSION, make_headers
from bai.common.errors import BaiError, error_from_problem

USER_AGENT = "bai-client/0.1 (Backend.AI Client for Python 23.09.10 compatible)"

Params = list[tuple[str, str]] | dict[str, Any] | None


def encode_query(params: Params) -> str:
    """``a=1&scope=*``: values percent-encoded, ``*`` kept literal as the official client does."""
    if not params:
        return ""
    items = params.items() if isinstance(params, dict) else params
    parts = [
        f"{quote(str(k), safe='')}={quote(str(v), safe='*')}" for k, v in items if v is not None
    ]
    return "&".join(parts)


def session_path(name_or_id: str, suffix: str = "") -> str:
    """``/session/<quoted name>`` + suffix."""
    return f"/session/{quote(str(name_or_id), safe='')}{suffix}"


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
        self._http: wire.HTTPClient | None = None
        self._active = 0  # index of the endpoint that answered last

    async def __aenter__(self) -> Connection:
        self._http = wire.HTTPClient(headers={"User-Agent": USER_AGENT}, connect_timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def endpoint(self) -> str:
        return self.config.endpoints[self._active]

    # -- request construction -------------------------------------------------------------

    def _target(self, endpoint: str, path: str, params: Params) -> tuple[str, str]:
        """(full URL, signed path+query) for ``path`` on ``endpoint``."""
        parts = urlsplit(endpoint)
        path_qs = parts.path.rstrip("/") + path
        qs = encode_query(params)
        if qs:
            path_qs += "?" + qs
        return f"{parts.scheme}://{parts.netloc}{path_qs}", path_qs

    def _signed(self, endpoint: str, method: str, path_qs: str, sign_type: str) -> dict[str, str]:
        headers = {
            "X-BackendAI-Domain": self.config.domain,
            "X-BackendAI-Version": API_VERSION,
        }
        if self.config.access_key:
            headers.update(
                make_headers(
                    self.config.access_key,
                    self.config.secret_key,
                    method,
                    path_qs,
                    urlsplit(endpoint).netloc,
                    sign_type,
                )
            )
        else:  # anonymous mode still carries the Date and the version
            from datetime import datetime, timezone

            headers["Date"] = datetime.now(timezone.utc).isoformat()
        return headers

    def _order(self) -> list[int]:
        n = len(self.config.endpoints)
        return [(self._active + i) % n for i in range(n)]

    @property
    def http(self) -> wire.HTTPClient:
        if self._http is None:
            raise RuntimeError("Connection used outside 'async with'")
        return self._http

    # -- plain requests ---------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json_body: Any = None,
        form: list[wire.FilePart] | None = None,
        signed: bool = True,
    ) -> Any:
        """Send one request; answer the decoded JSON body (None for an empty answer).

        ``form``: files sent as ``multipart/form-data`` parts.
        """
        method = method.upper()
        last_error = ""
        for idx in self._order():
            endpoint = self.config.endpoints[idx]
            url, path_qs = self._target(endpoint, path, params)
            if form is not None:
                sign_type, data, ctype = "multipart/form-data", None, None
            elif json_body is not None:
                sign_type, ctype = "application/json", "application/json"
                data = json.dumps(json_body).encode("utf-8")
            else:
                sign_type, data, ctype = "text/plain", None, "text/plain"
            headers = self._signed(endpoint, method, path_qs, sign_type) if signed else {}
            if ctype is not None and signed:
                headers["Content-Type"] = ctype
            try:
                resp = await self.http.request(method, url, headers=headers, body=data, parts=form)
                try:
                    self._active = idx
                    return await _read_answer(resp)
                finally:
                    resp.release()
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except wire.WireError as e:
                raise _lost(endpoint, e) from None
        raise ManagerUnreachable(self.config.endpoints, last_error)

    # -- streams ------------------------------------------------------------------------------

    @asynccontextmanager
    async def websocket(
        self, path: str, params: Params = None
    ) -> AsyncIterator[wire.WebSocket]:
        last_error = ""
        for idx in self._order():
            endpoint = self.config.endpoints[idx]
            url, path_qs = self._target(endpoint, path, params)
            headers = self._signed(endpoint, "GET", path_qs, "application/octet-stream")
            try:
                ws = await self.http.websocket(url, headers=headers, max_size=0)
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except wire.HandshakeFailed as e:
                raise _handshake_error(e) from None
            except wire.WireError as e:
                raise _lost(endpoint, e) from None
            self._active = idx
            try:
                yield ws
            finally:
                await ws.close()
            return
        raise ManagerUnreachable(self.config.endpoints, last_error)

    async def sse(self, path: str, params: Params = None) -> AsyncIterator[SSEMessage]:
        """Messages of a ``text/event-stream`` answer until the server closes it."""
        resp = None
        last_error = ""
        for idx in self._order():
            endpoint = self.config.endpoints[idx]
            url, path_qs = self._target(endpoint, path, params)
            headers = self._signed(endpoint, "GET", path_qs, "application/octet-stream")
            headers["Accept"] = "text/event-stream"
            try:
                resp = await self.http.request("GET", url, headers=headers)
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except wire.WireError as e:
                raise _lost(endpoint, e) from None
            self._active = idx
            break
        if resp is None:
            raise ManagerUnreachable(self.config.endpoints, last_error)
        try:
            if resp.status >= 300:
                await _read_answer(resp)
            event, data, msg_id, retry = "message", [], None, None
            while True:
                try:
                    raw = await resp.readline()
                except wire.WireError:
                    return
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
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
            resp.release()


def _lost(endpoint: str, e: Exception) -> ConnectionLost:
    return ConnectionLost(f"lost the connection to the manager at {endpoint}: {e}".strip())


async def _read_answer(resp: wire.Response) -> Any:
    text = await resp.text(errors="replace")
    body: Any = None
    if text:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    if resp.status >= 300:
        raise problem_error(resp.status, resp.reason or "", body, text)
    if body is None and text and resp.content_type != "application/json":
        return text
    return body


def problem_error(status: int, reason: str, body: Any, text: str = "") -> BaiError:
    """A typed error for an error answer, whatever its body looks like."""
    if not isinstance(body, dict):
        snippet = " ".join(text.split())[:300] if text else ""
        body = {"title": snippet or f"HTTP {status} {reason}".strip()}
    elif "title" not in body:
        body = {**body, "title": str(body.get("msg") or body.get("error") or f"HTTP {status}")}
    return error_from_problem(status, body)


def _handshake_error(e: wire.HandshakeFailed) -> BaiError:
    """A refused WebSocket upgrade: the server's problem JSON when it sent one."""
    body: Any = None
    if e.content_type.endswith("json"):
        try:
            body = json.loads(e.body.decode("utf-8", "replace"))
        except ValueError:
            body = None
    return problem_error(e.status, e.reason, body, f"{e.status} {e.reason}")
