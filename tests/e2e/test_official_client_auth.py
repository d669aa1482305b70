# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""Authentication as the official Backend.AI CLI 23.9.10 meets it: a wrong signature or a Date
outside the allowed window is refused with 401 and a problem body the client prints readably."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from official import (
    OFFICIAL_EXE,
    requires_official,
    unique_name,
)

from bai.common import auth

pytestmark = [requires_official, pytest.mark.official_client]

KEYPAIR_QUERY = "query {  keypair {    user_id access_key secret_key is_active is_admin  }}"


def signed_gql(endpoint: str, access_key: str, secret_key: str, date: datetime):
    """One `POST /admin/gql` signed the way the official client signs it, with the given Date."""
    path = "/admin/gql"
    date_header = date.isoformat()
    host = urlsplit(endpoint).netloc
    sig = auth.sign(secret_key, "POST", path, date_header, host, "application/json")
    req = urllib.request.Request(
        endpoint + path,
        data=json.dumps({"query": KEYPAIR_QUERY, "variables": {}}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Date": date_header,
            "X-BackendAI-Version": auth.API_VERSION,
            "X-BackendAI-Domain": "default",
            "User-Agent": "bai-test",
            "Authorization": f"BackendAI signMethod=HMAC-SHA256, credential={access_key}:{sig}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get_content_type(), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), json.loads(e.read())


def official_print_error(status: int, reason: str, body: dict) -> str:
    """What the official client's own error printer shows for this answer (stderr)."""
    python = str(Path(OFFICIAL_EXE).parent / "python")
    code = (
        "import json, sys\n"
        "from ai.backend.client.exceptions import BackendAPIError\n"
        "from ai.backend.client.cli.pretty import print_error\n"
        "status, reason, body = json.load(sys.stdin)\n"
        "print_error(BackendAPIError(status, reason, body), file=sys.stderr)\n"
    )
    proc = subprocess.run([python, "-c", code], input=json.dumps([status, reason, body]),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def assert_problem_401(status, ctype, body):
    assert status == 401
    assert ctype in ("application/problem+json", "application/json")
    assert isinstance(body, dict)
    assert body["type"].startswith("https://api.backend.ai/probs/")
    assert isinstance(body["title"], str) and body["title"]


def test_raw_request_signed_like_the_client_is_accepted(ostack):
    keys = ostack.keys()["admin"]
    status, _, body = signed_gql(ostack.endpoint, keys["access_key"], keys["secret_key"],
                                 datetime.now(UTC))
    assert status == 200, body
    assert body["data"]["keypair"]["access_key"] == keys["access_key"]
    assert body["data"]["keypair"]["is_admin"] is True


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=1)])
def test_date_outside_window_is_refused(ostack, skew):
    keys = ostack.keys()["admin"]
    status, ctype, body = signed_gql(ostack.endpoint, keys["access_key"], keys["secret_key"],
                                     datetime.now(UTC) + skew)
    assert_problem_401(status, ctype, body)
    assert "data" not in body or "keypair" not in (body.get("data") or {})
    shown = official_print_error(status, "Unauthorized", body)
    assert "BackendAPIError: 401 Unauthorized" in shown
    assert body["title"] in shown


def test_wrong_secret_raw_request_is_refused(ostack):
    keys = ostack.keys()["admin"]
    status, ctype, body = signed_gql(ostack.endpoint, keys["access_key"], "x" * 40,
                                     datetime.now(UTC))
    assert_problem_401(status, ctype, body)
    assert body["title"] in official_print_error(status, "Unauthorized", body)


def test_wrong_secret_through_the_official_client(admin):
    bad = admin.with_keys(admin.access_key, "wrong" + admin.secret_key[5:])
    name = unique_name("ofa-bad")

    res = bad("events", name)  # the client prints the error and exits 0 (client-protocol 8.2)
    assert "BackendAPIError: 401 Unauthorized" in res.stderr
    assert res.stderr.strip().splitlines()[1].strip()  # the problem's title on the next line

    res = bad("rm", name, check=False)
    assert res.returncode == 1
    assert "BackendAPIError: 401 Unauthorized" in res.stderr

    res = bad("run", "--rm", "-t", name, "-c", "print('must not run')", "python")
    assert "BackendAPIError(401, 'Unauthorized', {" in res.stderr
    assert "auth-failed" in res.stderr or "/probs/" in res.stderr
    assert "must not run" not in res.stdout
    # nothing was created with the bad signature
    doc = admin.list_json("ps", "--all", "--filter", f'name == "{name}"')
    assert doc["count"] == 0


def test_unknown_access_key_through_the_official_client(admin):
    stranger = admin.with_keys("AKIANOSUCHKEY0000000", admin.secret_key)
    res = stranger("events", unique_name("ofa-nokey"))
    assert "BackendAPIError: 401 Unauthorized" in res.stderr
