"""A schema-driven fuzzer (schemathesis) over the OpenAPI document, at a small budget, against
a real stack, signed as the admin: no route may answer 5xx to anything its schema allows or
not. Streams (SSE, WebSocket) are left out: they do not end."""

from __future__ import annotations

import shutil

import pytest
import requests
from hypothesis import HealthCheck, settings

from bai.common.auth import make_headers
from bai.manager.api import openapi
from bai.manager.app import create_app
from bai.manager.settings import ManagerSettings
from stacks import start_stack

schemathesis = pytest.importorskip("schemathesis")

DOC = openapi.build(create_app(ManagerSettings(db_url="sqlite+aiosqlite://")))
schema = schemathesis.openapi.from_dict(DOC)
#: answers that never end: event streams and the execute WebSocket
STREAMS = {("GET", "/events/session"), ("GET", "/stream/session/{session}/execute")}
#: blocking creates may wait for their session (maxWaitSeconds): a timeout is not an error
BLOCKING = {("POST", "/session"), ("POST", "/session/_/create")}


@pytest.fixture(scope="module")
def fuzz_stack():
    st = start_stack("cpu=4", "mem=4g", runtime="dummy")
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


@schema.parametrize()
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx(case, fuzz_stack, http):
    if (case.method, case.path) in STREAMS:
        return
    keys = fuzz_stack.keys()["admin"]
    kwargs = case.as_transport_kwargs(base_url=fuzz_stack.endpoint)
    kwargs.pop("timeout", None)
    req = requests.Request(**{k: v for k, v in kwargs.items()
                              if k in ("method", "url", "headers", "params", "data", "json",
                                       "files", "cookies")}).prepare()
    ctype = req.headers.get("Content-Type") or "text/plain"
    if req.body is None:
        req.headers["Content-Type"] = ctype
    req.headers.update(make_headers(keys["access_key"], keys["secret_key"], req.method,
                                    req.path_url, f"127.0.0.1:{fuzz_stack.port}",
                                    ctype.split(";")[0]))
    try:
        resp = http.send(req, timeout=30)
    except requests.Timeout:
        assert (case.method, case.path) in BLOCKING, case.as_curl_command()
        return
    assert resp.status_code < 500, f"{resp.status_code} {resp.text[:500]}\n{case.as_curl_command()}"


def test_null_policy_fields_take_their_defaults(fuzz_stack, http):
    """Found by the fuzzer: an explicit null for a policy's number was written as NULL into a
    NOT NULL column (500)."""
    keys = fuzz_stack.keys()["admin"]
    body = b'{"name": "fuzz-nulls", "max_concurrent_sessions": null, "idle_timeout": null, ' \
           b'"pids_limit": null, "disk_quota": null}'
    headers = make_headers(keys["access_key"], keys["secret_key"], "POST",
                           "/admin/resource-policies", f"127.0.0.1:{fuzz_stack.port}",
                           "application/json")
    headers["Content-Type"] = "application/json"
    resp = http.post(f"{fuzz_stack.endpoint}/admin/resource-policies", data=body,
                     headers=headers, timeout=30)
    assert resp.status_code == 201, resp.text
    policy = resp.json()["resource_policy"]
    assert policy["max_concurrent_sessions"] == 0 and policy["pids_limit"] == 0
