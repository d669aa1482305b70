"""Processes that tests and benchmarks leave behind: found by command line, ended with all
they started."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (bwrap names the stack's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_trees(pids: list[int]) -> None:
    """SIGKILL ``pids`` and everything they started (the agent's ``children``, all the way
    down)."""
    from bai.agent.backends.process_pool import children

    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children(pid)
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
