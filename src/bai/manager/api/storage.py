"""The storage endpoint: file bytes in and out of folders, authorised by the token that
``request-upload`` / ``request-download`` handed out (``?token=``), not by a signature (the
official client calls it with a plain HTTP client, as it calls Backend.AI's storage proxy).

* ``/storage/upload``: the tus 1.0.0 core protocol (``OPTIONS``, ``HEAD`` for the offset,
  ``PATCH`` appends at ``Upload-Offset``), which the official client speaks through
  ``aiotusclient``; the upload is created by ``request-upload`` (the token names it), so the
  creation extension is not needed. On plain TCP the body goes from the socket to the file
  by ``splice`` (``bai.common.zerocopy``), and the connection closes after it. A small
  handler of our own: the Python tus servers on PyPI are framework plug-ins (Flask,
  FastAPI) that keep uploads in their own store, and ours must write beside the target
  inside the folder, through descriptors, within the folder's quota.
* ``/storage/download``: the file, sent by ``sendfile`` from a descriptor opened without
  following links (``Range``/``If-Range`` as the official client resumes with).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import stat
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import quote

from aiohttp import web

from bai.common import unixsock, zerocopy
from bai.common.rawstream import peer_uid
from bai.common.errors import BaiError, Forbidden, InvalidAPIParameters
from bai.manager.api.middleware import problem_response
from bai.manager.app import ROOT
from bai.manager.services.folder_files import UploadOffsetMismatch
from bai.manager.services.folders import LocalBody

log = logging.getLogger(__name__)

TUS = {"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0"}


def _folders(request: web.Request):
    return request.app[ROOT].folders


async def tus_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**TUS, "Tus-Extension": ""})


async def tus_head(request: web.Request) -> web.Response:
    claims, offset = await _folders(request).upload_state(request.query.get("token"))
    return web.Response(status=200, headers={
        **TUS, "Upload-Offset": str(offset), "Upload-Length": str(claims["size"]),
        "Cache-Control": "no-store"})


async def tus_patch(request: web.Request) -> web.Response:
    folders = _folders(request)
    claims, offset = await folders.upload_state(request.query.get("token"))
    if request.content_type != "application/offset+octet-stream":
        raise web.HTTPUnsupportedMediaType(
            text="a tus PATCH carries Content-Type: application/offset+octet-stream")
    try:
        asked = int(request.headers.get("Upload-Offset", ""))
    except ValueError:
        raise InvalidAPIParameters("a tus PATCH needs an Upload-Offset header") from None
    if asked != offset:
        return web.Response(status=409, headers={**TUS, "Upload-Offset": str(offset)},
                            text=f"Upload-Offset is {offset}, not {asked}")
    if offset + (request.content_length or 0) > int(claims["size"]):
        # refused before any byte is read: aiohttp drains the body after the answer
        raise InvalidAPIParameters(f"more bytes than the {int(claims['size']):,} announced",
                                   data={"size": int(claims["size"])})
    raw = _socket_body(request)
    if raw is None:
        new = await folders.write_upload(claims, offset, request.content)
        return web.Response(status=204, headers={**TUS, "Upload-Offset": str(new)})
    # a body read past aiohttp's parser leaves the connection unfit for another request
    try:
        new = await folders.write_upload(claims, offset, raw)
        resp = web.Response(status=204, headers={**TUS, "Upload-Offset": str(new)})
    except BaiError as exc:  # quota, or more bytes than announced
        await zerocopy.discard(raw)
        resp = problem_response(exc.status, exc.to_problem())
    except BaseException:
        if request.transport is not None:
            request.transport.close()
        raise
    finally:
        os.close(raw.fd)
        request.content.feed_eof()  # nothing for aiohttp to drain after the answer
    if raw.left:
        resp.force_close()
    return resp


def _socket_body(request: web.Request) -> zerocopy.SocketBody | None:
    """The rest of a PATCH body taken over from aiohttp, to go from the socket to the file by
    ``splice`` (bench/vfolder.py: aiohttp's stream copies each read several times and reached
    a third of ``cp``'s speed). Only a plain TCP connection with a ``Content-Length`` body is
    taken over; None: read it through aiohttp's stream."""
    transport, length = request.transport, request.content_length
    if (not zerocopy.AVAILABLE or transport is None or length is None or transport.is_closing()
            or transport.get_extra_info("sslcontext") is not None
            or "Transfer-Encoding" in request.headers or "Content-Encoding" in request.headers):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    head, got = [], 0
    # what aiohttp read with the headers; draining its buffer also releases any bytes its
    # paused parser still holds (it resumes then), so that nothing is left behind it
    while chunk := request.content.read_nowait(-1):
        head.append(chunk)
        got += len(chunk)
    if got < length:
        transport.pause_reading()
    return zerocopy.SocketBody(head, os.dup(sock.fileno()), length - got)


def _byte_range(request: web.Request, size: int, mtime: str) -> tuple[int, int] | None:
    """The single ``bytes=A-B`` range asked for (None: the whole file; a stale ``If-Range``
    also means the whole file, as RFC 9110 says)."""
    header = request.headers.get("Range", "")
    if not header or request.headers.get("If-Range", mtime) != mtime:
        return None
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError
        if first == "":  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


#: event loop classes without sendfile (uvloop's, the manager's, inherits AbstractEventLoop's,
#: which raises NotImplementedError): found at the first download on one, not tried again
_NO_SENDFILE: set[type] = set()


async def download(request: web.Request) -> web.StreamResponse:
    fd, name = await _folders(request).open_download(request.query.get("token"))
    try:
        st = os.fstat(fd)
        mtime = formatdate(st.st_mtime, usegmt=True)
        span = _byte_range(request, st.st_size, mtime)
        start, end = span if span else (0, st.st_size - 1)
        resp = web.StreamResponse(status=206 if span else 200, headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
            "Last-Modified": mtime})
        resp.content_length = end - start + 1
        if span:
            resp.headers["Content-Range"] = f"bytes {start}-{end}/{st.st_size}"
        await resp.prepare(request)
        count = end - start + 1
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        # zero-copy from the descriptor to the socket (asyncio falls back to reads and writes
        # where sendfile cannot be used, e.g. TLS); memory stays constant whatever the size
        if count > 0:
            loop = asyncio.get_running_loop()
            with os.fdopen(os.dup(fd), "rb") as f:
                if type(loop) in _NO_SENDFILE:
                    await _write_range(resp, f, start, count)
                else:
                    try:
                        await loop.sendfile(transport, f, start, count)
                    except NotImplementedError:
                        _NO_SENDFILE.add(type(loop))
                        await _write_range(resp, f, start, count)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


