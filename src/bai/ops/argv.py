"""The daemons' own command line, read without click where it is the plain ``serve``.

``backend.ai server start`` runs ``python -m bai.manager serve --config FILE`` and the same for
the agent; click (12 modules, ~1 MB of each daemon's memory for as long as it runs) is loaded
only for any other command line: ``--help``, another command, other options, a file click
would refuse.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

#: what ``plain_serve`` returns for a command line click has to read
CLICK = object()


def plain_serve(args: list[str]) -> object:
    """The ``--config`` of ``args`` when they are ``serve`` or ``serve --config FILE`` with
    FILE a readable regular file (None for no file), else ``CLICK``."""
    if args == ["serve"]:
        return None
    if len(args) == 3 and args[:2] == ["serve", "--config"]:
        path = args[2]
        if not path.startswith("-") and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return CLICK


def fail(message: str, code: int) -> int:
    """``message`` and a newline on stderr; ``code``, the exit status."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    return code


def inherited_socket(name: str) -> Any:
    """The listening TCP socket whose descriptor the environment variable ``name`` holds,
    inherited from the process that started this daemon (``backend.ai server start`` binds
    each port before it starts the daemons and hands it over, so that no other program takes
    it in between), removed from the environment (children would inherit a number that means
    nothing to them); None where unset. OSError where the descriptor is no such socket."""
    value = os.environ.pop(name, None)
    if value is None:
        return None
    import socket

    try:
        sock = socket.socket(fileno=int(value))
    except ValueError:
        raise OSError(f"{name}={value!r} is no descriptor") from None
    except OSError as e:
        raise OSError(f"{name}={value}: {e.strerror}") from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise OSError(f"{name}={value}: descriptor {value} is no TCP socket")
    sock.setblocking(False)
    return sock


def entry_points(package: str) -> tuple[Callable[..., Any], Callable[[str], Any]]:
    """``run`` and the module ``__getattr__`` of the ``__main__`` of the daemon ``package``
    (``bai.manager``, ``bai.agent``). ``run(args=None)`` serves the plain ``serve`` with the
    package's ``daemon.serve_plain`` and hands any other command line (default: the process's
    arguments) to its click group, ``cli.main``, which the ``__getattr__`` gives as ``main``
    (what the console scripts of older wheels import)."""
    def run(args: list[str] | None = None) -> Any:
        config = plain_serve(sys.argv[1:] if args is None else args)
        if config is CLICK:
            return _click_main(package)(args=args)
        return importlib.import_module(f"{package}.daemon").serve_plain(config)

    def attribute(name: str) -> Any:
        if name == "main":
            return _click_main(package)
        raise AttributeError(f"module '{package}.__main__' has no attribute {name!r}")

    return run, attribute


def _click_main(package: str) -> Any:
    return importlib.import_module(f"{package}.cli").main
