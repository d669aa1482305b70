"""Apps opened from the dashboard (issue 18), in Debian's headless chromium against a real
embedded stack: the session page opens Jupyter in a new tab on the app proxy's origin (another
port) and a notebook cell prints 42; it opens bai's terminal page in a new tab and a command's
output shows. Then attacks as a normal user (api/webapps.py): another user's ticket, cookie or
session refused; a forged or expired ticket refused; the dashboard's cookie (or any bai
credential) never reaches the app; the app's origin cannot change anything on the dashboard.
Screenshots go to docs/dashboard/."""

from __future__ import annotations

import http.client as httpclient
import json
import shutil
import time
from urllib.parse import urlsplit

import pytest
from browser import browser  # noqa: F401  (the fixture)
from dashboard_support import WAIT_MS, call, login, page_login, shot
from stacks import start_stack

from bai.manager.api import webapps

#: a user's web service that answers with the headers it received (and tries to set a cookie)
ECHO = r'''
import http.server, json, subprocess, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "bai_session=planted; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
'''


def _has_jupyter() -> bool:
    return shutil.which("jupyter-notebook") is not None


@pytest.fixture(scope="module")
def st():
    stack = start_stack("cpu=4", "mem=8g")
    stack.cli("start", "-t", "webnb", "--service", "echo:8000", "-r", "cpu=1", "-r", "mem=1g",
              "python", user=True)
    stack.cli("run", "-t", "webnb", "-c",
              f"open('echo.py', 'w').write({ECHO!r})\n"
              "import subprocess, sys\n"
              "subprocess.Popen([sys.executable, 'echo.py'], start_new_session=True,"
              " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n", "python", user=True)
    stack.cli("start", "-t", "admnb", "--service", "echo:8000", "-r", "cpu=0.5", "-r", "mem=256m",
              "python")  # the admin's: another user
    meta = json.loads((stack.state / "server.json").read_text())
    stack.app_port = meta["app_port"]
    stack.cluster_token = meta["cluster_token"]
    yield stack
    stack.stop()
    shutil.rmtree(stack.home, ignore_errors=True)


def sid_of(st, name: str, user: bool) -> str:
    out = json.loads(st.cli("--output", "json", "ps", "-f", "name,id", user=user).stdout)
    return next(i["session_id"] for i in out["items"] if i["name"] == name)


def pw(st, who: str) -> str:
    return st.keys()[who]["password"]


def app_call(st, method: str, path: str, headers: dict[str, str] | None = None):
    conn = httpclient.HTTPConnection("127.0.0.1", st.app_port, timeout=120)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def ticket(st, sid: str, app: str, cookie: str, csrf: str):
    return call(st, "POST", f"/stream/session/{sid}/apps/{app}/ticket",
                cookie=cookie, headers={"X-BAI-CSRF": csrf})


def signed_in(st, sid: str, app: str, cookie: str, csrf: str) -> str:
    """The app cookie (name=value) a fresh ticket trades for."""
    status, _, body = ticket(st, sid, app, cookie, csrf)
    assert status == 200, body
    url = urlsplit(body["url"])
    assert url.port == st.app_port
    status, headers, _ = app_call(st, "GET", f"{url.path}?{url.query}")
    assert status == 303, (status, headers)
    assert headers["Location"] == f"/app/{sid}/{app}/"
    set_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert f"Path=/app/{sid}/{app}/" in set_cookie
    return set_cookie.split(";", 1)[0]


def echo(st, path: str, headers: dict[str, str]):
    end = time.monotonic() + 60
    while True:  # the user's server may still be starting
        status, hdrs, body = app_call(st, "GET", path, headers)
        if status != 502 or time.monotonic() > end:
            return status, hdrs, body
        time.sleep(0.5)


# --- in the browser -----------------------------------------------------------------------

