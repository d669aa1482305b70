"""The WebSockets a server has open, closed at its shutdown.

aiohttp's shutdown waits (up to 60 s) for the handlers still running, and a WebSocket's runs
until either side closes it: an open execute stream, pty or app relay would hold the
manager's or the agent's exit up until ``server stop`` kills it. ``setup`` has the app's
``on_shutdown`` close every open one with 1001 (going away), as its peer would see a restart;
the handlers then end as on a client's close.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import WSCloseCode, web

#: the app's open WebSockets (a handler's ends with its response: no unregistering)
OPEN: web.AppKey[weakref.WeakSet] = web.AppKey("open_websockets", weakref.WeakSet)


class WebSocket(web.WebSocketResponse):
    """A ``WebSocketResponse`` its app closes at shutdown (where ``setup`` ran)."""

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        sockets = request.app.get(OPEN) if isinstance(request, web.Request) else None
        if sockets is not None:
            sockets.add(self)
        return writer


async def _close_all(app: web.Application) -> None:
    await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                           for ws in list(app[OPEN]) if not ws.closed),
                         return_exceptions=True)


def setup(app: web.Application) -> None:
    app[OPEN] = weakref.WeakSet()
    app.on_shutdown.append(_close_all)
