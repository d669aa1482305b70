"""The raw upgrade of the apps tunnel (``bai.common.rawstream``): an aiohttp server takes the
connection over after ``101``, the client's end reads the answer, and ``relay`` moves bytes both
ways, each direction ending on its own, with splice and with the plain copy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket

import pytest
from aiohttp import web

from bai.common import rawstream
from bai.ops.upgrade import take_over


async def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    ls.setblocking(False)
    a = socket.socket()
    a.setblocking(False)
    accepted = asyncio.ensure_future(loop.sock_accept(ls))
    await loop.sock_connect(a, ls.getsockname())
    b, _ = await accepted
    b.setblocking(False)
    ls.close()
    return a, b


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while data := await loop.sock_recv(sock, 1 << 20):
        out += data
    return bytes(out)


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def mode(request, monkeypatch):
    if request.param and not rawstream.SPLICE:
        pytest.skip("no os.splice on this platform")
    monkeypatch.setattr(rawstream, "SPLICE", request.param)
    return request.param


async def test_relay_moves_both_directions_and_each_ends_on_its_own(mode):
    loop = asyncio.get_running_loop()
    # left <-> (a relay b) <-> right
    left, a = await _tcp_pair()
    b, right = await _tcp_pair()
    relay = asyncio.ensure_future(rawstream.relay(a, b, a_first=b"first-a:", b_first=b"first-b:"))
    up, down = os.urandom(9 << 20), os.urandom(5 << 20)

    async def send(sock: socket.socket, data: bytes) -> None:
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    got_right, got_left, *_ = await asyncio.wait_for(asyncio.gather(
        _read_all(right), _read_all(left), send(left, up), send(right, down)), 60)
    assert hashlib.sha256(got_right).digest() == hashlib.sha256(b"first-a:" + up).digest()
    assert hashlib.sha256(got_left).digest() == hashlib.sha256(b"first-b:" + down).digest()
    await asyncio.wait_for(relay, 10)
    for s in (left, a, b, right):
        s.close()


async def test_one_side_ended_the_other_still_flows(mode):
    """A half-closed client still gets the whole answer (``shutdown(SHUT_WR)`` passes on)."""
    loop = asyncio.get_running_loop()
    left, a = await _tcp_pair()
    b, right = await _tcp_pair()
    relay = asyncio.ensure_future(rawstream.relay(a, b))
    await loop.sock_sendall(left, b"question")
    left.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_all(right), 10) == b"question"  # the end came through
    answer = os.urandom(3 << 20)
    await loop.sock_sendall(right, answer)
    right.close()
    assert await asyncio.wait_for(_read_all(left), 30) == answer
    await asyncio.wait_for(relay, 10)
    for s in (left, a, b):
        s.close()


async def test_touch_is_called_while_bytes_move(mode):
    loop = asyncio.get_running_loop()
    left, a = await _tcp_pair()
    b, right = await _tcp_pair()
    touched = []

    async def touch() -> None:
        touched.append(1)

    relay = asyncio.ensure_future(rawstream.relay(a, b, touch=touch, touch_every=0.0))
    await loop.sock_sendall(left, b"x" * 1000)
    left.shutdown(socket.SHUT_WR)
    right.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(_read_all(right), 10) == b"x" * 1000
    await asyncio.wait_for(relay, 10)
    assert touched
    for s in (left, a, b, right):
        s.close()


async def _server(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/t", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_upgrade_takes_the_connection_both_ways(mode):
    """The server's first bytes may come with the 101 (the client's tail), the client's may
    come before the server took over (the server's tail): none is lost."""
    loop = asyncio.get_running_loop()
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if not rawstream.wants_raw(request.headers):
            raise web.HTTPBadRequest()
        seen["token"] = request.headers.get("X-Token", "")
        sock, tail, resp = await take_over(request)
        try:
            await loop.sock_sendall(sock, b"hello;")
            data = tail + await _read_all(sock)
            await loop.sock_sendall(sock, hashlib.sha256(data).hexdigest().encode())
        finally:
            rawstream.close(sock)
        return resp

    runner, port = await _server(handler)
    try:
        got = await rawstream.open_upgraded("127.0.0.1", port, "/t", f"127.0.0.1:{port}",
                                            {"X-Token": "t0"})
        assert isinstance(got, rawstream.Raw), got
        assert seen["token"] == "t0"
        payload = os.urandom(2 << 20)
        await loop.sock_sendall(got.sock, payload)
        got.sock.shutdown(socket.SHUT_WR)
        answer = got.tail + await asyncio.wait_for(_read_all(got.sock), 30)
        assert answer == b"hello;" + hashlib.sha256(payload).hexdigest().encode()
        got.sock.close()
    finally:
        await runner.cleanup()


async def test_a_refusal_is_the_answer_with_its_body():
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"type": "x", "title": "no such app"}, status=404)

    runner, port = await _server(handler)
    try:
        got = await rawstream.open_upgraded("127.0.0.1", port, "/t", f"127.0.0.1:{port}", {})
        assert isinstance(got, rawstream.Refused)
        assert got.status == 404 and got.content_type.startswith("application/json")
        assert json.loads(got.body)["title"] == "no such app"
    finally:
        await runner.cleanup()


async def test_nothing_listening_is_an_oserror():
    from stacks import free_port

    with pytest.raises(OSError):
        await rawstream.open_upgraded("127.0.0.1", free_port(), "/t", "x", {})

