"""The agent's side of the runner protocol (``bai.kernel``): JSON lines over a unix socket.

``RunnerChannel`` is what the execute relay talks to; backends hand one out through
``RuntimeBackend.open_channel``. The dummy backend implements it in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: frames can carry a lot of output at once
MAX_LINE = 64 * 1024 * 1024
#: AF_UNIX paths longer than this do not fit into sockaddr_un
_MAX_UNIX_PATH = 100
#: how often wait_runner_ready pings during the first READY_FAST_SECONDS of a start
READY_POLL_SECONDS = 0.005
READY_FAST_SECONDS = 2.0


class RunnerUnavailable(Exception):
    """The runner's socket cannot be reached (the kernel is gone or not started yet)."""


class RunnerChannel:
    """One conversation with a kernel runner."""

    async def send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the runner closed the connection."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> RunnerChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SocketRunnerChannel(RunnerChannel):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def send(self, msg: dict[str, Any]) -> None:
        self.writer.write(json.dumps(msg).encode("utf-8") + b"\n")
        await self.writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        while True:
            try:
                line = await self.reader.readline()
            except (ConnectionError, ValueError, asyncio.LimitOverrunError):
                return None
            if not line:
                return None
            try:
                return json.loads(line)
            except ValueError:
                continue

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def connect_runner(path: Path) -> SocketRunnerChannel:
    """Connect to a runner socket; long paths go through ``/proc/self/fd`` of the folder."""
    path = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    dir_fd = -1
    try:
        target = str(path)
        if len(target) > _MAX_UNIX_PATH:
            dir_fd = os.open(path.parent, os.O_PATH)
            target = f"/proc/self/fd/{dir_fd}/{path.name}"
        await asyncio.get_running_loop().sock_connect(sock, target)
    except OSError as e:
        sock.close()
        raise RunnerUnavailable(f"runner socket {path}: {e.strerror or e}") from None
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
    return SocketRunnerChannel(reader, writer)


async def claim_runner(path: Path, workdir: str, env: dict[str, str], config: dict[str, Any],
                       timeout: float) -> dict[str, Any] | None:
    """Hand a pooled runner (``--pooled``) its kernel: op ``claim`` with the kernel's work dir,
    environment and runner config. Its answer (``{"status": "claimed", "ready": bool}`` when it
    took it); raises RunnerUnavailable, OSError or TimeoutError when it did not answer."""
    chan = await connect_runner(path)
    try:
        async with asyncio.timeout(timeout):
            await chan.send({"op": "claim", "workdir": workdir, "env": env, "config": config})
            return await chan.receive()
    finally:
        await chan.close()


async def ping_runner(path: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """The runner's pong (``{"status": "pong", "ready": bool}``), or None if it does not answer."""
    try:
        async with asyncio.timeout(timeout):
            chan = await connect_runner(path)
            try:
                await chan.send({"op": "ping"})
                return await chan.receive()
            finally:
                await chan.close()
    except (RunnerUnavailable, TimeoutError, OSError):
        return None


async def wait_runner_ready(
    path: Path, timeout: float, alive: Callable[[], bool] = lambda: True, field: str = "ready"
) -> None:
    """Wait until the runner answers ``ready`` (or another true ``field`` of its pong:
    ``status`` = it answers at all). Raises TimeoutError, or RunnerUnavailable as soon as
    ``alive()`` says the kernel's process is gone."""
    start = time.monotonic()
    deadline = start + timeout
    delay = READY_POLL_SECONDS
    while True:
        pong = await ping_runner(path)
        if pong and pong.get(field):
            return
        if not alive():
            raise RunnerUnavailable("the kernel runner exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel runner did not answer within {timeout:g}s")
        await asyncio.sleep(delay)
        # A runner is usually ready within ~0.1 s: poll briskly (a ping of an absent socket
        # costs microseconds) so the kernel's start is not delayed, then back off.
        if time.monotonic() - start > READY_FAST_SECONDS:
            delay = min(delay * 1.5, 0.25)
