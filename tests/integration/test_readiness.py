"""Readiness follows the database: a manager on PostgreSQL reached through a TCP relay of the
test's own; cutting the relay makes the database unreachable (the shared server keeps running
for everyone else), and /health/ready answers 503 until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from bai.manager.app import create_app
from bai.manager.settings import ManagerSettings

PG_DSN = os.environ.get("BAI_TEST_PG_DSN")
REDIS_URL = os.environ.get("BAI_TEST_REDIS_URL")


class Relay:
    """A TCP relay on 127.0.0.1:port to ``target``; ``cut()`` closes it and every connection
    through it, ``resume()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def resume(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}


@pytest.fixture
async def database():
    """A fresh database on the shared server (dropped afterwards): its URL's parts."""
    if not PG_DSN:
        pytest.skip("BAI_TEST_PG_DSN not set")
    url = sa.make_url(PG_DSN)
    name = f"bai_ready_{uuid.uuid4().hex[:10]}"
    import asyncpg

    admin = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username,
                                  password=url.password, database=url.database)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield url, name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def ready_state(client: TestClient) -> tuple[int, dict]:
    resp = await client.get("/health/ready")
    return resp.status, await resp.json()


async def wait_ready(client: TestClient, want: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await ready_state(client)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"readiness stayed {status}: {body}"
        await asyncio.sleep(0.2)


async def outage(target: tuple[str, int], settings_for: Callable[[int], ManagerSettings],
                 broken: str) -> dict:
    """A manager that reaches ``target`` (its database or its event bus) through a relay:
    ready; 503 naming ``broken`` while the relay is cut (alive all along, the other dependency
    ok); ready again once it is back. Answers the readiness body seen during the outage."""
    other = {"database": "event_bus", "event_bus": "database"}[broken]
    relay = Relay(target)
    await relay.resume()
    client = TestClient(TestServer(create_app(settings_for(relay.port)), host="127.0.0.1",
                                   port=0))
    await client.start_server()
    try:
        body = await wait_ready(client, 200)
        assert body == {"ready": True, "checks": {
            "database": "ok", "event_bus": "ok", "scheduler": "ok"}}
        assert (await client.get("/health/live")).status == 200

        await relay.cut()
        down = await wait_ready(client, 503)
        assert down["ready"] is False and down["checks"][broken] != "ok"
        assert down["checks"][other] == "ok"
        assert (await client.get("/health/live")).status == 200  # alive, only not ready

        await relay.resume()
        body = await wait_ready(client, 200)
        assert body["checks"][broken] == "ok"
        return down
    finally:
        with contextlib.suppress(Exception):
            await relay.resume()
        await client.close()
        with contextlib.suppress(Exception):
            await relay.cut()


@pytest.mark.postgres
async def test_readiness_goes_false_while_the_database_is_unreachable(database):
    url, name = database

    def settings(port: int) -> ManagerSettings:
        db_url = url.set(host="127.0.0.1", port=port, database=name)
        return ManagerSettings(db_url=db_url.render_as_string(hide_password=False),
                               schedule_interval=0.5)

    down = await outage((url.host, url.port or 5432), settings, "database")
    assert "127.0.0.1" not in str(down) and name not in str(down)  # no DSN details leak


@pytest.mark.redis
async def test_readiness_goes_false_while_the_event_bus_is_unreachable(tmp_path):
    if not REDIS_URL:
        pytest.skip("BAI_TEST_REDIS_URL not set")
    url = sa.make_url(REDIS_URL.replace("redis://", "postgresql://", 1))  # host/port parsing

    def settings(port: int) -> ManagerSettings:
        return ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                               schedule_interval=0.5,
                               redis_url=f"redis://127.0.0.1:{port}/{url.database or 0}")

    down = await outage((url.host, url.port or 6379), settings, "event_bus")
    assert "127.0.0.1" not in str(down) and str(tmp_path) not in str(down)


async def test_readiness_follows_the_scheduler_loop(tmp_path, monkeypatch):
    from bai.manager.app import ROOT

    app = create_app(ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                                     schedule_interval=0.2))
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    root = app[ROOT]
    try:
        await wait_ready(client, 200)
        # a loop that waits for work is ready however long ago it last woke (its timer may
        # be minutes away: sessions for later, nothing else to do)
        from bai.manager.services import scheduling

        monkeypatch.setattr(scheduling, "QUIET_MAX", 3600.0)
        deadline = time.monotonic() + 60
        while ((root.scheduler.sleeping_until or 0.0) - time.monotonic() < 600
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        root.scheduler.last_tick -= 3600
        status, body = await ready_state(client)
        assert status == 200 and body["checks"]["scheduler"] == "ok", body
        hung = asyncio.Event()

        async def stuck_pass(look: bool = False):
            hung.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(root.scheduler, "run_pass", stuck_pass)
        root.scheduler.kick()
        await asyncio.wait_for(hung.wait(), 30)
        root.scheduler.last_tick -= 3600  # the stuck pass began an hour ago
        body = await wait_ready(client, 503)
        assert body["checks"]["scheduler"].startswith("no pass began")
        root.scheduler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await root.scheduler_task
        body = await wait_ready(client, 503)
        assert body["checks"]["scheduler"] == "not running"
    finally:
        await client.close()
