"""Attacks on storage-folder mounts, run as the normal user of the shared stack (process runtime,
the real CLI): another user's folder, paths that climb out, a symlink planted inside a folder
pointing at the host, writes through a read-only share. Every one must fail."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest

from bai.manager.services.bootstrap import USER_EMAIL

needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="the process sandbox needs root and bubblewrap (CI has both): without it a kernel "
           "sees the host and read-only mounts are refused")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def admins(stack, tmp_path_factory) -> str:
    """A folder of the admin's with a secret in it (never shared)."""
    name = unique("adm")
    stack.cli("vfolder", "create", name)
    src = tmp_path_factory.mktemp("adm") / "secret.txt"
    src.write_text("the admin's secret")
    stack.cli("vfolder", "upload", name, str(src))
    return name


@pytest.fixture(scope="module")
def mine(stack) -> str:
    name = unique("usr")
    stack.cli("vfolder", "create", name, user=True)
    return name


def run(stack, *args: str):
    return stack.cli("run", "--rm", *args, user=True, check=False)


def user_sessions(stack) -> list[str]:
    rows = json.loads(stack.cli("ps", "--all", "-f", "name", "--output", "json",
                                user=True).stdout)
    return [r["name"] for r in rows["items"]]


def refused(got, said: str) -> None:
    assert got.returncode != 0
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and said in lines[0], got.stderr
    assert "secret" not in got.stdout


def test_another_users_folder_cannot_be_mounted(stack, admins) -> None:
    folder_id = json.loads(stack.cli("vfolder", "info", admins, "--output", "json").stdout)
    fid = str(folder_id.get("id") or folder_id["items"][0]["id"])
    for ref in (admins, fid, f"{admins}:ro"):
        name = unique("atk")
        got = run(stack, "-t", name, "-m", ref, "-c", "print(open('x').read())", "python")
        refused(got, "no such folder")
        assert name not in user_sessions(stack)  # nothing half-made


@pytest.mark.parametrize("how", ["{f}:../../..", "{f}:/home/work/../../etc/x", "{f}:/proc/x",
                                 "..", "{f}:.bai", "{f}=/"])
def test_paths_that_climb_out_are_refused(stack, mine, how) -> None:
    name = unique("atk")
    got = run(stack, "-t", name, "-m", how.format(f=mine), "-c", "1", "python")
    assert got.returncode != 0 and "Traceback" not in got.stderr
    assert len([line for line in got.stderr.splitlines() if line.strip()]) == 1, got.stderr
    assert name not in user_sessions(stack)


@needs_sandbox
def test_a_symlink_planted_inside_reaches_nothing_outside(stack, admins, mine) -> None:
    # where the admin's folder and the state dir lie on the host (a user could guess them)
    secret = next((stack.state / "vfolders").rglob("secret.txt"))
    plant = (
        "import os\n"
        f"os.symlink({str(secret)!r}, '{mine}/s1')\n"
        f"os.symlink({str(secret.parent)!r}, '{mine}/s2')\n"
        f"os.symlink({str(stack.state)!r}, '{mine}/s3')\n"
        f"os.symlink('../' * 12 + {str(secret)[1:]!r}, '{mine}/s4')\n")
    got = run(stack, "-m", mine, "-c", plant, "python")
    assert got.returncode == 0, got.stderr
    follow = (
        "import os\n"
        f"for p in ('{mine}/s1', '{mine}/s2/secret.txt', '{mine}/s3/keys.json', '{mine}/s4'):\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n")
    got = run(stack, "-m", mine, "-m", f"{mine}:/data", "-c", follow, "python")
    assert "secret" not in got.stdout and "access_key" not in got.stdout
    assert got.stdout.split() == ["FileNotFoundError"] * 4, got.stdout + got.stderr


@needs_sandbox
def test_a_read_only_share_is_read_only_to_the_kernel(stack) -> None:
    name = unique("shr")
    stack.cli("vfolder", "create", name)
    # the owner writes in a session of theirs: a file every kernel uid may write (0666)
    stack.cli("run", "--rm", "-m", name, "-c",
              f"_ = open('{name}/in.txt', 'w').write('shared data')", "python")
    stack.cli("vfolder", "share", name, USER_EMAIL, "--permission", "ro")
    got = run(stack, "-m", name, "-c", f"print(open('{name}/in.txt').read())", "python")
    assert got.returncode == 0 and got.stdout.strip() == "shared data", got.stderr
    # asking for rw is refused before anything is made
    refused(run(stack, "-m", f"{name}:rw", "-c", "1", "python"), "read-only")
    # a write from inside fails with EROFS: only the mount's flag stops it
    write = (
        "import errno, os\n"
        f"d = '{name}'\n"
        "for act in (lambda: open(d + '/new', 'w'), lambda: open(d + '/in.txt', 'a'),\n"
        "            lambda: os.remove(d + '/in.txt'), lambda: os.rename(d + '/in.txt', d + '/m'),\n"
        "            lambda: os.mkdir(d + '/sub'), lambda: os.chmod(d + '/in.txt', 0o600)):\n"
        "    try:\n"
        "        act()\n"
        "        print('WROTE')\n"
        "    except OSError as e:\n"
        "        print(errno.errorcode[e.errno])\n")
    got = run(stack, "-m", name, "-c", write, "python")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split()[:5] == ["EROFS"] * 5, got.stdout
    assert got.stdout.split()[5] in ("EROFS", "EPERM")  # chmod of another uid's file
    listed = json.loads(stack.cli("vfolder", "ls", name, "--output", "json").stdout)
    assert sorted(f["name"] for f in listed["items"]) == ["in.txt"]
