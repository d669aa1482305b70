# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""The official client 23.9.10 in session mode (``BACKEND_ENDPOINT_TYPE=session``): ``backend.ai
login`` with email and password, then ``ps``, ``run``, ``vfolder list`` through ``/func`` on the
login cookie with the rights of the user's keypair, and ``logout`` ending it. Attacks as a normal
user: another user's data is out of reach through ``/func``, a logged-out cookie is refused, and
what a browser on another site can send (a form POST, a fetch without custom headers, a
WebSocket) is refused with the cookie attached."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest
from dashboard_support import call
from official import Official, make_official, requires_official, unique_name

pytestmark = [requires_official, pytest.mark.official_client]

CLIENT = {"X-BackendAI-Version": "v7.20230615", "X-BackendAI-Domain": "default"}
STATE = Path(".local/state/backend.ai")


def session_mode(ostack, who: str, home: Path) -> Official:
    o = make_official(ostack.endpoint, ostack.keys()[who], home)
    o.extra_env = {"BACKEND_ENDPOINT_TYPE": "session", "BACKEND_ACCESS_KEY": "",
                   "BACKEND_SECRET_KEY": ""}
    return o


def client_login(o: Official, email: str, password: str, check: bool = True):
    return o("login", input=f"{email}\n{password}\n", check=check)


def raw_login(ostack, who: str) -> str:
    """The cookie token of a login as the official client makes it."""
    keys = ostack.keys()[who]
    status, headers, body = call(ostack, "POST", "/server/login",
                                 {"username": f"{who}@bai.local", "password": keys["password"]},
                                 headers=CLIENT)
    assert status == 200 and body["authenticated"] is True, body
    return headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


def user_names(o: Official) -> set[str]:
    return {i["name"] for i in o.list_json("ps", "--all", "--limit", "100")["items"]}


@pytest.fixture(scope="module")
def admin_data(ostack, admin):
    """An admin's running session and folder, which the user must never reach."""
    name = unique_name("sm-admin")
    admin("start", "-t", name, "-r", "cpu=0.1", "-r", "mem=64m", "python")
    folder = unique_name("sm-adminf")
    admin("vfolder", "create", folder, "local")
    yield name, folder
    admin("rm", name, check=False)


def test_login_ps_run_vfolder_logout(ostack, user, tmp_path):
    o = session_mode(ostack, "user", tmp_path / "sm")
    folder = unique_name("sm-data")
    user("vfolder", "create", folder, "local")  # made with the keypair, seen through the cookie

    res = client_login(o, "user@bai.local", ostack.keys()["user"]["password"])
    assert "Login succeeded." in res.output
    assert (o.home / STATE / "cookie.dat").exists()

    name = unique_name("sm-run")
    res = o("run", "-t", name, "-c", "print('hello through func')", "python", timeout=180)
    assert "hello through func" in res.stdout
    # the same listing as the user's keypair gets: the cookie acts as that keypair
    assert name in user_names(o)
    assert user_names(o) == user_names(user)
    rows = o.list_json("vfolder", "list")["items"]
    assert folder in {r["name"] for r in rows}
    o("rm", name)

    res = o("logout")
    assert "Logout done." in res.output
    assert not (o.home / STATE / "cookie.dat").exists()
    res = o("rm", name, check=False)
    assert res.returncode != 0 and "401" in res.output


def test_a_wrong_password_is_refused_readably(ostack, tmp_path):
    o = session_mode(ostack, "user", tmp_path / "bad")
    res = client_login(o, "user@bai.local", "not-the-password", check=False)
    assert res.returncode != 0
    assert "Login failed." in res.output and "email or password is wrong" in res.output
    assert not (o.home / STATE / "cookie.dat").exists()


def test_another_users_data_is_not_reachable_through_func(ostack, admin_data, tmp_path):
    name, folder = admin_data
    o = session_mode(ostack, "user", tmp_path / "nosy")
    client_login(o, "user@bai.local", ostack.keys()["user"]["password"])
    assert name not in user_names(o)
    res = o("ps", "--all", "--access-key", ostack.keys()["admin"]["access_key"], check=False)
    assert name not in res.stdout
    assert folder not in {r["name"] for r in o.list_json("vfolder", "list")["items"]}

    token = raw_login(ostack, "user")
    for method, path in [("GET", f"/func/session/{name}"), ("GET", f"/func/session/{name}/logs"),
                         ("DELETE", f"/func/session/{name}"), ("GET", "/func/admin/keypairs"),
                         ("GET", f"/func/folders/{folder}/files")]:
        status, _, body = call(ostack, method, path, cookie=token, headers=CLIENT)
        assert status in (403, 404), (method, path, status, body)
    status, _, body = call(ostack, "POST", "/func/admin/gql", {
        "query": "{ compute_session_list(limit: 100, offset: 0) { items { name } } }"},
        cookie=token, headers=CLIENT)
    assert status == 200 and name not in json.dumps(body)
    # the cluster-internal and storage routes are not behind /func, however spelt
    for path in ("/func/internal/agents/heartbeat", "/func/%2e%2e/internal/agents/heartbeat",
                 "/func/storage/download", "/func/dashboard/api/me", "/func/func/"):
        status, _, _ = call(ostack, "POST" if "heartbeat" in path else "GET", path,
                            cookie=token, headers=CLIENT)
        assert status == 404, path
    assert admin_running(ostack, name)


