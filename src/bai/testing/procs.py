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
    """SIGKILL ``pids`` and everything they started (their threads' ``children`` lists)."""
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
