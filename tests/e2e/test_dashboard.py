"""The web dashboard in Debian's headless chromium against a real embedded stack (an agent of
2 cpus, so that a session waits in the queue until a blocker ends): log in, launch, see the
session go PENDING -> RUNNING live in the open list, terminate, log out; a second user sees
none of it; an admin sees the agents and the queue; bad form input is refused next to its
field and makes nothing. Screenshots of the main pages go to docs/dashboard/.
The attacks on the cookie login (no browser needed) are in test_dashboard_security.py."""

from __future__ import annotations

import json
import shutil

import pytest
from browser import browser  # noqa: F401  (the fixture)
from dashboard_support import WAIT_MS, call, page_login, shot
from stacks import start_stack


@pytest.fixture(scope="module")
def small():
    st = start_stack("cpu=2", "mem=4g")
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture
def page(browser, small):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    pg.on("dialog", lambda d: d.accept())  # terminate asks "are you sure?"
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"the page's script failed: {errors}"


def password(st, who: str) -> str:
    return st.keys()[who]["password"]


def names(st, user: bool) -> dict[str, str]:
    out = st.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", "name,status",
                 user=user).stdout
    return {i["name"]: i["status"] for i in json.loads(out)["items"]}


def row_status(page, name: str, status: str) -> None:
    page.wait_for_selector(f"#sessions tr:has(a:text-is('{name}'))[data-status={status}]",
                           timeout=WAIT_MS)


def test_launch_pending_to_running_live_terminate_logout(page, small):
    page.goto(f"{small.endpoint}/dashboard/")
    page.wait_for_selector("#login-form", timeout=WAIT_MS)
    shot(page, "login")
    page_login(page, small, "user@bai.local", password(small, "user"))
    small.cli("start", "-t", "web-blocker", "-r", "cpu=2", "python")  # the admin fills the agent
    try:
        page.click("a[href='#/launch']")
        page.wait_for_selector("#launch-form")
        page.fill("input[name=image]", "python")
        page.fill("input[name=name]", "web-1")
        page.fill("input[name=cpu]", "1")
        page.fill("input[name=mem]", "256m")
        shot(page, "launch")
        page.click("#launch-form button[type=submit]")
        page.wait_for_selector("#session-status .st-pending", timeout=WAIT_MS)

        page.click("nav a[href='#/sessions']")
        row_status(page, "web-1", "PENDING")
        reason = page.text_content("#sessions tr:has(a:text-is('web-1')) td.info")
        assert "cpu" in reason  # why it waits
        page.evaluate("window.__notReloaded = true")
        shot(page, "sessions")

        small.cli("rm", "web-blocker")
        row_status(page, "web-1", "RUNNING")  # from the event stream, no reload
        assert page.evaluate("window.__notReloaded === true")

        page.click("#sessions a:text-is('web-1')")
        page.wait_for_selector("#session-status .st-running", timeout=WAIT_MS)
        page.wait_for_selector("#session-events li:has-text('session_started')", timeout=WAIT_MS)
        app = page.wait_for_selector("#session-apps li[data-app=jupyter]", timeout=WAIT_MS)
        assert "backend.ai app web-1 jupyter" in app.text_content()
        shot(page, "session")
        page.click("#terminate")
        page.wait_for_selector("#session-status :is(.st-terminating, .st-terminated)",
                               timeout=WAIT_MS)
        page.wait_for_selector("#session-status .st-terminated", timeout=WAIT_MS)
        assert names(small, user=True)["web-1"] == "TERMINATED"

        page.click("#logout")
        page.wait_for_selector("#login-form", timeout=WAIT_MS)
        cookies = [c for c in page.context.cookies() if c["name"] == "bai_session"]
        assert not cookies
    finally:
        small.cli("rm", "web-blocker", check=False)


