"""The dashboard's launcher mounts storage folders as the CLI's ``-m NAME:PATH:ro`` does: a row
per folder with its mount path and a read-only box, in headless chromium against a real embedded
stack; what the session's code sees is checked inside it. Bad rows are refused next to their own
field (a path with "..", a system folder, an unknown folder, the same folder twice) and make
nothing."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from browser import browser  # noqa: F401  (the fixture)
from dashboard_support import WAIT_MS, page_login
from stacks import start_stack


@pytest.fixture(scope="module")
def lstack(tmp_path_factory):
    st = start_stack("cpu=2", "mem=4g")
    st.cli("vfolder", "create", "lf-data", user=True)
    st.cli("vfolder", "create", "lf-out", user=True)
    src = tmp_path_factory.mktemp("lf") / "hello.txt"
    src.write_text("hello from the folder\n")
    st.cli("vfolder", "upload", "lf-data", str(src), user=True, cwd=src.parent)
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture
def page(browser, lstack):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    page_login(pg, lstack, "user@bai.local", lstack.keys()["user"]["password"])
    pg.click("a[href='#/launch']")
    pg.wait_for_selector("#launch-form")
    pg.fill("#launch-form [name=image]", "python")
    pg.fill("#launch-form [name=cpu]", "1")
    pg.fill("#launch-form [name=mem]", "256m")
    yield pg
    ctx.close()
    assert not errors, f"the page's script failed: {errors}"


def names(st) -> set[str]:
    out = st.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", "name",
                 user=True).stdout
    return {i["name"] for i in json.loads(out)["items"]}


def wait_running(st, name: str, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    status = ""
    while time.monotonic() < end:
        out = st.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", "name,status",
                     user=True).stdout
        status = next((i["status"] for i in json.loads(out)["items"] if i["name"] == name), "")
        if status == "RUNNING":
            return
        assert status not in ("ERROR", "TERMINATED", "CANCELLED"), status
        time.sleep(0.5)
    raise AssertionError(f"{name} is {status}, not RUNNING, after {timeout} s")


CHECK = """
import os
print(open('/data/in/hello.txt').read().strip())
try:
    open('/data/in/new.txt', 'w').write('x')
    print('WROTE-RO')
except OSError as e:
    print('READ-ONLY', e.errno)
open('/home/work/lf-out/made.txt', 'w').write('ok')
print('RW-OK', os.path.exists('/home/work/lf-out/made.txt'))
"""


def test_a_folder_at_its_own_path_read_only_and_one_at_the_default(page, lstack):
    page.fill("#launch-form [name=name]", "lf-sess")
    page.fill("#launch-form [name=mount-name-0]", "lf-data")
    page.fill("#launch-form [name=mount-path-0]", "/data/in")
    page.check("#launch-form [name=mount-ro-0]")
    page.click("#add-mount")
    page.fill("#launch-form [name=mount-name-1]", "lf-out")
    page.click("#launch-form button[type=submit]")
    page.wait_for_url("**/#/session/*", timeout=WAIT_MS)
    try:
        wait_running(lstack, "lf-sess")
        # `run -t NAME` reuses the live session: the code runs in the one the page launched
        res = lstack.cli("run", "-t", "lf-sess", "-c", CHECK, "python", user=True, timeout=180)
        out = res.stdout
        assert "hello from the folder" in out
        assert "READ-ONLY" in out and "WROTE-RO" not in out
        assert "RW-OK True" in out
    finally:
        lstack.cli("rm", "lf-sess", user=True, check=False)


@pytest.mark.parametrize("rows, field, words", [
    ([("lf-data", "../up", False)], "mount-path-0", ".."),  # refused in the page
    ([("lf-data", "/etc", False)], "mount-path-0", "/etc"),  # refused by the manager
    ([("lf-out", "", False), ("lf-data", "/usr/x", True)], "mount-path-1", "/usr"),
    ([("no-such-folder", "", False)], "mount-name-0", "no-such-folder"),
    ([("lf-data", "", False), ("lf-data", "/d2", False)], "mount-name-1", "already"),
    ([("", "/data", True)], "mount-name-0", "name the folder"),
])
def test_a_bad_row_is_refused_next_to_its_field_and_makes_nothing(page, lstack, rows, field,
                                                                   words):
    before = names(lstack)
    for i, (name, path, ro) in enumerate(rows):
        if i:
            page.click("#add-mount")
        page.fill(f"#launch-form [name=mount-name-{i}]", name)
        page.fill(f"#launch-form [name=mount-path-{i}]", path)
        if ro:
            page.check(f"#launch-form [name=mount-ro-{i}]")
    page.click("#launch-form button[type=submit]")
    err = page.wait_for_selector(f"#launch-form .field[data-field={field}] .field-error:visible",
                                 timeout=WAIT_MS)
    assert words.lower() in err.text_content().lower()
    assert page.get_attribute(f"#launch-form [name={field}]", "aria-invalid") == "true"
    assert "Traceback" not in page.text_content("main")
    assert names(lstack) == before
