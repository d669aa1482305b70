"""``bai-manager serve``'s event loop, and the download route's copy where that loop has no
``sendfile``."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import uvloop
from aiohttp import web
from click.testing import CliRunner

from bai.manager import __main__ as manager_main
from bai.manager.api import storage


def test_serve_runs_the_app_on_uvloop(monkeypatch, tmp_path):
    seen = {}

    def run_app(app, **kw):
        seen.update(kw)
        kw["loop"].close()

    monkeypatch.setattr(web, "run_app", run_app)
    monkeypatch.setattr("bai.ops.logs.configure", lambda *a, **kw: None)  # the test's logging
    monkeypatch.setenv("BAI_MANAGER_STATE_DIR", str(tmp_path))
    res = CliRunner().invoke(manager_main.main, ["serve"])
    assert res.exit_code == 0, res.output
    assert isinstance(seen["loop"], uvloop.Loop)


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.chunks.append(data)


def test_a_range_is_written_exactly_without_sendfile(tmp_path):
    data = random.Random(7).randbytes(2_300_000)  # more than two chunks, no period
    (tmp_path / "f").write_bytes(data)
    sink = Sink()
    with open(tmp_path / "f", "rb") as f:
        asyncio.run(storage._write_range(sink, f, 1000, len(data) - 2000))
    assert b"".join(sink.chunks) == data[1000:-1000]
    assert len(sink.chunks) == 3


def test_a_file_shorter_than_its_announced_range_breaks_the_answer(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    with open(tmp_path / "f", "rb") as f, pytest.raises(ConnectionResetError):
        asyncio.run(storage._write_range(Sink(), f, 5, 10))


class Folders:
    def __init__(self, path) -> None:
        self.path = path

    async def open_download(self, token):
        return os.open(self.path, os.O_RDONLY), "f"


class Root:
    def __init__(self, path) -> None:
        self.folders = Folders(path)


def test_on_uvloop_downloads_go_straight_to_the_copy_after_the_first(tmp_path, monkeypatch):
    import aiohttp

    from bai.manager.app import ROOT

    data = random.Random(8).randbytes(1_500_000)
    (tmp_path / "f").write_bytes(data)
    tries = []
    no_sendfile = uvloop.Loop.sendfile

    def sendfile(self, *a, **kw):  # uvloop's: AbstractEventLoop's NotImplementedError
        tries.append(1)
        return no_sendfile(self, *a, **kw)

    monkeypatch.setattr(uvloop.Loop, "sendfile", sendfile, raising=False)
    monkeypatch.setattr(storage, "_NO_SENDFILE", set(), raising=False)  # none found yet

    async def main() -> list[bytes]:
        app = web.Application()
        app[ROOT] = Root(tmp_path / "f")
        app.router.add_get("/storage/download", storage.download)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:
                bodies = []
                for headers in ({}, {"Range": "bytes=10-99"}, {}):
                    async with http.get(f"http://127.0.0.1:{port}/storage/download?token=t",
                                        headers=headers) as resp:
                        bodies.append(await resp.read())
                return bodies
        finally:
            await runner.cleanup()

    assert uvloop.run(main()) == [data, data[10:100], data]
    assert len(tries) == 1  # the first download found out; the others did not try again
