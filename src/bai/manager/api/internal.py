"""Agent -> manager routes (docs/internals.md): heartbeats and kernel events.

Exempt from HMAC auth (the auth middleware skips ``/internal/``); checked here with the cluster
token instead.
"""

from __future__ import annotations

from aiohttp import web

from bai.common.auth import cluster_token_ok
from bai.common.errors import AuthFailed, InvalidAPIParameters
from bai.common.events import KernelEvent
from bai.manager.api.apps import note_local_agent
from bai.manager.api.params import json_object
from bai.manager.app import ROOT
from bai.manager.services.rpc import TOKEN_HEADER


def _check_token(request: web.Request) -> None:
    root = request.app[ROOT]
    if not cluster_token_ok(root.settings.cluster_token, request.headers.get(TOKEN_HEADER)):
        raise AuthFailed("missing or wrong cluster token", title="Cluster token mismatch.")


async def heartbeat(request: web.Request) -> web.Response:
    _check_token(request)
    body = await json_object(request)
    note_local_agent(request.app, body)
    return web.json_response(await request.app[ROOT].agents.heartbeat(body))


async def events(request: web.Request) -> web.Response:
    _check_token(request)
    body = await json_object(request)
    raw = body.get("events")
    if not isinstance(raw, list):
        raise InvalidAPIParameters("events must be a list")
    try:
        evs = [KernelEvent.from_json(e) for e in raw]
    except (TypeError, AttributeError):
        raise InvalidAPIParameters("malformed kernel event") from None
    await request.app[ROOT].agents.handle_events(evs)
    return web.json_response({"ok": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/internal/agents/heartbeat", heartbeat)
    app.router.add_post("/internal/agents/events", events)
