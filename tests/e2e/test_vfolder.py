"""Storage folders as a new user meets them: the real ``backend.ai`` CLI (and the official client
23.9.10, unchanged) against one embedded stack; folders mounted into sessions with ``-m``.

Also: a second user (bob) reaches nothing of the first user's folders until they are shared, and
then only read-only when shared ``ro``; bad input is one line on stderr and a non-zero exit with
nothing half-made; a quota holds against writes from inside a session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from stacks import Stack, start_stack

SMALL = ["-r", "cpu=0.1", "-r", "mem=128m"]


@pytest.fixture(scope="module")
def vst():
    st = start_stack("cpu=4", "mem=4g")
    yield st
    st.stop()
    _unmount_below(st.home)  # quota folders' filesystems, should a test have left one
    shutil.rmtree(st.home, ignore_errors=True)


def _unmount_below(root) -> None:
    import subprocess

    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(str(root) + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="module")
def bob(vst) -> dict[str, str]:
    """A second normal user's environment for the CLI."""
    vst.cli("admin", "user", "create", "bob@example.org")
    keys = json.loads(vst.cli("--output", "json", "admin", "keypair", "create",
                              "bob@example.org").stdout)
    env = {k: v for k, v in vst.env.items() if k != "BAI_PROFILE"}
    env.update({"BAI_CONFIG": str(vst.home / "none.toml"),
                "BACKEND_ENDPOINT": vst.endpoint, "BACKEND_ACCESS_KEY": keys["access_key"],
                "BACKEND_SECRET_KEY": keys["secret_key"]})
    return env


def as_bob(st: Stack, env: dict[str, str], *args: str, check: bool = True):
    import subprocess

    from stacks import CLI

    proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=st.home)
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def names(st: Stack, **kw) -> list[str]:
    return [f["name"] for f in json.loads(st.cli("--output", "json", "vfolder", "list",
                                                 **kw).stdout)]


def test_a_new_user_keeps_data_across_sessions(vst, tmp_path):
    u = {"user": True}
    csv = tmp_path / "train.csv"
    csv.write_text("a,b\n1,2\n")
    vst.cli("vfolder", "create", "data", **u)
    vst.cli("vfolder", "upload", "data", str(csv), **u)
    out = vst.cli("run", "--rm", *SMALL, "-m", "data", "-c",
                  'print(open("data/train.csv").read())', "python", **u).stdout
    assert "a,b\n1,2" in out
    vst.cli("vfolder", "mkdir", "data", "made", **u)
    # what the manager made (an upload, a folder) a session may change, as its own files
    vst.cli("run", "--rm", *SMALL, "-m", "data", "-c",
            'open("data/out.txt", "w").write("written in a session\\n"); '
            'open("data/train.csv", "a").write("3,4\\n"); '
            'open("data/made/x", "w").write("x")', "python", **u)
    dl = tmp_path / "dl"
    dl.mkdir()
    vst.cli("vfolder", "download", "data", "out.txt", "-b", str(dl), **u)
    assert (dl / "out.txt").read_bytes() == b"written in a session\n"
    listed = json.loads(vst.cli("--output", "json", "vfolder", "ls", "data", **u).stdout)
    assert sorted(i["name"] for i in listed["items"]) == ["made", "out.txt", "train.csv"]
    assert listed["total"] == 3
    vst.cli("vfolder", "download", "data", "train.csv", "-b", str(dl), **u)
    assert (dl / "train.csv").read_text() == "a,b\n1,2\n3,4\n"
    info = json.loads(vst.cli("--output", "json", "vfolder", "info", "data", **u).stdout)
    assert info["name"] == "data" and info["permission"] == "rw" and info["is_owner"]


