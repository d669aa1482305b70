"""Storage folders from the client: the ``/folders`` routes, and file bytes through the storage
endpoint the manager names (tus uploads, streamed downloads), as the official client does.

Uploads: ``request-upload`` answers a URL and token; the file goes in one tus ``PATCH`` sent
from disk in chunks. When the connection breaks the upload resumes: ``HEAD`` tells how much
arrived, the next ``PATCH`` sends the rest. Downloads go to a hidden temporary file beside the
target, resumed with ``Range`` after a broken connection, and renamed onto the target only when
whole. Memory stays constant whatever the size.
"""

from __future__ import annotations

import asyncio
import http.client
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from bai.client.connection import Connection
from bai.client.endpoint import decode_answer
from bai.client.errors import ConnectionLost, UsageError
from bai.common import zerocopy

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
        timeout = self.conn.read_timeout
        offset, tries = 0, 0
        while offset < size:
            try:
                status, headers, text = await asyncio.to_thread(
                    _patch, url, local, offset, size - offset, timeout)
                if status == 409 and headers.get("upload-offset"):
                    offset = int(headers["upload-offset"])
                    continue
                _answer(status, headers, text)
                offset = int(headers.get("upload-offset") or size)
                if progress:
                    progress(offset)
            except (OSError, http.client.HTTPException) as e:
                tries += 1
                if tries > RETRIES:
                    raise _broken(e) from None
                status, headers, text = await asyncio.to_thread(_head, url, timeout)
                _answer(status, headers, text)
                offset = int(headers.get("upload-offset") or 0)
        return size

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
                try:
                    status, headers, text, got = await asyncio.to_thread(
                        _get_into, url, fd, self.conn.read_timeout, progress)
                    _answer(status, headers, text)
                    break
                except (OSError, http.client.HTTPException) as e:
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


# The bytes move through the standard library's http.client in a worker thread: its C-level
# readinto/sendall move a GiB at disk speed, where httpx's per-64-KiB Python path managed a
# fifth of it (bench/vfolder.py). Same TLS context, proxy choice and read timeout as httpx's.

def _connection(url: str, timeout: float | None) -> tuple[http.client.HTTPConnection, str]:
    from bai.client import network

    u = urlsplit(url)
    host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    proxy = network.proxy_for(u.scheme, host)
    where = (proxy[0], proxy[1]) if proxy else (host, port)
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            *where, timeout=timeout, context=network.ssl_context(), blocksize=FILE_CHUNK)
    else:
        conn = http.client.HTTPConnection(*where, timeout=timeout, blocksize=FILE_CHUNK)
    if proxy:
        conn.set_tunnel(host, port, headers={"Proxy-Authorization": proxy[2]} if proxy[2] else None)
    return conn, u.path + (f"?{u.query}" if u.query else "")


def _patch(url: str, path: Path, offset: int, length: int,
           timeout: float | None) -> tuple[int, dict[str, str], str]:
    """One tus PATCH of ``length`` bytes of ``path`` from ``offset``."""
    conn, target = _connection(url, timeout)
    try:
        conn.putrequest("PATCH", target, skip_accept_encoding=True)
        for k, v in {**TUS, "Upload-Offset": str(offset), "Content-Length": str(length),
                     "Content-Type": "application/offset+octet-stream"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        with open(path, "rb") as f:
            # sendfile(2) from the page cache to the socket (socket.sendfile falls back to
            # reads and sends over TLS): no copy through Python, two system calls per GiB
            sent = conn.sock.sendfile(f, offset, length)
        if sent < length:
            raise UsageError(f"{path} became shorter while it was uploaded")
        resp = conn.getresponse()
        return resp.status, _lower(resp), resp.read(1 << 20).decode("utf-8", "replace")
    finally:
        conn.close()


def _head(url: str, timeout: float | None) -> tuple[int, dict[str, str], str]:
    conn, target = _connection(url, timeout)
    try:
        conn.request("HEAD", target, headers=TUS)
        resp = conn.getresponse()
        return resp.status, _lower(resp), ""
    finally:
        conn.close()


def _get_into(url: str, fd: int, timeout: float | None,
              progress: Progress | None) -> tuple[int, dict[str, str], str, int]:
    """GET the file into ``fd`` from what ``fd`` holds on (a 200 answer starts it over);
    returns the answer and the bytes ``fd`` holds."""
    got = os.lseek(fd, 0, os.SEEK_END)  # what a broken try wrote is kept, not sent again
    conn, target = _connection(url, timeout)
    try:
        # identity: byte ranges of the file itself, never of a compressed form
        headers = {"Accept-Encoding": "identity"}
        if got:
            headers["Range"] = f"bytes={got}-"
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status >= 300:
            return resp.status, _lower(resp), resp.read(1 << 20).decode("utf-8", "replace"), got
        if resp.status == 200 and got:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            got = 0
        left = resp.length
        if (left is not None and zerocopy.AVAILABLE
                and not isinstance(conn, http.client.HTTPSConnection)):
            # what the response's reader holds past the headers (a few KiB at most), then the
            # rest by splice(2) from the socket to the file, never through Python
            head = resp.read1(min(left, FILE_CHUNK))
            _write_all(fd, head)
            got += len(head)
            start = got
            moved = zerocopy.splice_in(
                resp.fp.fileno(), fd, left - len(head), idle=timeout or zerocopy.IDLE_TIMEOUT,
                progress=progress and (lambda n: progress(start + n)))
            got += moved
            if moved < left - len(head):
                raise http.client.IncompleteRead(b"", left - len(head) - moved)
            return resp.status, _lower(resp), "", got
        buf = memoryview(bytearray(FILE_CHUNK))
        while n := resp.readinto(buf):
            _write_all(fd, buf[:n])
            got += n
            if progress:
                progress(got)
        if resp.length:  # http.client ends a body cut short quietly
            raise http.client.IncompleteRead(b"", resp.length)
        return resp.status, _lower(resp), "", got
    finally:
        conn.close()


def _lower(resp: http.client.HTTPResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.getheaders()}


def _answer(status: int, headers: dict[str, str], text: str) -> None:
    """Raise the typed error of an error answer."""
    if status >= 300:
        ctype = headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        decode_answer(status, "", ctype, text)


def _broken(e: Exception) -> ConnectionLost:
    return ConnectionLost(f"the transfer broke {RETRIES + 1} times: {e or type(e).__name__}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}token={quote(token, safe='')}"
