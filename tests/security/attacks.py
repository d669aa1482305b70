"""Attack code shared by the process and docker suites (run inside a session as its user)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from stacks import Stack

#: system calls a session must not make, each of which works without a filter on a host that
#: allows unprivileged user namespaces (numbers per architecture: the kernel's answer is what
#: counts, not our filter's table); then a fork and a thread, which must still work
SECCOMP_ATTACK = """
import ctypes, errno, os, platform, threading
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": dict(unshare=272, clone=56, keyctl=250, userfaultfd=323, setns=308,
                     perf_event_open=298, mount=165, io_uring_setup=425),
      "aarch64": dict(unshare=97, clone=220, keyctl=219, userfaultfd=282, setns=268,
                      perf_event_open=241, mount=40, io_uring_setup=425)}[platform.machine()]
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *args)
    if r == 0 and name == "clone":
        os._exit(0)
    if r > 0 and name == "clone":
        os.waitpid(r, 0)
    print(name, "DONE" if r >= 0 else errno.errorcode.get(ctypes.get_errno()))
call("unshare", 0x10000000)                           # CLONE_NEWUSER
call("clone", 0x10000000 | 17, 0, 0, 0, 0)            # CLONE_NEWUSER | SIGCHLD
call("keyctl", 0, ctypes.c_long(-3), 0)               # KEYCTL_GET_KEYRING_ID, session keyring
call("userfaultfd", 1)                                # UFFD_USER_MODE_ONLY
call("setns", 0, 0)
call("mount", b"none", b"/tmp", b"tmpfs", 0, 0)
attr = (ctypes.c_uint32 * 32)(1, 128, 1)              # a software clock of this process
call("perf_event_open", attr, 0, -1, -1, 0)
params = (ctypes.c_uint8 * 120)()
call("io_uring_setup", 1, params)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
t = threading.Thread(target=print, args=("a thread works",))
t.start()
t.join()
print("fork works")
print("filters", [l.split()[1] for l in open("/proc/self/status")
                  if l.startswith("Seccomp_filters")])
"""
DENIED = ("unshare", "clone", "keyctl", "userfaultfd", "setns", "mount", "perf_event_open",
          "io_uring_setup")


def assert_seccomp_held(out: str) -> None:
    assert "DONE" not in out and "fork works" in out and "a thread works" in out, out
    for name in DENIED:
        assert f"{name} EPERM" in out, out


#: who the kernel's code is: whoami, id -un, getpass and its home (must all name one account)
WHOAMI = """
import getpass, os, pwd, subprocess
print("whoami", subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip())
print("id", subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip())
print("getpass", getpass.getuser())
print("home", pwd.getpwuid(os.getuid()).pw_dir)
"""


def assert_named(out: str) -> None:
    said = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert said["whoami"] and said["whoami"] == said["id"] == said["getpass"], out
    assert said["home"] == "/home/work", out


# --- outbound network per policy (process and docker runtimes) ---

OUTSIDE_SERVER = """
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

CONNECT_PROBE = """
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


@contextlib.contextmanager
def outside_server():
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
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", OUTSIDE_SERVER, ns_ip],
            stdout=subprocess.PIPE, text=True)
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
    code = f"TARGETS = {targets!r}\n" + textwrap.dedent(CONNECT_PROBE)
    out = stack.cli("run", "--rm", "-c", code, "python", user=True, timeout=180).stdout
    return json.loads(out.strip().splitlines()[-1])


def assert_outbound_only_where_allowed(stack: Stack, outside: tuple[str, int, str]) -> None:
    """A session of the default policy reaches nothing; with ``allow_outbound`` the server
    ``outside`` (``outside_server``) and nothing of this host: the manager's and agent's ports
    on 127.0.0.1, slirp's gateway 10.0.2.2, a listener on every host address."""
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
    host_ips = sorted({a.address for addrs in psutil.net_if_addrs().values()
                       for a in addrs if a.family == socket.AF_INET})
    host_targets = [("127.0.0.1", stack.port), ("127.0.0.1", stack.agent_port),
                    ("10.0.2.2", stack.port), ("10.0.2.2", host_port)]
    host_targets += [(a, host_port) for a in host_ips]
    assert host_ip in host_ips
    try:
        default = probe(stack, [(ns_ip, port)] + host_targets)
        assert len(default) == len(set(host_targets)) + 1
        assert all(v.startswith("refused") for v in default.values()), default
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
            ["pgrep", "-f", "slirp4netns.*tap0"], capture_output=True).returncode == 0:
        time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "slirp4netns.*tap0"],
                          capture_output=True).returncode != 0
