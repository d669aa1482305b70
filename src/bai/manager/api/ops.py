"""``GET /metrics`` (Prometheus text; admin keypairs only), ``GET /health/live`` and
``GET /health/ready`` (no authentication: load balancers and service managers ask them).

The same three answer without authentication on ``ops_host:ops_port`` when that is set
(``bai.ops.http.OpsListener``), for a Prometheus server that cannot sign requests.
"""

from __future__ import annotations

from aiohttp import web

from bai.manager.api.middleware import require_admin
from bai.ops.http import health_response, metrics_response

#: paths the auth middleware lets through unsigned
PUBLIC_PATHS = frozenset({"/health/live", "/health/ready"})


def _root(request: web.Request):
    from bai.manager.app import ROOT

    return request.app[ROOT]


async def render_metrics(root) -> web.Response:
    await root.metrics.refresh()
    return metrics_response(root.metrics.registry)


async def readiness(root) -> web.Response:
    return health_response(await root.metrics.checks())


async def metrics(request: web.Request) -> web.Response:
    require_admin(request)
    return await render_metrics(_root(request))


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    return await readiness(_root(request))


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
