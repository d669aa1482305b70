"""The process backend on this host: cgroup limits, OOM kills, namespaces, clean teardown."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path

import psutil
import pytest

from bai.agent.backends.base import Instance, InstanceState, KernelSpec
from bai.agent.backends.cgroup import CgroupDriver
from bai.agent.backends.process import ProcessBackend
from bai.agent.settings import AgentSettings
from bai.testing.contract import run

needs_cgroups = pytest.mark.skipif(CgroupDriver.detect() is None,
                                   reason="no writable memory cgroup on this host")


def spec(mem: str = "256m", session_type: str = "INTERACTIVE", **kw) -> KernelSpec:
    from bai.common.resources import parse_size

    return KernelSpec(kernel_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()),
                      session_name="p", session_type=session_type, image="python",
                      slots={"cpu": Decimal(1), "mem": parse_size(mem)}, **kw)


@pytest.fixture
async def backend(tmp_path: Path):
    exits: list[Instance] = []

    async def on_exit(inst: Instance) -> None:
        exits.append(inst)

    b = ProcessBackend(AgentSettings.load(None, scratch_root=str(tmp_path), monitor_interval=0.1))
    await b.start(on_exit)
    b.exits = exits  # type: ignore[attr-defined]
    yield b
    for inst in await b.list():
        await b.destroy(inst.kernel_id)
    await b.stop()


@needs_cgroups
async def test_memory_limit_kills_and_reports_oom(backend: ProcessBackend) -> None:
    s = spec("64m")
    inst = await backend.create(s)
    cg = backend.cgroups.open(s.kernel_id)
    assert cg.memory_limit() == 64 * 2**20
    channel = await backend.open_channel(inst)
    try:
        _, _, code, _ = await run(channel, {
            "mode": "query", "code": "x = b'\\x01' * (512 * 1024 * 1024)\nprint('survived')"})
    finally:
        await channel.close()
    assert code == 137
    for _ in range(100):
        if backend.exits:
            break
        await asyncio.sleep(0.05)
    assert [(i.kernel_id, i.exit_reason, i.exit_code) for i in backend.exits] == \
        [(s.kernel_id, "oom-killed", 137)]
    await backend.destroy(s.kernel_id)
    assert not any(d.exists() for d in cg.dirs.values())


@needs_cgroups
async def test_cpu_and_pids_limits_are_set(backend: ProcessBackend) -> None:
    s = spec()
    s.slots["cpu"] = Decimal("0.5")
    await backend.create(s)
    dirs = backend.cgroups.open(s.kernel_id).dirs
    if "cpu" in dirs and backend.cgroups.version == "v1":
        assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    if "pids" in dirs:
        assert (dirs["pids"] / "pids.max").read_text().strip() == str(backend.settings.pids_limit)
    assert backend.isolation()["memory"] == "cgroup"


async def test_kernel_sees_its_own_processes_and_environment(backend: ProcessBackend) -> None:
    s = spec(environ={"FOO": "bar"})
    inst = await backend.create(s)
    channel = await backend.open_channel(inst)
    try:
        out, _, code, _ = await run(channel, {"mode": "query", "code": (
            "import os\nprint(os.environ['FOO'], os.environ['HOME'] == os.getcwd())\n"
            "print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)")})
    finally:
        await channel.close()
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "bar True"
    if backend.namespaces:  # a PID namespace shows only the kernel's few processes
        assert lines[1] == "True"


async def test_destroy_kills_background_processes(backend: ProcessBackend) -> None:
    s = spec()
    inst = await backend.create(s)
    channel = await backend.open_channel(inst)
    # a duration no other test uses tells this kernel's sleeper (the sandbox hides host paths)
    token = f"300.{uuid.uuid4().int % 10**9:09d}"
    try:
        await run(channel, {"mode": "query", "code": (
            f"import subprocess\np = subprocess.Popen(['sleep', '{token}'], "
            "start_new_session=True)")})
    finally:
        await channel.close()

    def sleepers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", token]]

    assert len(sleepers()) == 1  # escaped the runner's process group on purpose
    await backend.destroy(s.kernel_id)
    assert sleepers() == []
    if backend.cgroups is not None:
        assert not any(d.exists() for d in backend.cgroups.open(s.kernel_id).dirs.values())
    assert not inst.workdir.exists()


async def test_kernel_survives_a_backend_restart_and_dies_with_destroy(tmp_path: Path) -> None:
    settings = AgentSettings.load(None, scratch_root=str(tmp_path), monitor_interval=0.1)

    async def ignore(inst: Instance) -> None:
        pass

    first = ProcessBackend(settings)
    await first.start(ignore)
    s = spec()
    await first.create(s)
    await first.stop()
    del first  # like an agent that went away: the kernel's process is not its child any more

    second = ProcessBackend(settings)
    await second.start(ignore)
    [inst] = await second.list()
    assert inst.state == InstanceState.RUNNING
    gone = await second.destroy(s.kernel_id)
    assert gone is not None
    assert await second.list() == []
    await second.stop()


async def test_startup_commands_that_end_at_once_never_fail_creation(tmp_path: Path) -> None:
    # The exit watcher used to look at a kernel that create() had registered but not yet
    # started, saw no process, and settled it as dead: create() then failed with "the kernel
    # runner exited during start-up" (batch sessions ending ERROR at random). A watcher ticking
    # all the time and concurrent creations make that window wide.
    exits: list[Instance] = []

    async def on_exit(inst: Instance) -> None:
        exits.append(inst)

    b = ProcessBackend(AgentSettings.load(None, scratch_root=str(tmp_path), monitor_interval=0))
    await b.start(on_exit)
    try:
        specs = [spec(session_type="BATCH", startup_command="exit 0") for _ in range(8)]
        await asyncio.gather(*(b.create(s) for s in specs))
        ids = {s.kernel_id for s in specs}
        for _ in range(200):
            if ids <= {i.kernel_id for i in exits}:
                break
            await asyncio.sleep(0.05)
        assert sorted((i.exit_code, i.exit_reason) for i in exits if i.kernel_id in ids) == \
            [(0, "self-terminated")] * len(specs)
    finally:
        for inst in await b.list():
            await b.destroy(inst.kernel_id)
        await b.stop()


async def test_without_bwrap_kernels_still_run_and_the_gaps_are_reported(tmp_path: Path) -> None:
    async def ignore(inst: Instance) -> None:
        pass

    b = ProcessBackend(AgentSettings.load(None, scratch_root=str(tmp_path), monitor_interval=0.1,
                                          bwrap_path="/nonexistent/bwrap"))
    await b.start(ignore)
    try:
        gaps = b.isolation()["gaps"]
        assert gaps[0].startswith("sandbox:") and "/nonexistent/bwrap" in gaps[0]
        inst = await b.create(spec())
        channel = await b.open_channel(inst)
        try:
            out, _, code, _ = await run(channel, {"mode": "query", "code": "print(6 * 7)"})
        finally:
            await channel.close()
        assert (out, code) == ("42\n", 0)
    finally:
        for inst in await b.list():
            await b.destroy(inst.kernel_id)
        await b.stop()


async def test_destroy_answers_before_the_folder_is_removed(backend: ProcessBackend,
                                                            monkeypatch) -> None:
    """The folder leaves the kernel's place at once; unmounting and removing it, and then
    releasing the kernel's uid, happen after destroy answered (and a restart finishes them)."""
    import threading

    from bai.agent.backends import process

    gate = threading.Event()
    real = process.remove_folder

    def slow_remove(folder: Path) -> None:
        gate.wait(60)
        real(folder)

    s = spec()
    inst = await backend.create(s)
    uid = inst.labels.get("bai.uid")
    monkeypatch.setattr(process, "remove_folder", slow_remove)
    answer = await backend.destroy(s.kernel_id)
    assert answer is not None and answer.state == InstanceState.EXITED
    assert not inst.workdir.exists()
    assert [i.kernel_id for i in await backend.list()] == []
    with pytest.raises(Exception, match="no kernel"):
        await backend.inspect(s.kernel_id)
    assert await backend.destroy(s.kernel_id) is None  # idempotent meanwhile
    trash = backend.root / process.TRASH_DIR
    assert [f.name for f in trash.iterdir()] == [s.kernel_id]
    if uid and backend.uids is not None:
        assert int(uid) in backend.uids.held()  # not handed out while its files remain
    gate.set()
    def held() -> bool:
        return bool(uid) and backend.uids is not None and int(uid) in backend.uids.held()

    for _ in range(600):  # the uid is released right after the files go: wait for both
        if not any(trash.iterdir()) and not held():
            break
        await asyncio.sleep(0.05)
    assert not any(trash.iterdir())
    assert not held()
    # what a stopped agent left in the trash is removed by the next one before it starts
    leftover = trash / "left-behind"
    (leftover / "work").mkdir(parents=True)
    await backend.stop()
    again = ProcessBackend(backend.settings)
    await again.start(backend._on_exit)
    try:
        assert not leftover.exists()
    finally:
        await again.stop()
