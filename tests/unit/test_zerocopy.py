"""splice_in: socket to file inside the kernel, as the storage endpoint's tus PATCH uses it."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from bai.common import zerocopy


def _send(sock: socket.socket, data: bytes, close: bool = True) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("spliced", [True, False], ids=["splice", "buffer"])
def test_moves_exactly_count_bytes_and_leaves_the_rest(tmp_path, monkeypatch, spliced):
    monkeypatch.setattr(zerocopy, "AVAILABLE", spliced and zerocopy.AVAILABLE)
    a, b = socket.socketpair()
    b.setblocking(False)  # as an asyncio transport's socket is
    data = os.urandom(5 * zerocopy.PIPE_SIZE + 123)
    t = _send(a, data + b"NEXT")
    with open(tmp_path / "f", "wb") as f:
        f.write(b"xy")  # written at the file's position
        f.flush()
        assert zerocopy.splice_in(b.fileno(), f.fileno(), len(data), idle=30) == len(data)
    t.join(30)
    assert (tmp_path / "f").read_bytes() == b"xy" + data
    b.setblocking(True)
    assert b.recv(16) == b"NEXT"  # nothing past count was taken from the socket
    a.close()
    b.close()


def test_a_closed_peer_ends_it_short_with_every_byte_written(tmp_path):
    a, b = socket.socketpair()
    data = os.urandom(300_000)
    t = _send(a, data)
    with open(tmp_path / "f", "wb") as f:
        assert zerocopy.splice_in(b.fileno(), f.fileno(), 10**9, idle=30) == len(data)
    t.join(30)
    assert (tmp_path / "f").read_bytes() == data
    a.close()
    b.close()


def test_a_silent_peer_times_out(tmp_path):
    a, b = socket.socketpair()
    b.setblocking(False)
    a.sendall(b"abc")
    with open(tmp_path / "f", "wb") as f, pytest.raises(TimeoutError):
        zerocopy.splice_in(b.fileno(), f.fileno(), 10, idle=0.3)
    assert (tmp_path / "f").read_bytes() == b"abc"
    a.close()
    b.close()
