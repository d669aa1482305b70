"""The built wheel: a client-only install runs ``backend.ai`` without the server stack.

Builds the wheel of this checkout, installs it into a fresh virtualenv with its declared
dependencies only (no extras), runs ``backend.ai --help`` and checks that none of the server's
libraries came along. Needs PyPI (or pip's cache) for the build backend and the client's
dependencies (click, rich, httpx, websockets).
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("sqlalchemy", "asyncpg", "redis", "aiodocker", "aiohttp", "alembic",
               "pydantic", "prometheus_client")


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=240, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
              str(ROOT)])
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("bai-*.whl")
    return whl


def test_the_wheel_ships_the_type_marker_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bai/py.typed" in names
    assert any(n.startswith("bai/manager/store/migrations/versions/0001") for n in names)


@pytest.fixture(scope="module")
def client_venv(wheel: Path, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel and its declared dependencies only."""
    env_dir = tmp_path_factory.mktemp("client") / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    assert r.returncode == 0, r.stderr[-2000:]
    return env_dir


def test_a_client_only_install_runs_without_the_server_stack(client_venv: Path,
                                                              tmp_path: Path) -> None:
    env_dir = client_venv
    py = env_dir / "bin" / "python"
    r = _run([str(env_dir / "bin" / "backend.ai"), "--help"])
    assert r.returncode == 0, r.stderr
    # the launcher is packaging/bin/backend.ai, not pip's wrapper (which imports re)
    launcher = (env_dir / "bin" / "backend.ai").read_text()
    assert launcher.startswith(f"#!{env_dir}") and "import re" not in launcher, launcher
    assert "Usage" in r.stdout and "run" in r.stdout
    probe = ("import importlib.util, json; print(json.dumps([m for m in %r "
             "if importlib.util.find_spec(m)]))" % (SERVER_ONLY,))
    r = _run([str(py), "-c", probe])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"the client install pulled server libraries: {r.stdout}"
    # the server commands say what to install instead of a traceback
    r = _run([str(env_dir / "bin" / "backend.ai"), "server", "start", "--state-dir",
              str(tmp_path / "state")])
    assert r.returncode != 0
    assert "bai[server]" in r.stderr and "Traceback" not in r.stderr


def test_the_client_only_install_runs_hello_world_on_a_manager(client_venv: Path, stack) -> None:
    env = {**stack.user_env, "PATH": f"{client_venv / 'bin'}:/usr/bin:/bin"}
    r = subprocess.run([str(client_venv / "bin" / "backend.ai"), "run", "--rm", "-c",
                        'print("hello world")', "python"], env=env, capture_output=True,
                       text=True, timeout=240, cwd=stack.home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "hello world"
    # the click path (httpx, websockets) from the same install: a listing and a run
    r = subprocess.run([str(client_venv / "bin" / "backend.ai"), "run", "--rm", "-c",
                        'print("hello click")', "python"], env={**env, "BAI_CLI_EXPRESS": "0"},
                       capture_output=True, text=True, timeout=240, cwd=stack.home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "hello click"
    r = subprocess.run([str(client_venv / "bin" / "backend.ai"), "ps", "--all"], env=env,
                       capture_output=True, text=True, timeout=240, cwd=stack.home)
    assert r.returncode == 0, r.stderr
