"""The HTTP side of operations, the same on manager and agent:

* ``observe`` (the outermost middleware): gives each request its id (``X-Request-ID`` in and
  out), counts it and times it by route and status, and writes the access log
  (logger ``bai.access``; the cluster-internal ``/internal/*`` and ``/health/*`` routes at DEBUG);
* ``HttpMetrics``: those request counters and latency histograms;
* ``metrics_response`` and ``health_response``: the answers of ``/metrics`` and ``/health/*``;
* ``OpsListener``: the same three routes, unauthenticated, on an address of their own
  (``ops_host``/``ops_port``), for a Prometheus server and load balancers on a private network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from bai.ops.logs import REQUEST_ID, REQUEST_ID_HEADER, new_request_id

access_log = logging.getLogger("bai.access")

#: seconds; API calls are mostly milliseconds, a blocking create or a stream may take minutes
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 300)
#: where a request keeps its id (web.RequestKey where aiohttp has it: 3.12+)
REQUEST_KEY: Any = getattr(web, "RequestKey", lambda name, t: name)("request_id", str)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(
            f"{prefix}_api_requests", "API requests answered, by route template and status",
            ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            f"{prefix}_api_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (streams: their lifetime)",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        #: (method, route, status) -> its counter and histogram (``labels`` looks them up
        #: under a lock: ~8 us of each request)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self.requests.labels(method, route, str(status)),
                                          self.latency.labels(method, route))
        pair[0].inc()
        pair[1].observe(seconds)


def route_of(request: web.Request) -> str:
    """The route template (``/session/{name}``), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(metrics: HttpMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def observe_middleware(request: web.Request, handler) -> web.StreamResponse:
        rid = new_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_KEY] = rid
        token = REQUEST_ID.set(rid)
        t0 = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except BaseException:
            status = 499 if request.transport is None or request.transport.is_closing() else 500
            raise
        finally:
            elapsed = time.perf_counter() - t0
            route, method, path = route_of(request), request.method, request.path
            metrics.observe(method, route, status, elapsed)
            level = logging.DEBUG if path.startswith(("/internal/", "/health/")) else logging.INFO
            if access_log.isEnabledFor(level):
                # a storage token in the query is a capability: never written to a log
                shown = path if path.startswith("/storage/") else request.path_qs
                remote, ms = request.remote, elapsed * 1000
                access_log.log(
                    level, '%s "%s %s" %s %.1fms', remote, method, shown, status, ms,
                    extra={"remote": remote, "method": method, "path": path, "route": route,
                           "status": status, "duration_ms": round(ms, 3)})
            REQUEST_ID.reset(token)

    return observe_middleware


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: answer the request's id (also on streamed answers)."""
    rid = request.get(REQUEST_KEY)
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid


def instrument(app: web.Application) -> None:
    app.on_response_prepare.append(add_request_id)


def metrics_response(registry: CollectorRegistry) -> web.Response:
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def health_response(checks: dict[str, str]) -> web.Response:
    """200 when every check says ``ok``, else 503; the body names each check's state."""
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


class OpsListener:
    """``/metrics``, ``/health/live`` and ``/health/ready`` without authentication on
    ``host:port`` (keep it on a private address). ``port`` 0 picks a free one (tests)."""

    def __init__(self, host: str, port: int,
                 metrics: Callable[[], Awaitable[web.StreamResponse]],
                 ready: Callable[[], Awaitable[web.StreamResponse]]) -> None:
        self.host, self.port = host, port
        app = web.Application()

        async def _metrics(_: web.Request) -> web.StreamResponse:
            return await metrics()

        async def _ready(_: web.Request) -> web.StreamResponse:
            return await ready()

        async def _live(_: web.Request) -> web.StreamResponse:
            return web.json_response({"live": True})

        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/health/ready", _ready)
        app.router.add_get("/health/live", _live)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.bound: Any = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.bound = self._runner.addresses[0]

    async def stop(self) -> None:
        await self._runner.cleanup()