async def _write_range(resp: web.StreamResponse, f: BinaryIO, start: int, count: int) -> None:
    """``count`` bytes of ``f`` from ``start`` through the response, a MiB at a time, each read
    on a worker thread (a cold disk would otherwise stall every request on the loop)."""
    loop = asyncio.get_running_loop()
    while count > 0:
        chunk = await loop.run_in_executor(None, os.pread, f.fileno(), min(count, 1 << 20), start)
        if not chunk:
            raise ConnectionResetError("the file ended before its announced length")
        await resp.write(chunk)
        start += len(chunk)
        count -= len(chunk)


#: the unix socket of local uploads, in the manager's state folder
LOCAL_SOCKET = "storage.sock"
LOCAL = web.AppKey("storage_local", object)
#: what other routes serve on the same socket: op -> ``async handler(app, conn, req)``
LOCAL_OPS = web.AppKey("storage_local_ops", dict)


class LocalUploads:
    """Uploads from a client on this machine: it passes a descriptor of its file on a unix
    socket in the state folder (``SCM_RIGHTS``), with the upload's token, and the manager
    copies the file inside the kernel (``copy_file_range``), one copy as ``cp`` makes, where
    the tus PATCH over TCP costs a send, a receive and a copy. Only what the client could open
    itself arrives (its own descriptor); the token is checked as for a PATCH; a descriptor of
    anything but a regular file is refused. Clients that cannot reach the socket (another
    machine, no access to the state folder) use the PATCH. Downloads the other way round:
    ``{"op": "download", "token"}`` gets a read-only descriptor of the file (``_download``)."""

    def __init__(self, folders, path: str, ops: dict | None = None) -> None:
        self.folders, self.path = folders, path
        #: other routes' requests on this socket: op -> ``async handler(conn, req)``
        self.ops = dict(ops or {})
        self.sock: socket.socket | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            # who may reach it is the state folder's business
            self.sock = unixsock.listen_unix(self.path)
        except OSError as e:
            log.info("no local uploads at %s: %s", self.path, e)
            return
        self.task = asyncio.create_task(self._serve(), name="storage-local-uploads")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.sock is not None:
            self.sock.close()
            unixsock.remove_unix(self.path)
        self.sock = self.task = None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            asyncio.create_task(self._one(conn))

    async def _one(self, conn: socket.socket) -> None:
        fds: list[int] = []
        out = None  # the descriptor a download hands over
        try:
            conn.settimeout(30.0)
            msg, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 65536, 1)
            try:
                req = _request(msg)
                if (other := self.ops.get(req.get("op"))) is not None:
                    await other(conn, req)  # it answers; the connection is closed below
                    return
                if req.get("op") == "download":
                    out = await self._download(req, peer_uid(conn))
                    answer = {"size": os.fstat(out).st_size}
                else:
                    answer = {"offset": await self._upload(req, fds)}
            except BaiError as e:
                answer = {"status": e.status, **e.to_problem()}
            line = (json.dumps(answer) + "\n").encode()
            if out is None:
                await asyncio.to_thread(conn.sendall, line)
            else:
                await asyncio.to_thread(socket.send_fds, conn, [line], [out])
        except (OSError, ValueError) as e:
            log.info("a local transfer failed: %s", e)
        finally:
            for fd in fds:
                os.close(fd)
            if out is not None:
                os.close(out)
            conn.close()

    async def _upload(self, req: dict, fds: list[int]) -> int:
        try:
            token, offset = str(req["token"]), int(req["offset"])
        except (ValueError, KeyError, TypeError):
            raise InvalidAPIParameters("a local upload sends {token, offset} as JSON") from None
        claims, at = await self.folders.upload_state(token)
        if len(fds) != 1 or not stat.S_ISREG(os.fstat(fds[0]).st_mode):
            raise InvalidAPIParameters("a local upload passes one descriptor of a regular file")
        if offset != at:
            raise UploadOffsetMismatch(f"the upload is at {at} bytes, not {offset}",
                                       data={"offset": at})
        return await self.folders.write_upload(claims, at, LocalBody(fds[0], at))

    async def _download(self, req: dict, peer: int | None) -> int:
        """A read-only descriptor of the token's file, opened as the HTTP download opens it
        (the token and the folder's access checked now, no link followed on the way, a
        regular file only), for the client to copy with ``copy_file_range``. Refused where
        the descriptor would give the peer more than reading: its owner could reopen it for
        writing through ``/proc/self/fd`` (or ``fchmod`` it), as could anyone where it is
        group- or world-writable; those clients use the HTTP download."""
        fd, _ = await self.folders.open_download(str(req.get("token") or ""))
        if not may_hold(os.fstat(fd), peer):
            os.close(fd)
            raise Forbidden("this file is downloaded over HTTP (its descriptor would let "
                            "this client write it)")
        return fd


