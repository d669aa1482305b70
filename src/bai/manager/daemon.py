"""``bai-manager serve``: the manager's settings, its API's listeners and the event loop that
serves them; no click (``bai.manager.cli`` reads any other command line)."""

from __future__ import annotations

import errno
import logging
import os
import socket

from bai.common.settings import settings_problem
from bai.common.unixsock import listen_unix, remove_unix
from bai.manager.settings import ManagerSettings
from bai.ops.argv import fail, inherited_socket


class Refused(Exception):
    """What a command says in one line and stops on (click's ``Error: ...``, exit status 1)."""


def load_settings(config: str | None) -> ManagerSettings:
    try:
        return ManagerSettings.load(config)
    except FileNotFoundError:
        raise Refused(f"config file not found: {config}") from None
    except Exception as e:  # pydantic / TOML errors: one line
        raise Refused(f"invalid manager settings: {settings_problem(e)}") from None


def serve(config: str | None) -> None:
    """Run the manager's HTTP API (and its scheduler and watchdogs) until it is stopped."""
    import uvloop
    from aiohttp import web

    from bai.manager.app import create_app
    from bai.ops.logs import configure

    settings = load_settings(config)
    try:
        # the port and the app proxy's, where server start held them (else bound below)
        tcp, app_proxy = inherited_socket("BAI_INHERITED_API"), inherited_socket(
            "BAI_INHERITED_APP_PROXY")
    except OSError as e:
        raise Refused(str(e)) from None
    try:
        configure(settings.log_level, settings.log_format, settings.log_levels)
        ssl_context = settings.ssl_context()
    except (ValueError, OSError) as e:  # OSError/ssl.SSLError: unreadable or mismatched files
        raise Refused(f"invalid manager settings: {e}") from None
    unix = _api_socket(settings.api_socket)
    try:
        # libuv's loop: ~10% less CPU per create than asyncio's (bench/session_create.py); the
        # event loop thread is what bounds the manager's requests per second
        socks = [s for s in (tcp, unix) if s is not None]
        web.run_app(create_app(settings, app_proxy), host=None if tcp else settings.host,
                    port=None if tcp else settings.port, sock=socks or None,
                    ssl_context=ssl_context, loop=uvloop.new_event_loop(),
                    print=lambda *_: None, access_log=None)
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise Refused(f"cannot listen: {e}") from None  # a busy port: one line
    finally:
        if unix is not None:
            unix.close()
            remove_unix(settings.api_socket)


def serve_plain(config: str | None) -> int:
    """``serve`` as ``bai-manager serve [--config FILE]`` runs it, without click: the same
    umask, the same ``Error: ...`` line and exit statuses."""
    os.umask(0o077)  # the DB, its WAL, keys, logs and state: this user's only
    try:
        serve(config)
    except Refused as e:
        return fail(f"Error: {e}", 1)
    except KeyboardInterrupt:  # before the loop runs (it stops on SIGINT itself)
        return fail("\nAborted!", 1)
    return 0


def _api_socket(path: str) -> socket.socket | None:
    """The listening socket of ``api_socket``; None where none is set or it cannot listen
    (then the CLI reaches the port, as any client does)."""
    if not path:
        return None
    try:
        return listen_unix(path)
    except OSError as e:
        logging.getLogger(__name__).warning("the API is not served at %s: %s", path, e)
        return None
