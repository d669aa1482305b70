"""Pure parts of the process backend and agent pieces: command lines, environment, settings,
mock devices, slot detection."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from bai.agent.backends.base import KernelSpec
from bai.agent.backends.process import KERNEL_PYTHONPATH, build_command, build_environ
from bai.agent.resources import detect_slots
from bai.agent.resources.accelerator import MockCudaDevices
from bai.agent.settings import AgentSettings


def spec(**kw) -> KernelSpec:
    return KernelSpec(kernel_id="k", session_id="s", session_name="n", session_type="BATCH",
                      image="python", slots={"cpu": Decimal(1)}, **kw)


def test_command_joins_cgroups_then_namespaces_then_runner() -> None:
    argv = build_command("/usr/bin/python3", Path("/w"), ["/cg/memory/cgroup.procs"],
                         namespaces=True)
    assert argv[:3] == ["/bin/sh", "-c", argv[2]]
    rest = argv[3:]
    assert rest[:4] == ["bai-launch", "-", "/cg/memory/cgroup.procs", "--"]
    # (the launcher is root in the session's environment: no program of it found by PATH)
    assert rest[4] == shutil.which("unshare") and "--pid" in rest and "--kill-child" in rest
    assert rest[-5:] == ["/usr/bin/python3", "-m", "bai.kernel", "--workdir", "/w"]


def test_command_without_cgroups_limits_address_space() -> None:
    argv = build_command("/py", Path("/w"), [], namespaces=False, mem_rlimit_kib=65536,
                         as_user=(65534, 65534))
    assert argv[3:6] == ["bai-launch", "65536", "--"]
    assert not any(a.endswith("unshare") for a in argv)
    assert argv[6:10] == [shutil.which("setpriv"), "--reuid=65534", "--regid=65534",
                          "--clear-groups"]
    assert argv[6].startswith("/")


def test_environ_is_clean_and_keeps_the_users_pythonpath() -> None:
    env = build_environ(spec(environ={"FOO": "1", "PYTHONPATH": "/mine"}), Path("/w"), "alice")
    assert env["HOME"] == "/w" and env["USER"] == "alice" and env["FOO"] == "1"
    assert env["PATH"].startswith("/w/.bai/bin:")
    assert env["PYTHONPATH"] == KERNEL_PYTHONPATH and env["BAI_KERNEL_PYTHONPATH"] == "/mine"
    assert env["BACKENDAI_SESSION_ID"] == "s"
    assert not any(k.startswith("BAI_AGENT") for k in env)


def test_settings_from_toml_env_and_overrides(tmp_path: Path, monkeypatch) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[agent]\nagent_id = "n1"\nport = 7000\nslot_cpu = "2"\n'
                    'manager_endpoints = "http://a:1, http://b:2/"\n')
    monkeypatch.setenv("BAI_AGENT_PORT", "7100")
    s = AgentSettings.load(toml, runtime="dummy")
    assert (s.agent_id, s.port, s.runtime) == ("n1", 7100, "dummy")
    assert s.managers == ["http://a:1", "http://b:2"]
    assert s.slot_overrides() == {"cpu": "2"}
    assert s.address == "http://127.0.0.1:7100"


def test_slot_overrides_and_mock_devices() -> None:
    s = AgentSettings.load(None, slot_cpu="3", slot_mem="4g", slot_cuda_device="2",
                           slot_cuda_shares="1.5")
    slots = detect_slots(s)
    assert slots == {"cpu": Decimal(3), "mem": Decimal(4 * 2**30),
                     "cuda.device": Decimal(2), "cuda.shares": Decimal("1.5")}
    devices = MockCudaDevices(2)
    assert [g.index for g in devices.allocate("a", Decimal(1))] == [0]
    assert [g.index for g in devices.allocate("b", Decimal(1))] == [1]
    with pytest.raises(ValueError):
        devices.allocate("c", Decimal(1))
    devices.release("a")
    grants = devices.allocate("c", Decimal(1))
    assert [g.index for g in grants] == [0]
    assert devices.environ(grants)["CUDA_VISIBLE_DEVICES"] == "0"
    assert devices.nodes(grants) == []  # a mock has no device nodes


async def test_the_monitor_sleeps_while_there_is_no_kernel_and_watches_one_added() -> None:
    """With no kernel the process backend's monitor waits for one instead of ticking every
    ``monitor_interval`` (an idle agent's wake-ups); a kernel added is checked at its ticks."""
    import asyncio
    import time
    from types import SimpleNamespace

    from bai.agent.backends.process import ProcessBackend, _Watched

    class Counted(_Watched):
        looks = 0

        def values(self):
            Counted.looks += 1
            return super().values()

    checked: list[str] = []

    async def check_one(k) -> None:
        checked.append(k)

    fake = SimpleNamespace(_kernels=Counted(), settings=SimpleNamespace(monitor_interval=0.01),
                           _check_one=check_one)
    task = asyncio.create_task(ProcessBackend._watch(fake))
    try:
        await asyncio.sleep(0.3)  # 30 ticks' worth
        assert Counted.looks == 0
        fake._kernels["k1"] = "kernel-1"
        deadline = time.monotonic() + 30
        while not checked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert checked and checked[0] == "kernel-1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
