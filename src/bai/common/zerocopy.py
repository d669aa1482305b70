"""Bytes from a socket into a file without passing them through Python: ``splice(2)`` moves
them from the socket into a pipe and from the pipe into the file, inside the kernel (Linux).
A GiB through Python's reads costs a copy into a ``bytes`` per read, and through an HTTP
server's stream several more; this is the one copy into the page cache that ``cp`` makes too.
The standard library has ``os.splice`` but no loop around it for a socket: this is that loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable

#: pipe capacity asked for (the kernel's default is 64 KiB; 1 MiB is the unprivileged maximum)
PIPE_SIZE = 1024 * 1024
#: seconds without a byte from the peer before the transfer is given up
IDLE_TIMEOUT = 120.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
AVAILABLE = hasattr(os, "splice")


def splice_in(sock_fd: int, file_fd: int, count: int, *, idle: float = IDLE_TIMEOUT,
              stop: threading.Event | None = None,
              progress: Callable[[int], None] | None = None,
              taken: Callable[[int], None] | None = None) -> int:
    """Move up to ``count`` bytes from the socket ``sock_fd`` (blocking or not) to ``file_fd``
    at its position; returns how many moved, fewer than ``count`` only when the peer closed
    the connection. Raises ``TimeoutError`` after ``idle`` seconds without a byte (or once
    ``stop`` is set), and the ``OSError`` of a failed write (``EDQUOT``, ``ENOSPC``); every
    byte taken from the socket is in the file by then, except on such a write error.
    ``progress`` hears the bytes moved so far after each step, ``taken`` the bytes taken
    from the socket so far (ahead of ``progress`` by what the pipe holds)."""
    if not AVAILABLE:
        return _copy_in(sock_fd, file_fd, count, idle, stop, progress, taken)
    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe size: more calls, same bytes
        poll = select.poll()
        poll.register(sock_fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        moved, deadline = 0, time.monotonic() + idle
        while moved < count:
            try:
                n = os.splice(sock_fd, w, min(count - moved, PIPE_SIZE),
                              flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except (BlockingIOError, InterruptedError):
                _wait(poll, deadline, stop)
                continue
            if n == 0:  # the peer closed the connection
                break
            moved += n
            if taken:
                taken(moved)
            deadline = time.monotonic() + idle
            while n:
                n -= os.splice(r, file_fd, n, flags=os.SPLICE_F_MOVE)
            if progress:
                progress(moved)
        return moved
    finally:
        os.close(r)
        os.close(w)


def _wait(poll: select.poll, deadline: float, stop: threading.Event | None) -> None:
    """Wait (in steps of a second, so that ``stop`` is seen) until the socket is readable."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            raise TimeoutError("no bytes from the peer")
        if poll.poll(min(left, 1.0) * 1000):
            return


def _copy_in(sock_fd: int, file_fd: int, count: int, idle: float,
             stop: threading.Event | None, progress: Callable[[int], None] | None,
             taken: Callable[[int], None] | None) -> int:
    """The same through a reused buffer where ``splice`` is missing."""
    poll = select.poll()
    poll.register(sock_fd, select.POLLIN)
    buf = memoryview(bytearray(PIPE_SIZE))
    moved, deadline = 0, time.monotonic() + idle
    while moved < count:
        try:
            n = os.readv(sock_fd, [buf[:min(count - moved, PIPE_SIZE)]])
        except (BlockingIOError, InterruptedError):
            _wait(poll, deadline, stop)
            continue
        if n == 0:
            break
        moved += n
        if taken:
            taken(moved)
        deadline = time.monotonic() + idle
        view = buf[:n]
        while view:
            view = view[os.write(file_fd, view):]
        if progress:
            progress(moved)
    return moved


class SocketBody:
    """The rest of a request body, still in its socket: ``head`` arrived already (the server
    had read it with the headers), ``left`` more bytes are to come from ``fd``, a descriptor of
    the connection's socket that the caller owns and closes. (A plain class: ``dataclasses``
    costs ~8 ms to import, on every CLI transfer.)"""

    def __init__(self, head: list[bytes], fd: int, left: int, taken: int = 0) -> None:
        self.head = head
        self.fd = fd
        self.left = left
        #: of ``left``, the bytes taken from the socket so far
        self.taken = taken

    @property
    def length(self) -> int:
        return sum(map(len, self.head)) + self.left


def _body_to_file(body: SocketBody, file_fd: int, stop: threading.Event) -> int:
    moved = 0
    for chunk in body.head:
        view = memoryview(chunk)
        while view:
            view = view[os.write(file_fd, view):]
        moved += len(chunk)
    return moved + splice_in(body.fd, file_fd, body.left, stop=stop,
                             taken=lambda n: setattr(body, "taken", n))


def _discard(body: SocketBody, stop: threading.Event) -> int:
    with open(os.devnull, "wb") as sink:
        return splice_in(body.fd, sink.fileno(), body.left - body.taken, idle=10.0, stop=stop)


async def discard(body: SocketBody) -> None:
    """Read what the peer still sends of the body and drop it (at most 10 s without a byte),
    so that an early error answer reaches a client still sending, not a reset connection."""
    with contextlib.suppress(OSError):
        await _in_thread(_discard, body)


async def body_to_file(body: SocketBody, file_fd: int) -> int:
    """Write the whole body to ``file_fd`` at its position; returns the bytes written (fewer
    than ``body.length`` when the peer went away)."""
    return await _in_thread(_body_to_file, body, file_fd)


async def _in_thread(fn: Callable[..., int], body: SocketBody, *args: object) -> int:
    """``fn(body, *args, stop)`` in a thread of its own (a transfer holds it as long as it
    runs, which must not starve the default executor's short file operations; a daemon, so
    that a stalled peer never holds up the process's exit). Cancelled, it stops the thread
    and waits for it, so that the caller may close the descriptors."""
    import asyncio  # here: the CLI's blocking transfers (``bai.client.vfolder_wire``) need
    # ``splice_in`` without paying ~50 ms for asyncio

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    stop = threading.Event()

    def settle(result: int | None, exc: BaseException | None) -> None:
        if not fut.done():
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)

    def run() -> None:
        try:
            result, exc = fn(body, *args, stop), None
        except BaseException as e:  # handed to the awaiting task
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="bai-transfer", daemon=True).start()
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait([fut])
        raise


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes of the file ``src_fd`` from ``offset`` to ``dst_fd`` at its
    position, inside the kernel (``copy_file_range``, ``sendfile`` across filesystems), as
    ``cp`` copies; fewer only when ``src_fd`` ends sooner. Returns how many were copied."""
    import errno

    moved = 0
    while moved < count:
        want = min(count - moved, 1 << 30)
        try:
            n = os.copy_file_range(src_fd, dst_fd, want, offset + moved)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = os.sendfile(dst_fd, src_fd, offset + moved, want)
        if n == 0:
            break
        moved += n
    return moved
