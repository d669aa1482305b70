"""HMAC signing matches the official client (captured test vector)."""

from datetime import datetime, timedelta, timezone

from bai.common.auth import (
    date_within_skew, make_headers, parse_authorization, sign, verify,
)

SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DATE = "2026-11-21T05:19:26.597415+00:00"


def test_captured_vector():
    sig = sign(SK, "POST", "/session", DATE, "127.0.0.1:18091", "application/json")
    assert sig == "9db9aca7dc25de7b8f2f5636723b194f6760197837cf39ec92314f963edad0d2"


def test_verify_rejects_any_change():
    args = ("POST", "/session", DATE, "127.0.0.1:18091", "application/json", "v7.20230615")
    sig = sign(SK, *args[:-1])
    assert verify(SK, sig, *args)
    assert not verify(SK + "x", sig, *args)
    assert not verify(SK, sig, "GET", *args[1:])
    assert not verify(SK, sig, "POST", "/session?x=1", *args[2:])
    assert not verify(SK, sig, "POST", "/session", "not a date", *args[3:])


def test_headers_roundtrip():
    h = make_headers("AKIATEST", SK, "GET", "/events/session?sessionName=a&scope=*",
                     "127.0.0.1:1", "application/octet-stream")
    auth = parse_authorization(h["Authorization"])
    assert auth.access_key == "AKIATEST"
    assert verify(SK, auth.signature, "GET", "/events/session?sessionName=a&scope=*", h["Date"],
                  "127.0.0.1:1", "application/octet-stream", h["X-BackendAI-Version"])


def test_clock_skew_window():
    now = datetime(2026, 11, 21, 5, 0, tzinfo=timezone.utc)
    assert date_within_skew((now - timedelta(minutes=14)).isoformat(), now)
    assert not date_within_skew((now - timedelta(minutes=16)).isoformat(), now)
    assert not date_within_skew("garbage", now)