def test_second_user_sees_none_of_the_first_users_sessions_or_folders(page, small):
    small.cli("start", "--enqueue-only", "-t", "mine-only", "-r", "cpu=1", "python", user=True)
    small.cli("vfolder", "create", "mine-folder", user=True)
    small.cli("admin", "user", "create", "second@example.com")
    small.cli("admin", "keypair", "create", "second@example.com")
    small.cli("admin", "user", "set-password", "second@example.com", "--password-stdin",
              input="second-secret-1\n")
    theirs = json.loads(small.cli("--output", "json", "ps", "--all", "-f", "name,id",
                                  user=True).stdout)["items"]
    victim = next(i["session_id"] for i in theirs if i["name"] == "mine-only")
    try:
        page_login(page, small, "second@example.com", "second-secret-1")
        page.goto(f"{small.endpoint}/dashboard/#/sessions?tab=all")
        page.wait_for_selector("#session-count:text-is('0 sessions')", timeout=WAIT_MS)
        assert page.locator("#sessions tr[data-session-id]").count() == 0
        page.goto(f"{small.endpoint}/dashboard/#/folders")
        page.wait_for_selector("#folders td:text-is('No folders yet.')", timeout=WAIT_MS)
        page.goto(f"{small.endpoint}/dashboard/#/folders?name=mine-folder")
        page.wait_for_selector("main .error", timeout=WAIT_MS)
        page.goto(f"{small.endpoint}/dashboard/#/session/{victim}")
        page.wait_for_selector("main .error", timeout=WAIT_MS)
        assert "mine-only" not in page.text_content("main")
        # the admin pages are not theirs either
        page.goto(f"{small.endpoint}/dashboard/#/admin")
        page.wait_for_selector("main h1:text-is('Not allowed')", timeout=WAIT_MS)
    finally:
        small.cli("rm", "mine-only", user=True, check=False)


def test_admin_sees_agents_and_the_queue(page, small):
    small.cli("start", "-t", "q-blocker", "-r", "cpu=2", "python")
    small.cli("start", "--enqueue-only", "-t", "q-waiting", "-r", "cpu=1", "python", user=True)
    try:
        page_login(page, small, "admin@bai.local", password(small, "admin"))
        page.click("nav a[href='#/admin']")
        page.wait_for_selector("#agents article[data-agent-id=local] .bar", timeout=WAIT_MS)
        used = page.get_attribute("#agents article[data-agent-id=local] .bar-row:has-text('cpu') .bar",
                                  "aria-valuenow")
        assert used == "100"  # the blocker holds both cpus
        page.wait_for_selector("#queue tr:has(a:text-is('q-waiting'))[data-status=PENDING]",
                               timeout=WAIT_MS)
        assert "user@bai.local" in page.text_content("#queue tr:has(a:text-is('q-waiting'))")
        page.wait_for_selector("#plots svg.plot polyline", state="attached", timeout=WAIT_MS)
        shot(page, "cluster")
        small.cli("rm", "q-blocker")  # the queue empties live
        page.wait_for_selector("#queue-count:text-is('0 pending')", timeout=WAIT_MS)
        page.click("nav a[href='#/admin/accounts']")
        page.wait_for_selector("main h2:text-is('Users')", timeout=WAIT_MS)
        assert "user@bai.local" in page.text_content("main")
        shot(page, "accounts")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.click("nav a[href='#/sessions']")
        page.wait_for_selector("#sessions tr:has(a:text-is('q-waiting'))", timeout=WAIT_MS)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page is {width} px wide on a 390 px phone"
        shot(page, "sessions-phone")
    finally:
        small.cli("rm", "q-blocker", check=False)
        small.cli("rm", "q-waiting", user=True, check=False)


@pytest.mark.parametrize("fill, field, words", [
    ({"image": "no-such-image:1"}, "image", "image"),
    ({"cpu": "0"}, "cpu", "more than 0"),
    ({"cpu": "64"}, "cpu", "cpu"),
    ({"mem": "lots"}, "mem", "size"),
    ({"name": "dup-1"}, "name", "exists"),
])
def test_bad_form_input_is_shown_next_to_its_field_and_makes_nothing(page, small, fill, field, words):
    if fill.get("name") == "dup-1":
        small.cli("start", "--enqueue-only", "-t", "dup-1", "-r", "cpu=1", "python", user=True)
    before = names(small, user=True)
    try:
        page_login(page, small, "user@bai.local", password(small, "user"))
        page.click("a[href='#/launch']")
        page.wait_for_selector("#launch-form")
        values = {"image": "python", "cpu": "1", "mem": "256m", **fill}
        for key, value in values.items():
            page.fill(f"#launch-form [name={key}]", value)
        page.click("#launch-form button[type=submit]")
        err = page.wait_for_selector(f"#launch-form .field[data-field={field}] .field-error:visible",
                                     timeout=WAIT_MS)
        assert words.lower() in err.text_content().lower()
        assert "Traceback" not in page.text_content("main")
        assert page.get_attribute(f"#launch-form [name={field}]", "aria-invalid") == "true"
        if field == "image":
            shot(page, "launch-error")
        assert names(small, user=True).keys() == before.keys()  # nothing half-made
    finally:
        if fill.get("name") == "dup-1":
            small.cli("rm", "dup-1", user=True, check=False)


