"""Another unix user on the machine attacks the unix sockets in the state folder of a stack
(``server start``): the manager's API (``api.sock``), its storage socket (``storage.sock``) and
the agent's apps socket (``agent-apps.sock``). The state folder is 0700: the stranger cannot
even connect, though it can reach the folder (its home is 0711, as a home folder often is)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stacks import Stack

SOCKETS = ("api.sock", "storage.sock", "agent-apps.sock")

#: connect to each socket and send a request: what came back, or the error of the connect
KNOCK = """
import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    try:
        s.connect(path)
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n"
                  if path.endswith("api.sock") else b'{"op": "download", "token": "x"}\\n')
        print(path, "ANSWERED", s.recv(100))
    except OSError as e:
        print(path, type(e).__name__)
    finally:
        s.close()
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def knock(stack: Stack, *prefix: str) -> dict[str, str]:
    paths = [str(stack.state / name) for name in SOCKETS]
    proc = subprocess.run([*prefix, sys.executable, "-c", KNOCK, *paths], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {line.split(" ", 1)[0].rsplit("/", 1)[1]: line.split(" ", 1)[1]
            for line in proc.stdout.splitlines()}


def test_another_user_cannot_connect_to_the_sockets_of_a_stack(make_stack):
    stack = make_stack("cpu=1")
    os.chmod(stack.home, 0o711)  # the stranger reaches the state folder, not into it
    assert all((stack.state / name).exists() for name in SOCKETS)
    owner = knock(stack)
    assert owner["api.sock"].startswith("ANSWERED b'HTTP/1.1"), owner  # the sockets serve
    stranger = knock(stack, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert stranger == {name: "PermissionError" for name in SOCKETS}, stranger
