"""Session callbacks (``Lifecycle.flush``): delivered in the order their transactions committed,
and none left in the queue when a flush comes while the delivery task is closing its HTTP
session. Both were seen in test_manager_lifecycle's callback test once the SQLite layer made the
store faster (``terminating`` after ``terminated``; ``terminated`` never sent)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from bai.manager.services import callbacks
from bai.manager.services.lifecycle import Lifecycle
from bai.manager.services.transitions import Outbox


class _Store:
    @contextlib.asynccontextmanager
    async def connect(self):
        async def execute(_stmt):
            return SimpleNamespace(scalars=lambda: [])
        yield SimpleNamespace(execute=execute)


def _lifecycle(bus) -> Lifecycle:
    root = SimpleNamespace(bus=bus, store=_Store(), scheduler=SimpleNamespace(kick=lambda: None),
                           settings=SimpleNamespace(callback_allow=""))
    return Lifecycle(root)  # type: ignore[arg-type]


def _outbox(event: str, *, with_events: bool = False) -> Outbox:
    ob = Outbox(callbacks=[("http://hook.example/", {"event": event})])
    if with_events:
        ob.events.append(SimpleNamespace(name=f"session_{event}"))  # type: ignore[arg-type]
    return ob


def _recording(monkeypatch, closing=None, release=None) -> list[str]:
    sent: list[str] = []

    @contextlib.asynccontextmanager
    async def session(_allow, _agents):
        yield None
        if closing is not None:
            closing.set()
            await release.wait()

    async def post(_http, _url, body, _allow, _agents):
        sent.append(body["event"])
        return 200

    monkeypatch.setattr(callbacks, "session", session)
    monkeypatch.setattr(callbacks, "post", post)
    return sent


async def _delivered(lc: Lifecycle, sent: list[str], n: int) -> list[str]:
    for _ in range(3000):  # up to 30 s
        if len(sent) >= n and (lc._callback_worker is None or lc._callback_worker.done()):
            break
        await asyncio.sleep(0.01)
    return sent


async def test_a_later_transactions_callbacks_never_go_first(monkeypatch):
    sent = _recording(monkeypatch)
    published = asyncio.Event()

    class Bus:
        async def publish_many(self, _events):
            await published.wait()  # the first flush is still publishing its events

    lc = _lifecycle(Bus())
    first = asyncio.create_task(lc.flush(_outbox("terminating", with_events=True)))
    await asyncio.sleep(0)
    await lc.flush(_outbox("terminated"))  # committed after the first, flushed while it waits
    published.set()
    await first
    assert await _delivered(lc, sent, 2) == ["terminating", "terminated"]


async def test_a_callback_queued_while_the_delivery_closes_is_delivered(monkeypatch):
    closing, release = asyncio.Event(), asyncio.Event()
    sent = _recording(monkeypatch, closing, release)

    class Bus:
        async def publish_many(self, _events):
            pass

    lc = _lifecycle(Bus())
    await lc.flush(_outbox("terminating"))
    await asyncio.wait_for(closing.wait(), 30)  # delivered; the HTTP session is closing
    closing.clear()
    await lc.flush(_outbox("terminated"))  # the task is not done yet: no new one starts
    release.set()
    assert await _delivered(lc, sent, 2) == ["terminating", "terminated"]
