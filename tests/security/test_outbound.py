"""Outbound network per policy (``allow_outbound``), attacked as a normal user of the embedded
stack: a session of a policy that allows it reaches a server outside this host's network
namespace (one made here with ``ip netns``, joined to the host by a veth pair: no address
outside this machine is ever tried); a session of the default policy reaches nothing; and even
the allowed session never reaches the host itself: the manager's and agent's ports on
127.0.0.1, or a listener on every host address (the veth's host side included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from stacks import Stack

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("bwrap", "slirp4netns", "ip")),
    reason="outbound network needs root, bubblewrap, slirp4netns and ip (scripts/install.sh); "
           "server start names the gap")

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"pong")
    c.close()
"""

PROBE = """
import json, socket
got = {}
for host, port in TARGETS:
    s = socket.socket()
    s.settimeout(10)
    key = "%s:%d" % (host, port)
    try:
        s.connect((host, port))
        got[key] = "connected"
        got[key] = s.recv(4).decode() or "connected"
    except OSError as e:
        got.setdefault(key, "refused " + type(e).__name__)
    finally:
        s.close()
print(json.dumps(got))
"""


@pytest.fixture
def outside():
    """A server in a network namespace of its own, at (address, port), the host's side of its
    veth pair at 10.213.N.1."""
    n = os.getpid() % 250 + 1
    ns, veth = f"bai-ob-{os.getpid()}", f"vbo{os.getpid() % 100000}"
    host_ip, ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    server = None
    try:
        ip("netns", "add", ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth-ob", "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", "eth-ob")
        ip("-n", ns, "link", "set", "eth-ob", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                   ns_ip], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((ns_ip, port), timeout=10) as c:  # the host reaches it
            assert c.recv(4) == b"pong"
        yield ns_ip, port, host_ip
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def probe(stack: Stack, targets: list[tuple[str, int]]) -> dict[str, str]:
    code = f"TARGETS = {targets!r}\n" + textwrap.dedent(PROBE)
    out = stack.cli("run", "--rm", "-c", code, "python", user=True, timeout=180).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_outbound_network_only_where_the_policy_allows_it_and_never_to_the_host(
        stack: Stack, outside) -> None:
    ns_ip, port, host_ip = outside
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # every address of the host
    listener.listen(8)
    host_port = listener.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = listener.accept()
                c.sendall(b"host")
                c.close()

    threading.Thread(target=answer, daemon=True).start()
    host_ips = sorted({a.address for addrs in __import__("psutil").net_if_addrs().values()
                       for a in addrs if a.family == socket.AF_INET})
    host_targets = [("127.0.0.1", stack.port), ("127.0.0.1", stack.agent_port),
                    ("10.0.2.2", stack.port), ("10.0.2.2", host_port)]
    host_targets += [(a, host_port) for a in host_ips]
    assert host_ip in host_ips
    try:
        default = probe(stack, [(ns_ip, port)])
        assert default == {f"{ns_ip}:{port}": default[f"{ns_ip}:{port}"]}
        assert default[f"{ns_ip}:{port}"].startswith("refused"), default
        stack.cli("admin", "policy", "update", "default", "--outbound")
        policies = json.loads(stack.cli("admin", "policy", "list", "--output", "json").stdout)
        assert [p["allow_outbound"] for p in policies if p["name"] == "default"] == [True]
        allowed = probe(stack, [(ns_ip, port)] + host_targets)
    finally:
        stack.cli("admin", "policy", "update", "default", "--no-outbound", check=False)
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
    assert allowed.pop(f"{ns_ip}:{port}") == "pong", allowed
    assert len(allowed) == len(set(host_targets))
    assert all(v.startswith("refused") for v in allowed.values()), allowed
    # nothing of the outbound kernel is left running
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-f", f"slirp4netns.*tap0"], capture_output=True).returncode == 0:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "slirp4netns.*tap0"],
                          capture_output=True).returncode != 0