def admin_running(ostack, name: str) -> bool:
    res = ostack.cli("--output", "json", "ps", "-f", "name,status")
    return any(i["name"] == name for i in json.loads(res.stdout)["items"])


def test_a_logged_out_cookie_is_refused(ostack, tmp_path):
    o = session_mode(ostack, "user", tmp_path / "out")
    client_login(o, "user@bai.local", ostack.keys()["user"]["password"])
    kept = (o.home / STATE / "cookie.dat").read_bytes()
    o("logout")
    (o.home / STATE / "cookie.dat").write_bytes(kept)  # a stolen copy of the cookie
    res = o("rm", unique_name("sm-none"), check=False)
    assert res.returncode != 0 and "401" in res.output

    token = raw_login(ostack, "user")
    status, _, _ = call(ostack, "POST", "/server/logout", cookie=token, headers=CLIENT)
    assert status == 200
    status, _, body = call(ostack, "GET", "/func/session/x", cookie=token, headers=CLIENT)
    assert status == 401, body


def test_what_a_cross_site_page_can_send_is_refused(ostack):
    token = raw_login(ostack, "user")
    name = unique_name("sm-csrf")
    form = urlencode({"image": "python", "name": name, "enqueueOnly": "true"}).encode()
    sends = [
        # an HTML form POST from another site: no custom header, form-encoded, foreign Origin
        {"raw": form, "headers": {"Content-Type": "application/x-www-form-urlencoded",
                                  "Origin": "http://evil.example"}},
        # a fetch in no-cors mode: text/plain and no custom header
        {"raw": json.dumps({"image": "python", "name": name}).encode(),
         "headers": {"Content-Type": "text/plain"}},
        # the client's header but a foreign origin
        {"body": {"image": "python", "name": name, "enqueueOnly": True},
         "headers": {**CLIENT, "Origin": "http://evil.example"}},
    ]
    for send in sends:
        status, _, body = call(ostack, "POST", "/func/session", send.get("body"), cookie=token,
                               headers=send["headers"], raw=send.get("raw"))
        assert status == 403 and body["title"] == "CSRF check failed.", (send, status, body)
    # a browser's WebSocket handshake cannot carry the header: no cross-site WebSocket hijacking
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
          "Origin": "http://evil.example"}
    status, _, _ = call(ostack, "GET", f"/func/stream/session/{name}/execute", cookie=token,
                        headers=ws)
    assert status == 403
    # logout by a cross-site form is refused too; the login stays
    status, _, _ = call(ostack, "POST", "/server/logout", cookie=token,
                        headers={"Origin": "http://evil.example"})
    assert status == 403
    # a login needs JSON from no foreign origin (no login CSRF)
    status, _, body = call(ostack, "POST", "/server/login",
                           raw=urlencode({"username": "user@bai.local", "password": "x"}).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and body["type"].startswith("https://api.backend.ai/probs/")
    status, _, _ = call(ostack, "POST", "/server/login",
                        {"username": "user@bai.local", "password": "x"},
                        headers={"Origin": "http://evil.example"})
    assert status == 403
    # the control: the same cookie with the client's header may (so the refusals are the checks)
    status, _, body = call(ostack, "POST", "/func/session",
                           {"image": "python", "name": name, "enqueueOnly": True,
                            "config": {"resources": {"cpu": "0.1", "mem": "64m"}}},
                           cookie=token, headers=CLIENT)
    assert status in (200, 201), body
    status, _, _ = call(ostack, "DELETE", f"/func/session/{name}", cookie=token, headers=CLIENT)
    assert status in (200, 204)
    # nothing answers a CORS preflight with a grant
    status, headers, _ = call(ostack, "OPTIONS", "/func/session", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-backendai-version"})
    assert not any(h.lower().startswith("access-control-allow") for h in headers)
