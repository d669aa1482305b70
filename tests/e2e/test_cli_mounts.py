"""``backend.ai run/start -m``: a storage folder inside sessions, as a user would use it (the
shared embedded stack, process runtime): writes land in the folder and outlive the session,
``:ro`` is read-only, ``ps -f mounts``, ``info`` and GraphQL show the folders, bad requests get
one line and create nothing. Both CLI paths (express and click) and the official client."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from folder_api import make_folder

needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="read-only mounts need the process sandbox (root and bubblewrap; CI has both)")


@pytest.fixture(scope="module")
def folder(stack) -> str:
    name = f"mnt-{uuid.uuid4().hex[:8]}"
    make_folder(stack, name)
    return name


def run(stack, *args: str, check: bool = True):
    return stack.cli("run", "--rm", *args, user=True, check=check)


def test_writes_land_and_the_next_session_reads_them(stack, folder) -> None:
    # express path (-m -c --rm only)
    run(stack, "-m", folder, "-c",
        f"open('{folder}/out.txt', 'w').write('from one')", "python")
    host = [p for p in (stack.state / "vfolders").rglob("out.txt")
            if p.read_text() == "from one"]
    assert len(host) == 1, "the write is not in the folder on the storage host"
    # click path (-r), another place in the session
    got = run(stack, "-r", "cpu=1", "-m", f"{folder}:/data/in", "-c",
              "print(open('/data/in/out.txt').read())", "python")
    assert got.stdout.strip() == "from one"


@needs_sandbox
def test_ro_mount_refuses_writes(stack, folder) -> None:
    got = run(stack, "-m", f"{folder}:ro", "-c",
              f"open('{folder}/new.txt', 'w').write('x')", "python", check=False)
    assert got.returncode != 0
    assert "Read-only file system" in got.stdout + got.stderr
    assert not list((stack.state / "vfolders").rglob("new.txt"))


def test_ps_info_and_graphql_show_the_mounts(stack, folder) -> None:
    name = f"mnt-keep-{uuid.uuid4().hex[:6]}"
    stack.cli("start", "-t", name, "-m", folder, "python", user=True)
    try:
        rows = json.loads(stack.cli("ps", "-f", "name,mounts", "--output", "json",
                                    user=True).stdout)
        mine = [r for r in rows["items"] if r["name"] == name]
        assert mine and mine[0]["mounts"] == [folder]
        info = json.loads(stack.cli("--output", "json", "info", name, user=True).stdout)
        assert info["items"][0]["mounts"] == [folder]
        text = stack.cli("info", name, user=True).stdout
        assert [line for line in text.splitlines() if "Mounts" in line and folder in line]
    finally:
        stack.cli("rm", name, user=True, check=False)


@pytest.mark.parametrize("mount, said", [
    ("no-such-folder-x", "no-such-folder-x"),
    ("{f}:../../etc", ".."),
    ("{f}:/etc/x", "system folder"),
    ("..", "invalid"),
])
def test_bad_mounts_get_one_line_and_create_nothing(stack, folder, mount, said) -> None:
    name = f"mnt-bad-{uuid.uuid4().hex[:6]}"
    for extra in ((), ("-r", "cpu=1")):  # express and click
        got = run(stack, "-t", name, *extra, "-m", mount.format(f=folder), "-c", "1",
                  "python", check=False)
        assert got.returncode != 0
        lines = [line for line in got.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and said in lines[0], got.stderr
        assert "Traceback" not in got.stderr
    listed = json.loads(stack.cli("ps", "--all", "-f", "name", "--output", "json",
                                  user=True).stdout)
    assert name not in [r["name"] for r in listed["items"]]
