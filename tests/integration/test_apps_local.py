"""The manager's side of the apps tunnel's local path (``manager/api/apps.py``): it gives the
cluster token only to an apps socket served by root or its own user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bai.manager.api.apps import _from_agent, _LocalPathBroken

LISTENER = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(5)
got = b""
try:
    while data := c.recv(65536):
        got += data
except OSError:
    pass
print(repr(got), flush=True)
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve the socket as another user")
def test_an_apps_socket_of_another_user_never_gets_the_cluster_token():
    """A normal user who plants a socket where the agent's apps socket is said to be (or an
    agent that runs as someone else) gets nothing: the manager checks its peer first."""
    folder = Path(tempfile.mkdtemp(prefix="bai-planted-"))  # pytest's own tmp is root's alone
    folder.chmod(0o777)
    path = folder / "agent-apps.sock"
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    proc = subprocess.Popen([python, "-c", LISTENER, str(path)], user=65534, group=65534,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(_LocalPathBroken, match="another user"):
            _from_agent(str(path), "the-cluster-secret", "kernel",
                        {"name": "web", "protocol": "http", "port": "8000"})
        end = time.monotonic() + 30
        got = proc.communicate(timeout=max(1, end - time.monotonic()))[0]
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    assert "the-cluster-secret" not in got and "kernel" not in got, got
