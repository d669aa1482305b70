"""The manager's API on its unix socket (``api_socket``), which ``server start`` names in the
client configuration so that this machine's CLI sends its requests there instead of to the
port: the same requests and answers, with less work in the kernel."""

from __future__ import annotations

import json
import socket
import subprocess

from stacks import CLI


def get(path: str, target: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_the_cli_reaches_the_manager_at_its_socket_and_stop_removes_it(make_stack, tmp_path):
    stack = make_stack("cpu=2", "mem=2g")
    sock = stack.state / "api.sock"
    toml = (stack.home / "client.toml").read_text()
    assert f"api_socket = {json.dumps(str(sock))}" in toml
    head, _, body = get(str(sock), "/").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b'"version"' in body
    # the port closed in the profile: only the socket can answer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cfg = tmp_path / "client.toml"
    cfg.write_text(toml.replace(f":{stack.port}\"", f":{closed}\""))
    env = {**stack.env, "BAI_CONFIG": str(cfg)}
    for args in (["start", "--enqueue-only", "--starts-at", "2h", "-t", "viasock", "python"],
                 ["ps"], ["run", "--rm", "-c", "print('over the socket')", "python"]):
        proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert "viasock" in subprocess.run([CLI, "ps"], env=env, capture_output=True, text=True,
                                       timeout=60).stdout
    assert proc.stdout == "over the socket\n"
    subprocess.run([CLI, "server", "stop", "--terminate-sessions", "--state-dir",
                    str(stack.state)], env=stack.env, capture_output=True, timeout=120)
    assert not sock.exists()
