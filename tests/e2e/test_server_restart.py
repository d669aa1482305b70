"""`backend.ai server stop` then `server start` with other settings, as a user restarts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

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


def hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port; None if something else already does (it is taken either way)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        s.close()
        return None
    return s


def test_busy_default_ports_are_replaced_said_and_written_to_the_client_config(tmp_path):
    from bai.client.cli.server import DEFAULT_AGENT_PORT, DEFAULT_PORT

    held = [hold(DEFAULT_PORT), hold(DEFAULT_AGENT_PORT)]
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "BAI_"))}
    env.update({"HOME": str(tmp_path), "BAI_CONFIG": str(tmp_path / "client.toml"),
                "PATH": f"{Path(CLI).parent}:{env.get('PATH', '')}"})
    try:
        proc = subprocess.run([CLI, "server", "start", "--state-dir", str(state)], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert f"port {DEFAULT_PORT} is in use" in proc.stdout
        assert f"port {DEFAULT_AGENT_PORT} is in use" in proc.stdout
        endpoint = (tmp_path / "client.toml").read_text().split('endpoint = "')[1].split('"')[0]
        assert not endpoint.endswith(f":{DEFAULT_PORT}") and endpoint in proc.stdout
        run = subprocess.run([CLI, "run", "--rm", "-c", "print('hello world')", "python"],
                             env=env, capture_output=True, text=True, timeout=180)
        assert run.stdout == "hello world\n", run.stderr
        # an explicit port stays a promise: a busy one is an error
        again = subprocess.run([CLI, "server", "start", "--state-dir", str(tmp_path / "s2"),
                                "--port", str(DEFAULT_PORT)], env=env, capture_output=True,
                               text=True, timeout=180)
        assert again.returncode == 1 and "--port" in again.stderr
    finally:
        subprocess.run([CLI, "server", "stop", "--terminate-sessions", "--state-dir", str(state)],
                       env=env, capture_output=True, timeout=120)
        for s in held:
            if s is not None:
                s.close()


def malloc_env(state: Path, daemon: str) -> dict[str, str]:
    """The daemon's MALLOC_* variables."""
    pid = (state / f"{daemon}.pid").read_text().strip()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in environ if e.startswith(b"MALLOC_"))


def test_the_daemons_run_with_two_malloc_arenas_and_fixed_thresholds_unless_the_user_says(make_stack):
    # glibc's default (8 per core) kept ~8 MB more of a manager with 5,000 sessions waiting,
    # its sliding thresholds ~11 MB more
    fixed = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
             "MALLOC_TRIM_THRESHOLD_": "131072"}
    stack = make_stack("cpu=1")
    assert [malloc_env(stack.state, d) for d in ("manager", "agent")] == [fixed, fixed]
    server(stack, "stop")
    proc = subprocess.run([CLI, "server", "start", "--state-dir", str(stack.state)],
                          env={**stack.env, "MALLOC_ARENA_MAX": "1"}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert [malloc_env(stack.state, d)["MALLOC_ARENA_MAX"] for d in ("manager", "agent")] == [
        "1", "1"]


def test_server_stop_ends_the_open_event_streams_instead_of_waiting_for_them(make_stack):
    """A client that follows events (``backend.ai events``, the dashboard's EventSource) does
    not hold the manager up at ``server stop``: its stream ends and the manager exits on its
    SIGTERM, not killed after the stop's timeout. The stream of every session (``*``), which
    no session's end closes."""
    import queue
    import threading

    stack = make_stack("cpu=8", "mem=8g", runtime="dummy")
    follow = subprocess.Popen([CLI, "events", "*", "--max-reconnects", "0"], env=stack.env,
                              cwd=stack.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        seen = ""
        for i in range(10):  # the stream is open once it carries a new session's events
            stack.cli("start", "-t", f"watched-{i}", "-r", "cpu=0.1", "-r", "mem=64m", "python")
            try:
                while "session_started" not in seen:
                    seen += lines.get(timeout=5)
                break
            except queue.Empty:
                continue
        assert "session_started" in seen, seen
        stopped = server(stack, "stop", "--timeout", "30")
        assert "did not stop" not in stopped.stderr, stopped.stderr
        assert "bai stopped" in stopped.stdout
        assert follow.wait(60) == 1  # the stream closed (no session of its ended)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_the_ports_start_chose_are_held_until_the_daemons_serve_them(tmp_path, monkeypatch):
    """Another stack starting at the same time cannot take a port between its choice and the
    daemon's start: the manager would then fail (API) or run without its app proxy."""
    import http.client
    import json

    from click.testing import CliRunner

    from bai.client.cli import server as cli_server
    from bai.testing.ports import free_port

    state = tmp_path / "state"
    for k in [k for k in os.environ if k.startswith(("BACKEND_", "BAI_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BAI_CONFIG", str(tmp_path / "client.toml"))
    spawn, taken = cli_server._spawn, []

    def racing_spawn(*args, **kw):  # another program binds the ports just before each spawn
        meta = json.loads((state / "server.json").read_text())
        for key in ("port", "agent_port", "app_port"):
            thief = socket.socket()
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                thief.bind(("127.0.0.1", meta[key]))
                thief.listen()
                taken.append(thief)
            except OSError:
                thief.close()
        return spawn(*args, **kw)

    monkeypatch.setattr(cli_server, "_spawn", racing_spawn)
    try:
        result = CliRunner().invoke(cli_server.server, [
            "start", "--state-dir", str(state), "--port", str(free_port()),
            "--agent-port", str(free_port()), "--timeout", "60"])
        assert [s.getsockname()[1] for s in taken] == [], result.output
        assert result.exit_code == 0, result.output
        meta = json.loads((state / "server.json").read_text())
        conn = http.client.HTTPConnection("127.0.0.1", meta["app_port"], timeout=30)
        conn.request("GET", "/app/nosuch/jupyter/")
        answer = conn.getresponse()
        # the proxy (not the thief) answers: no cookie of this app
        assert answer.status == 401 and b"Not signed in to this app" in answer.read()
    finally:
        for s in taken:
            s.close()
        subprocess.run([CLI, "server", "stop", "--state-dir", str(state)], env=dict(os.environ),
                       capture_output=True, timeout=120)



@pytest.mark.parametrize("daemon", ["agent", "manager"])
def test_a_daemon_stopping_closes_its_open_websockets_instead_of_waiting_for_them(make_stack,
                                                                                   daemon):
    """A code run that is still running (``backend.ai run``: the manager's run stream and the
    agent's execute stream, both WebSockets) does not hold a daemon up when it is stopped (the
    agent first, as ``server stop`` does, or the manager alone): its sockets close (going
    away) and it exits on its SIGTERM, not killed after ``server stop``'s timeout."""
    from bai.client.cli.server import _pid_alive

    stack = make_stack("cpu=8", "mem=8g")
    code = "import time; print('started', flush=True); time.sleep(600)"
    follow = subprocess.Popen([CLI, "run", "-r", "cpu=0.1", "-r", "mem=64m", "-c", code, "python"],
                              env=stack.env, cwd=stack.home, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout.readline() == "started\n"  # the code runs: both streams are open
        pid_file = stack.state / f"{daemon}.pid"
        pid = _pid_alive(pid_file)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30  # server stop's --timeout here; aiohttp waits 60 s
        while _pid_alive(pid_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid_file), f"the {daemon} did not stop within 30 s"
        follow.wait(60)  # its stream closed
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        server(stack, "stop", "--timeout", "30")
