"""The CLI's download: spliced from the socket, and resumed with Range after a broken
connection without writing any byte twice (a fake storage endpoint that cuts the first try)."""

from __future__ import annotations

import asyncio
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bai.client.vfolder import VFolderAPI
from bai.common import zerocopy

DATA = os.urandom(3 * 1024 * 1024 + 17)


class Endpoint(BaseHTTPRequestHandler):
    ranges: list[str] = []

    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:
        asked = self.headers.get("Range")
        Endpoint.ranges.append(asked or "")
        if not asked:  # the first try breaks half way
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:len(DATA) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        start = int(asked.removeprefix("bytes=").rstrip("-"))
        self.send_response(206)
        self.send_header("Content-Length", str(len(DATA) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.end_headers()
        self.wfile.write(DATA[start:])


class Conn:
    read_timeout = 30.0

    def __init__(self, url: str) -> None:
        self.url = url

    async def request(self, method: str, path: str, json_body=None):
        return {"url": self.url, "token": "t"}


@pytest.mark.parametrize("spliced", [True, False], ids=["splice", "buffer"])
def test_a_broken_download_resumes_byte_for_byte(tmp_path, monkeypatch, spliced):
    monkeypatch.setattr(zerocopy, "AVAILABLE", spliced and zerocopy.AVAILABLE)
    Endpoint.ranges = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = VFolderAPI(Conn(f"http://127.0.0.1:{server.server_port}/storage/download"))
        seen: list[int] = []
        got = asyncio.run(api.download("data", "big.bin", tmp_path / "big.bin", seen.append))
    finally:
        server.shutdown()
        server.server_close()
    assert got == len(DATA)
    assert (tmp_path / "big.bin").read_bytes() == DATA
    assert Endpoint.ranges == ["", f"bytes={len(DATA) // 2}-"]
    assert seen[-1] == len(DATA)
    assert not list(tmp_path.glob(".*"))  # the hidden partial file became the target
