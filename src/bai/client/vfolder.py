"""Storage folders from the client: the ``/folders`` routes, and file bytes through the storage
endpoint the manager names (tus uploads, streamed downloads), as the official client does.

Uploads: ``request-upload`` answers a URL and token; the file goes in one tus ``PATCH`` sent
from disk in chunks. When the connection breaks the upload resumes: ``HEAD`` tells how much
arrived, the next ``PATCH`` sends the rest. Downloads go to a hidden temporary file beside the
target, resumed with ``Range`` after a broken connection, and renamed onto the target only when
whole. Memory stays constant whatever the size.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bai.client.connection import Connection, answer_of, httpx
from bai.client.errors import ConnectionLost, UsageError

TUS = {"Tus-Resumable": "1.0.0"}
#: how often a broken transfer is taken up again
RETRIES = 5
#: reads of a file sent as a body (fewer, larger writes move a GiB faster)
FILE_CHUNK = 1024 * 1024

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
        url = _with_token(ticket["url"], ticket["token"])
        offset, tries = 0, 0
        while offset < size:
            try:
                resp = await self._http.request(
                    "PATCH", url, headers={**TUS, "Upload-Offset": str(offset),
                                           "Content-Type": "application/offset+octet-stream",
                                           "Content-Length": str(size - offset)},
                    content=_file_range(local, offset, size - offset), timeout=self._timeout)
                if resp.status_code == 409 and resp.headers.get("upload-offset"):
                    offset = int(resp.headers["upload-offset"])
                    continue
                answer_of(resp)
                offset = int(resp.headers.get("upload-offset") or size)
                if progress:
                    progress(offset)
            except httpx.TransportError as e:
                tries += 1
                if tries > RETRIES:
                    raise _broken(e) from None
                offset = await self._offset(url)
        return size

    @property
    def _http(self) -> httpx.AsyncClient:
        return self.conn.http

    @property
    def _timeout(self) -> httpx.Timeout:
        """Each silence of a transfer is bounded by the read timeout; sending is not."""
        return httpx.Timeout(self.conn.read_timeout, connect=10.0, write=None)

    async def _offset(self, url: str) -> int:
        resp = await self._http.request("HEAD", url, headers=TUS, timeout=self._timeout)
        if resp.status_code >= 300:
            answer_of(resp)
        return int(resp.headers.get("upload-offset") or 0)

    async def download(self, name: str, remote: str, local: Path,
                       progress: Progress | None = None) -> int:
        """Download one file of the folder to ``local`` (which must not exist); returns its
        size."""
        if local.exists():
            raise UsageError(f"{local} already exists; remove it or download elsewhere")
        ticket = await self.conn.request("POST", _p(name) + "/request-download",
                                         json_body={"path": remote})
        url = _with_token(ticket["url"], ticket["token"])
        tmp = local.with_name(f".{local.name}.bai-part")
        got, tries = 0, 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while True:
                # identity: byte ranges of the file itself, never of a compressed form
                headers = {"Accept-Encoding": "identity"}
                if got:
                    headers["Range"] = f"bytes={got}-"
                try:
                    async with self._http.stream("GET", url, headers=headers,
                                                 timeout=self._timeout) as resp:
                        if resp.status_code >= 300:
                            await resp.aread()
                            answer_of(resp)
                        if resp.status_code == 200 and got:
                            os.ftruncate(fd, 0)
                            os.lseek(fd, 0, os.SEEK_SET)
                            got = 0
                        async for chunk in resp.aiter_raw():
                            _write_all(fd, chunk)
                            got += len(chunk)
                            if progress:
                                progress(got)
                    break
                except httpx.TransportError as e:
                    tries += 1
                    if tries > RETRIES:
                        raise _broken(e) from None
            os.close(fd)
            fd = -1
            os.replace(tmp, local)
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp.exists():
                tmp.unlink()
        return got


async def _file_range(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """``length`` bytes of ``path`` from ``offset``, in chunks (constant memory)."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - a local file, read in chunks
        f.seek(offset)
        left = length
        while left > 0 and (data := f.read(min(FILE_CHUNK, left))):
            left -= len(data)
            yield data
    if left > 0:
        raise OSError(f"{path} became shorter while it was sent")


def _broken(e: Exception) -> ConnectionLost:
    return ConnectionLost(f"the transfer broke {RETRIES + 1} times: {e or type(e).__name__}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}token={quote(token, safe='')}"
