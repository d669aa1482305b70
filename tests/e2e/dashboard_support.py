"""Helpers of the dashboard tests: plain HTTP with the login cookie (for attacks), logging in
through the page, and screenshots into docs/dashboard/."""

from __future__ import annotations

import http.client as httpclient
import json
from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
WAIT_MS = 60_000


def call(stack, method: str, path: str, body=None, *, cookie: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or None) of one request to the stack's manager."""
    conn = httpclient.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if cookie:
        hdrs["Cookie"] = f"bai_session={cookie}"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return resp.status, resp.headers, parsed
    finally:
        conn.close()


def login(stack, email: str, password: str) -> tuple[str, str, str]:
    """(cookie token, csrf token, Set-Cookie header) of a fresh login."""
    status, headers, body = call(stack, "POST", "/dashboard/api/login",
                                 {"email": email, "password": password})
    assert status == 200, body
    set_cookie = headers["Set-Cookie"]
    token = set_cookie.split(";", 1)[0].split("=", 1)[1]
    return token, body["csrf"], set_cookie


def page_login(page, stack, email: str, password: str) -> None:
    page.goto(f"{stack.endpoint}/dashboard/")
    page.wait_for_selector("#login-form", timeout=WAIT_MS)
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_selector("#sessions", timeout=WAIT_MS)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
