"""Storage folders from the client: the ``/folders`` routes, and file bytes through the storage
endpoint the manager names (tus uploads, streamed downloads), as the official client does.

``request-upload`` / ``request-download`` answer a URL and token; the bytes then move in a
worker thread through ``bai.client.vfolder_wire`` (tus PATCH by ``sendfile``, GET by
``splice``, resumed after a broken connection), the same code as the CLI's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bai.client import vfolder_wire as wire
from bai.client.connection import Connection
from bai.client.errors import UsageError

Progress = Callable[[int], None]


def _p(name: str) -> str:
    return "/folders/" + quote(name, safe="")


class VFolderAPI:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def hosts(self) -> dict[str, Any]:
        return await self.conn.request("GET", "/folders/_/hosts")

    async def create(self, name: str, *, host: str | None = None, group: str | None = None,
                     usage_mode: str = "general", permission: str = "rw", quota: str = "0",
                     cloneable: bool = False) -> dict[str, Any]:
        return await self.conn.request("POST", "/folders", json_body={
            "name": name, "host": host, "unmanaged_path": None, "group": group,
            "usage_mode": usage_mode, "permission": permission, "quota": quota,
            "cloneable": cloneable})

    async def list(self, *, all_: bool = False) -> list[dict[str, Any]]:
        return await self.conn.request("GET", "/folders", json_body={"all": all_})

    async def info(self, name: str) -> dict[str, Any]:
        return await self.conn.request("GET", _p(name))

    async def rename(self, name: str, new_name: str) -> None:
        await self.conn.request("POST", _p(name) + "/rename", json_body={"new_name": new_name})

    async def delete(self, name: str) -> None:
        await self.conn.request("DELETE", _p(name))

    async def files(self, name: str, path: str = ".", *, offset: int = 0,
                    limit: int | None = 1000, order: str = "name") -> dict[str, Any]:
        body: dict[str, Any] = {"path": path, "offset": offset, "order": order}
        if limit is not None:
            body["limit"] = limit
        return await self.conn.request("GET", _p(name) + "/files", json_body=body)

    async def mkdir(self, name: str, path: str, *, parents: bool = False,
                    exist_ok: bool = False) -> None:
        await self.conn.request("POST", _p(name) + "/mkdir", json_body={
            "path": path, "parents": parents, "exist_ok": exist_ok})

    async def rm(self, name: str, paths: list[str], *, recursive: bool = False) -> None:
        await self.conn.request("DELETE", _p(name) + "/delete-files",
                                json_body={"files": paths, "recursive": recursive})

    async def mv(self, name: str, src: str, dst: str) -> None:
        await self.conn.request("POST", _p(name) + "/move-file", json_body={"src": src, "dst": dst})

    async def share(self, name: str, emails: list[str], permission: str) -> list[str]:
        got = await self.conn.request("POST", _p(name) + "/share",
                                      json_body={"permission": permission, "emails": emails})
        return got.get("shared_emails", [])

    async def unshare(self, name: str, emails: list[str]) -> list[str]:
        got = await self.conn.request("DELETE", _p(name) + "/unshare", json_body={"emails": emails})
        return got.get("unshared_emails", [])

    async def clone(self, name: str, target: str, *, host: str | None = None,
                    usage_mode: str | None = None, permission: str = "rw") -> dict[str, Any]:
        return await self.conn.request("POST", _p(name) + "/clone", json_body={
            "target_name": target, "target_host": host, "usage_mode": usage_mode,
            "permission": permission})

    # ------------------------------------------------------------ bytes

    async def upload(self, name: str, local: Path, remote: str,
                     progress: Progress | None = None) -> int:
        """Upload one local file to ``remote`` in the folder; returns its size."""
        size = local.stat().st_size
        ticket = await self.conn.request("POST", _p(name) + "/request-upload",
                                         json_body={"path": remote, "size": size})
        url = wire.with_token(ticket["url"], ticket["token"])
        return await asyncio.to_thread(wire.upload, url, local, size, self.conn.read_timeout,
                                       progress, ticket.get("local_socket"), ticket["token"])

    async def download(self, name: str, remote: str, local: Path,
                       progress: Progress | None = None) -> int:
        """Download one file of the folder to ``local`` (which must not exist); returns its
        size."""
        if local.exists():
            raise UsageError(f"{local} already exists; remove it or download elsewhere")
        ticket = await self.conn.request("POST", _p(name) + "/request-download",
                                         json_body={"path": remote})
        url = wire.with_token(ticket["url"], ticket["token"])
        return await asyncio.to_thread(wire.download, url, local, self.conn.read_timeout,
                                       progress, ticket.get("local_socket"), ticket["token"])
