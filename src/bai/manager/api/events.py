"""``GET /events/session``: session lifecycle events as Server-Sent Events (client-protocol 8).

Query: ``sessionName`` (or ``name``) with optional ``owner_access_key`` (or ``ownerAccessKey``),
or ``sessionId`` (which overrides both); ``scope`` is ``*``, ``session``, ``kernel`` or a comma
list of them. Without a session (or with ``*``) the stream carries every session the caller may
see: an admin's everything (or one owner's), a user's own.

For one watched session the stream first replays what already happened (from
``session_history``, as the events those transitions sent), so that ``events`` started late
still tells the whole story; then it follows the live events, and once the session reaches a
final status (TERMINATED, CANCELLED, or ERROR) it sends ``server_close`` and ends, which makes
the official client exit. Wire rules: only ``event:``/``data:``/``retry:`` fields and ``:``
comments, every ``data`` is JSON, ``retry`` is in seconds (the official client's unit), and a
keep-alive comment goes out when nothing else did for a while.

Delivery: each stream is a bus listener (``LiveStream``) that writes an event batch to its
socket from inside the publish call: no task wakes up per stream and event, and streams with
the same filter share one encoding (and chunk framing) of the batch. The body is chunked
(HTTP/1.1), and those writes frame their own chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from aiohttp import HttpVersion11, web

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.common.events import SERVER_CLOSE, SessionEvent
from bai.common.status import TERMINAL, SessionStatus
from bai.common.streams import KEEPALIVE_SECONDS  # silence before a keep-alive comment
from bai.manager.api.middleware import caller_of
from bai.manager.context import Caller
from bai.manager.store import tables as t

log = logging.getLogger(__name__)

#: Seconds the client waits before reconnecting (seconds, not milliseconds: client-protocol 8.2).
RETRY_SECONDS = 5
#: Bytes in a stream's transport buffer above which its events queue instead (a slow client).
HIGH_WATER = 64 * 1024
#: Queued writes after which a client that stopped reading is disconnected (it may reconnect).
QUEUE_LIMIT = 100_000
#: How often a backed-up stream looks whether its client has read.
DRAIN_POLL_SECONDS = 0.05
_FINAL_NAMES = {str(s) for s in TERMINAL}
#: The streams open now: the manager's shutdown ends them (aiohttp waits for the handlers
#: still running before the cleanup closes the bus, and a stream's runs until it ends).
STREAMS = web.AppKey("event_streams", set)
_SCOPES = {"*", "session", "kernel"}


def parse_scope(raw: str | None) -> set[str]:
    parts = {p.strip() for p in (raw or "*").split(",") if p.strip()} or {"*"}
    unknown = parts - _SCOPES
    if unknown:
        raise InvalidAPIParameters(f"scope must be '*', 'session' or 'kernel', not {sorted(unknown)}")
    return {"session", "kernel"} if "*" in parts else parts


def in_scope(name: str, scopes: set[str]) -> bool:
    kind = name.split("_", 1)[0]
    return kind in scopes


def is_final(ev: SessionEvent) -> bool:
    """A session-level event that says the session reached a status it will not leave by itself."""
    return ev.name.startswith("session_") and ev.status in _FINAL_NAMES


def history_events(row: dict[str, Any], history: list[Any], exit_code: int | None) -> list[SessionEvent]:
    """The events the recorded transitions sent, in order (for replay)."""
    from bai.manager.services.transitions import session_events

    out: list[SessionEvent] = []
    for h in history:
        if h.from_status is None:
            out.append(SessionEvent("session_enqueued", str(row["id"]), row["name"], row["access_key"],
                                    reason=h.reason, status=h.to_status, ts=h.at.timestamp()))
            continue
        try:
            to = SessionStatus(h.to_status)
        except ValueError:
            continue
        code = exit_code if to in (SessionStatus.TERMINATED, SessionStatus.TERMINATING) else None
        for ev in session_events(row, to, h.reason, code):
            ev.ts = h.at.timestamp()
            out.append(ev)
    return out


async def load_story(root: Any, session_id: uuid.UUID) -> tuple[dict[str, Any], list[SessionEvent]]:
    """The session row and its past as events, read in one snapshot."""
    async with root.store.connect() as conn:
        row = (await conn.execute(sa.select(t.sessions).where(t.sessions.c.id == session_id))).mappings().one()
        history = (
            await conn.execute(
                sa.select(t.session_history)
                .where(t.session_history.c.session_id == session_id)
                .order_by(t.session_history.c.id)
            )
        ).all()
        exit_code = None
        if row["main_kernel_id"] is not None:
            exit_code = (
                await conn.execute(sa.select(t.kernels.c.exit_code).where(t.kernels.c.id == row["main_kernel_id"]))
            ).scalar()
    row = dict(row)
    past = history_events(row, history, exit_code)
    sched = (row.get("status_data") or {}).get("scheduler")
    if row["status"] == SessionStatus.PENDING.value and isinstance(sched, dict):
        from bai.manager.services.scheduling import pending_event

        # why it waits now (the scheduler's latest verdict is not a transition)
        past.append(pending_event(row["id"], row["name"], row["access_key"],
                                  row.get("status_info") or "", sched))
    return row, past


async def current_status(root: Any, session_id: uuid.UUID) -> str | None:
    async with root.store.connect() as conn:
        return (
            await conn.execute(sa.select(t.sessions.c.status).where(t.sessions.c.id == session_id))
        ).scalar()


def _owner_filter(caller: Caller, owner: str | None) -> str | None:
    """Which access key's events a session-less stream shows (None: all, admins only)."""
    if caller.is_admin:
        return owner or None
    if owner and owner != caller.access_key:
        raise Forbidden(f"A user keypair sees only its own sessions' events, not {owner}'s.")
    return caller.access_key


