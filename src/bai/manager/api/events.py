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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.common.events import SERVER_CLOSE, SessionEvent
from bai.common.status import TERMINAL, SessionStatus
from bai.manager.api.middleware import caller_of
from bai.manager.context import Caller
from bai.manager.store import tables as t

log = logging.getLogger(__name__)

#: Seconds the client waits before reconnecting (seconds, not milliseconds: client-protocol 8.2).
RETRY_SECONDS = 5
#: Seconds of silence after which a keep-alive comment is sent (and the session re-checked).
KEEPALIVE_SECONDS = 15.0
_FINAL_NAMES = {str(s) for s in TERMINAL}
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


class SSEWriter:
    """Writes SSE messages; the first one carries ``retry``."""

    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp
        self.sent_retry = False

    async def event(self, name: str, data: Any) -> None:
        retry = "" if self.sent_retry else f"retry: {RETRY_SECONDS}\n"
        self.sent_retry = True
        await self.resp.write(f"{retry}event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    async def live(self, ev: SessionEvent) -> None:
        """A bus event; its JSON is made once, however many streams send it."""
        if not self.sent_retry:
            await self.event(ev.name, ev.payload())
            return
        cached = ev.__dict__.get("_sse_bytes")
        if cached is None:
            cached = f"event: {ev.name}\ndata: {json.dumps(ev.payload())}\n\n".encode()
            ev.__dict__["_sse_bytes"] = cached
        await self.resp.write(cached)

    async def comment(self, text: str) -> None:
        await self.resp.write(f": {text}\n\n".encode())


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


CLOSED: Any = object()


async def next_event(sub: Any) -> Any:
    """The next bus event; None after ``KEEPALIVE_SECONDS`` of silence; CLOSED when the bus ended."""
    try:
        async with asyncio.timeout(KEEPALIVE_SECONDS):  # no task per event, unlike wait_for
            return await anext(sub)
    except TimeoutError:
        return None
    except StopAsyncIteration:
        return CLOSED


def _owner_filter(caller: Caller, owner: str | None) -> str | None:
    """Which access key's events a session-less stream shows (None: all, admins only)."""
    if caller.is_admin:
        return owner or None
    if owner and owner != caller.access_key:
        raise Forbidden(f"A user keypair sees only its own sessions' events, not {owner}'s.")
    return caller.access_key


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
    await resp.prepare(request)
    out = SSEWriter(resp)
    try:
        async with root.bus.subscribe() as sub:
            if target is not None:
                await _follow_session(root, sub, out, uuid.UUID(str(target["id"])), scopes)
            else:
                await _follow_all(sub, out, owner_filter, scopes)
    except ConnectionResetError:  # the client went away
        return resp
    except Exception:  # headers are out: a problem body can no longer be sent, so end the stream
        log.exception("event stream for %s failed", request.rel_url)
        return resp
    await resp.write_eof()
    return resp


async def _follow_session(root: Any, sub: Any, out: SSEWriter, sid: uuid.UUID, scopes: set[str]) -> None:
    snapshot = time.time()
    row, past = await load_story(root, sid)
    replayed: Counter[tuple[str, str | None]] = Counter()
    for ev in past:
        replayed[(ev.name, ev.status)] += 1
        if in_scope(ev.name, scopes):
            await out.event(ev.name, ev.payload())
    if row["status"] in _FINAL_NAMES:
        await out.event(SERVER_CLOSE, {})
        return
    await out.comment("keep-alive")
    while True:
        ev = await next_event(sub)
        if ev is CLOSED:
            return
        if ev is None:
            if await current_status(root, sid) in _FINAL_NAMES:
                await out.event(SERVER_CLOSE, {})
                return
            await out.comment("keep-alive")
            continue
        if ev.session_id != str(sid):
            continue
        key = (ev.name, ev.status)
        if replayed[key] > 0 and ev.ts <= snapshot:
            replayed[key] -= 1  # already sent from the history
            continue
        if in_scope(ev.name, scopes):
            await out.live(ev)
        if is_final(ev):
            await out.event(SERVER_CLOSE, {})
            return


async def _follow_all(sub: Any, out: SSEWriter, owner: str | None, scopes: set[str]) -> None:
    await out.comment("keep-alive")
    while True:
        ev = await next_event(sub)
        if ev is CLOSED:
            return
        if ev is None:
            await out.comment("keep-alive")
            continue
        if owner is not None and ev.access_key != owner:
            continue
        if in_scope(ev.name, scopes):
            await out.live(ev)


def setup(app: web.Application) -> None:
    app.router.add_get("/events/session", stream_session_events)
