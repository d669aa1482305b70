"""Unix sockets at paths of any length, and a listener that replaces a stale one: the manager's
API and storage sockets, the agent's apps socket, and the CLI that connects to the API's
(cheap to import: ``os`` at the top, ``socket`` where a listener is made)."""

from __future__ import annotations

import os

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable


def unix_address(path: str) -> tuple[str, int | None]:
    """An address ``bind``/``connect`` take for the unix socket ``path`` (``sun_path`` holds
    107 bytes: a longer one is reached through a descriptor on its folder, valid in this
    process only), and that descriptor, which the caller closes after the call."""
    if len(os.fsencode(path)) < 100:
        return path, None
    folder, name = os.path.split(path)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dfd}/{name}", dfd


def connect_unix(sock: socket.socket, path: str) -> None:
    """``sock.connect(path)`` for a path of any length (``unix_address``)."""
    _at(path, sock.connect)


def remove_unix(path: str) -> None:
    """Remove the unix socket ``path`` (of any length); gone is fine."""
    try:
        _at(path, os.unlink)
    except OSError:
        pass


def listen_unix(path: str, backlog: int = 64) -> socket.socket:
    """A non-blocking socket listening at ``path``; every user who can reach its folder may
    connect (the folder decides who). A socket nothing answers at (of a server that stopped)
    is replaced; one that answers is not: OSError then, as for any other failure."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def bind(addr: str) -> None:
        try:
            if not _answers(addr):
                os.unlink(addr)
        except FileNotFoundError:
            pass
        sock.bind(addr)
        os.chmod(addr, 0o666)

    try:
        _at(path, bind)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _at(path: str, call: Callable[[str], None]) -> None:
    """``call(address)`` with ``unix_address(path)``'s address, its descriptor closed after."""
    addr, dfd = unix_address(path)
    try:
        call(addr)
    finally:
        if dfd is not None:
            os.close(dfd)


def _answers(addr: str) -> bool:
    """Whether a server listens at the unix socket ``addr``."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(addr)
        return True
    except OSError:
        return False
    finally:
        probe.close()
