"""callback_url goes only where an admin allows (issue 12, item 8: blind SSRF).

A listener on loopback stands for the manager's or an agent's port: it must never be hit,
whether the URL names it by address, by a name that resolves to it, or as an agent's address
where the admin has allowed loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from test_manager_lifecycle import body, caller, manager  # noqa: F401

from bai.common.errors import InvalidAPIParameters
from bai.manager.services import callbacks

ip = ipaddress.ip_address


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "10.1.2.3",
                                  "172.16.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0", "fd00::1",
                                  "fe80::1", "::ffff:127.0.0.1", "224.0.0.1", "240.0.0.1"])
def test_what_is_refused_by_default(addr):
    assert callbacks.why_refused(ip(addr), [], set()) is not None


def test_public_addresses_pass_and_an_admin_can_allow_a_range_but_never_an_agent():
    assert callbacks.why_refused(ip("93.184.216.34"), [], set()) is None
    assert callbacks.why_refused(ip("2606:4700::1111"), [], set()) is None
    allow = callbacks.parse_networks("10.0.0.0/8, 127.0.0.0/8")
    assert callbacks.why_refused(ip("10.1.2.3"), allow, set()) is None
    agents = callbacks.agent_ips(["http://127.0.0.1:6001", "http://93.184.216.34:6001", "bad"])
    assert agents == {ip("127.0.0.1"), ip("93.184.216.34")}
    assert "agent" in callbacks.why_refused(ip("127.0.0.1"), allow, agents)
    assert "agent" in callbacks.why_refused(ip("::ffff:127.0.0.1"), allow, agents)
    assert "agent" in callbacks.why_refused(ip("93.184.216.34"), allow, agents)
    assert callbacks.why_refused(ip("127.0.0.2"), allow, agents) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x/", "http://", "ftp://h/x",
                                 "http://h:99999/", "javascript:alert(1)"])
def test_a_callback_url_that_is_not_http_is_refused_at_create(url):
    with pytest.raises(InvalidAPIParameters) as e:
        callbacks.check_url(url)
    assert e.value.data == {"field": "callback_url"}


class Listener:
    def __init__(self, host: str) -> None:
        self.got: list[dict] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.hook)
        self.server = TestServer(app, host=host)

    async def hook(self, request):
        self.got.append(await request.json())
        return web.Response()

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self.server.host}:{self.server.port}/hook"


async def until(cond, what: str, timeout: float = 60.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, f"waited for {what}"
        await asyncio.sleep(0.05)


async def test_callbacks_never_reach_loopback_by_default(manager, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="bai.manager.services.lifecycle")
    trap = Listener("127.0.0.1")
    await trap.server.start_server()
    try:
        me = await caller(manager)
        urls = [trap.url(), trap.url("localhost"), trap.url("[::ffff:127.0.0.1]")]
        for i, url in enumerate(urls):
            await manager.sessions.create(me, body(f"hook-{i}", callback_url=url, enqueueOnly=True))

        def refused() -> int:
            return sum("refused" in r.getMessage() for r in caplog.records)
        await until(lambda: refused() >= len(urls), "each callback refused")
    finally:
        await trap.server.close()
    assert trap.got == []


async def test_callbacks_never_reach_an_agent_even_where_loopback_is_allowed(manager):  # noqa: F811
    manager.settings.callback_allow = "127.0.0.0/8"
    agent_port = Listener("127.0.0.1")  # the fake agent's address is 127.0.0.1
    allowed = Listener("127.0.0.2")
    await agent_port.server.start_server()
    await allowed.server.start_server()
    try:
        me = await caller(manager)
        await manager.sessions.create(me, body("hook-agent", callback_url=agent_port.url(),
                                               enqueueOnly=True))
        ans = await manager.sessions.create(me, body("hook-ok", callback_url=allowed.url()))
        await manager.sessions.destroy(me, "hook-ok")
        # one worker delivers in order: once the later session's last callback came, the
        # earlier one's were tried
        await until(lambda: any(g["event"] == "terminated" for g in allowed.got),
                    "the allowed listener's terminated callback")
    finally:
        await agent_port.server.close()
        await allowed.server.close()
    assert agent_port.got == []
    assert {g["session_id"] for g in allowed.got} == {ans["sessionId"]}
