"""The request metrics of ``bai.ops.http``: each answer counted under its method, route and
status, its duration in the histogram of its method and route."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from bai.ops.http import HttpMetrics


def test_each_answer_is_counted_under_its_labels():
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry, "t")
    metrics.observe("POST", "/session", 201, 0.002)
    metrics.observe("POST", "/session", 201, 0.5)
    metrics.observe("POST", "/session", 400, 0.001)
    metrics.observe("GET", "/session/{name}", 200, 0.003)

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("t_api_requests_total", method="POST", route="/session", status="201") == 2
    assert value("t_api_requests_total", method="POST", route="/session", status="400") == 1
    assert value("t_api_requests_total", method="GET", route="/session/{name}",
                 status="200") == 1
    assert value("t_api_request_duration_seconds_count", method="POST", route="/session") == 3
    assert value("t_api_request_duration_seconds_sum", method="POST",
                 route="/session") == pytest.approx(0.503)
    assert value("t_api_request_duration_seconds_bucket", method="POST", route="/session",
                 le="0.0025") == 2


async def test_access_lines_hide_storage_tokens_and_keep_their_levels():
    """Each request's access line (``bai.access``): internal and health routes at DEBUG, a
    storage path without its query (a token), none when the logger is above the level, the
    request counted all the same."""
    import logging

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from bai.ops.http import observe

    metrics = HttpMetrics(CollectorRegistry(), "t")
    app = web.Application(middlewares=[observe(metrics)])

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    for path in ("/storage/download", "/internal/ping", "/health/live", "/session"):
        app.router.add_get(path, ok)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log, keep = logging.getLogger("bai.access"), Keep()
    level = log.level
    log.addHandler(keep)
    try:
        async with TestClient(TestServer(app)) as client:
            log.setLevel(logging.DEBUG)
            for path in ("/storage/download?token=secret", "/internal/ping", "/health/live",
                         "/session?x=1"):
                assert (await client.get(path)).status == 200
            log.setLevel(logging.WARNING)
            assert (await client.get("/session?x=2")).status == 200
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    lines = [(r.levelno, r.getMessage().split('"')[1], r.route, r.status) for r in records]
    assert lines == [(logging.INFO, "GET /storage/download", "/storage/download", 200),
                     (logging.DEBUG, "GET /internal/ping", "/internal/ping", 200),
                     (logging.DEBUG, "GET /health/live", "/health/live", 200),
                     (logging.INFO, "GET /session?x=1", "/session", 200)]
    assert "secret" not in str([vars(r) for r in records])
    counted = metrics.requests.labels("GET", "/session", "200")._value.get()
    assert counted == 2  # the line left out at WARNING, the request still counted
