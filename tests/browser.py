"""Debian's headless chromium driven by Playwright, for browser tests (the dashboard, apps).

Playwright from PyPI drives the system browser (``executable_path=/usr/bin/chromium``); it
never downloads one of its own. Use the ``browser`` fixture in a test module with
``from browser import browser  # noqa: F401`` (module scope: one chromium per module). Where
chromium is missing (``scripts/test.sh`` installs it from Debian when it can) the tests skip,
naming the gap. ``--no-sandbox``: CI runs as root, where chromium's own sandbox refuses to start.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("BAI_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()
