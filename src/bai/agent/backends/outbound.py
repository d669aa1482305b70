"""Outbound network for a sandboxed kernel whose policy allows it (``allow_outbound``).

The kernel keeps its own network namespace; ``slirp4netns`` (Debian's, installed by
``scripts/install.sh``) gives it a ``tap0`` whose traffic leaves through the agent's sockets
(user-mode TCP/IP: no bridge, no firewall rules, nothing routed on the host). Before slirp starts,
the agent puts ``unreachable`` routes into the kernel's namespace for every address of this host,
link-local (cloud metadata) and the host's loopback (``--disable-host-loopback``: the gateway
10.0.2.2 never leads to 127.0.0.1). The kernel's code has no capability in its namespace, so it
cannot remove them: the manager's and the agent's ports and anything else of this host stay out
of reach on every address, and other sessions have no address at all (own namespaces).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil

from bai.agent.backends.process_pool import proc_start_time

#: never reachable from a kernel, besides this host's own addresses
ALWAYS_BLOCKED = ("169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8")
TOOLS = ("slirp4netns", "nsenter", "ip")


def tools() -> dict[str, str] | None:
    """Where slirp4netns, nsenter and ip are (None: one is missing)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = {t: shutil.which(t, path=path) for t in TOOLS}
    return found if all(found.values()) else None  # type: ignore[return-value]


def blocked_networks() -> list[str]:
    """This host's own IPv4 addresses (each /32) and the always blocked networks."""
    out = list(ALWAYS_BLOCKED)
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET:
                ip = ipaddress.ip_address(a.address)
                if not ip.is_loopback:
                    out.append(f"{ip}/32")
    return sorted(set(out))


def child_pid(info_fd: int, timeout: float = 30.0) -> int:
    """The sandbox's first process, from ``bwrap --info-fd`` (read end ``info_fd``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"child-pid" not in data or b"}" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([info_fd], [], [], left)[0]:
            raise TimeoutError("bwrap did not say its child's pid")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    return int(json.loads(data.decode())["child-pid"])


def wait_loopback(pid: int, timeout: float = 30.0) -> None:
    """Wait until the namespace of ``pid`` has its loopback address (bwrap's child gives it).

    bwrap says its child's pid before the child sets up ``lo`` (an RTM_NEWADDR that must create
    127.0.0.1). ``slirp4netns --configure`` brings ``lo`` up, and the kernel then gives it
    127.0.0.1 itself: a child that came second, under load, died with ``loopback: Failed
    RTM_NEWADDR`` (a session that never started). Raises OSError once ``pid`` is gone."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        with open(f"/proc/{pid}/net/fib_trie") as f:  # the local table lists it once added
            if "127.0.0.1" in f.read():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError("the sandbox did not set up its loopback")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def attach(found: dict[str, str], pid: int, log: Path, timeout: float = 30.0, *,
           own_loopback: bool = True) -> subprocess.Popen:
    """Block this host's addresses in the namespace of ``pid``, then start slirp4netns for it
    and wait until it configured ``tap0``; first, with ``own_loopback`` (bwrap's child sets up
    ``lo`` itself; a docker container's has it before it runs), until that is done. Raises
    OSError/TimeoutError/CalledProcessError."""
    if own_loopback:
        wait_loopback(pid, timeout)
    routes = "".join(f"route add unreachable {net}\n" for net in blocked_networks())
    subprocess.run([found["nsenter"], f"--net=/proc/{pid}/ns/net", found["ip"], "-batch", "-"],
                   input=routes.encode(), check=True, capture_output=True, timeout=timeout)
    r, w = os.pipe()
    try:
        with open(log, "ab") as out:
            slirp = subprocess.Popen(
                [found["slirp4netns"], "--configure", "--mtu=65520", "--disable-host-loopback",
                 "--enable-sandbox", "--enable-seccomp", "--ready-fd", str(w), str(pid), "tap0"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=(w,), start_new_session=True)
        os.close(w)
        w = -1
        ready = select.select([r], [], [], timeout)[0] and os.read(r, 1)
        if not ready:
            stop(slirp.pid)
            raise TimeoutError("slirp4netns did not configure the kernel's network")
        return slirp
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 9)


def remember(slirp: subprocess.Popen, path: Path) -> None:
    """Write ``slirp``'s pid and start time to ``path`` (in a root-only folder of the agent),
    for ``forget`` after an agent restart as well."""
    path.write_text(f"{slirp.pid} {proc_start_time(slirp.pid) or ''}\n")


def forget(path: Path) -> None:
    """Stop the slirp4netns that ``remember`` wrote to ``path`` (if it is still that process)."""
    try:
        pid, _, start = path.read_text().strip().partition(" ")
    except OSError:
        return
    if not (pid.isdigit() and start and proc_start_time(int(pid)) == start):
        return
    stop(int(pid))
    deadline = time.monotonic() + 5
    while proc_start_time(int(pid)) == start and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # the agent's own child: reap it
            os.waitpid(int(pid), os.WNOHANG)
        time.sleep(0.01)
