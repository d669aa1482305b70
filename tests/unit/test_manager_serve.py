"""``bai-manager serve``'s event loop, and the download route's copy where that loop has no
``sendfile``."""

from __future__ import annotations

import asyncio
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
