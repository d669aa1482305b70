"""Composition root of the manager: settings -> ManagerRoot (services) -> aiohttp app (routes).

Each module under ``bai.manager.api`` exposes ``setup(app)`` that adds its routes; handlers reach
the services through ``app[ROOT]``. Keep this file short: wiring only.
"""

from __future__ import annotations

import gc

from aiohttp import web

from bai.manager.settings import ManagerSettings

ROOT: web.AppKey = web.AppKey("root", object)
#: the unauthenticated metrics and health listener, when ``ops_port`` is set
OPS: web.AppKey = web.AppKey("ops", object)


def settle_gc() -> None:
    """Once a manager process has started: what start-up allocated (modules, tables, compiled
    statements) lives as long as the process, so keep it out of the collector's walks, and
    collect young objects less often. A pass over 10,000 pending sessions spent 27-45 ms in
    full collections otherwise."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def create_app(settings: ManagerSettings, app_proxy_sock: object = None) -> web.Application:
    """The manager's app; ``app_proxy_sock``: the app proxy's listening socket, inherited."""
    from bai.manager.api import (
        admin, apps, dashboard, events, gql, internal, middleware, openapi, ops, root, session,
        storage, stream, vfolder, webapps, webserver,
    )
    from bai.manager.services.root import ManagerRoot
    from bai.common import opensockets
    from bai.ops.http import OpsListener, instrument, observe

    manager = ManagerRoot(settings)
    app = web.Application(
        middlewares=[observe(manager.metrics.http), middleware.error_middleware,
                     middleware.auth_middleware],
        client_max_size=1024**3,
    )
    app[ROOT] = manager
    if app_proxy_sock is not None:
        app[webapps.INHERITED] = app_proxy_sock
    instrument(app)
    opensockets.setup(app)  # closed at shutdown, as the event streams end (events.py)
    for module in (root, session, stream, apps, events, gql, admin, internal, ops, vfolder, storage,
                   openapi, dashboard, webserver, webapps):
        module.setup(app)
    listener = None
    if settings.ops_port is not None:
        listener = OpsListener(settings.ops_host, settings.ops_port,
                               lambda: ops.render_metrics(manager), lambda: ops.readiness(manager))
        app[OPS] = listener

    async def on_startup(_: web.Application) -> None:
        await manager.start()
        if listener is not None:
            await listener.start()
        settle_gc()

    async def on_cleanup(_: web.Application) -> None:
        if listener is not None:
            await listener.stop()
        await manager.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