def test_file_commands(vst, tmp_path):
    u = {"user": True}
    vst.cli("vfolder", "create", "work", **u)
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_text("x")
    (src / "y.txt").write_text("y")
    vst.cli("vfolder", "upload", "-r", "work", str(src), **u)
    vst.cli("vfolder", "mkdir", "work", "out/deep", "-p", **u)
    vst.cli("vfolder", "mv", "work", "tree/y.txt", "out/deep", **u)
    ls = json.loads(vst.cli("--output", "json", "vfolder", "ls", "work", "out/deep", **u).stdout)
    assert [i["name"] for i in ls["items"]] == ["y.txt"]
    # a folder back, recursively (streamed file by file), byte for byte
    (src / "sub" / "deep").mkdir()
    (src / "sub" / "deep" / "z.bin").write_bytes(os.urandom(100_000))
    vst.cli("vfolder", "upload", "-r", "work", str(src / "sub"), "-d", "tree", **u)
    back = tmp_path / "back"
    back.mkdir()
    got = json.loads(vst.cli("--output", "json", "vfolder", "download", "-r", "work", "tree/sub",
                             "-b", str(back), **u).stdout)
    assert sorted(g["path"] for g in got) == ["tree/sub/deep/z.bin", "tree/sub/x.txt"]
    assert (back / "sub" / "x.txt").read_text() == "x"
    assert (back / "sub" / "deep" / "z.bin").read_bytes() == \
        (src / "sub" / "deep" / "z.bin").read_bytes()
    again = vst.cli("vfolder", "download", "-r", "work", "tree/sub", "-b", str(back), check=False,
                    **u)
    assert again.returncode == 2 and "already exists" in again.stderr
    vst.cli("vfolder", "rm", "-r", "work", "tree", **u)
    vst.cli("vfolder", "clone", "work", "work2", **u)
    vst.cli("vfolder", "rename", "work2", "work3", **u)
    ls = json.loads(vst.cli("--output", "json", "vfolder", "ls", "work3", "out/deep",
                            **u).stdout)
    assert [i["name"] for i in ls["items"]] == ["y.txt"]
    vst.cli("vfolder", "delete", "work3", **u)
    vst.cli("vfolder", "delete", "work", **u)
    assert "work" not in names(vst, user=True) and "work3" not in names(vst, user=True)
    hosts = json.loads(vst.cli("--output", "json", "vfolder", "list-hosts", **u).stdout)
    assert hosts["default"] == "local" and hosts["allowed"] == ["local"]


@pytest.mark.parametrize("args, says", [
    (["vfolder", "ls", "nope"], "no such folder"),
    (["vfolder", "download", "nope", "x"], "no such folder"),
    (["vfolder", "create", "bad", "-p", "rwx"], "rwx"),
    (["vfolder", "create", "data"], "already exists"),
    (["vfolder", "create", "../escape"], "invalid folder name"),
    (["vfolder", "create", "neg", "-q", "-1"], "invalid quota"),
    (["vfolder", "ls", "data", "../.."], "'..' is not allowed"),
    (["vfolder", "download", "data", "../../etc/passwd"], "'..' is not allowed"),
    (["vfolder", "create", "hostless", "nas9"], "unknown storage host"),
    (["vfolder", "share", "data", "nobody@example.org"], "no such user"),
])
def test_bad_input_is_one_line_and_makes_nothing(vst, tmp_path, args, says):
    if "data" not in names(vst, user=True):
        vst.cli("vfolder", "create", "data", user=True)
    before = names(vst, user=True)
    proc = vst.cli(*args, user=True, check=False, cwd=tmp_path)
    assert says in one_line_error(proc)
    assert names(vst, user=True) == before
    assert list(tmp_path.iterdir()) == []