def test_keyboard_reaches_every_main_view(page, small):
    page_login(page, small, "user@bai.local", password(small, "user"))
    page.reload()  # Tab from the top of the page (the login form that had focus is gone)
    page.wait_for_selector("#sessions", timeout=WAIT_MS)
    seen = set()
    for _ in range(12):
        page.keyboard.press("Tab")
        seen.add(page.evaluate("document.activeElement && document.activeElement.getAttribute('href')"))
    assert {"#/sessions", "#/launch", "#/folders", "#/account"} <= seen
    # the open list waits on its event stream: it asks the API nothing while nothing happens
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.wait_for_timeout(6000)
    polled = [u for u in asked if "/admin/gql" in u or ("/session" in u and "/events/" not in u)]
    assert not polled, polled
    status, _, _ = call(small, "GET", "/dashboard/")
    assert status == 200


def test_folder_upload_with_progress_is_seen_inside_a_session(page, small, tmp_path):
    hello = tmp_path / "hello.txt"
    hello.write_text("hello from the browser\n")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (20 * 4096))  # 20 MiB: three 8 MiB requests
    page_login(page, small, "user@bai.local", password(small, "user"))
    page.click("nav a[href='#/folders']")
    page.fill("#folder-create [name=name]", "webdata")
    page.click("#folder-create button[type=submit]")
    page.click("#folders tr[data-folder=webdata] a", timeout=WAIT_MS)
    page.set_input_files("#upload-input", [str(hello), str(big)])
    page.wait_for_selector("#uploads li:has-text('big.bin: done')", timeout=WAIT_MS)
    page.wait_for_selector("#files tr[data-file='hello.txt']", timeout=WAIT_MS)
    page.wait_for_selector("#files tr[data-file='big.bin']", timeout=WAIT_MS)
    shot(page, "folder")
    code = ("import os; print(open('/home/work/webdata/hello.txt').read().strip(), "
            "os.path.getsize('/home/work/webdata/big.bin'))")
    out = small.cli("run", "--rm", "-m", "webdata", "-r", "cpu=1", "-c", code, "python",
                    user=True, timeout=300).stdout
    assert f"hello from the browser {20 * 1024 * 1024}" in out
    with page.expect_download(timeout=WAIT_MS) as got:
        page.click("button[aria-label='Download hello.txt']")
    assert open(got.value.path()).read() == "hello from the browser\n"
    page.click("button[aria-label='Delete big.bin']")
    page.wait_for_selector("#files tr[data-file='big.bin']", state="detached", timeout=WAIT_MS)


def test_an_upload_over_the_folders_quota_is_refused_next_to_the_upload(page, small, tmp_path):
    small.cli("vfolder", "create", "tiny", "--quota", "1m", user=True)
    blob = tmp_path / "too-big.bin"
    blob.write_bytes(b"x" * (2 * 1024 * 1024))
    page_login(page, small, "user@bai.local", password(small, "user"))
    page.goto(f"{small.endpoint}/dashboard/#/folders?name=tiny")
    page.wait_for_selector("#files", timeout=WAIT_MS)
    page.set_input_files("#upload-input", str(blob))
    err = page.wait_for_selector("#upload-error:visible", timeout=WAIT_MS)
    assert "quota" in err.text_content().lower()
    assert page.locator("#files tr[data-file='too-big.bin']").count() == 0
    listed = small.cli("vfolder", "ls", "tiny", user=True).stdout
    assert "too-big.bin" not in listed
