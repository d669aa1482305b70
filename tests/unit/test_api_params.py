"""The JSON checks of request bodies (``api/params.py``), the cheap path included: a body is
walked for NULs and depth only where its text could hold either, so each case here is written
as the wire has it."""

from __future__ import annotations

import json

import pytest

from bai.common.errors import InvalidAPIParameters
from bai.manager.api.params import MAX_DEPTH, _json_module, check_json, parse_json


@pytest.mark.parametrize("raw, field", [
    (b'{"name": "a\\u0000b"}', "name"),
    (b'{"config": {"environ": {"X": ["ok", "\\u0000"]}}}', "config.environ.X.1"),
    (b'{"config": {"a\\u0000": 1}}', "config"),
])
def test_a_nul_anywhere_is_refused_naming_where(raw, field):
    with pytest.raises(InvalidAPIParameters) as err:
        parse_json(raw)
    assert err.value.data == {"field": field}
    assert "NUL" in str(err.value)


def test_an_escaped_backslash_before_u0000_is_no_nul():
    assert parse_json(b'{"cmd": "echo \\\\u0000"}') == {"cmd": "echo \\u0000"}


def test_a_raw_nul_is_no_json():
    with pytest.raises(InvalidAPIParameters, match="must be JSON"):
        parse_json(b'{"name": "a\x00b"}')


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a": ', "}")])
def test_nesting_past_the_limit_is_refused_and_up_to_it_accepted(opener, closer):
    deepest_allowed = opener * MAX_DEPTH + "1" + closer * MAX_DEPTH
    assert parse_json(deepest_allowed.encode()) is not None
    too_deep = opener * (MAX_DEPTH + 1) + "1" + closer * (MAX_DEPTH + 1)
    with pytest.raises(InvalidAPIParameters, match="nested deeper"):
        parse_json(too_deep.encode())


def test_a_plain_body_parses_unchanged():
    body = {"name": "c-1", "config": {"environ": {"A": "b"}, "mounts": []}, "enqueueOnly": True}
    assert parse_json(json.dumps(body).encode()) == body


@pytest.mark.parametrize("raw", [b'{"a": NaN}', b'{"a": [1, Infinity]}', b'{"a": -Infinity}'])
def test_nan_and_infinity_are_no_json(raw):
    with pytest.raises(InvalidAPIParameters, match="must be JSON"):
        parse_json(raw)


@pytest.mark.parametrize("raw", [
    b'{"name": "a\\ud800b"}', b'{"n": "\\ud83d\\ude00"}', b'{"x": 1e400, "y": -0, "z": 5e-324}',
    b'{"x": 123456789012345678901234567890, "y": 9007199254740993.0}', b'{"a": 1, "a": 2}',
    b'  {"name": "x"}  \n', b'{"\xc3\xa9": "\\u00e9\\/\\b\\f\\n\\r\\t\\"\\\\"}', b'[1, "2", null]',
    b"[" * 300 + b"]" * 300, b"", b"  ", b'{"name": "x",}', b'{"c": 01}', b'{"name": "a\nb"}',
    b'{"name": "\xff\xfe"}', b'\xef\xbb\xbf{"name": "x"}', b'{"name": "x"} x', b'{"a": "\\x"}',
])
def test_bodies_read_as_the_json_module_reads_them(raw):
    """pydantic-core's reader goes first: each body here is accepted with the json module's
    value or refused with its problem (the reader refuses some that the module accepts)."""
    def outcome(read):
        try:
            return "value", repr(read(raw))
        except InvalidAPIParameters as e:
            return "problem", str(e), e.data

    def json_module(data):
        value = _json_module(data)
        check_json(value)
        return value

    assert outcome(parse_json) == outcome(json_module)