def test_another_user_reaches_nothing_until_shared_and_then_only_read_only(vst, bob, tmp_path):
    u = {"user": True}
    vst.cli("vfolder", "create", "private", **u)
    secret = tmp_path / "secret.txt"
    secret.write_text("alice's")
    vst.cli("vfolder", "upload", "private", str(secret), **u)
    assert "private" not in [f["name"] for f in json.loads(
        as_bob(vst, bob, "--output", "json", "vfolder", "list").stdout)]
    for args in (["vfolder", "ls", "private"], ["vfolder", "info", "private"],
                 ["vfolder", "download", "private", "secret.txt", "-b", str(tmp_path / "b")],
                 ["vfolder", "rm", "private", "secret.txt"],
                 ["vfolder", "share", "private", "bob@example.org"],
                 ["run", "--rm", *SMALL, "-m", "private", "-c", "print(1)", "python"]):
        assert "no such folder" in one_line_error(as_bob(vst, bob, *args, check=False)), args
    vst.cli("vfolder", "share", "private", "bob@example.org", "--permission", "ro", **u)
    out = as_bob(vst, bob, "run", "--rm", *SMALL, "-m", "private", "-c", """
print(open("private/secret.txt").read())
try:
    open("private/mine.txt", "w").write("x")
    print("WROTE")
except OSError as e:
    print("REFUSED", e.errno)
""", "python").stdout
    assert "alice's" in out and "REFUSED" in out and "WROTE" not in out
    one_line_error(as_bob(vst, bob, "run", "--rm", *SMALL, "-m", "private:/home/work/p:rw",
                          "-c", "print(1)", "python", check=False))
    one_line_error(as_bob(vst, bob, "vfolder", "upload", "private", str(secret), check=False))
    vst.cli("vfolder", "unshare", "private", "bob@example.org", **u)
    one_line_error(as_bob(vst, bob, "vfolder", "ls", "private", check=False))


def _images_possible() -> bool:
    from bai.manager.services.storage import FolderImages

    return FolderImages.detect() is not None


@pytest.mark.skipif(not _images_possible(),
                    reason="folder quotas need root, loop devices and mkfs.ext4 (CI has them)")
def test_a_quota_holds_inside_a_session(vst):
    u = {"user": True}
    vst.cli("vfolder", "create", "small", "-q", "20m", **u)
    code = """
import errno
f = open("small/fill", "wb")
try:
    for _ in range(40):
        f.write(b"\\0" * 2**20); f.flush()
    print("NO LIMIT")
except OSError as e:
    print("STOPPED", errno.errorcode[e.errno])
"""
    out = vst.cli("run", "--rm", *SMALL, "-m", "small", "-c", code, "python", **u).stdout
    assert "STOPPED ENOSPC" in out and "NO LIMIT" not in out
    vst.cli("vfolder", "rm", "small", "fill", **u)
    out = vst.cli("run", "--rm", *SMALL, "-m", "small", "-c",
                  'open("small/ok", "w").write("ok"); print("FINE")', "python", **u).stdout
    assert "FINE" in out
    # refused (409) while the last session is still ending; then gone
    deadline = time.monotonic() + 60
    while (proc := vst.cli("vfolder", "delete", "small", check=False, **u)).returncode:
        assert "mounted in" in proc.stderr and time.monotonic() < deadline, proc.stderr
        time.sleep(0.5)


@pytest.mark.official_client
@pytest.mark.skipif(not os.environ.get("BAI_OFFICIAL_CLIENT"), reason="BAI_OFFICIAL_CLIENT unset")
def test_the_official_client_unchanged(vst, tmp_path):
    from official import make_official

    off = make_official(vst.endpoint, vst.keys()["user"], tmp_path / "official")
    work = off.workdir
    (work / "big.bin").write_bytes(os.urandom(5 * 2**20 + 3))
    (work / "small.txt").write_text("small\n")
    (work / "empty").write_bytes(b"")
    assert "Usable hosts: local" in off("vfolder", "list-hosts").stdout
    # the official client's `vfolder list` fails on an empty list (NoItems): keep one folder
    off("vfolder", "create", "okeep", "local")
    off("vfolder", "create", "odata", "local")
    off("vfolder", "upload", "odata", "big.bin", "small.txt", "empty")
    listed = {r["file name"]: r["size"] for r in off.table("vfolder", "ls", "odata")}
    assert listed == {"big.bin": str(5 * 2**20 + 3), "small.txt": "6", "empty": "0"}
    assert "odata" in off("vfolder", "list").stdout
    assert "Number of files" in off("vfolder", "info", "odata").stdout
    dl = work / "dl"
    dl.mkdir()
    off("vfolder", "download", "odata", "big.bin", "small.txt", "empty", cwd=dl)
    for name in ("big.bin", "small.txt", "empty"):
        assert (dl / name).read_bytes() == (work / name).read_bytes(), name
    bad = off("vfolder", "info", "nope", check=False)
    assert "no such folder" in bad.output
    off("vfolder", "delete", "odata")
    left = off("vfolder", "list").stdout
    assert "odata" not in left and "okeep" in left


