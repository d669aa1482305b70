"""NVIDIA GPU detection and allocation against a fake NVML (no NVIDIA library needed)."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bai.agent.backends.base import KernelSpec
from bai.agent.backends.docker_spec import ContainerSite, poolable
from bai.agent.backends.process import gpu_binds
from bai.agent.backends.sandbox import Sandbox
from bai.agent.resources import accelerator_slots, detect_accelerator
from bai.agent.resources.accelerator import (
    AllocationError,
    CudaDevices,
    Gpu,
    detect_nvidia,
)
from bai.agent.settings import AgentSettings
from bai.testing.fake_nvml import GIB, FakeNvml


def two_h200() -> FakeNvml:
    return FakeNvml([("NVIDIA H200", 140 * GIB), ("NVIDIA H200", 140 * GIB)])


def test_detection_reads_model_memory_uuid_index() -> None:
    nvml = two_h200()
    found = detect_nvidia(nvml)
    assert found.reason == ""
    assert found.gpus == [Gpu(0, "GPU-fake-0", "NVIDIA H200", 140 * GIB, "/dev/nvidia0", 3),
                          Gpu(1, "GPU-fake-1", "NVIDIA H200", 140 * GIB, "/dev/nvidia1", 3)]
    assert nvml.shut


def test_no_driver_no_gpu_no_library_mean_no_slots_and_no_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert detect_nvidia(FakeNvml([], init_error=True)).gpus == []
    assert "driver" in detect_nvidia(FakeNvml([], init_error=True)).reason
    assert detect_nvidia(FakeNvml([])).gpus == []
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert "nvidia-ml-py" in detect_nvidia().reason
    s = AgentSettings.load(None)
    devices, gaps = detect_accelerator(s, FakeNvml([], init_error=True))
    assert devices is None and gaps == [] and accelerator_slots(devices) == {}


def test_detected_gpus_offer_devices_and_shares_only_where_mps_enforces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = AgentSettings.load(None)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    devices, gaps = detect_accelerator(s, two_h200())
    assert devices is not None and not devices.mock and gaps == []
    assert accelerator_slots(devices) == {"cuda.device": Decimal(2), "cuda.shares": Decimal(8)}
    # GPUs in DEFAULT compute mode: offered, but the gap (a session can go around MPS) is said
    open_gpus = FakeNvml([("NVIDIA H200", 140 * GIB)], compute_mode=0)
    devices, gaps = detect_accelerator(s, open_gpus)
    assert accelerator_slots(devices) == {"cuda.device": Decimal(1), "cuda.shares": Decimal(4)}
    assert len(gaps) == 1 and "bypass MPS" in gaps[0] and "GPU 0" in gaps[0]
    monkeypatch.setattr("shutil.which", lambda name: None)  # no MPS on this host
    devices, gaps = detect_accelerator(s, two_h200())
    assert accelerator_slots(devices) == {"cuda.device": Decimal(2)}
    assert len(gaps) == 1 and "cuda.shares not offered" in gaps[0] and "MPS" in gaps[0]
    # the settings' slot_cuda_* make a MOCK accelerator instead of detection
    mock, gaps = detect_accelerator(AgentSettings.load(None, slot_cuda_device="3"), two_h200())
    assert mock is not None and mock.mock and len(mock.gpus) == 3
    assert accelerator_slots(mock) == {}  # its slots are the settings' overrides


def gpus(n: int) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i}", "NVIDIA H200", 140 * GIB, f"/dev/nvidia{i}") for i in range(n)]


def idx(grants: list) -> list[tuple[int, Decimal]]:
    return [(g.index, g.shares) for g in grants]


def test_whole_devices_first_fit_and_freed() -> None:
    d = CudaDevices(gpus(3))
    assert idx(d.allocate("a", devices=Decimal(2))) == [(0, 4), (1, 4)]
    with pytest.raises(AllocationError, match="cuda.device"):
        d.allocate("b", devices=Decimal(2))
    assert idx(d.allocate("b", devices=Decimal(1))) == [(2, 4)]
    d.release("a")
    assert idx(d.allocate("c", devices=Decimal(1))) == [(0, 4)]


def test_shares_are_packed_best_fit_so_whole_devices_stay_free() -> None:
    d = CudaDevices(gpus(2))
    assert idx(d.allocate("a", shares=Decimal(1))) == [(0, 1)]
    assert idx(d.allocate("b", shares=Decimal(2))) == [(0, 2)]  # onto the fuller device
    assert idx(d.allocate("c", shares=Decimal(1))) == [(0, 1)]  # device 0 now full
    assert idx(d.allocate("w", devices=Decimal(1))) == [(1, 4)]  # device 1 stayed whole
    with pytest.raises(AllocationError, match="cuda.shares"):
        d.allocate("e", shares=Decimal(1))
    d.release("b")
    d.release("w")
    # best fit: device 0 (2 free) rather than the empty device 1
    assert idx(d.allocate("f", shares=Decimal("1.5"))) == [(0, Decimal("1.5"))]
    # best fit, not first fit: the device with the least room that takes it
    d1 = CudaDevices(gpus(2))
    d1.restore("p", [{"kind": "cuda", "index": "1", "uuid": "GPU-1", "shares": "3"}])
    assert idx(d1.allocate("q", shares=Decimal(1))) == [(1, 1)]
    assert idx(d1.allocate("r", shares=Decimal(1))) == [(0, 1)]
    # more than one device's worth: whole devices, then the rest best-fit
    d2 = CudaDevices(gpus(2))
    assert idx(d2.allocate("g", shares=Decimal(6))) == [(0, 4), (1, 2)]
    # a share never lands on a device held whole
    d3 = CudaDevices(gpus(1))
    d3.allocate("h", devices=Decimal(1))
    with pytest.raises(AllocationError):
        d3.allocate("i", shares=Decimal(1))


def test_restart_rebuilds_what_each_kernel_holds() -> None:
    d = CudaDevices(gpus(2))
    saved = [g.to_json() for g in d.allocate("a", shares=Decimal(2))]
    whole = [g.to_json() for g in d.allocate("b", devices=Decimal(1))]
    after = CudaDevices(gpus(2))  # the agent restarted: rebuilt from the kernels' specs
    after.restore("a", saved)
    after.restore("b", whole)
    assert after.used(0) == 2 and after.used(1) == 4
    with pytest.raises(AllocationError):
        after.allocate("c", devices=Decimal(1))
    assert idx(after.allocate("c", shares=Decimal(2))) == [(0, 2)]


def test_environment_and_device_nodes_of_a_share(tmp_path: Path) -> None:
    d = CudaDevices(gpus(2), mps_pipe_dir=str(tmp_path))
    whole = d.allocate("a", devices=Decimal(1))
    env = d.environ(whole)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0"
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in env
    assert d.nodes(whole)[0] == "/dev/nvidia0" and "/dev/nvidia1" not in d.nodes(whole)
    half = d.allocate("b", shares=Decimal(2))
    env = d.environ(half)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={70 * 1024}M"  # half of 140 GiB
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path)
    assert d.nodes(half)[0] == "/dev/nvidia1" and "/dev/nvidia0" not in d.nodes(half)


def test_sandbox_and_container_see_only_the_kernels_gpus(tmp_path: Path) -> None:
    node = tmp_path / "nvidia1"
    node.touch()  # stands for /dev/nvidia1
    spec = KernelSpec(kernel_id="k", session_id="s", session_name="n",
                      session_type="INTERACTIVE", image="python", slots={},
                      environ={"CUDA_VISIBLE_DEVICES": "GPU-1",
                               "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=100M",
                               "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)},
                      device_nodes=[str(node), str(tmp_path / "absent")])
    binds = gpu_binds(spec)
    assert binds[:2] == [str(node), str(tmp_path)]  # absent nodes are left out
    sb = Sandbox(bwrap="/usr/bin/bwrap", privileged=True)
    argv = sb.argv("/usr/bin/python3", tmp_path, None, devices=binds)
    i = argv.index("--dev-bind")
    assert argv[i:i + 3] == ["--dev-bind", str(node), str(node)]
    assert argv.index("--dev") < i and argv.index("--tmpfs") < i  # not hidden by /dev or /tmp
    assert "--dev-bind" not in sb.argv("/usr/bin/python3", tmp_path, None)
    site = ContainerSite("agent-1", Path("/src/bai/kernel"), 512)
    assert not poolable(spec)  # a standby has no GPU
    hc = site.kernel_config(spec, tmp_path / "work", 2_000_001, "none")["HostConfig"]
    assert [d["PathOnHost"] for d in hc["Devices"]] == [str(node), str(tmp_path / "absent")]
    assert f"{tmp_path}:{tmp_path}:rw" in hc["Binds"] and hc["IpcMode"] == "host"
    assert "DeviceRequests" not in hc  # no GPU UUID in the spec: nothing to ask the toolkit
    spec.accelerators = [{"kind": "cuda", "index": "1", "uuid": "GPU-1", "shares": "2"}]
    hc = site.kernel_config(spec, tmp_path / "work", 2_000_001, "none")["HostConfig"]
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-1"],
                                     "Capabilities": [["gpu"]]}]
    spec.device_nodes = []
    assert "Devices" not in site.kernel_config(spec, tmp_path / "w", 2_000_001, "none")[
        "HostConfig"]
