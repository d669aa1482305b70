"""The manager's and the agent's container images (scripts/build-service-images.sh): built from
Debian packages, they start, the agent registers with the manager, and both answer their
probes and metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from bai.ops import service_images
from stacks import free_port

pytestmark = pytest.mark.docker
DOCKER_HOST = os.environ.get("BAI_TEST_DOCKER_HOST")


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], env={**os.environ, "DOCKER_HOST": DOCKER_HOST},
                          capture_output=True, text=True, timeout=300, check=check)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_for(what: str, probe, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (got := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return got


def test_the_service_images_run_a_manager_and_an_agent(monkeypatch):
    if not DOCKER_HOST or shutil.which("docker") is None:
        pytest.skip("needs BAI_TEST_DOCKER_HOST and a docker CLI")
    monkeypatch.setenv("DOCKER_HOST", DOCKER_HOST)
    manager, agent = service_images.build(log=lambda _: None)
    state = tempfile.mkdtemp(prefix="bai-image-state-")
    os.chown(state, service_images.MANAGER_UID, service_images.MANAGER_UID)  # as docs say
    port, ops, agent_port = free_port(), free_port(), free_port()
    names = [f"bai-test-manager-{port}", f"bai-test-agent-{port}"]
    try:
        r = docker("run", "--rm", "--network", "none", "-v", f"{state}:/var/lib/bai", manager,
                   "bai-manager", "init", "--keys-out", "/var/lib/bai/keys.json")
        assert json.loads(open(f"{state}/keys.json").read())["admin"]["access_key"], r.stderr
        docker("run", "-d", "--name", names[0], "--network", "host",
               "-v", f"{state}:/var/lib/bai", "-e", f"BAI_MANAGER_PORT={port}",
               "-e", f"BAI_MANAGER_OPS_PORT={ops}", "-e", "BAI_MANAGER_CLUSTER_TOKEN=image-test",
               manager)
        docker("run", "-d", "--name", names[1], "--network", "host",
               "-e", f"BAI_AGENT_PORT={agent_port}", "-e", "BAI_AGENT_RUNTIME=dummy",
               "-e", "BAI_AGENT_AGENT_ID=in-a-container", "-e", "BAI_AGENT_CLUSTER_TOKEN=image-test",
               "-e", f"BAI_AGENT_MANAGER_ENDPOINTS=http://127.0.0.1:{port}", agent)
        wait_for("the manager to be ready",
                 lambda: get(f"http://127.0.0.1:{port}/health/ready")[0] == 200)
        wait_for("the agent to be registered",
                 lambda: get(f"http://127.0.0.1:{agent_port}/health/ready")[0] == 200)
        status, text = get(f"http://127.0.0.1:{ops}/metrics")
        assert status == 200
        assert 'bai_manager_agents{status="ALIVE"} 1.0' in text
        assert 'agent="in-a-container"' in text
        # the manager runs unprivileged (fails when the image runs it as root)
        r = docker("exec", names[0], "sh", "-c", "id -u; id -g; stat -c %u /var/lib/bai")
        uid = str(service_images.MANAGER_UID)
        assert r.stdout.split() == [uid, uid, uid], r.stdout
        r = docker("exec", names[0], "grep", "^Uid:", "/proc/1/status")  # the manager itself
        assert r.stdout.split()[1:] == [uid] * 4, r.stdout
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)
        shutil.rmtree(state, ignore_errors=True)
