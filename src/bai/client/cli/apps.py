"""``backend.ai app``, ``apps`` and ``shell``: reach what runs inside a session.

* ``app SESSION APP [-b [HOST:]PORT]`` listens on a local port (127.0.0.1:8080 by default, as the
  official client) and turns each TCP connection into one signed WebSocket to the manager
  (``/stream/session/{x}/tcpproxy?app=APP``), relayed to the service in the session. It prints
  the local URL and runs until Ctrl-C.
  Where the manager and the session's agent run on this machine too, the connection is
  spliced to the service's own socket, handed over by the manager (``take_local``): no relay.
* ``apps SESSION`` lists the session's apps (``/stream/session/{x}/apps``).
* ``shell SESSION`` opens a shell on a pseudo-terminal in the session
  (``/stream/session/{x}/pty``): the local terminal in raw mode, window size changes sent
  along, Ctrl-C delivered to the remote program; the exit code is the shell's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any
from urllib.parse import quote

import click

from bai.client.cli.context import get_ctx, output_option, owner_option
from bai.client.errors import UsageError

CHUNK = 256 * 1024


def _path(session: str, what: str) -> str:
    return f"/stream/session/{quote(session, safe='')}/{what}"


def _params(owner: str | None, **more: str) -> dict[str, str]:
    out = {k: v for k, v in more.items() if v is not None}
    if owner:
        out["owner_access_key"] = owner
    return out


def parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"-b/--bind {bind!r}: give [HOST:]PORT, e.g. 127.0.0.1:8888") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"-b/--bind {bind!r}: the port must be within 0-65535")
    return host or "127.0.0.1", number


@click.command("apps", epilog="Example:\n\n  backend.ai apps nb")
@click.argument("session")
@owner_option
@output_option
def apps(session: str, owner: str | None) -> None:
    """List the apps (services) SESSION offers, for 'backend.ai app'."""
    ctx = get_ctx()
    items = ctx.run(lambda conn: conn.request("GET", _path(session, "apps"),
                                              params=_params(owner)))
    if ctx.output_format == "json":
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"Session {session} offers no apps.")
        return
    width = max(len(i["name"]) for i in items)
    for i in items:
        ports = ",".join(str(p) for p in i.get("ports") or []) or "-"
        click.echo(f"{i['name']:<{width}}  {i['protocol']:<7}  port {ports}")


class Tunnel:
    """The local end: each accepted connection becomes one tunnelled connection to the manager:
    a raw byte stream after an ``Upgrade: tcp`` (``bai.common.rawstream``: the bytes never
    enter Python) where the endpoint is plain HTTP without a proxy and the manager offers it,
    else a WebSocket (BINARY frames), as the official client's."""

    def __init__(self, conn: Any, session: str, app: str, owner: str | None):
        self.conn = conn
        self.session = session
        self.app = app
        self.owner = owner
        self.raw = True
        #: ask for the service's socket itself (manager and agent on this machine)
        self.local = True

    async def _open_raw(self) -> Any:
        """The manager's raw stream, a ``LocalTicket`` (asked with ``self.local``: the local
        path, see ``manager/api/apps.py``), or None where it cannot be had (the WebSocket)."""
        from bai.client import network
        from bai.client.endpoint import USER_AGENT
        from bai.client.http1 import ConnectFailed, HandshakeFailed, split_url
        from bai.common import rawstream

        eps = self.conn.endpoints
        path, params = _path(self.session, "tcpproxy"), _params(self.owner, app=self.app)

        async def attempt(idx: int) -> Any:
            url, path_qs = eps.target(idx, path, params)
            scheme, host, port, netloc, _ = split_url(url)
            if scheme != "http" or network.proxy_url(scheme, host):
                return None
            headers = eps.signed(idx, "GET", path_qs, "application/octet-stream", host=netloc)
            headers["User-Agent"] = USER_AGENT
            if self.local:
                headers[LOCAL_HEADER] = "fd"
            try:
                got = await rawstream.open_upgraded(host, port, path_qs, netloc, headers,
                                                    timeout=None)
            except OSError as e:
                raise ConnectFailed(f"cannot connect to {netloc}: {e.strerror or e}") from None
            if isinstance(got, rawstream.Refused):
                if got.status == 200 and self.local:
                    return _ticket(got.body)
                if got.status == 400:  # a manager without the raw upgrade: the WebSocket
                    return None
                raise HandshakeFailed(got.status, got.reason, got.body, got.content_type)
            return got

        return await self.conn._first(attempt, self.conn.read_timeout)

    async def handle(self, client: socket.socket) -> None:
        from bai.common import rawstream
        from bai.common.errors import BaiError

        try:
            raw = await self._open_raw() if self.raw else None
            if isinstance(raw, LocalTicket):
                if await self._handle_local(client, raw):
                    return
                self.local = False  # this machine's way is closed: the relay from now on
                raw = await self._open_raw()
            if raw is None:
                self.raw = False
                await self._handle_ws(client)
                return
            try:
                await rawstream.relay(client, raw.sock, b"", raw.tail)
            finally:
                rawstream.close(raw.sock)
        except BaiError as e:
            from bai.client.cli.main import describe

            click.echo(f"Error: {describe(e)}", err=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            rawstream.close(client)

    async def _handle_local(self, client: socket.socket, ticket: LocalTicket) -> bool:
        """The local path: the service's socket from the manager's unix socket, spliced to
        ``client`` here, nothing relayed on the way. False where it cannot be taken (the
        caller asks for the relay); a refusal of the service itself is raised."""
        from bai.common import rawstream

        got = await asyncio.to_thread(take_local, ticket)
        if got is None:
            return False
        service, chan = got
        loop = asyncio.get_running_loop()

        async def touch() -> None:  # the session's activity, as the manager's relay counts it
            with contextlib.suppress(OSError):
                await loop.sock_sendall(chan, b".")

        try:
            await rawstream.relay(client, service, touch=touch, touch_every=TOUCH_EVERY)
        finally:
            rawstream.close(service)
            chan.close()
        return True

    async def _handle_ws(self, client: socket.socket) -> None:
        from bai.client.connection import WSMsgType

        loop = asyncio.get_running_loop()
        async with self.conn.websocket(
                _path(self.session, "tcpproxy"),
                params=_params(self.owner, app=self.app)) as ws:

            async def up() -> None:
                while data := await loop.sock_recv(client, CHUNK):
                    await ws.send_bytes(data)

            async def down() -> None:
                async for msg in ws:
                    if msg.type == WSMsgType.BINARY:
                        await loop.sock_sendall(client, msg.data)

            tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


#: sent by bai's CLI with its raw upgrade: the service's socket itself, where it can be had
LOCAL_HEADER = "X-BAI-Local"
#: the CLI tells the manager of traffic (the session's activity) at most this often
TOUCH_EVERY = 30.0


class LocalTicket:
    """The manager's answer to ``X-BAI-Local``: its unix socket and a single-use ticket."""

    def __init__(self, path: str, ticket: str) -> None:
        self.path, self.ticket = path, ticket


def _ticket(body: bytes) -> LocalTicket | None:
    try:
        got = json.loads(body)
        return LocalTicket(str(got["local_socket"]), str(got["ticket"]))
    except (ValueError, KeyError, TypeError):
        return None


def take_local(ticket: LocalTicket) -> tuple[socket.socket, socket.socket] | None:
    """Blocking: (the service's connected socket, the open unix connection to the manager),
    or None where the local path cannot be taken (no such socket here: another machine; a
    ticket refused); a refusal of the service itself is raised as its problem."""
    from bai.common.errors import error_from_problem
    from bai.common.unixsock import connect_unix

    chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds: list[int] = []
    try:
        chan.settimeout(10.0)
        connect_unix(chan, ticket.path)
        chan.sendall(json.dumps({"op": "app", "ticket": ticket.ticket}).encode())
        chan.settimeout(150.0)  # a service bai starts (jupyter) may take 90 s
        msg, fds, _, _ = socket.recv_fds(chan, 65536, 1)
        answer = json.loads(msg.partition(b"\n")[0]) if msg else None
        if isinstance(answer, dict) and answer.get("ok") is True and len(fds) == 1:
            service = socket.socket(fileno=fds.pop())
            service.setblocking(False)
            chan.setblocking(False)
            return service, chan
        if (isinstance(answer, dict) and isinstance(answer.get("status"), int)
                and not answer.get("fallback")):
            chan.close()
            raise error_from_problem(answer["status"], answer)
    except (OSError, ValueError):
        pass
    finally:
        for fd in fds:
            os.close(fd)
    chan.close()
    return None


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (as ``asyncio.start_server``)."""
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            s = socket.socket(family, kind, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(128)
            s.setblocking(False)
            port = port or s.getsockname()[1]  # port 0: the others on the same one
    except OSError:
        for s in out:
            s.close()
        raise
    return out


async def serve(listeners: list[socket.socket], handle: Any) -> None:
    """Accept on every listener, each connection handled in its own task, until cancelled."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task] = set()

    async def accept(ls: socket.socket) -> None:
        while True:
            conn, _ = await loop.sock_accept(ls)
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(handle(conn))
            running.add(task)
            task.add_done_callback(running.discard)

    loops = [asyncio.ensure_future(accept(ls)) for ls in listeners]
    try:
        await asyncio.gather(*loops)
    finally:
        for t in [*loops, *running]:
            t.cancel()
        await asyncio.gather(*loops, *running, return_exceptions=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.command("app", epilog="""\b
Examples:
  backend.ai app nb jupyter -b 127.0.0.1:8888
  backend.ai app web 8000 -b 9000       (a port opened with start --preopen 8000)""")
@click.argument("session")
@click.argument("app_name", metavar="APP")
@click.option("-b", "--bind", default="127.0.0.1:8080", show_default=True, metavar="[HOST:]PORT",
              help="Local address and port to listen on.")
@owner_option
def app(session: str, app_name: str, bind: str, owner: str | None) -> None:
    """Reach the app APP of SESSION on a local port (until Ctrl-C)."""
    host, port = parse_bind(bind)
    ctx = get_ctx()

    async def main(conn: Any) -> None:
        from bai.common.errors import AppNotFound, BaiError

        items = await conn.request("GET", _path(session, "apps"), params=_params(owner))
        info = next((i for i in items or [] if i.get("name") == app_name), None)
        if info is None:
            names = ", ".join(i["name"] for i in items or []) or "none"
            raise AppNotFound(f"session {session} offers no app {app_name!r}; it offers: {names}")
        tunnel = Tunnel(conn, session, app_name, owner)
        try:
            listeners = listen(host, port)
        except OSError as e:
            raise BaiError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        bound = listeners[0].getsockname()[1] if listeners else port
        template = info.get("url_template") or "tcp://{host}:{port}"
        url = template.format(protocol="tcp", host=host, port=bound)
        click.echo(f"The app {app_name} of session {session} is at: {url}")
        click.echo("Press Ctrl-C to close the tunnel.", err=True)
        sys.stdout.flush()
        server = asyncio.ensure_future(serve(listeners, tunnel.handle))
        try:
            await _until_signalled()
        finally:
            server.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(server, 2)
            for ls in listeners:
                ls.close()
        click.echo("Tunnel closed.", err=True)

    ctx.run(main)


@click.command("shell", epilog="Example:\n\n  backend.ai shell nb")
@click.argument("session")
@owner_option
def shell(session: str, owner: str | None) -> None:
    """Open an interactive shell in SESSION (exits with the shell's exit code)."""
    ctx = get_ctx()
    code = ctx.run(lambda conn: _shell(conn, session, owner))
    raise SystemExit(code)


def _winsize() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


async def _shell(conn: Any, session: str, owner: str | None) -> int:
    from bai.client.connection import WSMsgType

    loop = asyncio.get_running_loop()
    rows, cols = _winsize()
    params = _params(owner, rows=str(rows), cols=str(cols), term=os.environ.get("TERM"))
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    code: int | None = None
    async with conn.websocket(_path(session, "pty"), params=params) as ws:
        saved = None
        if is_tty:
            import termios
            import tty

            saved = termios.tcgetattr(stdin)
            tty.setraw(stdin)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(stdin, CHUNK)
            except OSError:
                data = b""
            queue.put_nowait(data)
            if not data:
                loop.remove_reader(stdin)

        try:
            loop.add_reader(stdin, readable)
        except OSError:  # a regular file or /dev/null: epoll cannot watch it
            async def pump_file() -> None:
                while data := await asyncio.to_thread(os.read, stdin, CHUNK):
                    queue.put_nowait(data)
                queue.put_nowait(b"")

            asyncio.ensure_future(pump_file())

        def resized() -> None:
            r, c = _winsize()
            asyncio.ensure_future(
                ws.send_str(json.dumps({"type": "resize", "rows": r, "cols": c})))

        loop.add_signal_handler(signal.SIGWINCH, resized)

        async def up() -> None:
            while True:
                data = await queue.get()
                if not data:  # stdin ended (not a terminal): Ctrl-D for the remote shell
                    await ws.send_bytes(b"\x04")
                    return
                await ws.send_bytes(data)

        async def down() -> None:
            nonlocal code
            out = sys.stdout.buffer
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    out.write(msg.data)
                    out.flush()
                elif msg.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError, TypeError):
                        said = json.loads(msg.data)
                        if said.get("type") == "exit":
                            code = said.get("exit_code")
                            return

        sender = asyncio.ensure_future(up())
        try:
            await down()
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            loop.remove_signal_handler(signal.SIGWINCH)
            with contextlib.suppress(Exception):
                loop.remove_reader(stdin)
            if saved is not None:
                import termios

                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    if code is None:
        click.echo("\r\nError: the connection to the session's shell was lost", err=True)
        return 1
    return int(code)