def sse_bytes(ev: SessionEvent) -> bytes:
    """The event's SSE message, encoded once however many streams send it."""
    cached = ev.__dict__.get("_sse_bytes")
    if cached is None:
        cached = f"event: {ev.name}\ndata: {json.dumps(ev.payload())}\n\n".encode()
        ev.__dict__["_sse_bytes"] = cached
    return cached


def chunk(payload: bytes) -> bytes:
    """``payload`` as one HTTP/1.1 chunk (the stream's body is chunked)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_RETRY = f"retry: {RETRY_SECONDS}\n".encode()
_KEEPALIVE = b": keep-alive\n\n"
_SERVER_CLOSE = f"event: {SERVER_CLOSE}\ndata: {{}}\n\n".encode()


class LiveStream:
    """One SSE response, written to from the bus's publish call (a ``Listener``).

    While the client keeps up (its transport's buffer is below ``HIGH_WATER``) an event batch is
    written to the socket inside the publish call, the bytes encoded and framed once for every
    stream with the same filter (the fan-out's ``shared`` dict). A client that falls behind gets
    a queue of (shared) payloads that ``run`` feeds to it as its buffer drains, so publishing
    never waits for it and it loses nothing; one that stops reading altogether is disconnected
    after ``QUEUE_LIMIT`` queued writes. Events that arrive before the stream is live (headers,
    replay) are held and then filtered in order.
    """

    def __init__(self, request: web.Request, resp: web.StreamResponse, scopes: set[str], *,
                 owner: str | None = None, session: bool = False) -> None:
        self.transport = request.transport
        self.chunked = resp.chunked
        self.scopes = scopes
        self.owner = owner
        self.session = session
        self.key = (owner, frozenset(scopes), self.chunked)  # streams alike share their bytes
        self.held: list[SessionEvent] | None = []
        self.replayed: Counter[tuple[str, str | None]] = Counter()
        self.snapshot = 0.0
        self.sent_retry = False
        self.pending: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.ended = False
        self.cut_off = False
        self.writes = 0
        self.queued = 0  # writes that had to wait for a slow client (diagnostics, tests)

    # -- the publish side (synchronous) ----------------------------------------------------

    def deliver(self, events: Sequence[SessionEvent], shared: dict[Any, Any]) -> None:
        if self.ended:
            return
        if self.held is not None:
            self.held.extend(events)
        elif self.session:
            self._deliver_session(events)
        elif not self.sent_retry:
            self.send(self._select(events))
        else:
            cached = shared.get(self.key)
            if cached is None:
                payload = self._select(events)
                cached = shared[self.key] = (payload, self._frame(payload))
            self.send(*cached)

    def _select(self, events: Sequence[SessionEvent]) -> bytes:
        owner, scopes = self.owner, self.scopes
        return b"".join(sse_bytes(ev) for ev in events
                        if (owner is None or ev.access_key == owner) and in_scope(ev.name, scopes))

    def _deliver_session(self, events: Sequence[SessionEvent]) -> None:
        parts = []
        for ev in events:  # already this session's only (the bus indexes by session)
            key = (ev.name, ev.status)
            if self.replayed[key] > 0 and ev.ts <= self.snapshot:
                self.replayed[key] -= 1  # already sent from the history
                continue
            if in_scope(ev.name, self.scopes):
                parts.append(sse_bytes(ev))
            if is_final(ev):
                self.send(b"".join(parts) + _SERVER_CLOSE)
                self.end()
                return
        self.send(b"".join(parts))

    def go_live(self) -> None:
        """Headers and replay are out: from now on events are written as they come."""
        held, self.held = self.held or [], None
        if held and not self.ended:
            if self.session:
                self._deliver_session(held)
            else:
                self.send(self._select(held))

    def send(self, payload: bytes, framed: bytes | None = None) -> None:
        """Messages (the first one carries ``retry``)."""
        if not payload:
            return
        if not self.sent_retry:
            payload, framed, self.sent_retry = _RETRY + payload, None, True
        self.write(payload, framed)

    def write(self, payload: bytes, framed: bytes | None = None) -> None:
        if self.ended:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            self.end()
            return
        self.writes += 1
        if not self.pending and transport.get_write_buffer_size() <= HIGH_WATER:
            transport.write(framed if framed is not None else self._frame(payload))
            return
        self.pending.append(payload)
        self.queued += 1
        if len(self.pending) > QUEUE_LIMIT:
            log.warning("an event stream's client stopped reading (%d writes queued); "
                        "disconnecting it", len(self.pending))
            self.cut_off = True
            self.pending.clear()
            transport.abort()
            self.end()
        self.wake.set()

    def _frame(self, payload: bytes) -> bytes:
        return chunk(payload) if self.chunked and payload else payload

    def end(self) -> None:
        self.ended = True
        self.wake.set()

    def close(self) -> None:  # the bus closed
        self.end()

    # -- the handler side ------------------------------------------------------------------

    async def run(self, on_idle: Callable[[], Awaitable[None]]) -> None:
        """Feed a slow client its queue; call ``on_idle`` after ``KEEPALIVE_SECONDS`` in which
        nothing was written; return once the stream ended and its queue is out."""
        while True:
            if self.pending:
                await self._flush_pending()
                continue
            if self.ended:
                return
            seen = self.writes
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    await self.wake.wait()
            except TimeoutError:
                if self.writes == seen:
                    await on_idle()
                continue
            self.wake.clear()

    async def _flush_pending(self) -> None:
        transport = self.transport
        while self.pending:
            if transport is None or transport.is_closing():
                self.pending.clear()
                self.end()
                return
            if transport.get_write_buffer_size() > HIGH_WATER // 4:
                await asyncio.sleep(DRAIN_POLL_SECONDS)
                continue
            batch, size = [], 0
            while self.pending and size < HIGH_WATER:
                batch.append(self.pending.popleft())
                size += len(batch[-1])
            transport.write(self._frame(b"".join(batch)))


async def stream_session_events(request: web.Request) -> web.StreamResponse:
    from bai.manager.app import ROOT

    root = request.app[ROOT]
    caller = caller_of(request)
    q = request.query
    scopes = parse_scope(q.get("scope"))
    session_id = q.get("sessionId")
    name = q.get("sessionName") or q.get("name")
    owner = q.get("owner_access_key") or q.get("ownerAccessKey")
    target: dict[str, Any] | None = None
    if session_id:
        target = await root.sessions.resolve(caller, session_id)
    elif name and name != "*":
        target = await root.sessions.resolve(caller, name, owner_access_key=owner)
    owner_filter = None if target else _owner_filter(caller, owner)

    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    if request.version >= HttpVersion11:
        resp.enable_chunked_encoding()  # explicitly: the live writes frame their own chunks
    await resp.prepare(request)
    stream = LiveStream(request, resp, scopes, owner=owner_filter, session=target is not None)
    sid = uuid.UUID(str(target["id"])) if target is not None else None
    streams = request.app[STREAMS]
    streams.add(stream)
    try:
        async with root.bus.listen(stream, session_id=str(sid) if sid else None):
            await resp.write(_KEEPALIVE)  # sends the headers; events so far wait in the stream
            if sid is not None:
                await _replay(root, stream, sid)

                async def on_idle() -> None:
                    if await current_status(root, sid) in _FINAL_NAMES:
                        stream.send(_SERVER_CLOSE)
                        stream.end()
                    else:
                        stream.write(_KEEPALIVE)
            else:
                async def on_idle() -> None:
                    stream.write(_KEEPALIVE)
            stream.go_live()
            await stream.run(on_idle)
    except ConnectionResetError:  # the client went away
        return resp
    except Exception:  # headers are out: a problem body can no longer be sent, so end the stream
        log.exception("event stream for %s failed", request.rel_url)
        return resp
    finally:
        streams.discard(stream)
    transport = stream.transport
    if not stream.cut_off and transport is not None and not transport.is_closing():
        await resp.write_eof()
    return resp


async def _replay(root: Any, stream: LiveStream, sid: uuid.UUID) -> None:
    """What already happened to the session, from its history; ends a finished session's stream."""
    stream.snapshot = time.time()
    row, past = await load_story(root, sid)
    parts = []
    for ev in past:
        stream.replayed[(ev.name, ev.status)] += 1
        if in_scope(ev.name, stream.scopes):
            parts.append(sse_bytes(ev))
    if row["status"] in _FINAL_NAMES:
        parts.append(_SERVER_CLOSE)
    stream.send(b"".join(parts))
    if row["status"] in _FINAL_NAMES:
        stream.end()


async def _end_streams(app: web.Application) -> None:
    """At shutdown: every open stream ends as a stream does (the client may reconnect to
    another manager), instead of holding the exit up until its next keep-alive finds the
    client gone or aiohttp's shutdown timeout cancels it."""
    for stream in list(app[STREAMS]):
        stream.end()


def setup(app: web.Application) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/events/session", stream_session_events)
