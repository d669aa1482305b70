"""Attacks on the dashboard's cookie login, run as a normal user against the shared embedded
stack; each must fail. A request that rides on the login cookie may change nothing without the
login's CSRF token and this server's origin; the cookie never reaches beyond the user's keypair;
logging out, or a password change, ends the login."""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import os

import pytest
from dashboard_support import call, login


def password(stack, who: str) -> str:
    return stack.keys()[who]["password"]


def user_session_names(stack) -> set[str]:
    out = stack.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", "name",
                    user=True).stdout
    return {i["name"] for i in json.loads(out)["items"]}


@pytest.fixture(scope="module")
def user_login(stack):
    return login(stack, "user@bai.local", password(stack, "user"))


CREATE = {"image": "python", "name": "csrf-victim", "enqueueOnly": True,
          "config": {"resources": {"cpu": "0.1", "mem": "64m"}}}


def test_the_cookie_is_httponly_and_samesite_strict(user_login):
    _, _, set_cookie = user_login
    attrs = {a.strip().split("=", 1)[0].lower(): a for a in set_cookie.split(";")}
    assert "httponly" in attrs and attrs["samesite"].strip().lower() == "samesite=strict"
    assert "secure" not in attrs  # plain HTTP here; test_tls checks Secure over TLS


@pytest.mark.parametrize("headers", [
    {},  # no token: what a cross-site form or fetch sends
    {"X-BAI-CSRF": "guessed"},
    {"X-BAI-CSRF": "", "Origin": "http://evil.example"},
])
def test_a_cookie_without_the_csrf_token_changes_nothing(stack, user_login, headers):
    token, _, _ = user_login
    before = user_session_names(stack)
    status, _, body = call(stack, "POST", "/session", CREATE, cookie=token, headers=headers)
    assert status == 403 and body["title"] == "CSRF check failed."
    assert user_session_names(stack) == before


def test_the_right_token_from_a_foreign_origin_is_refused(stack, user_login):
    token, csrf, _ = user_login
    status, _, body = call(stack, "POST", "/session", CREATE, cookie=token,
                           headers={"X-BAI-CSRF": csrf, "Origin": "http://evil.example"})
    assert status == 403
    assert "csrf-victim" not in user_session_names(stack)


def test_terminate_and_execute_need_the_token_too(stack, user_login):
    token, csrf, _ = user_login
    stack.cli("start", "--enqueue-only", "-t", "csrf-keep", "-r", "cpu=0.1", "python", user=True)
    try:
        status, _, _ = call(stack, "DELETE", "/session/csrf-keep", cookie=token)
        assert status == 403
        assert "csrf-keep" in user_session_names(stack)
        out = stack.cli("--output", "json", "ps", "-f", "name,status", user=True).stdout
        assert any(i["name"] == "csrf-keep" for i in json.loads(out)["items"])
        # a WebSocket runs code: its upgrade needs the token (in the query) as well
        ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
        status, _, _ = call(stack, "GET", "/stream/session/csrf-keep/execute", cookie=token,
                            headers=ws)
        assert status == 403
        # with the token, the same cookie may (the control: the checks above are the CSRF's)
        status, _, _ = call(stack, "DELETE", "/session/csrf-keep", cookie=token,
                            headers={"X-BAI-CSRF": csrf})
        assert status == 200
    finally:
        stack.cli("rm", "csrf-keep", user=True, check=False)


def test_the_cookie_reaches_only_the_users_own_things(stack, user_login):
    token, csrf, _ = user_login
    stack.cli("start", "--enqueue-only", "-t", "admins-own", "-r", "cpu=0.1", "python")
    try:
        out = stack.cli("--output", "json", "ps", "-f", "name,session_id").stdout
        sid = next(i["session_id"] for i in json.loads(out)["items"] if i["name"] == "admins-own")
        assert call(stack, "GET", f"/session/{sid}", cookie=token)[0] == 404
        assert call(stack, "DELETE", f"/session/{sid}", cookie=token,
                    headers={"X-BAI-CSRF": csrf})[0] == 404
        assert call(stack, "GET", "/admin/agents", cookie=token)[0] == 403
        assert call(stack, "GET", "/dashboard/api/stats", cookie=token)[0] == 403
        status, _, _ = call(stack, "PATCH", "/admin/users/admin@bai.local",
                            {"password": "taken-over-1"}, cookie=token,
                            headers={"X-BAI-CSRF": csrf})
        assert status == 403
        login(stack, "admin@bai.local", password(stack, "admin"))  # still the admin's password
    finally:
        stack.cli("rm", "admins-own", check=False)


