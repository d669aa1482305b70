"""A container as the agent sees it from the engine's host: its cgroup (usage, OOM kills) and
its PID 1. Only where the agent runs next to the engine, in the host's PID namespace; callers fall
back to the engine's API when these answer None.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from bai.agent.backends.cgroup import KernelCgroup
from bai.agent.backends.process_pool import proc_start_time


async def exited(pid: int, timeout: float = 2.0) -> None:
    """Until process ``pid`` is gone or a zombie: a killed PID 1 of a PID namespace becomes one
    only when every process of the namespace has exited (milliseconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline and proc_start_time(pid) is not None:
        await asyncio.sleep(0.002)


def in_container(pid: int, container_id: str) -> bool:
    """Whether process ``pid`` runs in container ``container_id`` (the engines' cgroup drivers
    name the container in its cgroup path): a pid the engine reported may have been recycled."""
    if pid <= 0 or len(container_id) < 12:
        return False
    try:
        return container_id in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def kill(pid: int, container_id: str) -> bool:
    """SIGKILL process ``pid`` when it is the container's (through a pidfd, so a recycled pid
    cannot be hit). True when it was killed or is gone already."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfds here: the check and the kill are microseconds apart
        fd = -1
    try:
        if not in_container(pid, container_id):
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def cgroup_of(pid: int) -> KernelCgroup | None:
    """The cgroup(s) of process ``pid`` (a container's init) when this host shows them (the agent
    runs next to the engine); None otherwise."""
    if pid <= 0:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    root = Path("/sys/fs/cgroup")
    dirs: dict[str, Path] = {}
    unified = ""
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if not ctrls:
            unified = path
            continue
        for ctrl in ctrls.split(","):
            if ctrl in ("memory", "cpuacct", "pids"):
                for mount in (ctrl, ctrls):
                    d = root / mount / path.lstrip("/")
                    if d.is_dir():
                        dirs[ctrl] = d
                        break
    if "memory" in dirs:
        return KernelCgroup("v1", dirs)
    if unified and (root / unified.lstrip("/") / "memory.current").exists():
        return KernelCgroup("v2", {"unified": root / unified.lstrip("/")})
    return None


def cgroup_stats(pid: int) -> dict[str, Any] | None:
    """Usage from the cgroup of process ``pid``, or None (see ``cgroup_of``)."""
    cg = cgroup_of(pid)
    if cg is None:
        return None
    raw = cg.stats()
    if "mem_cur_bytes" not in raw or "cpu_used" not in raw:
        return None
    return {"cpu_used": raw["cpu_used"], "mem_cur_bytes": raw["mem_cur_bytes"],
            "mem_max_bytes": raw.get("mem_max_bytes", raw["mem_cur_bytes"]),
            "pids": raw.get("pids_current", 0)}
