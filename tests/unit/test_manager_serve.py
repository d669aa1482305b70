"""``bai-manager serve``'s event loop, and the download route's copy where that loop has no
``sendfile``."""

from __future__ import annotations

import asyncio
import io

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


def test_a_range_is_written_exactly_without_sendfile():
    data = bytes(range(256)) * 9000  # 2.2 MiB: more than one chunk
    sink = Sink()
    asyncio.run(storage._write_range(sink, io.BytesIO(data), 1000, len(data) - 2000))
    assert b"".join(sink.chunks) == data[1000:-1000]
    assert len(sink.chunks) == 3
