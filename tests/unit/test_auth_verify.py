"""Request authentication without a database: header parsing, the date window, signature checks."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from bai.common.auth import make_headers, sign
from bai.common.errors import AuthFailed
from bai.manager.services.auth import KeypairRecord, SignedRequest, check_date, check_headers, verify

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
    with pytest.raises(AuthFailed, match="AKIAIOSFODNN7EXAMPLE") as err:
        verify(None, check_headers(req), req)
    assert err.value.title == "Unknown access key."
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
