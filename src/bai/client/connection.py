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

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bai.client import wire
from bai.client.config import ClientConfig
from bai.client.endpoint import (
    USER_AGENT,
    Endpoints,
    Params,
    decode_answer,
    encode_query,
    handshake_error,
    problem_error,
    read_timeout,
    session_path,
)


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
        self.endpoints = Endpoints(config)
        self.read_timeout = read_timeout()

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
        return self.endpoints.current

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
        timeout: float | None | Any = ...,
    ) -> Any:
        """Send one request; answer the decoded JSON body (None for an empty answer).

        ``form``: files sent as ``multipart/form-data`` parts (no read timeout: the upload
        takes what it takes). ``timeout``: seconds to wait for the whole answer (default
        ``read_timeout``; None: no limit); past it ManagerTimeout.
        """
        method = method.upper()
        limit = None if form is not None else self.read_timeout if timeout is ... else timeout
        last_error = ""
        eps = self.endpoints
        for idx in eps.order():
            url, headers, data = eps.prepare(idx, method, path, params, json_body,
                                             multipart=form is not None)
            if not signed:
                headers = {}

            try:
                return await asyncio.wait_for(
                    self._exchange(idx, method, url, headers, data, form), limit)
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except TimeoutError:
                raise eps.timed_out(idx, limit or 0) from None
            except wire.WireError as e:
                raise eps.lost(idx, e) from None
        raise eps.unreachable(last_error)

    async def _exchange(self, idx: int, method: str, url: str, headers: dict[str, str],
                        data: bytes | None, form: list[wire.FilePart] | None) -> Any:
        resp = await self.http.request(method, url, headers=headers, body=data, parts=form)
        try:
            self.endpoints.active = idx
            return await _read_answer(resp)
        finally:
            resp.release()

    # -- streams ------------------------------------------------------------------------------

    async def _first_answer(self, method: str, build) -> tuple[int, wire.Response]:
        """Send to each endpoint in turn until one answers: (its index, the answer's head).
        ``build(idx)`` gives the request's (URL, headers, body)."""
        last_error = ""
        eps = self.endpoints
        for idx in eps.order():
            url, headers, data = build(idx)
            try:  # the answer's head has the read timeout; the body (a stream) has none
                resp = await asyncio.wait_for(
                    self.http.request(method, url, headers=headers, body=data),
                    self.read_timeout)
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except TimeoutError:
                raise eps.timed_out(idx, self.read_timeout or 0) from None
            except wire.WireError as e:
                raise eps.lost(idx, e) from None
            eps.active = idx
            return idx, resp
        raise eps.unreachable(last_error)

    @asynccontextmanager
    async def streamed(self, method: str, path: str, *, params: Params = None,
                       json_body: Any = None) -> AsyncIterator[wire.Response]:
        """``async with conn.streamed(...) as resp``: a successful answer whose body is read
        with ``resp.iter_chunks()``; an error answer raises its typed error."""
        method = method.upper()
        idx, resp = await self._first_answer(
            method, lambda i: self.endpoints.prepare(i, method, path, params, json_body))
        try:
            if resp.status >= 400:
                await _read_answer(resp)  # raises the typed error
            yield resp
        except wire.WireError as e:
            raise self.endpoints.lost(idx, e) from None
        finally:
            resp.release()

    @asynccontextmanager
    async def websocket(
        self, path: str, params: Params = None
    ) -> AsyncIterator[wire.WebSocket]:
        last_error = ""
        eps = self.endpoints
        for idx in eps.order():
            url, path_qs = eps.target(idx, path, params)
            headers = eps.signed(idx, "GET", path_qs, "application/octet-stream")
            try:  # the handshake has the read timeout; the stream has none
                ws = await asyncio.wait_for(
                    self.http.websocket(url, headers=headers, max_size=0), self.read_timeout)
            except wire.ConnectFailed as e:
                last_error = str(e)
                continue
            except TimeoutError:
                raise eps.timed_out(idx, self.read_timeout or 0) from None
            except wire.HandshakeFailed as e:
                raise handshake_error(e) from None
            except wire.WireError as e:
                raise eps.lost(idx, e) from None
            eps.active = idx
            try:
                yield ws
            finally:
                await ws.close()
            return
        raise eps.unreachable(last_error)

    async def sse(self, path: str, params: Params = None) -> AsyncIterator[SSEMessage]:
        """Messages of a ``text/event-stream`` answer until the server closes it."""
        eps = self.endpoints

        def build(idx: int) -> tuple[str, dict[str, str], None]:
            url, path_qs = eps.target(idx, path, params)
            headers = eps.signed(idx, "GET", path_qs, "application/octet-stream")
            headers["Accept"] = "text/event-stream"
            return url, headers, None

        _, resp = await self._first_answer("GET", build)
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



async def _read_answer(resp: wire.Response) -> Any:
    text = await resp.text(errors="replace")
    return decode_answer(resp.status, resp.reason or "", resp.content_type, text)


__all__ = ["Connection", "SSEMessage", "encode_query", "problem_error", "session_path"]
