"""The OOM kills of the runner's own memory cgroup. STDLIB ONLY, Python >= 3.8.

The kernel counts an OOM kill in the victim's memory cgroup (v2 ``memory.events``, v1
``memory.oom_control``, field ``oom_kill``) before it sends the SIGKILL, so whoever reaps the
victim reads a count that includes it; an engine's OOM event may be handled after the exit.
"""

from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"


def kill_file(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """The file that counts the OOM kills of this process's memory cgroup: at the cgroup's path
    under ``root`` (a host view, or the top of a cgroup namespace), else at the top of the
    mount (v1 engines bind the container's own folder there); None where none is visible."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if not ctrls:
            mount, name = root, "memory.events"
        elif "memory" in ctrls.split(","):
            mount, name = os.path.join(root, "memory"), "memory.oom_control"
        else:
            continue
        for folder in (os.path.join(mount, path.lstrip("/")), mount):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def kills(path: str | None) -> int:
    """The ``oom_kill`` count in ``path`` (0 where it cannot be read)."""
    try:
        with open(path or "") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


class OomCounter:
    """Whether the OOM killer took a process of the runner's memory cgroup since it started
    (a pooled runner may be moved to its kernel's cgroup meanwhile: that one counts from 0)."""

    def __init__(self) -> None:
        self.file = kill_file()
        self.start = kills(self.file)

    def rose(self) -> bool:
        path = kill_file()
        return kills(path) > (self.start if path == self.file else 0)
