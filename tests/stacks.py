"""Real embedded stacks (manager + agent daemons on loopback) for tests, driven by the CLI.

``start_stack`` runs ``backend.ai server start`` in a temporary HOME and state folder, exactly as
a user would. Import it as ``from stacks import ...`` (pyproject puts ``tests/`` on the path);
the fixtures ``stack`` and ``make_stack`` in ``tests/conftest.py`` use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bai.testing.ports import free_port
from bai.testing.procs import kill_trees, pids_mentioning

BIN = Path(sys.executable).parent
CLI = str(BIN / "backend.ai")


@dataclass
class Stack:
    home: Path
    state: Path
    port: int
    agent_port: int
    env: dict[str, str] = field(default_factory=dict)
    user_env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, user: bool = False, check: bool = True, input: str | None = None,
            timeout: float = 120, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [CLI, *args],
            env=self.user_env if user else self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            cwd=cwd or self.home,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"backend.ai {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def keys(self) -> dict:
        import json

        return json.loads((self.state / "keys.json").read_text())

    def stop(self) -> None:
        subprocess.run([CLI, "server", "stop", "--terminate-sessions", "--state-dir", str(self.state)],
                       env=self.env, capture_output=True, timeout=60)
        # A kernel outlives its agent by design (an agent that comes back finds it), so the
        # sandboxes of an agent a test killed are still running: end them with the stack.
        kill_trees(pids_mentioning(str(self.home)))


def start_stack(*slots: str, runtime: str = "process", env: dict[str, str] | None = None) -> Stack:
    home = Path(tempfile.mkdtemp(prefix="bai-home-"))
    state = home / "state"
    st = Stack(home=home, state=state, port=free_port(), agent_port=free_port())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "BAI_"))}
    base.update({
        "HOME": str(home),
        "BAI_CONFIG": str(home / "client.toml"),
        "BAI_STATE_DIR": str(state),
        "PATH": f"{BIN}:{base.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "250",
    })
    # Tests start as many sessions as they need; the default policy's limit of 8 concurrent
    # sessions is tested where it is asked for (env={"BAI_MANAGER_DEFAULT_MAX_SESSIONS": "8"}).
    base["BAI_MANAGER_DEFAULT_MAX_SESSIONS"] = "0"
    base.update(env or {})  # e.g. BAI_MANAGER_* / BAI_AGENT_* settings for the daemons
    for name in ("DOCKER_HOST",):
        if os.environ.get(name):
            base[name] = os.environ[name]
    args = [CLI, "server", "start", "--state-dir", str(state), "--port", str(st.port),
            "--agent-port", str(st.agent_port), "--runtime", runtime]
    for s in slots:
        args += ["--slots", s]
    proc = subprocess.run(args, env=base, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"server start failed:\n{proc.stdout}\n{proc.stderr}")
    st.env = base
    st.user_env = {**base, "BAI_PROFILE": "user"}
    return st
