"""The docker runtime backend against a real engine (``BAI_TEST_DOCKER_HOST``).

CI starts one with ``scripts/docker-engine.sh start`` and builds the image with
``scripts/build-images.sh``; without them these tests skip and say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
import uuid
from decimal import Decimal
from pathlib import Path

import aiodocker
import pytest

from bai.agent.backends.base import (
    Instance,
    InstanceState,
    KernelCreationFailed,
    KernelSpec,
)
from bai.agent.backends.docker import DockerBackend
from bai.agent.backends.process_pool import proc_start_time
from bai.agent.runner_channel import connect_runner
from bai.common.errors import KernelNotFound
from bai.testing.contract import run as run_channel
from bai.testing.docker import docker_host_or_skip, test_image

pytestmark = pytest.mark.docker

MiB = 2**20

#: code that sets mem, cpu (quota, period) and pids from the kernel's cgroup files (v1 or v2)
READ_LIMITS = (
    "import os\n"
    "def rd(p):\n"
    "    try: return open(p).read().split()\n"
    "    except OSError: return None\n"
    "mem = rd('/sys/fs/cgroup/memory/memory.limit_in_bytes') or rd('/sys/fs/cgroup/memory.max')\n"
    "q = rd('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')\n"
    "cpu = (q + rd('/sys/fs/cgroup/cpu/cpu.cfs_period_us')) if q else rd('/sys/fs/cgroup/cpu.max')\n"
    "pids = rd('/sys/fs/cgroup/pids/pids.max') or rd('/sys/fs/cgroup/pids.max')\n"
)


@pytest.fixture
async def engine() -> str:
    return await docker_host_or_skip()


async def started_backend(engine: str, scratch: Path, **kw) -> DockerBackend:
    """A started backend of a fresh agent id whose ``exits`` lists the exits it reported."""
    exits: list[Instance] = []
    b = DockerBackend(scratch_root=scratch, agent_id=f"test-{uuid.uuid4().hex[:10]}",
                      docker_host=engine, rescan_interval=0.5, pull_timeout=10, **kw)

    async def on_exit(inst: Instance) -> None:
        exits.append(inst)

    await b.start(on_exit)
    b.exits = exits  # type: ignore[attr-defined]
    return b


async def finish(b: DockerBackend) -> None:
    for inst in await b.list():
        await b.destroy(inst.kernel_id)
    await b.stop()


@pytest.fixture
async def backend(engine: str, tmp_path: Path):
    b = await started_backend(engine, tmp_path / "scratch")
    yield b
    await finish(b)


def make_spec(**kw) -> KernelSpec:
    base = {
        "kernel_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "session_name": "dk-" + uuid.uuid4().hex[:6],
        "session_type": "INTERACTIVE",
        "image": test_image(),
        "slots": {"cpu": Decimal(1), "mem": Decimal(256 * MiB)},
    }
    base.update(kw)
    return KernelSpec(**base)


async def run(inst: Instance, code: str) -> tuple[str, str, int | None]:
    """Execute query-mode code through the runner socket: (stdout, stderr, exit code)."""
    chan = await connect_runner(inst.runner_socket)
    try:
        out, err, code_, _ = await asyncio.wait_for(
            run_channel(chan, {"mode": "query", "code": code, "options": {}}), 60)
        return out, err, code_
    finally:
        await chan.close()


async def engine_containers(engine: str, kernel_id: str) -> list:
    async with aiodocker.Docker(url=engine) as d:
        filters = json.dumps({"label": [f"ai.bai.kernel_id={kernel_id}"]})
        return await d.containers.list(all=True, filters=filters)


async def eventually(probe, expected, timeout: float = 20.0) -> None:
    """Until ``await probe()`` equals ``expected``."""
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, not {expected!r}"
        await asyncio.sleep(0.05)


async def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_hello_world_runs_in_its_own_container(backend: DockerBackend, engine: str):
    spec = make_spec()
    assert await backend.ensure_image(spec) is False
    inst = await backend.create(spec)
    assert inst.state is InstanceState.RUNNING and inst.container_id
    out, err, code = await run(
        inst,
        "import socket; print('hello world'); print(socket.gethostname()); "
        "print(open('/proc/1/cmdline').read().replace('\\0', ' '))",
    )
    assert code == 0, err
    hello, hostname, pid1 = out.splitlines()[:3]
    assert hello == "hello world"
    assert hostname == spec.session_name and hostname != socket.gethostname()
    assert "bai.kernel" in pid1  # PID 1 is the runner, not the host's init

    gone = await backend.destroy(spec.kernel_id)
    assert gone is not None and gone.kernel_id == spec.kernel_id
    # the kernel is dead when destroy answers; the engine finishes removing its container after
    await eventually(lambda: engine_containers(engine, spec.kernel_id), [])
    assert not inst.workdir.exists()
    assert await backend.destroy(spec.kernel_id) is None  # idempotent
    with pytest.raises(KernelNotFound):
        await backend.inspect(spec.kernel_id)


async def test_limits_memory_cpu_pids_and_no_network(backend: DockerBackend):
    inst = await backend.create(make_spec())
    out, err, code = await run(
        inst,
        READ_LIMITS + "nics = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
        "print(mem[0], int(cpu[0]) / int(cpu[1]), pids[0], ','.join(nics))\n",
    )
    assert code == 0, err
    mem, cores, pids, nics = out.split()
    assert int(mem) == 256 * MiB
    assert float(cores) == 1.0
    assert int(pids) == backend.pids_limit
    assert nics == "lo"
    stats = await backend.stats(inst.kernel_id)
    assert stats["mem_limit_bytes"] == 256 * MiB
    if backend.isolation()["engine"] == "docker":  # Podman 4.3 on cgroup v1 reports zeros here
        assert stats["mem_cur_bytes"] > 0 and stats["cpu_used"] > 0


async def reason_before_engine_oom(backend: DockerBackend, kernel_id: str) -> str:
    """The exit reason of an exited kernel as the agent sees it while the engine's record says
    no OOM: the engine handles its OOM event apart from the exit, ``OOMKilled`` may come after
    the ``die`` event."""
    info = (await backend._find(kernel_id))._container
    info["State"]["OOMKilled"] = False
    return backend._instance(info).exit_reason


async def test_allocating_beyond_memory_is_reported_as_oom_killed(backend: DockerBackend):
    if backend.isolation()["engine"] != "docker":
        pytest.skip("Podman sets OOMKilled only when the container's main process is OOM-killed")
    inst = await backend.create(make_spec(slots={"cpu": Decimal(1), "mem": Decimal(128 * MiB)}))
    out, _, code = await run(inst, "x = bytearray(400 * 2**20); print('survived')")
    assert "survived" not in out and code != 0
    await wait_for(lambda: any(e.kernel_id == inst.kernel_id for e in backend.exits))
    (seen,) = [e for e in backend.exits if e.kernel_id == inst.kernel_id]
    assert seen.exit_reason == "oom-killed" and seen.state is InstanceState.EXITED
    assert (await backend.inspect(inst.kernel_id)).exit_reason == "oom-killed"
    assert await reason_before_engine_oom(backend, inst.kernel_id) == "oom-killed"


async def test_destroying_a_kernel_that_ran_out_of_memory_inside_says_so(backend: DockerBackend):
    # a child process is OOM-killed, the kernel lives on; destroyed right after, the kernel
    # still ends as oom-killed (whatever the engine has recorded by then)
    inst = await backend.create(make_spec(slots={"cpu": Decimal(1), "mem": Decimal(128 * MiB)}))
    out, err, code = await run(
        inst, "import subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', 'x = bytearray(400 * 2**20)'])\n"
        "print(r.returncode)\n")
    assert code == 0 and out.strip() == "-9", err
    assert (await backend.inspect(inst.kernel_id)).state is InstanceState.RUNNING
    gone = await backend.destroy(inst.kernel_id)
    assert gone is not None and (gone.exit_reason, gone.exit_code) == ("oom-killed", 137)


async def test_create_is_idempotent_and_workdir_is_home_work(backend: DockerBackend):
    spec = make_spec()
    a, b = await asyncio.gather(backend.create(spec), backend.create(spec))
    assert a.container_id == b.container_id
    (a.workdir / "data.txt").write_text("uploaded\n")
    out, err, code = await run(a, "import os; print(os.getcwd()); print(open('data.txt').read())")
    assert code == 0, err
    assert out.split() == ["/home/work", "uploaded"]
    assert [i.kernel_id for i in await backend.list()] == [spec.kernel_id]


async def test_a_fresh_backend_finds_running_kernels_by_labels(backend: DockerBackend, engine: str):
    spec = make_spec()
    inst = await backend.create(spec)
    await run(inst, "x = 42")
    other = DockerBackend(scratch_root=backend.scratch_root, agent_id=backend.agent_id, docker_host=engine)
    stranger = DockerBackend(scratch_root=backend.scratch_root, agent_id="someone-else", docker_host=engine)
    await other.connect()
    await stranger.connect()
    try:
        (found,) = await other.list()
        assert found.kernel_id == spec.kernel_id and found.session_id == spec.session_id
        assert found.state is InstanceState.RUNNING and found.runner_socket == inst.runner_socket
        assert json.loads(found.labels["bai.spec"])["slots"] == {"cpu": "1", "mem": str(256 * MiB)}
        out, _, _ = await run(found, "print(x)")
        assert out.strip() == "42"
        assert spec.kernel_id not in [i.kernel_id for i in await stranger.list()]
        assert await stranger.destroy(spec.kernel_id) is None
        assert (await backend.inspect(spec.kernel_id)).state is InstanceState.RUNNING
    finally:
        await other.stop()
        await stranger.stop()


async def test_self_exit_is_reported_once(backend: DockerBackend):
    inst = await backend.create(make_spec())
    chan = await connect_runner(inst.runner_socket)
    await chan.send({"op": "shutdown"})
    await chan.close()
    await wait_for(lambda: any(e.kernel_id == inst.kernel_id for e in backend.exits))
    await asyncio.sleep(1.2)  # a rescan happened meanwhile: still reported once
    seen = [e for e in backend.exits if e.kernel_id == inst.kernel_id]
    assert len(seen) == 1 and seen[0].exit_code == 0
    assert seen[0].exit_reason != "oom-killed"


async def test_destroyed_kernels_are_not_reported_as_exits(backend: DockerBackend):
    inst = await backend.create(make_spec())
    gone = await backend.destroy(inst.kernel_id)
    assert gone is not None and gone.exit_reason == "killed"
    await asyncio.sleep(1.2)
    assert all(e.kernel_id != inst.kernel_id for e in backend.exits)


async def test_destroy_answers_once_the_kernel_is_dead_and_the_engine_removes_it_after(
        backend: DockerBackend, engine: str, tmp_path: Path):
    spec = make_spec()
    inst = await backend.create(spec)
    async with aiodocker.Docker(url=engine) as d:
        pid = (await d.containers.get(backend.container_name(spec.kernel_id)))["State"]["Pid"]
    assert proc_start_time(pid) is not None
    gone = await backend.destroy(spec.kernel_id)
    assert gone is not None and gone.exit_reason == "killed"
    assert proc_start_time(pid) is None  # killed (at most not reaped yet)
    assert spec.kernel_id not in [i.kernel_id for i in await backend.list()]
    with pytest.raises(KernelNotFound):
        await backend.inspect(spec.kernel_id)
    assert await backend.destroy(spec.kernel_id) is None and not inst.workdir.exists()
    # the same id again at once: the new kernel waits for the old container to be gone
    again = await backend.create(spec)
    out, _, _ = await run(again, "print('again')")
    assert out.strip() == "again" and again.container_id != inst.container_id
    # a backend that stops leaves no container of a destroyed kernel behind
    await backend.destroy(spec.kernel_id)
    await backend.stop()
    assert await engine_containers(engine, spec.kernel_id) == []
    await backend.start(backend._on_exit)  # for the fixture's clean-up


async def test_absent_image_fails_quickly_with_a_reason(backend: DockerBackend):
    spec = make_spec(image=f"bai-test/absent-{uuid.uuid4().hex[:8]}:1.0")
    with pytest.raises(KernelCreationFailed) as e:
        await backend.ensure_image(spec)
    assert f"image {spec.image} is not present on this agent and cannot be pulled" in str(e.value)
    with pytest.raises(KernelCreationFailed):
        await backend.create(spec)
    assert not (backend.scratch_root / spec.kernel_id).exists()


async def test_each_kernel_runs_as_a_uid_of_its_own_given_back_when_it_goes(
        backend: DockerBackend, engine: str):
    a, b = await asyncio.gather(backend.create(make_spec()), backend.create(make_spec()))
    ua, ub = a.workdir.stat().st_uid, b.workdir.stat().st_uid
    assert 0 not in (ua, ub) and ua != ub
    for inst, uid in ((a, ua), (b, ub)):
        out, err, _ = await run(inst, "import os; print(os.getresuid())")
        assert out.strip() == str((uid, uid, uid)), err
    assert {ua, ub} <= set(backend.uids.held())
    await backend.destroy(a.kernel_id)
    assert ua not in backend.uids.held() and ub in backend.uids.held()
    # a kernel whose container went away behind the agent's back: its uid comes back all the same
    async with aiodocker.Docker(url=engine) as d:
        await d.containers.container(b.container_id).delete(force=True)
    assert await backend.destroy(b.kernel_id) is None
    assert ub not in backend.uids.held() and not b.workdir.parent.exists()


async def test_a_restarted_agent_holds_its_running_kernels_uids(backend: DockerBackend,
                                                                engine: str):
    inst = await backend.create(make_spec())
    uid = inst.workdir.stat().st_uid
    backend.uids.close()  # as if the agent died: its locks went with it
    again = DockerBackend(scratch_root=backend.scratch_root, agent_id=backend.agent_id,
                          docker_host=engine, pool_size=0)
    await again.start(lambda inst: asyncio.sleep(0))
    try:
        assert uid in again.uids.held()  # never handed to a new kernel while this one runs
        out, _, _ = await run(inst, "import os; print(os.getuid())")
        assert int(out) == uid
        await again.destroy(inst.kernel_id)
        assert uid not in again.uids.held()
    finally:
        await again.stop()


async def test_no_free_uid_refuses_the_kernel_and_leaves_nothing(engine: str, tmp_path: Path):
    from bai.agent.sandbox_uids import SandboxUids

    uids = SandboxUids(2_100_000 + uuid.uuid4().int % 100_000, 1, tmp_path / "uids")
    b = await started_backend(engine, tmp_path / "scratch", pool_size=0, uids=uids)
    try:
        first = await b.create(make_spec())
        spec = make_spec()
        with pytest.raises(KernelCreationFailed, match="no uid"):
            await b.create(spec)
        assert not (b.scratch_root / spec.kernel_id).exists()
        assert await engine_containers(engine, spec.kernel_id) == []
        await b.destroy(first.kernel_id)
        again = await b.create(spec)  # the one uid is free again
        out, _, _ = await run(again, "import os; print(os.getuid())")
        assert int(out) == uids.first
    finally:
        await finish(b)


needs_outbound = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("slirp4netns", "nsenter", "ip")),
    reason="outbound network needs root, slirp4netns, nsenter and ip (scripts/install.sh)")


@needs_outbound
async def test_an_outbound_kernel_has_its_network_before_its_bootstrap_and_loses_it_at_destroy(
        backend: DockerBackend):
    """A kernel whose policy allows outbound network (the spec's ``network``): slirp4netns's
    tap0 and the blocking routes are there when its bootstrap script, the first of its code,
    runs; its slirp4netns ends with the kernel."""
    assert backend.isolation()["outbound"] == "slirp4netns"
    spec = make_spec(network=True, bootstrap_script="cat /proc/net/dev /proc/net/route > net.txt")
    inst = await backend.create(spec)
    home = inst.workdir.parent
    seen = ""
    deadline = time.monotonic() + 60
    while "tap0" not in seen and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = (inst.workdir / "net.txt").read_text() if (inst.workdir / "net.txt").exists() \
            else ""
    assert "tap0" in seen, seen  # the bootstrap saw the network: set up before it ran
    out, _, _ = await run(inst, "print(open('/proc/net/dev').read(), "
                                "open('/etc/resolv.conf').read())")
    assert "tap0" in out and "nameserver 10.0.2.3" in out, out  # slirp4netns's DNS
    pid, start = (home / "slirp.pid").read_text().split()
    assert proc_start_time(int(pid)) == start
    await backend.destroy(spec.kernel_id)
    assert proc_start_time(int(pid)) != start


@needs_outbound
async def test_an_outbound_kernel_whose_network_cannot_be_set_up_fails_and_leaves_nothing(
        backend: DockerBackend):
    assert backend.outbound is not None
    backend.outbound = {**backend.outbound, "ip": "/bin/false"}  # the blocking routes fail
    spec = make_spec(network=True)
    with pytest.raises(KernelCreationFailed, match="outbound network could not be set up"):
        await backend.create(spec)
    with pytest.raises(KernelNotFound):
        await backend.inspect(spec.kernel_id)
    assert not backend.workdir_of(spec.kernel_id).parent.exists()
