"""Unix sockets at any path length and the listener that replaces only a stale socket."""

from __future__ import annotations

import os
import socket

import pytest

from bai.common.unixsock import connect_unix, listen_unix, remove_unix


@pytest.fixture(params=["short", "long"])
def path(request, tmp_path):
    """A socket path that fits ``sun_path`` and one that does not (reached via its folder)."""
    if request.param == "short":
        return str(tmp_path / "api.sock")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    return str(deep / "api.sock")


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(path):
    stale = listen_unix(path)
    stale.close()  # a server that stopped without removing its socket
    assert os.path.exists(path)
    live = listen_unix(path)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o666  # the folder decides who connects
        with socket.socket(socket.AF_UNIX) as client:
            connect_unix(client, path)
        with pytest.raises(OSError):
            listen_unix(path)  # another server answers there: left alone
        with socket.socket(socket.AF_UNIX) as client:
            connect_unix(client, path)  # still the first one's
    finally:
        live.close()
    remove_unix(path)
    assert not os.path.exists(path)
    remove_unix(path)  # gone is fine
