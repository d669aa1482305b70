"""The docker backend's container configs (pure functions) and the standby program, without an
engine: a standby container must differ from a kernel's own only in what a claim supplies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from bai.agent.backends import docker_standby
from bai.agent.backends.base import KernelCreationFailed, KernelSpec
from bai.agent.backends.docker_spec import (
    L_POOL,
    STANDBY_TARGET,
    ContainerSite,
    hostname_of,
    kernel_env,
    kernel_of_name,
    limits_of,
    shape_of,
)

MiB = 2**20
SITE = ContainerSite("agent-1", Path("/src/bai/kernel"), 512)


def spec(**kw) -> KernelSpec:
    base = {"kernel_id": "k-1", "session_id": "s-1", "session_name": "My Session_1",
            "session_type": "INTERACTIVE", "image": "python:3.11-debian12",
            "slots": {"cpu": Decimal("0.5"), "mem": Decimal(256 * MiB)},
            "environ": {"FOO": "bar", "PYTHONPATH": "/mine"}}
    base.update(kw)
    return KernelSpec(**base)


def test_a_standby_differs_from_a_kernel_container_only_in_what_a_claim_supplies():
    s = spec()
    kernel = SITE.kernel_config(s, Path("/scratch/k-1"), "none")
    standby = SITE.standby_config(s.image, shape_of(limits_of(s)), Path("/scratch/k-1"))
    standby_binds = standby["HostConfig"].pop("Binds")
    assert standby_binds[:-1] == kernel["HostConfig"].pop("Binds")
    assert standby_binds[-1].endswith(f"docker_standby.py:{STANDBY_TARGET}:ro")
    assert standby["HostConfig"] == kernel["HostConfig"]
    assert kernel["HostConfig"]["NanoCpus"] == 500_000_000
    assert kernel["HostConfig"]["Memory"] == kernel["HostConfig"]["MemorySwap"] == 256 * MiB
    assert standby["Image"] == kernel["Image"] and standby["WorkingDir"] == kernel["WorkingDir"]
    assert standby["Labels"][L_POOL] == s.image and "ai.bai.kernel_id" not in standby["Labels"]
    # what the standby starts with is a subset of what the kernel gets
    standby_env = dict(e.split("=", 1) for e in standby["Env"])
    kernel_vars = dict(e.split("=", 1) for e in kernel["Env"])
    assert standby_env.items() <= kernel_vars.items()


def test_kernel_environment_and_names():
    env = kernel_env(spec())
    assert env["FOO"] == "bar" and env["PYTHONPATH"] == "/opt/bai"  # the runner's own wins
    assert env["BACKENDAI_KERNEL_ID"] == "k-1" and env["BACKENDAI_SESSION_NAME"] == "My Session_1"
    assert env["LANG"] == "C.UTF-8"
    assert hostname_of(spec()) == "my-session-1"
    assert hostname_of(spec(session_name="__")) == "k-1"
    assert kernel_of_name("/bai-kernel-abc") == "abc" and kernel_of_name("bai-standby-x") == ""
    assert shape_of(limits_of(spec(slots={}))) == (None, None)
    with pytest.raises(KernelCreationFailed):
        limits_of(spec(slots={"mem": Decimal(MiB)}))


@pytest.fixture
def standby(tmp_path: Path):
    """The standby program on this host with a preloaded package ``pkg``."""
    pkg = tmp_path / "lib" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("LOADED = True\n")
    (pkg / "__main__.py").write_text(
        "import os, sys, json\n"
        "print(json.dumps({'pid': os.getpid(), 'x': os.environ.get('X'), 'argv': sys.argv[1:],"
        " 'base': os.environ.get('BASE')}))\n")
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, docker_standby.__file__, str(work), "pkg.helper"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "lib"), "BASE": "kept", "X": "old"},
        stdout=subprocess.PIPE, text=True)
    sock = work / ".bai" / docker_standby.SOCKET_NAME
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the standby did not listen"
        time.sleep(0.01)
    yield proc, sock
    proc.kill()
    proc.wait()


def claim(sock: Path, msg: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(json.dumps(msg).encode() + b"\n")
        return json.loads(s.makefile().readline())


def test_the_standby_runs_a_preloaded_module_in_its_own_process(standby):
    proc, sock = standby
    assert claim(sock, {"argv": ["python3", "-m", "pkg", "--flag"], "env": {"X": "new"}}) == {"ok": True}
    out, _ = proc.communicate(timeout=10)
    got = json.loads(out)
    assert got == {"pid": proc.pid, "x": "new", "argv": ["--flag"], "base": "kept"}
    assert proc.returncode == 0 and not sock.exists()


def test_the_standby_execs_anything_else_and_refuses_half_claims(standby):
    proc, sock = standby
    assert claim(sock, {"argv": ["python3"]})["ok"] is False  # no env: still waiting
    code = "import os; print(os.environ['X'], os.environ['BASE'])"
    assert claim(sock, {"argv": [sys.executable, "-c", code], "env": {"X": "new"}})["ok"]
    out, _ = proc.communicate(timeout=10)
    assert out.split() == ["new", "kept"]