def _request(msg: bytes) -> dict:
    try:
        req = json.loads(msg)
    except ValueError:
        req = None
    if not isinstance(req, dict):
        raise InvalidAPIParameters("a local transfer sends one JSON object")
    return req


def may_hold(st: os.stat_result, peer: int | None) -> bool:
    """Whether a read-only descriptor of the file ``st`` lets the user ``peer`` do no more
    than read it: root and the manager's own user reach the state folder anyway; anyone else
    must neither own the file nor find it group- or world-writable."""
    if peer is None:
        return False
    if peer in (0, os.geteuid()):
        return True
    return st.st_uid != peer and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


async def _start_local(app: web.Application) -> None:
    root = app[ROOT]
    if root.settings.state_dir in ("", "."):
        return  # no state folder of its own (tests, tools): uploads take the PATCH
    path = os.path.join(os.path.abspath(os.path.expanduser(root.settings.state_dir)),
                        LOCAL_SOCKET)
    local = LocalUploads(root.folders, path, {
        op: functools.partial(handler, app) for op, handler in app.get(LOCAL_OPS, {}).items()})
    app[LOCAL] = local
    await local.start()
    if local.sock is not None:
        root.folders.local_socket = path


async def _stop_local(app: web.Application) -> None:
    local = app.get(LOCAL)
    if local is not None:
        app[ROOT].folders.local_socket = None
        await local.stop()


def setup(app: web.Application) -> None:
    app.on_startup.append(_start_local)
    app.on_cleanup.append(_stop_local)
    r = app.router
    r.add_route("OPTIONS", "/storage/upload", tus_options)
    r.add_route("HEAD", "/storage/upload", tus_head)
    r.add_route("PATCH", "/storage/upload", tus_patch)
    r.add_get("/storage/download", download, allow_head=False)
