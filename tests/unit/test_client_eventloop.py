"""``bai.client.eventloop.run``: an SDK program on uvloop where installed, asyncio otherwise;
the SDK's requests (answers, time limits) behave the same on both."""

from __future__ import annotations

import asyncio
import sys

import pytest
from test_client_http1_async import Server, echo, sdk_config

from bai.client.connection import Connection
from bai.client.errors import ManagerTimeout
from bai.client.eventloop import run


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_runs_on_uvloop_where_installed_else_asyncio(monkeypatch):
    pytest.importorskip("uvloop")
    assert run(loop_module()).startswith("uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed
    assert run(loop_module()).startswith("asyncio")


@pytest.mark.parametrize("uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_the_sdks_requests_and_time_limits_on_either_loop(uvloop, tmp_path, monkeypatch):
    if uvloop:
        pytest.importorskip("uvloop")
    else:
        monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.setenv("BAI_READ_TIMEOUT", "0.2")
    gate_open = []

    async def slow(head: bytes, body: bytes) -> bytes:
        while b"/slow" in head and not gate_open:
            await asyncio.sleep(0.02)
        return await echo(head, body)

    async def main() -> list:
        async with Server(slow) as srv, Connection(sdk_config(srv.url, tmp_path)) as conn:
            answers = await asyncio.gather(*(conn.request("POST", f"/session?i={i}",
                                                          json_body={"i": i})
                                             for i in range(16)))
            with pytest.raises(ManagerTimeout, match=r"within 0\.2 s"):
                await conn.request("GET", "/slow")
            gate_open.append(True)
            answers.append(await conn.request("GET", "/next"))
            return answers

    answers = run(main())
    assert [a["line"] for a in answers] == [f"POST /session?i={i} HTTP/1.1" for i in range(16)
                                            ] + ["GET /next HTTP/1.1"]
    assert [a["body"] for a in answers[:16]] == ['{"i": %d}' % i for i in range(16)]
