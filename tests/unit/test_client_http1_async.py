"""The SDK's keep-alive HTTP/1.1 for plain requests (``bai.client.http1_async``) against a
server written here, so that each framing and each failure is the one asked for."""

from __future__ import annotations

import asyncio
import json

import pytest

from bai.client.config import ClientConfig
from bai.client.connection import Connection
from bai.client.errors import ConnectionLost, ManagerTimeout
from bai.client.http1 import ConnectFailed, WireError
from bai.client.http1_async import AsyncHTTP
from bai.client.models import CreateSpec
from bai.client.session import SessionAPI
from bai.testing.ports import free_port


class Server:
    """Answers each request with ``answer(request_head, body)``'s bytes (None: drop the
    connection); counts connections and requests."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        #: the server closes each connection once it answered (headers say nothing)
        self.close_after = False
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = await self.answer(head, body)
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
                if self.close_after or b"connection: close" in out.lower():
                    return
        finally:
            writer.close()


def json_answer(value, extra: str = "") -> bytes:
    body = json.dumps(value).encode()
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def echo(head: bytes, body: bytes) -> bytes:
    return json_answer({"line": head.split(b"\r\n")[0].decode(), "body": body.decode()})


async def test_answers_come_back_whole_over_kept_connections():
    async with Server(echo) as srv:
        http = AsyncHTTP(headers={"User-Agent": "t"})
        try:
            for i in range(5):
                a = await http.request("POST", srv.url + f"/s?i={i}", body=b'{"a": 1}')
                assert a.status == 200 and a.content_type == "application/json"
                assert json.loads(a.body) == {"line": f"POST /s?i={i} HTTP/1.1",
                                              "body": '{"a": 1}'}
            assert srv.connections == 1  # one connection, kept between requests
            # 16 at once: each its own connection, each its own answer
            answers = await asyncio.gather(*(http.request("GET", srv.url + f"/x{i}")
                                             for i in range(16)))
            assert [json.loads(a.body)["line"] for a in answers] == [
                f"GET /x{i} HTTP/1.1" for i in range(16)]
            assert srv.connections == 16
            head = srv.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
            assert head[1] == b"Host: 127.0.0.1:%d" % int(srv.url.rsplit(":", 1)[1])
            assert b"User-Agent: t" in head and b"Content-Length: 8" in head
        finally:
            await http.close()


async def test_requests_beyond_the_connection_limit_wait_for_a_connection():
    async with Server(echo) as srv:
        http = AsyncHTTP(max_connections=3)
        try:
            answers = await asyncio.gather(*(http.request("GET", srv.url + f"/w{i}")
                                             for i in range(10)))
            assert [json.loads(a.body)["line"] for a in answers] == [
                f"GET /w{i} HTTP/1.1" for i in range(10)]
            assert srv.connections == 3
        finally:
            await http.close()


async def test_chunked_answers_and_connection_close():
    async def chunked(head: bytes, body: bytes) -> bytes:
        if b"/close" in head:
            return b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nTrailer: 1\r\n\r\n")

    async with Server(chunked) as srv:
        http = AsyncHTTP()
        try:
            assert (await http.request("GET", srv.url + "/c")).body == b"abcdefg"
            assert (await http.request("GET", srv.url + "/c")).body == b"abcdefg"
            a = await http.request("GET", srv.url + "/close")
            assert (a.status, a.reason, a.body) == (404, "Not Found", b"no")
            assert (await http.request("GET", srv.url + "/c")).body == b"abcdefg"
            assert srv.connections == 2  # the one the server closed was not used again
        finally:
            await http.close()


async def test_a_connection_the_server_closed_while_idle_is_not_used():
    async with Server(echo) as srv:
        srv.close_after = True  # keep-alive by its headers, then closed (an idle timeout)
        http = AsyncHTTP()
        try:
            await http.request("GET", srv.url + "/a")
            await asyncio.sleep(0.05)  # the close reaches the client
            assert json.loads((await http.request("GET", srv.url + "/b")).body)["line"] == (
                "GET /b HTTP/1.1")
            assert srv.connections == 2
        finally:
            await http.close()


async def test_a_request_is_sent_once_and_a_broken_answer_is_an_error():
    async def broken(head: bytes, body: bytes) -> bytes | None:
        if b"/half" in head:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        return None  # the connection drops without an answer

    async with Server(broken) as srv:
        srv.close_after = True
        http = AsyncHTTP()
        try:
            with pytest.raises(WireError, match="without an answer"):
                await http.request("POST", srv.url + "/drop", body=b"{}")
            assert len(srv.requests) == 1
            with pytest.raises(WireError, match="before the end"):
                await http.request("GET", srv.url + "/half")
            with pytest.raises(ConnectFailed):
                await http.request("GET", "http://127.0.0.1:%d/" % free_port())
        finally:
            await http.close()


async def test_the_sdk_says_a_broken_answer_is_a_lost_connection(tmp_path, monkeypatch):
    async def drop(head: bytes, body: bytes) -> None:
        return None

    async with Server(drop) as srv:
        monkeypatch.setenv("HOME", str(tmp_path))
        cfg = ClientConfig.load(env={"BACKEND_ENDPOINT": srv.url, "BACKEND_ACCESS_KEY": "AK",
                                     "BACKEND_SECRET_KEY": "SK", "HOME": str(tmp_path)})
        async with Connection(cfg) as conn:
            with pytest.raises(ConnectionLost, match="without an answer"):
                await conn.request("POST", "/session", json_body={"image": "python"})
        assert len(srv.requests) == 1  # sent once, never again


async def test_a_cancelled_request_leaves_no_connection_behind():
    gate = asyncio.Event()

    async def slow(head: bytes, body: bytes) -> bytes:
        if b"/slow" in head:
            await gate.wait()
        return await echo(head, body)

    async with Server(slow) as srv:
        http = AsyncHTTP()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(http.request("GET", srv.url + "/slow"), 0.2)
            gate.set()
            # the late answer is never read as the next request's
            assert json.loads((await http.request("GET", srv.url + "/next")).body)["line"] == (
                "GET /next HTTP/1.1")
            assert srv.connections == 2
        finally:
            await http.close()


def sdk_config(url: str, tmp_path) -> ClientConfig:
    return ClientConfig.load(env={"BACKEND_ENDPOINT": url, "BACKEND_ACCESS_KEY": "AK",
                                  "BACKEND_SECRET_KEY": "SK", "HOME": str(tmp_path)})


async def test_the_sdk_waits_for_an_answer_in_the_callers_task(tmp_path):
    """A plain request is bounded by the read timeout in the caller's own task: no task per
    request (asyncio.wait_for's task cost a create ~2 extra turns of the event loop)."""
    seen: list[set[str]] = []

    async def look(head: bytes, body: bytes) -> bytes:
        seen.append({t.get_coro().__qualname__ for t in asyncio.all_tasks()})
        return await echo(head, body)

    async with Server(look) as srv:
        async with Connection(sdk_config(srv.url, tmp_path)) as conn:
            assert conn.read_timeout  # (a limit to keep)
            answer = await conn.request("POST", "/session", json_body={"image": "python"})
    assert answer["line"] == "POST /session HTTP/1.1"
    assert seen == [{"test_the_sdk_waits_for_an_answer_in_the_callers_task", "Server._serve"}]


async def test_the_sdk_times_out_a_silent_manager_and_does_not_read_its_late_answer(
        tmp_path, monkeypatch):
    gate = asyncio.Event()

    async def slow(head: bytes, body: bytes) -> bytes:
        if b"/slow" in head:
            await gate.wait()
        return await echo(head, body)

    monkeypatch.setenv("BAI_READ_TIMEOUT", "0.2")
    async with Server(slow) as srv:
        async with Connection(sdk_config(srv.url, tmp_path)) as conn:
            with pytest.raises(ManagerTimeout, match=r"did not answer within 0\.2 s"):
                await conn.request("GET", "/slow")
            gate.set()
            assert (await conn.request("GET", "/next"))["line"] == "GET /next HTTP/1.1"
            assert (await conn.request("GET", "/slow", timeout=None))["line"] == (
                "GET /slow HTTP/1.1")
        assert srv.connections == 2


async def test_an_enqueue_only_create_has_the_connections_read_timeout(tmp_path, monkeypatch):
    """``SessionAPI.create`` bounds an enqueue-only create by its connection's read timeout
    (read once, when the connection was made), as every other request of the connection."""
    async def slow(head: bytes, body: bytes) -> bytes:
        await asyncio.sleep(1.0)
        return json_answer({"sessionId": "3f1c1d2e-8a7b-4c1d-9e2f-0a1b2c3d4e5f"})

    monkeypatch.setenv("BAI_READ_TIMEOUT", "0.2")
    async with Server(slow) as srv:
        async with Connection(sdk_config(srv.url, tmp_path)) as conn:
            monkeypatch.setenv("BAI_READ_TIMEOUT", "0")  # no limit, for connections made now
            with pytest.raises(ManagerTimeout, match=r"within 0\.2 s"):
                await SessionAPI(conn).create(CreateSpec(image="python", name="s1",
                                                         enqueue_only=True))


async def test_a_request_cancelled_as_its_connection_opens_ends_cancelled(monkeypatch):
    """A cancel that lands as the connection is made is not lost: the request ends with
    CancelledError instead of going on (Python 3.11's ``wait_for`` returned the connection
    then, and a ``start``'s status watcher, stopped so, polled on: ``start`` never returned)."""
    import bai.client.http1_async as mod

    opened = asyncio.open_connection
    victim: list[asyncio.Task] = []

    async def open_then_cancel(*args, **kwargs):
        conn = await opened(*args, **kwargs)
        victim[0].cancel()  # the caller is cancelled as its connection completes
        return conn

    monkeypatch.setattr(mod.asyncio, "open_connection", open_then_cancel)
    async with Server(echo) as srv:
        http = AsyncHTTP()
        task = asyncio.create_task(http.request("GET", srv.url + "/x"))
        victim.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        await http.close()
