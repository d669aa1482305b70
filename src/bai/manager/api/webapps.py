"""Apps in the browser: a session's Jupyter (or a user's own http service) on the app-proxy
origin, never on the dashboard's.

A session's app serves HTML and JavaScript its user (or whatever ran in the session) controls;
on the dashboard's origin that script would act with the dashboard's login. So apps are served
by a second listener of the manager, the **app proxy** (``app_proxy_host:app_proxy_port``,
another origin: another port), and only to the session's **owner** (an admin opening a user's
notebook would run the user's script with the admin's rights: refused; admins keep the CLI
tunnel):

1. The dashboard asks ``POST /stream/session/{x}/apps/{app}/ticket`` (login cookie + CSRF, the
   owner only, a RUNNING session offering ``app``) and gets ``{"url"}``: the app proxy's
   ``/app/{session_id}/{app}/?ticket=T``, T signed (HMAC of the cluster token) and bound to the
   login, the session and the app, valid ``TICKET_TTL`` seconds and once.
2. The app proxy trades the ticket for the cookie ``bai_app`` (HttpOnly, SameSite=Strict,
   ``Path=/app/{session_id}/{app}/``, signed, bound the same way) and redirects to the same
   path without the ticket.
3. Every request under that path: the cookie must be valid for exactly that session and app, its
   login still open (logout ends it), its keypair active, the session still the caller's own and
   RUNNING. The request is then written to the service (``apps.open_app_stream``) with every
   ``Cookie``, ``Authorization`` and ``X-BAI-*`` header removed (the dashboard's cookie reaches
   the app port too: cookies are not port-isolated) and, for jupyter, its token added (the
   browser never holds it). ``Set-Cookie`` of the app's answers is dropped (an app cannot plant
   cookies the dashboard would read). A WebSocket upgrade (Jupyter's kernels) passes through as
   raw bytes after the 101.

HTTP is parsed by ``h11`` on both sides. Every refusal is a problem JSON answer.
Known limits: an http app is served under ``/app/{id}/{name}/`` (absolute links in its pages
miss; jupyter knows its prefix: ``kernel/services.py`` sets its ``base_url``); every app of a
user shares the app-proxy origin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import h11
from aiohttp import web

from bai.common import services
from bai.common.errors import (
    BaiError, Forbidden, InvalidAPIParameters, ServiceUnavailable, SessionNotFound,
)
from bai.manager.api.apps import app_token, open_app_stream
from bai.manager.api.middleware import caller_of
from bai.manager.api.stream import _touch

log = logging.getLogger(__name__)

PREFIX = "/app/"
COOKIE = "bai_app"
TICKET_TTL = 60
COOKIE_TTL = 12 * 3600
#: a kept-alive browser connection with no request is closed after this
IDLE = 120.0
TOUCH_EVERY = 30.0
CHUNK = 256 * 1024
#: headers never forwarded to the app (credentials of bai, hop-by-hop, framing h11 redoes)
_DROP_UP = frozenset({
    b"cookie", b"authorization", b"proxy-authorization", b"x-bai-csrf", b"connection",
    b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"proxy-connection",
    b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
_DROP_DOWN = frozenset({
    b"set-cookie", b"set-cookie2", b"connection", b"keep-alive", b"transfer-encoding",
    b"trailer", b"proxy-connection"})
#: used when the cluster has no shared token (one manager only)
_FALLBACK_SECRET = secrets.token_hex(32)


# --- signed tickets and cookies ---------------------------------------------------------

def _key(root: Any) -> bytes:
    secret = root.settings.cluster_token or _FALLBACK_SECRET
    return hashlib.sha256(b"bai-webapps:" + secret.encode()).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def sign(root: Any, kind: str, fields: list[str]) -> str:
    payload = _b64(json.dumps([kind, *fields]).encode())
    mac = hmac.new(_key(root), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify(root: Any, kind: str, value: str, now: float | None = None) -> list[str] | None:
    """The fields of a value ``sign`` made for ``kind`` and not yet expired (the last field
    but one is the expiry), else None."""
    try:
        payload, mac = value.split(".", 1)
        want = hmac.new(_key(root), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(want), mac):
            return None
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(data, list) or len(data) < 3 or data[0] != kind:
        return None
    if not all(isinstance(f, str) for f in data):
        return None
    fields = data[1:]
    try:
        if float(fields[-2]) < (time.time() if now is None else now):
            return None
    except ValueError:
        return None
    return fields


# --- the dashboard's side: the ticket -----------------------------------------------------

def _proxy_base(request: web.Request, root: Any) -> str:
    listener = request.app.get(PROXY)
    if listener is None or listener.port is None:
        raise ServiceUnavailable("this manager runs no app proxy (set app_proxy_port); use "
                                 "`backend.ai app SESSION APP` instead")
    if root.settings.app_proxy_url:
        return root.settings.app_proxy_url.rstrip("/")
    host = request.url.host or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{listener.port}"


async def ticket(request: web.Request) -> web.Response:
    from bai.manager.app import ROOT
    from bai.manager.services import web_login

    root = request.app[ROOT]
    caller = caller_of(request)
    login = request.cookies.get(web_login.COOKIE)
    if "Authorization" in request.headers or not login:
        raise Forbidden("Apps open in the browser from the dashboard's login; keypair clients "
                        "use `backend.ai app SESSION APP`.")
    sess = await root.sessions.resolve(caller, request.match_info["session"])
    if sess["access_key"] != caller.access_key:
        # an admin's browser would run the user's script with the admin's login
        raise Forbidden("Only the session's owner opens its apps in a browser; admins use "
                        "`backend.ai app SESSION APP --owner-access-key` from a terminal.")
    name = request.match_info["app"]
    entry = services.find(sess.get("service_ports") or [], name)
    if entry is None or services.normalize(entry)["protocol"] not in ("http", "preopen"):
        raise InvalidAPIParameters(f"session {sess['name']} offers no web app {name!r}",
                                   data={"app": name})
    await root.agents.kernel_target(sess)  # RUNNING, with a kernel: else the problem now
    base = _proxy_base(request, root)
    sid = str(sess["id"])
    value = sign(root, "ticket", [caller.access_key, sid, name, web_login.token_hash(login),
                                  str(time.time() + TICKET_TTL), secrets.token_urlsafe(12)])
    return web.json_response({"url": f"{base}{PREFIX}{sid}/{name}/?{urlencode({'ticket': value})}"},
                             headers={"Cache-Control": "no-store"})


# --- the app proxy ------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, status: int, title: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.title, self.msg = status, title, msg


class AppProxy:
    """The listener (``asyncio.start_server``); each connection is served by ``_serve``."""

    def __init__(self, root: Any, host: str, port: int | None, ssl: Any = None,
                 sock: Any = None) -> None:
        self.root, self.host, self.ssl = root, host, ssl
        self.port: int | None = port
        #: a listening socket inherited from who started the manager (server start), else None
        self.sock = sock
        self.server: asyncio.base_events.Server | None = None
        self.used: dict[str, float] = {}  # ticket nonces already traded, until they expire
        self.conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen; OSError where the port is busy: the manager does not start without the
        proxy it was told to run (as for its API port)."""
        if self.sock is not None:
            self.server = await asyncio.start_server(self._conn, sock=self.sock, ssl=self.ssl)
        else:
            try:
                self.server = await asyncio.start_server(self._conn, self.host, self.port,
                                                         ssl=self.ssl, reuse_address=True)
            except OSError as e:
                raise OSError(e.errno, f"the app proxy cannot listen on "
                              f"{self.host}:{self.port}: {e.strerror}") from None
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.conns):
                task.cancel()
            await asyncio.gather(*self.conns, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                h11.ProtocolError):
            pass
        except Exception:
            log.exception("app proxy connection failed")
        finally:
            self.conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            req = await asyncio.wait_for(_next(conn, reader), IDLE)
            if not isinstance(req, h11.Request):
                return
            try:
                switched = await self._one(conn, req, reader, writer)
            except Refused as r:
                await _drain_body(conn, reader)
                await _answer(conn, writer, r.status, _problem(r.status, r.title, r.msg))
                switched = False
            if switched or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    # -- one request

    async def _one(self, conn: h11.Connection, req: h11.Request,
                   reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        target = req.target.decode("latin-1")
        parts = urlsplit(target)
        path = parts.path
        if not path.startswith(PREFIX):
            raise Refused(404, "Not found.", "The app proxy serves /app/SESSION/APP/ only.")
        pieces = path[len(PREFIX):].split("/", 2)
        if len(pieces) < 2 or not pieces[0] or not pieces[1]:
            raise Refused(404, "Not found.", "The app proxy serves /app/SESSION/APP/ only.")
        sid, app = pieces[0], pieces[1]
        scope = f"{PREFIX}{sid}/{app}/"
        if len(pieces) == 2:  # /app/S/A -> /app/S/A/ (the cookie's path)
            await _drain_body(conn, reader)
            await _answer(conn, writer, 308, b"", [(b"location", scope.encode()
                                                   + (b"?" + parts.query.encode()
                                                      if parts.query else b""))])
            return False
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = [v for k, v in query if k == "ticket"]
        if given:
            return await self._trade(conn, writer, reader, req, sid, app, scope, path,
                                     [(k, v) for k, v in query if k != "ticket"], given[0])
        sess = await self._allowed(_cookies(req.headers), sid, app)
        return await self._forward(conn, req, reader, writer, sess, app)

    async def _trade(self, conn, writer, reader, req, sid, app, scope, path, rest, value) -> bool:
        fields = verify(self.root, "ticket", value)
        if fields is None or len(fields) != 6 or fields[1] != sid or fields[2] != app:
            raise Refused(401, "Invalid ticket.", "This link is not valid (or has expired): "
                          "open the app again from the dashboard.")
        access_key, _sid, _app, login, expires, nonce = fields
        now = time.time()
        for k, exp in list(self.used.items()):
            if exp < now:
                del self.used[k]
        if nonce in self.used:
            raise Refused(401, "Invalid ticket.", "This link was used already: open the app "
                          "again from the dashboard.")
        await self._check(access_key, login, sid)
        self.used[nonce] = float(expires)
        await _drain_body(conn, reader)
        cookie = sign(self.root, "cookie", [access_key, sid, app, login,
                                            str(now + COOKIE_TTL), ""])
        secure = "; Secure" if self.ssl is not None else ""
        location = path + ("?" + urlencode(rest) if rest else "")
        await _answer(conn, writer, 303, b"", [
            (b"location", location.encode()),
            (b"set-cookie", (f"{COOKIE}={cookie}; Path={scope}; Max-Age={COOKIE_TTL}; "
                             f"HttpOnly; SameSite=Strict{secure}").encode()),
            (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer")])
        return False

    async def _allowed(self, cookies: list[str], sid: str, app: str) -> dict[str, Any]:
        for value in cookies:
            fields = verify(self.root, "cookie", value)
            if fields is None or len(fields) != 6 or fields[1] != sid or fields[2] != app:
                continue
            return await self._check(fields[0], fields[3], sid)
        raise Refused(401, "Not signed in to this app.", "Open the app from the dashboard's "
                      "session page (its link signs this browser in to it).")

    async def _check(self, access_key: str, login_hash: str, sid: str) -> dict[str, Any]:
        """The session row when the login is open, its keypair active and the session that
        keypair's own; else a refusal."""
        import sqlalchemy as sa

        from bai.manager.services.auth import load_keypair
        from bai.manager.store import tables as t

        w = t.web_sessions
        async with self.root.store.connect() as db:
            row = (await db.execute(sa.select(w.c.access_key, w.c.expires_at)
                                    .where(w.c.token_hash == login_hash))).first()
            record = await load_keypair(db, access_key) if row is not None else None
        if (row is None or row.access_key != access_key
                or _aware(row.expires_at) <= datetime.now(timezone.utc)):
            raise Refused(401, "Login session expired.", "Log in to the dashboard again and "
                          "open the app from there.")
        if record is None or not record.is_active or not record.user_active:
            raise Refused(401, "Inactive user.", "The user or keypair of this login is "
                          "deactivated.")
        caller = record.caller()
        try:
            uuid.UUID(sid)
            sess = await self.root.sessions.resolve(caller, sid)
        except (ValueError, SessionNotFound):
            raise Refused(404, "No such session.", "No session of yours has this id.") from None
        if sess["access_key"] != access_key:
            raise Refused(404, "No such session.", "No session of yours has this id.")
        return sess

    async def _forward(self, conn, req, reader, writer, sess, app) -> bool:
        try:
            up_reader, up_writer = await open_app_stream(self.root, sess, app)
            token = await app_token(self.root, sess, app)
        except BaiError as e:
            raise Refused(e.status, e.title or "App unavailable.", str(e)) from None
        await _touch(self.root, sess["id"])
        try:
            return await _exchange(conn, req, reader, writer, up_reader, up_writer, token,
                                   lambda: _touch(self.root, sess["id"]))
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _cookies(headers: list[tuple[bytes, bytes]]) -> list[str]:
    out = []
    for name, value in headers:
        if name == b"cookie":
            for piece in value.decode("latin-1").split(";"):
                k, _, v = piece.strip().partition("=")
                if k == COOKIE and v:
                    out.append(v)
    return out


async def _next(conn: h11.Connection, reader: asyncio.StreamReader):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(CHUNK))
            continue
        return event


async def _drain_body(conn: h11.Connection, reader: asyncio.StreamReader) -> None:
    while conn.their_state is h11.SEND_BODY:
        event = await _next(conn, reader)
        if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


def _problem(status: int, title: str, msg: str) -> bytes:
    from bai.common.errors import PROBLEM_BASE

    code = {401: "auth-failed", 403: "forbidden", 404: "not-found"}.get(status, "app-proxy")
    return json.dumps({"type": PROBLEM_BASE + code, "title": title, "msg": msg}).encode()


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = list(headers or [])
    if body:
        hdrs.append((b"content-type", b"application/problem+json"))
    hdrs.append((b"content-length", str(len(body)).encode()))
    if conn.their_state is not h11.DONE:
        hdrs.append((b"connection", b"close"))
    writer.write(conn.send(h11.Response(status_code=status, headers=hdrs)))
    if body:
        writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _exchange(conn, req, reader, writer, up_reader, up_writer, token, touch) -> bool:
    """Write ``req`` (and its body) to the service, its answer back; True when the
    connection switched protocols (a WebSocket) and was relayed until closed."""
    headers = [(k, v) for k, v in req.headers if k.lower() not in _DROP_UP]
    upgrade = any(k == b"upgrade" for k, _ in headers)
    if upgrade:
        headers.append((b"connection", b"Upgrade"))
    else:
        headers.append((b"connection", b"close"))
    chunked = any(k == b"transfer-encoding" and b"chunked" in v.lower() for k, v in req.headers)
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    if token:
        headers.append((b"authorization", b"token " + token.encode()))
    up = h11.Connection(h11.CLIENT)
    up_writer.write(up.send(h11.Request(method=req.method, target=req.target, headers=headers)))
    await _copy_body(conn, reader, up, up_writer, "the browser went away mid-request")
    while True:
        event = await _next(up, up_reader)
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101 and upgrade:
                writer.write(conn.send(h11.InformationalResponse(
                    status_code=101, headers=[*_down(event.headers), (b"connection", b"Upgrade")],
                    reason=event.reason)))
                await writer.drain()
                await _splice(conn.trailing_data[0], up.trailing_data[0], reader, writer,
                              up_reader, up_writer, touch)
                return True
            continue  # 100 Continue and the like: the body went already
        if isinstance(event, h11.Response):
            break
        raise ConnectionError("the app closed the connection without an answer")
    writer.write(conn.send(h11.Response(status_code=event.status_code,
                                        headers=_down(event.headers), reason=event.reason)))
    await _copy_body(up, up_reader, conn, writer, "the app closed the connection mid-answer")
    return False


async def _copy_body(src: h11.Connection, reader: asyncio.StreamReader, dst: h11.Connection,
                     writer: asyncio.StreamWriter, cut: str) -> None:
    """One message's body from ``src`` to ``dst`` as it comes, and its end."""
    while True:
        event = await _next(src, reader)
        if isinstance(event, h11.Data):
            writer.write(dst.send(h11.Data(data=event.data)))
            await writer.drain()
        elif isinstance(event, h11.EndOfMessage):
            writer.write(dst.send(h11.EndOfMessage()))
            await writer.drain()
            return
        else:
            raise ConnectionError(cut)


def _down(headers) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() not in _DROP_DOWN]


async def _splice(from_browser: bytes, from_app: bytes, reader, writer, up_reader, up_writer,
                  touch) -> None:
    loop = asyncio.get_running_loop()
    touched = [loop.time()]

    async def pipe(first: bytes, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        if first:
            dst.write(first)
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
            if loop.time() - touched[0] > TOUCH_EVERY:
                touched[0] = loop.time()
                await touch()

    tasks = [asyncio.ensure_future(pipe(from_browser, reader, up_writer)),
             asyncio.ensure_future(pipe(from_app, up_reader, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- wiring -------------------------------------------------------------------------------

PROXY: web.AppKey = web.AppKey("app_proxy", AppProxy)
#: the app proxy's listening socket, where the manager inherited it (serve --app-proxy-fd)
INHERITED: web.AppKey = web.AppKey("app_proxy_sock", object)


async def terminal_page(request: web.Request) -> web.StreamResponse:
    """The terminal page (bai's own, on the dashboard's origin: it runs no user script)."""
    from bai.manager.api.dashboard import STATIC

    return web.FileResponse(STATIC / "terminal.html", headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    from bai.manager.app import ROOT

    app.router.add_post("/stream/session/{session}/apps/{app}/ticket", ticket)
    app.router.add_get("/dashboard/terminal", terminal_page)
    root = app[ROOT]
    settings = root.settings
    sock = app.get(INHERITED)
    if settings.app_proxy_port is None and sock is None:
        return
    proxy = AppProxy(root, settings.app_proxy_host, settings.app_proxy_port,
                     settings.ssl_context(), sock)
    app[PROXY] = proxy

    async def start(_: web.Application) -> None:
        await proxy.start()
        log.info("app proxy listening on %s:%s", proxy.host, proxy.port)

    async def stop(_: web.Application) -> None:
        await proxy.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
