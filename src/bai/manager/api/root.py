"""``GET /`` (version probe) and ``GET /manager/announcement``.

The probe answers without authentication (the official client sends none, client-protocol 1.3);
a signed ``GET /`` (``backend.ai config``) gets the same body after the auth middleware checked it.
"""

from __future__ import annotations

from aiohttp import web

import bai
from bai.common.auth import API_VERSION


async def version_probe(request: web.Request) -> web.Response:
    return web.json_response({"version": API_VERSION, "manager": f"bai {bai.__version__}"})


async def announcement(request: web.Request) -> web.Response:
    return web.json_response({"enabled": False, "message": ""})


def setup(app: web.Application) -> None:
    app.router.add_get("/", version_probe)
    app.router.add_get("/manager/announcement", announcement)