def test_a_broken_file_path_in_a_session_mount_is_refused(vst):
    """A folder name that escapes is refused before any session is made."""
    proc = vst.cli("run", "--rm", *SMALL, "-m", "../etc", "-c", "print(1)", "python",
                   user=True, check=False)
    one_line_error(proc)


# A client on another machine: a ticket, then the upload and download over HTTP with the token
# in the URL (this machine's CLI hands files over the manager's unix socket instead).
REMOTE_TRANSFER = """
import sys
from bai.client import vfolder_wire as wire
from bai.client.cli.vfolder_express import Manager, _ticket
src, dst = sys.argv[1:]
mgr = Manager(None)
up = _ticket(mgr, "data", "upload", {"path": "tokens/remote.txt", "size": 6})
wire.upload(up["address"], src, 6, 30)
down = _ticket(mgr, "data", "download", {"path": "tokens/remote.txt"})
wire.download(down["address"], dst, 30)
"""


def test_storage_tokens_never_reach_the_log(vst, tmp_path):
    """A token is a capability for a day: the access log shows /storage/* without its query."""
    f = tmp_path / "t.txt"
    f.write_text("t")
    if "data" not in names(vst, user=True):
        vst.cli("vfolder", "create", "data", user=True)
    vst.cli("vfolder", "upload", "data", str(f), "-d", "tokens", user=True)
    (tmp_path / "x").mkdir()
    vst.cli("vfolder", "download", "data", "tokens/t.txt", "-b", str(tmp_path / "x"), user=True)
    (tmp_path / "r.txt").write_text("remote")
    subprocess.run([sys.executable, "-c", REMOTE_TRANSFER, str(tmp_path / "r.txt"),
                    str(tmp_path / "x" / "r.txt")], env=vst.user_env, check=True, timeout=60)
    assert (tmp_path / "x" / "r.txt").read_text() == "remote"
    log = (vst.state / "manager.log").read_text()
    assert "/storage/upload" in log and "/storage/download" in log
    assert "token=" not in log


def test_deleting_a_user_removes_their_folders(vst, tmp_path):
    vst.cli("admin", "user", "create", "carol@example.org")
    keys = json.loads(vst.cli("--output", "json", "admin", "keypair", "create",
                              "carol@example.org").stdout)
    env = {k: v for k, v in vst.env.items() if k != "BAI_PROFILE"}
    env.update({"BAI_CONFIG": str(vst.home / "none.toml"), "BACKEND_ENDPOINT": vst.endpoint,
                "BACKEND_ACCESS_KEY": keys["access_key"],
                "BACKEND_SECRET_KEY": keys["secret_key"]})
    f = tmp_path / "c.txt"
    f.write_text("carol's")
    made = json.loads(as_bob(vst, env, "--output", "json", "vfolder", "create", "cdata").stdout)
    as_bob(vst, env, "vfolder", "upload", "cdata", str(f))
    folder = vst.state / "vfolders" / made["id"].replace("-", "")[:2] / made["id"].replace("-", "")
    assert (folder / "c.txt").read_text() == "carol's"
    out = vst.cli("admin", "user", "delete", "carol@example.org").stdout
    assert out.strip() == "User carol@example.org is deleted (1 folder removed)."
    assert not folder.exists()
    assert "carol@example.org" not in vst.cli("admin", "user", "list").stdout
    one_line_error(as_bob(vst, env, "vfolder", "list", check=False))
    one_line_error(vst.cli("admin", "user", "delete", "carol@example.org", check=False))
