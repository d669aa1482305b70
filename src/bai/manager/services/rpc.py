"""AgentClient: the manager's HTTP client for the agent API (docs/internals.md).

Every request carries ``X-BAI-Cluster-Token``. Agent errors come back as problem JSON and are
re-raised as typed ``bai.common.errors``; an agent that cannot be reached raises ``AgentError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from bai.common.errors import AgentError, BaiError, error_from_problem
from bai.ops.logs import REQUEST_ID, REQUEST_ID_HEADER

TOKEN_HEADER = "X-BAI-Cluster-Token"


class AgentClient:
    def __init__(self, cluster_token: str, *, timeout: float = 30.0) -> None:
        self._token = cluster_token
        # No session-wide total: it would also cut long execute WebSockets; each call sets its own.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=5)
        self._default_total = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={TOKEN_HEADER: self._token}, timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def _request(
        self, method: str, address: str, path: str, *, timeout: float | None = None, **kw: Any
    ) -> Any:
        url = address.rstrip("/") + path
        kw["timeout"] = aiohttp.ClientTimeout(total=timeout or self._default_total, connect=5)
        rid = REQUEST_ID.get()
        if rid is not None:  # the agent logs under the id of the request that caused this
            kw["headers"] = {**kw.get("headers", {}), REQUEST_ID_HEADER: rid}
        try:
            async with self.session.request(method, url, **kw) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text
                if resp.status >= 400:
                    raise error_from_problem(resp.status, body)
                return body
        except BaiError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AgentError(
                f"agent at {address} is unreachable: {type(e).__name__}: {e}",
                data={"address": address},
            ) from None

    async def info(self, address: str) -> dict:
        return await self._request("GET", address, "/v1/info", timeout=5)

    async def create_kernel(self, address: str, spec_json: dict) -> dict:
        return await self._request("POST", address, "/v1/kernels", json=spec_json, timeout=30)

    async def create_kernels(self, address: str, specs: list[dict]) -> dict:
        """Many creates in one request: ``{"accepted": [kid, ...], "refused": [{"kernel_id",
        "title"}, ...]}``."""
        return await self._request("POST", address, "/v1/kernels/batch",
                                   json={"kernels": specs}, timeout=60) or {}

    async def destroy_kernel(self, address: str, kernel_id: str, reason: str) -> dict:
        return await self._request(
            "DELETE", address, f"/v1/kernels/{kernel_id}", params={"reason": reason}, timeout=60
        ) or {}

    async def list_kernels(self, address: str) -> list[dict]:
        body = await self._request("GET", address, "/v1/kernels", timeout=10)
        return list((body or {}).get("kernels", []))

    async def upload(self, address: str, kernel_id: str, body: AsyncIterator[bytes],
                     boundary: str, max_bytes: int) -> dict:
        """Relay a multipart body (parts named ``src``) as it arrives; the agent stages the files
        and keeps them only when the whole body came within ``max_bytes``."""
        return await self._request(
            "POST", address, f"/v1/kernels/{kernel_id}/upload", data=body,
            params={"max_bytes": str(max_bytes)}, timeout=3600,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ) or {}

    async def logs(self, address: str, kernel_id: str) -> str:
        body = await self._request("GET", address, f"/v1/kernels/{kernel_id}/logs", timeout=30)
        return str((body or {}).get("logs", ""))

    async def stats(self, address: str, kernel_id: str) -> dict:
        return await self._request("GET", address, f"/v1/kernels/{kernel_id}/stats", timeout=10) or {}

    async def list_files(self, address: str, kernel_id: str, path: str) -> list:
        body = await self._request(
            "GET", address, f"/v1/kernels/{kernel_id}/files", params={"path": path}, timeout=30
        )
        return list((body or {}).get("files", []))

    @asynccontextmanager
    async def download(self, address: str, kernel_id: str, path: str, max_bytes: int
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``async with rpc.download(...) as resp``: a tar of ``path`` in the kernel's work
        directory, its body not read yet (``resp.content``); the agent refuses (413) what is
        larger than ``max_bytes`` before sending any of it. ``X-BAI-Apparent-Size`` says how
        much it holds."""
        url = address.rstrip("/") + f"/v1/kernels/{kernel_id}/download"
        try:
            async with self.session.get(
                url, params={"path": path, "max_bytes": str(max_bytes)},
                timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=300),
            ) as resp:
                if resp.status >= 400:
                    data = await resp.content.read(64 * 1024)
                    try:
                        body: Any = json.loads(data)
                    except ValueError:
                        body = data.decode(errors="replace")
                    raise error_from_problem(resp.status, body)
                yield resp
        except BaiError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AgentError(f"agent at {address} is unreachable: {type(e).__name__}: {e}",
                             data={"address": address}) from None

    def ws_connect(self, address: str, kernel_id: str, **kw: Any):
        """``async with rpc.ws_connect(addr, kid) as ws``: the agent's execute WebSocket."""
        url = address.rstrip("/") + f"/v1/kernels/{kernel_id}/execute"
        kw.setdefault("timeout", aiohttp.ClientWSTimeout(ws_close=10))
        kw.setdefault("heartbeat", 30)
        kw.setdefault("max_msg_size", 64 * 1024 * 1024)
        return self.session.ws_connect(url, **kw)

    async def service_connect(self, address: str, kernel_id: str, params: dict[str, str]):
        """The agent's WebSocket to an app of the kernel (``agent/apps.py``); its first frame
        says ``ready`` or carries the problem. Opening may wait for a service to start."""
        url = address.rstrip("/") + f"/v1/kernels/{kernel_id}/service"
        return await self.session.ws_connect(
            url, params=params, timeout=aiohttp.ClientWSTimeout(ws_close=10),
            heartbeat=30, max_msg_size=4 * 1024 * 1024)
