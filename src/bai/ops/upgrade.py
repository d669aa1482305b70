"""The server's end of the raw upgrade (``bai.common.rawstream``) on an aiohttp server: here, not
in ``bai.common``, because aiohttp is a dependency of the daemons only (the client's part of bai
imports ``bai.common``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from aiohttp import web

from bai.common.rawstream import UPGRADE


async def take_over(request: Any) -> tuple[socket.socket, bytes, Any]:
    """Answer ``101`` to an aiohttp ``request`` and take its connection: (a non-blocking
    duplicate of its socket, bytes that came after the request, the response the handler
    returns). aiohttp stops reading the connection and closes its own descriptor once the
    handler returns (``force_close``); the caller closes the duplicate."""
    resp = web.StreamResponse(status=101, headers={"Connection": "Upgrade", "Upgrade": UPGRADE})
    resp.force_close()
    transport = request.transport
    if transport is None or transport.get_extra_info("socket") is None:
        raise ConnectionResetError("the client went away")
    transport.pause_reading()
    await resp.prepare(request)  # aiohttp sends a response's head at once (not buffered)
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    sock.setblocking(False)
    proto = request.protocol
    tail = bytes(getattr(proto, "_message_tail", b"") or b"")
    if tail:
        proto._message_tail = b""
    return sock, tail, resp