def test_login_refuses_forms_and_foreign_origins_and_says_nothing_of_who_exists(stack):
    form = b"email=user%40bai.local&password=x"
    status, headers, _ = call(stack, "POST", "/dashboard/api/login", raw=form,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "Set-Cookie" not in headers
    status, headers, _ = call(stack, "POST", "/dashboard/api/login",
                              {"email": "user@bai.local", "password": password(stack, "user")},
                              headers={"Origin": "http://evil.example"})
    assert status == 403 and "Set-Cookie" not in headers
    wrong = call(stack, "POST", "/dashboard/api/login",
                 {"email": "user@bai.local", "password": "not-the-password"})
    nobody = call(stack, "POST", "/dashboard/api/login",
                  {"email": "nobody@bai.local", "password": "not-the-password"})
    assert wrong[0] == nobody[0] == 401 and wrong[2] == nobody[2]
    users = stack.cli("--output", "json", "admin", "user", "list").stdout
    assert "password_hash" not in users and "scrypt" not in users


def test_logout_ends_the_login(stack):
    token, csrf, _ = login(stack, "user@bai.local", password(stack, "user"))
    assert call(stack, "GET", "/dashboard/api/me", cookie=token)[0] == 200
    assert call(stack, "POST", "/dashboard/api/logout", cookie=token)[0] == 403  # no token
    status, headers, _ = call(stack, "POST", "/dashboard/api/logout", cookie=token,
                              headers={"X-BAI-CSRF": csrf})
    assert status == 200 and "bai_session=;" in headers["Set-Cookie"].replace('""', "")
    assert call(stack, "GET", "/dashboard/api/me", cookie=token)[0] == 401
    assert call(stack, "GET", "/admin/gql", cookie=token)[0] in (401, 405)


def test_password_change_needs_the_old_one_and_ends_other_logins(stack):
    email = "pw-change@example.com"
    stack.cli("admin", "user", "create", email)
    stack.cli("admin", "keypair", "create", email)
    stack.cli("admin", "user", "set-password", email, "--password-stdin", input="first-pass-1\n")
    other, _, _ = login(stack, email, "first-pass-1")
    token, csrf, _ = login(stack, email, "first-pass-1")
    csrf_headers = {"X-BAI-CSRF": csrf}
    status, _, body = call(stack, "POST", "/dashboard/api/password",
                           {"current_password": "wrong-pass-1", "new_password": "second-pass-2"},
                           cookie=token, headers=csrf_headers)
    assert status == 403 and body["data"]["field"] == "current_password"
    status, _, body = call(stack, "POST", "/dashboard/api/password",
                           {"current_password": "first-pass-1", "new_password": "short"},
                           cookie=token, headers=csrf_headers)
    assert status == 400 and body["title"] == "Password too short."
    status, _, _ = call(stack, "POST", "/dashboard/api/password",
                        {"current_password": "first-pass-1", "new_password": "second-pass-2"},
                        cookie=token, headers=csrf_headers)
    assert status == 200
    assert call(stack, "GET", "/dashboard/api/me", cookie=token)[0] == 200  # this one stays
    assert call(stack, "GET", "/dashboard/api/me", cookie=other)[0] == 401  # the other ended
    assert call(stack, "POST", "/dashboard/api/login",
                {"email": email, "password": "first-pass-1"})[0] == 401
    login(stack, email, "second-pass-2")


def test_guessing_is_throttled(stack):
    email = "guessed@example.com"
    stack.cli("admin", "user", "create", email)
    stack.cli("admin", "keypair", "create", email)
    stack.cli("admin", "user", "set-password", email, "--password-stdin", input="right-pass-1\n")
    for _ in range(10):
        assert call(stack, "POST", "/dashboard/api/login",
                    {"email": email, "password": "guess-guess"})[0] == 401
    status, _, body = call(stack, "POST", "/dashboard/api/login",
                           {"email": email, "password": "right-pass-1"})
    assert status == 429 and body["title"] == "Too many failed logins."


TRAVERSALS = [
    "/dashboard/static/../../../../../../etc/passwd",
    "/dashboard/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/dashboard/static/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/dashboard/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/dashboard/static//etc/passwd",
    "/dashboard/static/%2fetc%2fpasswd",
    "/dashboard/static/../api/dashboard.py",
    "/dashboard/static/%2e%2e/api/dashboard.py",
    "/dashboard/static/..%5capi%5cdashboard.py",
    "/dashboard/static/app.js%00.py",
    "/dashboard/static/../../manager/app.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_the_static_files_route_serves_nothing_outside_the_dashboard(stack, path):
    """Raw paths (http.client sends them as written, no normalising) that try to climb out of
    the dashboard's folder: to the host's /etc/passwd or to the manager's own source."""
    conn = httpclient.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert b"root:" not in body and b"import " not in body, (path, resp.status, body[:200])
    assert resp.status in (400, 403, 404), (path, resp.status)


def test_the_static_files_route_still_serves_the_dashboard(stack):
    """The guard of the attacks above: the same route does serve a file that is there."""
    status, headers, _ = call(stack, "GET", "/dashboard/static/app.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
