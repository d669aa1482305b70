"""``process_pool.kill_tree``: a kernel's runner and the children it started in sessions of
their own (a sandbox's PID namespace init) are killed, children found from the kernel's
per-thread lists (``/proc/PID/task/TID/children``) or, without those, by psutil."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bai.agent.backends import process_pool
from bai.agent.backends.process_pool import children, kill_tree

#: a parent whose second child leaves its process group (setsid, as bwrap's init does)
TREE = ("import os, subprocess, sys, time\n"
        "a = subprocess.Popen(['sleep', '60'])\n"
        "b = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(a.pid, b.pid, flush=True)\n"
        "time.sleep(60)\n")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not any(_alive(p) for p in pids)


@pytest.mark.parametrize("listed", [True, False], ids=["proc-children", "psutil"])
def test_the_tree_dies_with_the_child_that_left_the_group(monkeypatch, listed) -> None:
    if listed and not process_pool.PROC_CHILDREN:
        pytest.skip("this kernel keeps no /proc/PID/task/TID/children")
    monkeypatch.setattr(process_pool, "PROC_CHILDREN", listed)
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout is not None
    a, b = map(int, parent.stdout.readline().split())
    try:
        assert sorted(children(parent.pid)) == sorted([a, b])
        assert os.getsid(b) == b != os.getsid(parent.pid)
        kill_tree(parent.pid)
        parent.wait(timeout=5)
        assert _gone([a, b]), "a child outlived kill_tree"
    finally:
        for pid in (a, b, parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def test_no_children_of_a_process_that_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert children(proc.pid) == []
    kill_tree(proc.pid)  # nothing to kill: no error
