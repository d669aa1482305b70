"""``vfolder upload``/``download`` on the express path (no click, asyncio or httpx) against a fake
manager + storage endpoint: what it takes from a command line, ``download -r`` of a tree, and a
server whose listing names paths outside the target (``../x``, absolute, ``a/b``): refused, and
nothing is written outside the target folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bai.client.cli import vfolder_express as vx
from bai.client.errors import ProtocolError


class Fake(BaseHTTPRequestHandler):
    """``/folders/NAME/files``, ``request-download``/``request-upload`` and the storage
    endpoint, over ``Fake.tree``: folder path -> list of entries; ``Fake.data``: file path ->
    bytes (uploads land there too)."""

    tree: dict[str, list[dict]] = {}
    data: dict[str, bytes] = {}
    seen: list[str] = []

    def log_message(self, *a) -> None:
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, obj, status: int = 200) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _storage(self, op: str, path: str) -> None:
        port = self.server.server_address[1]
        self._json({"url": f"http://127.0.0.1:{port}/storage/{op}", "token": path})

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        Fake.seen.append(f"GET {u.path}")
        if u.path.endswith("/files"):
            body = json.loads(self._body() or b"{}")
            path = body.get("path", ".")
            if path not in Fake.tree:
                self._json({"type": "x", "title": f"not a folder: {path}"}, 400)
                return
            items = Fake.tree[path][body.get("offset", 0):][:body.get("limit", 1000)]
            self._json({"items": items, "total": len(Fake.tree[path]), "offset": 0})
        elif u.path == "/storage/download":
            self._body()
            raw = Fake.data[parse_qs(u.query)["token"][0]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    def do_POST(self) -> None:
        body = json.loads(self._body() or b"{}")
        Fake.seen.append(f"POST {self.path.rsplit('/', 1)[-1]} {body.get('path')}")
        if self.path.endswith("/request-download"):
            if body["path"] not in Fake.data:
                self._json({"type": "x", "title": f"no such file: {body['path']}"}, 404)
                return
            self._storage("download", body["path"])
        elif self.path.endswith("/request-upload"):
            Fake.data[body["path"]] = b""
            self._storage("upload", body["path"])

    def do_PATCH(self) -> None:
        u = urlsplit(self.path)
        path = parse_qs(u.query)["token"][0]
        Fake.data[path] = Fake.data[path] + self._body()
        self.send_response(204)
        self.send_header("Upload-Offset", str(len(Fake.data[path])))
        self.end_headers()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    Fake.tree, Fake.data, Fake.seen = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"BACKEND_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "BACKEND_ACCESS_KEY": "AKIATESTTESTTESTTEST", "BACKEND_SECRET_KEY": "s" * 40,
           "BAI_CONFIG": str(tmp_path / "none.toml")}
    for k in ("BAI_PROFILE", "BAI_CLI_EXPRESS", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env
    server.shutdown()
    server.server_close()


def f(name: str, kind: str = "FILE") -> dict:
    return {"name": name, "type": kind, "size": 1}


@pytest.mark.parametrize("args, want", [
    (["vfolder", "upload", "d", "a.txt"], {"command": "upload", "name": "d", "files": ["a.txt"]}),
    (["--output", "json", "vfolder", "upload", "d", "a", "b", "-r", "--dst=x", "-b", "."],
     {"output": "json", "files": ["a", "b"], "recursive": True, "dst": "x", "base_dir": "."}),
    (["--profile", "user", "vfolder", "download", "d", "x", "--output", "JSON"],
     {"profile": "user", "output": "JSON", "command": "download"}),
    (["vfolder", "download", "-r", "d", "dir", "--base-dir=/tmp"],
     {"recursive": True, "base_dir": "/tmp", "files": ["dir"]}),
])
def test_parse_takes_the_transfer_commands(args, want, monkeypatch):
    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    plan = vx.parse(args)
    assert plan is not None
    assert {k: plan[k] for k in want} == want


@pytest.mark.parametrize("args", [
    ["vfolder", "upload", "d"],                       # no file: click says what is missing
    ["vfolder", "upload", "d", "a", "--help"],
    ["vfolder", "download", "-rb", "x", "d", "a"],    # bundled short options
    ["vfolder", "upload", "d", "--", "-a"],
    ["vfolder", "download", "d", "a", "--output", "yaml"],
    ["vfolder", "download", "d", "a", "-d", "x"],     # upload's option
    ["vfolder", "ls", "d"],
    ["--verbose", "vfolder", "upload", "d", "a"],
    ["run", "vfolder", "upload", "d", "a"],
])
def test_parse_leaves_everything_else_to_click(args, monkeypatch):
    monkeypatch.delenv("BAI_CLI_EXPRESS", raising=False)
    assert vx.parse(args) is None


def test_parse_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("BAI_CLI_EXPRESS", "0")
    assert vx.parse(["vfolder", "upload", "d", "a"]) is None


def test_download_r_fetches_a_tree_depth_first(fake, tmp_path, capsys):
    Fake.tree = {"res": [f("a.txt"), f("link", "SYMLINK"), f("sub", "DIRECTORY")],
                 "res/sub": [f("b.bin"), f("deeper", "DIRECTORY")],
                 "res/sub/deeper": [f("c")]}
    Fake.data = {"res/a.txt": b"a" * 10, "res/sub/b.bin": os.urandom(70_000),
                 "res/sub/deeper/c": b""}
    dest = tmp_path / "dest"
    dest.mkdir()
    vx.download("data", ["res"], dest, as_json=True, profile=None, recursive=True)
    got = json.loads(capsys.readouterr().out)
    assert [g["path"] for g in got] == ["res/a.txt", "res/sub/b.bin", "res/sub/deeper/c"]
    for path, raw in Fake.data.items():
        assert (dest / path).read_bytes() == raw
    assert not (dest / "res" / "link").exists()  # links are left out
    assert sorted(p.name for p in dest.rglob(".*")) == []  # no part file left behind


@pytest.mark.parametrize("evil", ["../evil", "..", ".", "sub/../../evil", "a/b", "", "x\x00y",
                                  "ABSOLUTE"])
def test_download_r_refuses_a_listing_that_names_a_path_outside(fake, tmp_path, evil):
    outside = tmp_path / "outside"
    outside.mkdir()
    if evil == "ABSOLUTE":
        evil = str(outside / "evil")
    Fake.tree = {"res": [f("ok.txt"), f(evil)], "res/sub": []}
    Fake.data = {"res/ok.txt": b"ok", f"res/{evil}": b"pwned", evil: b"pwned"}
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ProtocolError, match="unsafe path"):
        vx.download("data", ["res"], dest, as_json=False, profile=None, recursive=True)
    assert not (tmp_path / "evil").exists() and list(outside.iterdir()) == []
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["dest/res/ok.txt"], written
    assert [s for s in Fake.seen if "request-download" in s] == [
        "POST request-download res/ok.txt"]


def test_download_without_r_of_a_folder_is_the_servers_error(fake, tmp_path):
    from bai.common.errors import BaiError

    Fake.tree = {"res": [f("a")]}
    with pytest.raises(BaiError, match="no such file: res"):
        vx.download("data", ["res"], tmp_path, as_json=False, profile=None)
    assert list(tmp_path.iterdir()) == []


def test_the_express_path_imports_neither_click_nor_asyncio_nor_httpx(fake, tmp_path):
    """A whole upload and download through ``main``, in a fresh interpreter."""
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(300_000))
    (tmp_path / "dl").mkdir()
    code = (
        "import sys\n"
        "from bai.client.cli.main import main\n"
        "for argv in (['vfolder', 'upload', 'd', sys.argv[1]],\n"
        "             ['--output', 'json', 'vfolder', 'download', 'd', 'up.bin', '-b', sys.argv[2]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('click', 'asyncio', 'httpx', 'rich') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "dl")],
                          capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dl" / "up.bin").read_bytes() == src.read_bytes()
    assert f"Uploaded {src} to d:up.bin (293.0 KiB)" in proc.stderr
    out = proc.stdout.strip().splitlines()
    assert json.loads("\n".join(out[:-1]))[0]["size"] == 300_000
    assert out[-1] == "[]", proc.stdout


def test_express_and_click_print_the_same(fake, tmp_path):
    src = tmp_path / "same.txt"
    src.write_bytes(b"same")
    outs = []
    for express in ("1", "0"):
        Fake.data = {}
        dl = tmp_path / f"dl{express}"
        dl.mkdir()
        env = {**os.environ, "BAI_CLI_EXPRESS": express}
        run = [sys.executable, "-m", "bai.client.cli.main"]
        up = subprocess.run([*run, "vfolder", "upload", "d", str(src), "-d", "in"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        down = subprocess.run([*run, "vfolder", "download", "--output", "json", "d",
                               "in/same.txt", "-b", str(dl)],
                              capture_output=True, text=True, env=env, timeout=60)
        bad = subprocess.run([*run, "vfolder", "upload", "d", str(tmp_path / "nope")],
                             capture_output=True, text=True, env=env, timeout=60)
        assert (dl / "same.txt").read_bytes() == b"same"
        outs.append((up.returncode, up.stdout, up.stderr, down.returncode,
                     down.stdout.replace(str(dl), "DL"), down.stderr, bad.returncode,
                     bad.stderr))
    assert outs[0] == outs[1]
    assert outs[0][0] == 0 and outs[0][2] == f"Uploaded {src} to d:in/same.txt (4 B)\n"
    assert outs[0][6] == 2 and outs[0][7] == f"Error: no such file: {tmp_path / 'nope'}\n"
