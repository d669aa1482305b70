"""`backend.ai server stop` then `server start` with other settings, as a user restarts it."""

from __future__ import annotations

import subprocess

from stacks import CLI


def server(stack, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([CLI, "server", *args, "--state-dir", str(stack.state)], env=stack.env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_new_capacity_applies_as_soon_as_start_returns(make_stack):
    stack = make_stack("cpu=2", "mem=2g")
    server(stack, "stop")
    server(stack, "start", "--slots", "cpu=8", "--slots", "mem=2g", "--timeout", "120")
    proc = stack.cli("run", "--rm", "-r", "cpu=6", "-c", "print('six')", "python", check=False)
    assert proc.returncode == 0 and proc.stdout == "six\n", proc.stderr
