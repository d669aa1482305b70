"""The declared dependency floors work: every direct dependency (the client's and the server
extra's) installed at exactly its floor, the rest resolved as usual (uv's ``lowest-direct``),
then this checkout's code runs on them: every module imports, and ``backend.ai server start``,
a run through the click path (httpx, websockets), ``ps`` and ``server stop``.

The virtualenv is cached under ``$BAI_CI_ROOT/floors-<hash of the requirements>`` (a change of
a floor makes a new one); the code comes from this checkout by ``PYTHONPATH``. Without the
package registry (no network, no pip cache) the test is skipped, naming why; a floor that does
not exist or does not install fails it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.version import Version

from stacks import free_port

#: the first run builds the virtualenv (~2 min here, more on a loaded machine)
pytestmark = pytest.mark.timeout(1200)
ROOT = Path(__file__).resolve().parents[2]
CI_ROOT = Path(os.environ.get("BAI_CI_ROOT", "/tmp/bai-ci"))
#: what pip prints when it cannot reach the registry (as opposed to a floor that is wrong)
OFFLINE = ("Failed to establish a new connection", "Network is unreachable",
           "Temporary failure in name resolution", "Max retries exceeded",
           "No matching distribution found for pip", "ProxyError", "ConnectTimeout")


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["server"]]


def floors(reqs: list[str]) -> list[str]:
    """``name==floor`` of each requirement (a constraint pins the distribution, extras and
    all); every requirement must declare a floor."""
    out = []
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)", req)
        assert m, f"{req!r}: every dependency declares a floor as NAME>=VERSION"
        out.append(f"{m.group(1)}=={m.group(3)}")
    return out


def test_every_dependency_has_a_floor():
    assert len(floors(requirements())) == len(requirements())


@pytest.fixture(scope="module")
def floor_venv() -> Path:
    reqs = requirements()
    pins = floors(reqs)
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:12]
    home = CI_ROOT / f"floors-{key}"
    CI_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CI_ROOT / f"floors-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same one
        return _build(home, reqs, pins)


def _build(home: Path, reqs: list[str], pins: list[str]) -> Path:
    py = home / "bin" / "python"
    if (home / "ok").exists() and py.exists():
        return home
    shutil.rmtree(home, ignore_errors=True)
    venv.create(home, with_pip=True)
    (home / "constraints.txt").write_text("\n".join(pins) + "\n")
    try:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "--constraint", str(home / "constraints.txt"), *reqs],
                           capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip("the package registry did not deliver the floors within 15 minutes")
    if r.returncode != 0:
        out = r.stdout + r.stderr
        shutil.rmtree(home, ignore_errors=True)
        if any(sign in out for sign in OFFLINE):
            pytest.skip(f"the package registry cannot be reached: {out.strip()[-300:]}")
        pytest.fail(f"the floors do not install:\n{out[-3000:]}")
    (home / "ok").write_text("\n".join(pins) + "\n")
    return home


def _env(home: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BAI_", "BACKEND_")) and "proxy" not in k.lower()}
    env.update({"PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp),
                "PATH": f"{home / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"})
    return env


def _py(home: Path, tmp: Path, *args: str, timeout: float = 240
        ) -> subprocess.CompletedProcess:
    return subprocess.run([str(home / "bin" / "python"), *args], env=_env(home, tmp),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp)


def test_the_floors_are_what_is_installed(floor_venv: Path, tmp_path: Path):
    """The constraint took: each direct dependency is at its floor."""
    pins = dict(p.split("==") for p in floors(requirements()))
    probe = ("import importlib.metadata as m, json, sys; "
             "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    r = _py(floor_venv, tmp_path, "-c", probe, *pins)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert {n: Version(v) for n, v in got.items()} == {n: Version(v) for n, v in pins.items()}


def test_every_module_imports_on_the_floors(floor_venv: Path, tmp_path: Path):
    code = """
import importlib, pkgutil, sys
import bai
failed = []
for info in pkgutil.walk_packages(bai.__path__, "bai."):
    if ".migrations" in info.name or info.name.startswith("bai.testing"):
        continue  # alembic loads the migrations itself; testing helpers need the test extra
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed.append(f"{info.name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    r = _py(floor_venv, tmp_path, "-c", code)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stack_runs_on_the_floors(floor_venv: Path, tmp_path: Path):
    """server start (manager: aiohttp, SQLAlchemy, alembic, aiosqlite, pydantic, GraphQL;
    agent: psutil, prometheus-client), a run on the click path, ps, server stop."""
    cli = ("-c", "from bai.client.cli.main import main; main()")
    port, agent_port = free_port(), free_port()
    r = _py(floor_venv, tmp_path, *cli, "server", "start", "--port", str(port),
            "--agent-port", str(agent_port), "--state-dir", str(tmp_path / "state"))
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        env = {**_env(floor_venv, tmp_path), "BAI_CLI_EXPRESS": "0"}
        r = subprocess.run([str(floor_venv / "bin" / "python"), *cli, "run", "--rm", "-c",
                            'print("on the floors")', "python"], env=env, capture_output=True,
                           text=True, timeout=240, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip().splitlines()[-1] == "on the floors"
        r = _py(floor_venv, tmp_path, *cli, "ps", "--all")
        assert r.returncode == 0, r.stderr
    finally:
        r = _py(floor_venv, tmp_path, *cli, "server", "stop", "--state-dir",
                str(tmp_path / "state"))
        assert r.returncode == 0, r.stdout + r.stderr
