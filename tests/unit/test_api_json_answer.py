"""``json_answer``: the create's answer written by pydantic-core, the same JSON value and
headers as ``web.json_response`` would send."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from bai.manager.api.middleware import json_answer


@pytest.mark.parametrize("data", [
    {"sessionId": "0b7f5bd1-8e1b-4c1e-9e52-1f1d4a8f1e2a", "created": True, "servicePorts": [],
     "statusData": {"pending": {"line": "starts at 02:00 (in 2 h)"}}},
    {"name": "\u00e9t\u00e9 \U0001f600", "n": [1, 1.5, 1e16, -0.0, None, False]},
    {"lone": "a\ud800b"},  # pydantic-core refuses it: the json module writes it
    [{"nested": [[{}]]}],
])
def test_the_same_json_value_and_headers_as_json_response(data):
    ours, stock = json_answer(data, status=201), web.json_response(data, status=201)
    assert ours.status == stock.status == 201
    assert ours.headers["Content-Type"] == stock.headers["Content-Type"]
    assert json.loads(ours.body) == json.loads(stock.text) == data
