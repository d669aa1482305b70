"""Helpers of the scheduling e2e tests (``test_scheduling_*.py``): more agent daemons for a
``make_stack`` stack, bounded polling, and reading sessions through the CLI's JSON output."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from bai.client.cli.server import _write_toml
from stacks import CLI, Stack, free_port, start_stack

__all__ = ["ExtraAgent", "Stack", "stack", "start_stack"]  # re-exported for the test modules


@pytest.fixture(scope="module")
def stack():
    """A stack of the module's own (4 CPUs, 4 GiB): ``from scheduling_support import stack``."""
    st = start_stack("cpu=4", "mem=4g")
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


class ExtraAgent:
    """A second (third ...) agent daemon registered with a stack's manager."""

    def __init__(self, stack: Stack, agent_id: str, env: dict[str, str] | None = None,
                 **settings: Any):
        base = tomllib.loads((stack.state / "agent.toml").read_text())["agent"]
        values = {**base, "agent_id": agent_id, "port": free_port(),
                  "scratch_root": str(stack.state / f"kernels-{agent_id}"), **settings}
        self.config = stack.state / f"agent-{agent_id}.toml"
        # TOML, not JSON: the agent's settings hold tables (storage_roots)
        _write_toml(self.config, "agent", values)
        self.log = stack.state / f"agent-{agent_id}.log"
        self.agent_id = agent_id
        self._env = {**stack.env, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bai.agent", "serve", "--config", str(self.config)],
                env=self._env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """``kill -9`` of the daemon (its kernels are left as they are)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kill_local_agent(stack: Stack) -> None:
    """``kill -9`` of the stack's own agent daemon."""
    pid = int((stack.state / "agent.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``cond`` until it returns something truthy (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g} s: {what} (last: {last!r})")


FIELDS = "name,id,status,status_info,status_data,result,agent_ids"


def session(stack: Stack, name: str) -> dict[str, Any]:
    """One session (any status) as ``ps --output json`` gives it; status_data parsed."""
    out = stack.cli("--output", "json", "ps", "--all", "--all-statuses", "-f", FIELDS).stdout
    for item in json.loads(out)["items"]:
        if item["name"] == name:
            data = item.get("status_data")
            if isinstance(data, str):
                item["status_data"] = json.loads(data) if data else {}
            return item
    raise AssertionError(f"no session {name} in ps: {out}")


def status(stack: Stack, name: str) -> str:
    return session(stack, name)["status"]


def history(stack: Stack, name: str) -> list[dict[str, Any]]:
    return json.loads(stack.cli("--output", "json", "history", name).stdout)


def agents(stack: Stack) -> dict[str, dict[str, Any]]:
    out = stack.cli("--output", "json", "admin", "agent", "list").stdout
    return {a["id"]: a for a in json.loads(out)}


def events_until(stack: Stack, name: str, stop: Callable[[str, dict], bool],
                 timeout: float = 30) -> list[tuple[str, dict]]:
    """Run ``backend.ai events NAME`` until ``stop(event, data)`` holds; the lines seen."""
    proc = subprocess.Popen([CLI, "events", name], env=stack.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            ev, _, raw = line.strip().partition(" ")
            data = json.loads(raw) if raw.startswith("{") else {}
            seen.append((ev, data))
            if stop(ev, data):
                return seen
        raise AssertionError(f"events {name}: condition not seen within {timeout:g} s: {seen}")
    finally:
        proc.kill()
        proc.wait()


def parse_time(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)
