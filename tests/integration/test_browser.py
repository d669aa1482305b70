"""The browser set-up itself: Playwright drives Debian's headless chromium against a page
this test serves on loopback, and the page's script runs (what every dashboard test relies on)."""

from __future__ import annotations

import http.server
import threading

import pytest

from browser import browser  # noqa: F401  (the fixture)

PAGE = b"""<!doctype html><title>bai smoke</title>
<p id=out>no script</p>
<script type=module>document.getElementById('out').textContent = 'script ran ' + (6 * 7);</script>
"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture
def served():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


def test_chromium_opens_a_served_page_and_runs_its_script(browser, served):  # noqa: F811
    page = browser.new_page()
    try:
        page.goto(served)
        assert page.title() == "bai smoke"
        page.wait_for_function("document.getElementById('out').textContent !== 'no script'",
                               timeout=60_000)
        assert page.text_content("#out") == "script ran 42"
    finally:
        page.close()
