"""The docker backend's container configs (pure functions), without an engine: a standby
container must differ from a kernel's own only in what a claim supplies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bai.agent.backends.base import KernelCreationFailed, KernelSpec
from bai.agent.backends.docker_cgroup import in_container, kill
from bai.agent.backends.docker_pool import StandbyUnusable, set_hostname
from bai.agent.backends.docker_spec import (
    L_POOL,
    ContainerSite,
    hostname_of,
    kernel_env,
    kernel_of_name,
    limits_of,
    poolable,
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
    kernel = SITE.kernel_config(s, Path("/scratch/k-1/work"), 2_000_001, "none")
    standby = SITE.standby_config(s.image, shape_of(limits_of(s)), Path("/scratch/k-1/work"),
                                  2_000_001)
    assert standby["HostConfig"] == kernel["HostConfig"]
    # one whose work dir can take storage folders at the claim: bound rslave, nothing else
    attachable = SITE.standby_config(s.image, shape_of(limits_of(s)),
                                     Path("/scratch/k-1/work"), 2_000_001, attachable=True)
    binds = attachable["HostConfig"].pop("Binds")
    assert "/scratch/k-1/work:/home/work:rw,rslave" in binds
    assert sorted(binds) == sorted(b.replace("work:rw", "work:rw,rslave")
                                   for b in kernel["HostConfig"]["Binds"])
    assert {**attachable["HostConfig"], "Binds": kernel["HostConfig"]["Binds"]} \
        == kernel["HostConfig"]
    assert standby["Cmd"] == [*kernel["Cmd"], "--pooled"]  # bai.kernel: waits for a claim
    assert kernel["HostConfig"]["NanoCpus"] == 500_000_000
    assert kernel["HostConfig"]["Memory"] == kernel["HostConfig"]["MemorySwap"] == 256 * MiB
    assert standby["Image"] == kernel["Image"] and standby["WorkingDir"] == kernel["WorkingDir"]
    assert standby["Labels"][L_POOL] == s.image and "ai.bai.kernel_id" not in standby["Labels"]
    # what the standby's interpreters start with is a subset of what the kernel gets
    standby_env = dict(e.split("=", 1) for e in standby["Env"])
    kernel_vars = dict(e.split("=", 1) for e in kernel["Env"])
    assert standby_env.items() <= kernel_vars.items()


def test_a_kernel_container_runs_as_its_uid_with_no_capability_and_no_host_network():
    """The runner starts as the container's root with what it needs to become the kernel's uid
    (and nothing else), in a state folder of its own outside the work dir."""
    kernel = SITE.kernel_config(spec(), Path("/scratch/k-1/work"), 2_000_001, "none")
    host = kernel["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["SETGID", "SETUID"]
    assert "no-new-privileges" in host["SecurityOpt"] and not host.get("Privileged")
    assert kernel["Cmd"][-4:] == ["--state-dir", "/run/bai", "--user", "2000001:2000001"]
    assert kernel["Labels"]["ai.bai.uid"] == "2000001"
    assert sorted(host["Binds"]) == ["/scratch/k-1/run:/run/bai:rw",
                                     "/scratch/k-1/work:/home/work:rw",
                                     "/src/bai/kernel:/opt/bai/bai/kernel:ro"]
    for shared in ("host", "container:abc"):
        with pytest.raises(KernelCreationFailed):
            SITE.kernel_config(spec(), Path("/scratch/k-1/work"), 2_000_001, shared)


def test_an_outbound_kernels_runner_waits_for_the_agent_before_anything_of_the_kernel_runs():
    """A kernel whose policy allows outbound network: the container has no engine network and
    its runner waits for a claim (bai.kernel --pooled) until the agent attached slirp4netns."""
    s = spec(network=True)
    plain = SITE.kernel_config(s, Path("/scratch/k-1/work"), 2_000_001, "none")
    gated = SITE.kernel_config(s, Path("/scratch/k-1/work"), 2_000_001, "none", gated=True)
    assert gated["Cmd"] == [*plain["Cmd"], "--pooled"]
    assert gated["HostConfig"] == {**plain["HostConfig"], "Dns": ["10.0.2.3"]}  # slirp's
    assert gated["HostConfig"]["NetworkMode"] == "none"


def test_only_kernels_a_started_interpreter_can_become_are_pooled():
    assert poolable(spec())
    assert poolable(spec(environ={"LANG": "C.UTF-8", "PYTHONPATH": "/x", "FOO": "1"}))
    # outbound network and storage folders are attached at the claim (DockerBackend decides)
    assert poolable(spec(network=True))
    assert poolable(spec(mounts=[{"name": "d", "kernel_path": "/home/work/d"}]))
    for fixed in ({"LANG": "de_DE.UTF-8"}, {"LC_ALL": "C"}, {"PYTHONHASHSEED": "0"},
                  {"TZ": "UTC"}, {"LD_PRELOAD": "/x.so"}):
        assert not poolable(spec(environ=fixed)), fixed


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


def test_a_pid_that_is_not_the_containers_is_never_touched():
    """The engine's pid of a container may have been recycled: no signal, no hostname change."""
    other = "f" * 64
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not in_container(child.pid, other)
        assert kill(child.pid, other) is False
        assert child.poll() is None  # still alive
        before = socket.gethostname()
        with pytest.raises(StandbyUnusable):
            set_hostname(os.getpid(), other, "not-this-host")
        assert socket.gethostname() == before
    finally:
        child.kill()
        child.wait()
