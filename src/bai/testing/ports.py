"""Loopback ports for the daemons that tests and benchmarks start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port free now, drawn at random below the kernel's ephemeral range.

    A port from ``bind(port 0)`` is an ephemeral one: until the daemon binds it, any process's
    outgoing connection may take it (the bench smoke test runs every script at once, and CI
    once lost a manager's port that way). Ports below the range are only ever taken by a bind.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")