@pytest.fixture
def ctx(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    context.on("page", lambda p: p.on("pageerror", lambda e: errors.append(str(e))))
    yield context
    context.close()
    assert not [e for e in errors if "jupyter" not in e.lower()], errors


def _session_page(page, st, sid: str) -> None:
    page_login(page, st, "user@bai.local", pw(st, "user"))
    page.goto(f"{st.endpoint}/dashboard/#/session/{sid}")
    page.wait_for_selector("#session-status .st-running", timeout=WAIT_MS)
    page.wait_for_selector("#open-jupyter", timeout=WAIT_MS)


@pytest.mark.skipif(not _has_jupyter(), reason="jupyter-notebook is not installed "
                    "(scripts/install.sh installs Debian's as root)")
def test_jupyter_opens_in_a_new_tab_on_its_own_origin_and_runs_a_cell(ctx, st):
    sid = sid_of(st, "webnb", user=True)
    page = ctx.new_page()
    _session_page(page, st, sid)
    shot(page, "session-apps")
    with ctx.expect_page(timeout=WAIT_MS) as new:
        page.click("#open-jupyter")
    nb = new.value
    nb.wait_for_selector("#notebook_list", timeout=120_000)
    origin = urlsplit(nb.url)
    assert origin.port == st.app_port != st.port  # another origin than the dashboard's
    assert origin.path.startswith(f"/app/{sid}/jupyter/")
    assert "ticket=" not in nb.url and "token=" not in nb.url
    assert nb.evaluate("window.opener") is None
    # the tab holds no dashboard credential its script could read, and no jupyter token
    assert "bai_session" not in nb.evaluate("document.cookie")
    base = f"/app/{sid}/jupyter/"
    made = nb.evaluate("""async (base) => {
        const nb = {type: 'notebook', content: {cells: [{cell_type: 'code', source: '',
            metadata: {}, outputs: [], execution_count: null}], metadata: {
            kernelspec: {name: 'python3', display_name: 'Python 3', language: 'python'}},
            nbformat: 4, nbformat_minor: 5}};
        const r = await fetch(base + 'api/contents/answer.ipynb', {method: 'PUT',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify(nb)});
        return r.status; }""", base)
    assert made in (200, 201)
    nb.goto(f"{origin.scheme}://{origin.netloc}{base}notebooks/answer.ipynb", timeout=120_000)
    nb.wait_for_selector(".kernel_idle_icon", state="attached", timeout=120_000)
    for _ in range(4):  # the notebook may ignore keys until its kernel connection settles
        nb.click("div.input_area")
        nb.keyboard.press("Control+A")
        nb.keyboard.type("print(6*7)")
        nb.keyboard.press("Shift+Enter")
        try:
            nb.wait_for_selector(".output_area pre:text-is('42')", timeout=30_000)
            break
        except Exception:
            continue
    else:
        raise AssertionError("the cell never printed 42")
    shot(nb, "jupyter")
    # the app's origin cannot read the dashboard's login (no CORS) nor end it
    said = nb.evaluate("""async (dash) => {
        let read;
        try { await fetch(dash + '/dashboard/api/me', {credentials: 'include'}); read = 'read'; }
        catch (e) { read = 'blocked'; }
        await fetch(dash + '/dashboard/api/logout', {method: 'POST', mode: 'no-cors',
            credentials: 'include'}).catch(() => null);
        return read; }""", st.endpoint)
    assert said == "blocked"
    assert page.evaluate("fetch('/dashboard/api/me').then((r) => r.status)") == 200
    assert "webnb" in st.cli("ps", user=True).stdout  # nothing was ended from the app's side


def _screen(page) -> str:
    return page.evaluate("""() => { const b = window.baiTerminal.buffer.active; const out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out.join('\\n'); }""")


def _wait_screen(page, text: str) -> str:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        screen = _screen(page)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never showed; the screen: {_screen(page)!r}")


def test_the_terminal_opens_in_a_new_tab_and_runs_a_command(ctx, st):
    sid = sid_of(st, "webnb", user=True)
    page = ctx.new_page()
    page_login(page, st, "user@bai.local", pw(st, "user"))
    page.goto(f"{st.endpoint}/dashboard/#/session/{sid}")
    page.wait_for_selector("#open-terminal", timeout=WAIT_MS)
    refused: list[str] = []  # the page keeps the strict policy and needs nothing it refuses
    ctx.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    with ctx.expect_page(timeout=WAIT_MS) as new:
        page.click("#open-terminal")
    term = new.value
    term.wait_for_selector("#term-status:text-is('connected')", timeout=WAIT_MS)
    term.click("#terminal")
    term.keyboard.type("echo bai-$((6*7))-ok; tty\n")
    screen = _wait_screen(term, "bai-42-ok")
    assert "/dev/pts/" in _wait_screen(term, "/dev/pts/"), screen
    shot(term, "terminal")
    term.keyboard.type("exit 3\n")
    term.wait_for_selector("#term-status:text-is('the shell exited (code 3)')", timeout=WAIT_MS)
    assert "script-src 'self'" in term.evaluate(
        "fetch(location.href).then((r) => r.headers.get('content-security-policy'))")
    assert not refused, refused


# --- attacks as a normal user (no browser needed) -----------------------------------------

def test_the_dashboard_cookie_and_bai_credentials_never_reach_the_app(st):
    sid = sid_of(st, "webnb", user=True)
    cookie, csrf, _ = login(st, "user@bai.local", pw(st, "user"))
    app_cookie = signed_in(st, sid, "echo", cookie, csrf)
    status, headers, body = echo(st, f"/app/{sid}/echo/x?y=1", {
        "Cookie": f"bai_session={cookie}; {app_cookie}; other=1",
        "Authorization": "BackendAI signMethod=HMAC-SHA256, credential=AK:sig",
        "X-BAI-CSRF": csrf, "X-Kept": "yes"})
    assert status == 200, body
    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert seen.get("x-kept") == "yes"  # the rest of the request passes
    assert json.loads(body)["path"] == f"/app/{sid}/echo/x?y=1"
    for leaked in ("cookie", "authorization", "x-bai-csrf"):
        assert leaked not in seen, seen
    assert cookie not in body.decode() and csrf not in body.decode()
    assert "Set-Cookie" not in headers  # the app cannot plant a cookie the dashboard reads


def test_another_users_session_ticket_and_cookie_are_refused(st):
    mine = sid_of(st, "webnb", user=True)
    theirs = sid_of(st, "admnb", user=False)
    cookie, csrf, _ = login(st, "user@bai.local", pw(st, "user"))
    # a ticket for the admin's session: not found for this user
    status, _, body = ticket(st, theirs, "echo", cookie, csrf)
    assert status == 404, body
    # this user's app cookie on the admin's session's path
    app_cookie = signed_in(st, mine, "echo", cookie, csrf)
    value = app_cookie.split("=", 1)[1]
    status, _, body = app_call(st, "GET", f"/app/{theirs}/echo/", {"Cookie": app_cookie})
    assert status == 401, body
    # and this user's ticket aimed at the admin's session
    status, _, body = ticket(st, mine, "echo", cookie, csrf)
    url = urlsplit(body["url"])
    status, _, body = app_call(st, "GET", f"/app/{theirs}/echo/?{url.query}")
    assert status == 401, body
    # a ticket signed for another app of the same session does not open this one
    status, _, body = app_call(st, "GET", f"/app/{mine}/jupyter/", {"Cookie": app_cookie})
    assert status == 401, body
    # no CSRF token: no ticket
    status, _, body = call(st, "POST", f"/stream/session/{mine}/apps/echo/ticket", cookie=cookie)
    assert status == 403, body
    # the admin does not open a user's app in a browser (it would run the user's script)
    acookie, acsrf, _ = login(st, "admin@bai.local", pw(st, "admin"))
    status, _, body = ticket(st, mine, "echo", acookie, acsrf)
    assert status == 403, body
    # after logout the app cookie is worth nothing
    assert echo(st, f"/app/{mine}/echo/", {"Cookie": app_cookie})[0] == 200
    call(st, "POST", "/dashboard/api/logout", cookie=cookie, headers={"X-BAI-CSRF": csrf})
    status, _, body = app_call(st, "GET", f"/app/{mine}/echo/", {"Cookie": f"bai_app={value}"})
    assert status == 401, body


def test_forged_expired_and_reused_tickets_are_refused(st):
    sid = sid_of(st, "webnb", user=True)
    cookie, csrf, _ = login(st, "user@bai.local", pw(st, "user"))
    status, _, body = ticket(st, sid, "echo", cookie, csrf)
    query = urlsplit(body["url"]).query
    value = query.split("=", 1)[1]

    class Root:  # signs as the stack's manager does (the test knows its cluster token)
        class settings:
            cluster_token = st.cluster_token

    fields = webapps.verify(Root, "ticket", value)
    assert fields is not None  # the test signs with the manager's own key
    access_key, _sid, app, login_hash, _exp, _nonce = fields
    expired = webapps.sign(Root, "ticket", [access_key, sid, app, login_hash,
                                            str(time.time() - 1), "n-expired"])
    fresh = webapps.sign(Root, "ticket", [access_key, sid, app, login_hash,
                                          str(time.time() + 60), "n-fresh"])
    payload, mac = value.split(".")
    forged = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]

    class Other:
        class settings:
            cluster_token = "not-the-cluster-token"

    other_key = webapps.sign(Other, "ticket", [access_key, sid, app, login_hash,
                                               str(time.time() + 60), "n-other"])
    for bad in (expired, forged, other_key, "garbage", ""):
        status, _, body = app_call(st, "GET", f"/app/{sid}/echo/?ticket={bad}")
        assert status == 401, (bad, body)
    # a ticket is good once
    status, _, _ = app_call(st, "GET", f"/app/{sid}/echo/?{query}")
    assert status == 303
    status, _, body = app_call(st, "GET", f"/app/{sid}/echo/?{query}")
    assert status == 401, body
    # ...and the same fields, well signed and in time, are (the refusals above are the key's
    # and the time's, not the test's)
    status, _, body = app_call(st, "GET", f"/app/{sid}/echo/?ticket={fresh}")
    assert status == 303, body
    # no cookie, or a cookie made by hand: refused
    assert app_call(st, "GET", f"/app/{sid}/echo/")[0] == 401
    forged_cookie = webapps.sign(Other, "cookie", [access_key, sid, app, login_hash,
                                                   str(time.time() + 60), ""])
    assert app_call(st, "GET", f"/app/{sid}/echo/", {"Cookie": f"bai_app={forged_cookie}"})[0] == 401
