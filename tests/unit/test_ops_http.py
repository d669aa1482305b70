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
