"""Slot parsing and arithmetic."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bai.common.errors import InvalidResourceSpec
from bai.common.resources import (
    ResourceSlot, check_session_request, format_size, humanize_slots, parse_request, parse_size,
)


@pytest.mark.parametrize("text,expected", [
    ("8g", 8 * 2**30), ("512m", 512 * 2**20), ("1.5G", 3 * 2**29), ("256MiB", 256 * 2**20),
    ("1024", 1024), ("64k", 65536),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("raw", [{"cpu": "abc"}, {"mem": "1z"}, {"cpu": "-1"},
                                 {"cuda.device": "0.5"}, {"cpu": "nan"}, {"bad name!": "1"}])
def test_bad_requests_name_the_slot(raw):
    with pytest.raises(InvalidResourceSpec) as e:
        parse_request(raw)
    assert str(list(raw)[0]) in str(e.value)


@pytest.mark.parametrize("raw, known", [
    ({"cpu": "0"}, None), ({"mem": "0"}, None), ({"gpu": "1"}, ()), ({"foo": "1"}, ()),
    ({"rocm.device": "1"}, ("cpu", "mem")),
])
def test_a_session_request_refuses_zero_and_unknown_slots_listing_the_known(raw, known):
    with pytest.raises(InvalidResourceSpec) as e:
        check_session_request(parse_request(raw), known)
    assert list(raw)[0] in str(e.value)
    assert "cuda.shares" in str(e.value) and "cuda.device" in str(e.value)


def test_a_session_request_takes_known_slots_and_what_agents_report():
    check_session_request(parse_request({"cpu": "0.5", "mem": "1g", "cuda.shares": "0.1"}))
    check_session_request(parse_request({"rocm.device": "1"}), {"rocm.device"})
    check_session_request(parse_request({"foo": "1"}), None)  # names left to the manager


def test_request_and_fit():
    req = parse_request({"cpu": "4", "mem": "8g", "cuda.shares": "0.5"})
    cap = ResourceSlot.from_json({"cpu": "8", "mem": str(16 * 2**30), "cuda.shares": "1"})
    assert req.fits_in(cap)
    assert not (req + req + req).fits_in(cap)
    assert (req + req + req).shortfall(cap) == {
        "cpu": (Decimal(12), Decimal(8)), "mem": (Decimal(24 * 2**30), Decimal(16 * 2**30)),
        "cuda.shares": (Decimal("1.5"), Decimal(1)),
    }
    assert humanize_slots(req) == "cpu:4, cuda.shares:0.5, mem:8g"
    assert format_size(1536 * 2**20) == "1.5g"


amounts = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False)
slots = st.dictionaries(st.sampled_from(["cpu", "mem", "cuda.shares"]), amounts, max_size=3)


@given(slots, slots)
def test_add_then_sub_is_identity(a, b):
    a, b = ResourceSlot(a), ResourceSlot(b)
    assert ((a + b) - b).nonzero() == a.nonzero()


@given(slots)
def test_json_roundtrip(a):
    a = ResourceSlot(a)
    assert ResourceSlot.from_json(a.to_json()).nonzero() == a.nonzero()


@given(st.lists(slots, max_size=6))
def test_total_is_the_sum_of_each_slot_over_every_key(parts):
    total = ResourceSlot.total(parts)
    assert isinstance(total, ResourceSlot)
    assert set(total) == {k for p in parts for k in p}
    for k, v in total.items():
        assert v == sum((p.get(k, Decimal(0)) for p in parts), Decimal(0))
