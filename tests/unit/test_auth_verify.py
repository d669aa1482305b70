"""Request authentication without a database: header parsing, the date window, signature checks."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from bai.common.auth import BODY_HASH_HEADER, make_headers, sign
from bai.common.errors import AuthFailed
from bai.manager.services.auth import (
    KeypairRecord, SignedRequest, authenticate, check_date, check_headers, keypair_cache, verify,
)

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
NOW = datetime(2026, 11, 21, 5, 19, 26, tzinfo=timezone.utc)


def record(**kw) -> KeypairRecord:
    base = dict(access_key=AK, secret_key=SK, is_active=True, is_admin=False, resource_policy="default",
                user_id=uuid.uuid4(), user_email="u@example.org", user_active=True,
                domain_name="default", role="user")
    base.update(kw)
    return KeypairRecord(**base)


def request(**over) -> SignedRequest:
    """A correctly signed SSE request, then with the fields in ``over`` changed."""
    method, path = "GET", "/events/session?sessionName=s1&scope=*"
    ctype, host = "application/octet-stream", "127.0.0.1:18091"
    h = make_headers(AK, SK, method, path, host, ctype, now=NOW)
    fields = dict(method=method, path_qs=path, host=host, content_type=ctype,
                  authorization=h["Authorization"], date=h["Date"], version=h["X-BackendAI-Version"])
    fields.update(over)
    return SignedRequest(**fields)


def test_captured_vector_verifies():
    # client-protocol 2.1 test vector (#039)
    date = "2026-11-21T05:19:26.597415+00:00"
    sig = "9db9aca7dc25de7b8f2f5636723b194f6760197837cf39ec92314f963edad0d2"
    req = SignedRequest("POST", "/session", "127.0.0.1:18091", "application/json",
                        f"BackendAI signMethod=HMAC-SHA256, credential={AK}:{sig}", date, "v7.20230615")
    caller = verify(record(), check_headers(req), req)
    assert caller.access_key == AK and caller.is_admin is False


def test_signature_covers_path_host_and_content_type():
    good = request()
    verify(record(), check_headers(good), good)
    for change in (dict(path_qs="/events/session?sessionName=s2&scope=*"), dict(host="localhost:18091"),
                   dict(content_type="text/plain"), dict(method="POST"), dict(version="v6.20220615")):
        bad = request(**change)
        with pytest.raises(AuthFailed) as err:
            verify(record(), check_headers(bad), bad)
        assert err.value.title == "Credential/signature mismatch."


def test_refusals_name_the_problem():
    req = request()
    with pytest.raises(AuthFailed) as err:
        verify(record(is_active=False), check_headers(req), req)
    assert err.value.title == "Inactive keypair."
    with pytest.raises(AuthFailed) as err:
        verify(record(user_active=False), check_headers(req), req)
    assert err.value.title == "Inactive user."
    wrong = request(authorization=request().authorization[:-4] + "0000")
    with pytest.raises(AuthFailed):
        verify(record(), check_headers(wrong), wrong)


@pytest.mark.parametrize("header,title", [
    (None, "Authorization header missing."),
    ("Bearer abc", "Malformed Authorization header."),
    (f"BackendAI signMethod=HMAC-MD5, credential={AK}:abcd", "Unsupported signature method."),
])
def test_bad_authorization_headers(header, title):
    with pytest.raises(AuthFailed) as err:
        check_headers(request(authorization=header))
    assert err.value.title == title and err.value.status == 401


def test_an_unknown_key_and_a_wrong_signature_get_one_answer():
    # key enumeration: nothing tells an unknown access key from a known one with a bad signature
    req = request()
    with pytest.raises(AuthFailed) as unknown:
        verify(None, check_headers(req), req)
    wrong = request(authorization=req.authorization[:-4] + "0000")
    with pytest.raises(AuthFailed) as mismatch:
        verify(record(), check_headers(wrong), wrong)
    assert unknown.value.to_problem() == mismatch.value.to_problem()
    assert unknown.value.title == "Credential/signature mismatch." and AK not in str(unknown.value)


def test_a_body_hash_is_covered_by_the_signature():
    method, path, ctype, host = "POST", "/session", "application/json", "127.0.0.1:18091"
    h = make_headers(AK, SK, method, path, host, ctype, now=NOW, body=b'{"image": "python"}')
    digest = h[BODY_HASH_HEADER]
    assert digest == hashlib.sha256(b'{"image": "python"}').hexdigest()
    fields = dict(method=method, path_qs=path, host=host, content_type=ctype,
                  authorization=h["Authorization"], date=h["Date"], version=h["X-BackendAI-Version"])
    good = SignedRequest(**fields, body_sha256=digest)
    verify(record(), check_headers(good), good)
    # another body's hash with the captured signature, or the hash header dropped: refused
    for other in (hashlib.sha256(b'{"image": "evil"}').hexdigest(), None):
        bad = SignedRequest(**fields, body_sha256=other)
        with pytest.raises(AuthFailed) as err:
            verify(record(), check_headers(bad), bad)
        assert err.value.title == "Credential/signature mismatch."
    with pytest.raises(AuthFailed) as err:
        check_headers(SignedRequest(**fields, body_sha256="not-hex"))
    assert err.value.title == "Malformed body hash header."
    # without a body the official client's signature (hash of b"") is what we send too
    plain = make_headers(AK, SK, "GET", "/", "h:1", "text/plain", now=NOW)
    assert BODY_HASH_HEADER not in plain
    assert make_headers(AK, SK, "GET", "/", "h:1", "text/plain", now=NOW, body=b"")[
        "Authorization"] == plain["Authorization"]


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16),
                                  timedelta(days=365), -timedelta(days=365)],
                         ids=["16m-late", "16m-early", "1y-late", "1y-early"])
def test_a_date_outside_the_window_is_refused_late_or_early(skew):
    # a date in the future (now - date < 0) is as refused as one in the past: a request signed
    # with a date ahead could be replayed for that long
    with pytest.raises(AuthFailed) as err:
        check_date((NOW - skew).isoformat(), NOW, 900)
    assert err.value.title == "Request date outside the allowed window."


def test_date_window():
    check_date(NOW.isoformat(), NOW + timedelta(minutes=14), 900)
    check_date(NOW.isoformat(), NOW - timedelta(minutes=14), 900)
    with pytest.raises(AuthFailed) as err:
        check_date(NOW.isoformat(), NOW + timedelta(minutes=16), 900)
    assert err.value.title == "Request date outside the allowed window."
    with pytest.raises(AuthFailed, match="Date"):
        check_date(None, NOW, 900)
    with pytest.raises(AuthFailed) as err:
        check_date("yesterday", NOW, 900)
    assert err.value.title == "Malformed Date header."


def test_sign_matches_make_headers():
    h = make_headers(AK, SK, "GET", "/", "h:1", "text/plain", now=NOW)
    assert h["Authorization"].endswith(sign(SK, "GET", "/", h["Date"], "h:1", "text/plain"))


def test_a_kept_signing_key_serves_only_its_secret_and_day():
    # the derived key is kept per (secret, day, host): after a good request, the same
    # signature under another secret fails, and a request of the next day still passes
    good = request()
    verify(record(), check_headers(good), good)
    with pytest.raises(AuthFailed) as err:
        verify(record(secret_key=SK[::-1]), check_headers(good), good)
    assert err.value.title == "Credential/signature mismatch."
    for when in (NOW + timedelta(days=1), NOW - timedelta(days=1)):
        h = make_headers(AK, SK, good.method, good.path_qs, good.host, good.content_type, now=when)
        nxt = request(authorization=h["Authorization"], date=h["Date"])
        assert verify(record(), check_headers(nxt), nxt).access_key == AK
        day = when.strftime("%Y%m%d")
        assert verify(record(), check_headers(nxt), nxt, day).access_key == AK


def test_authenticate_signs_with_the_utc_day_of_a_date_with_an_offset():
    # 08:30 in +09:00 is the previous day in UTC, the day the scheme signs with
    date = "2026-11-21T08:30:00+09:00"
    base = request()
    sig = sign(SK, base.method, base.path_qs, date, base.host, base.content_type)
    req = request(date=date, authorization=f"BackendAI signMethod=HMAC-SHA256, credential={AK}:{sig}")
    store = SimpleNamespace(is_sqlite=True, cache_changes={"keypairs": 0})
    cache = keypair_cache()
    cache.put(AK, 0, record())  # kept: no database read
    when = datetime(2026, 11, 20, 23, 31, tzinfo=timezone.utc)
    caller = asyncio.run(authenticate(store, req, skew_seconds=900, now=when, cache=cache))
    assert caller.access_key == AK


def test_a_kept_records_caller_is_made_once_and_is_its_own():
    # a kept record answers every request of its keypair: its caller is made once, and a
    # record read after a change (here: made admin) answers with the change
    user = record()
    assert user.caller() is user.caller()
    admin = record(is_admin=True)
    assert admin.caller().is_admin and not user.caller().is_admin
    assert user.caller().user_id == user.user_id and user == dataclasses.replace(user)
