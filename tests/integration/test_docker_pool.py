"""Standby containers of the docker backend (``docker_pool.py``) against a real engine
(``BAI_TEST_DOCKER_HOST``): a kernel that takes over a standby must be indistinguishable from one
whose container was created for it -- name, hostname, environment, limits, labels after a restart,
OOM reporting -- and standbys must never outlive the backend that made them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import aiodocker
import pytest
from test_docker_backend import (
    READ_LIMITS,
    MiB,
    finish,
    make_spec,
    needs_outbound,
    reason_before_engine_oom,
    run,
    started_backend,
    wait_for,
)

from bai.agent.backends.base import Instance, InstanceState, KernelCreationFailed
from bai.agent.backends.process_pool import proc_start_time
from bai.agent.backends.docker import INTERRUPTED, L_POOL, DockerBackend
from bai.agent.backends.docker_spec import run_dir_of
from bai.agent.runner_channel import ping_runner
from bai.testing.docker import docker_host_or_skip, test_image

pytestmark = pytest.mark.docker

PROBE = READ_LIMITS + (
    "import json, socket\n"
    "import sys\n"
    "print(json.dumps({'env': dict(os.environ), 'hostname': socket.gethostname(),\n"
    "  'sys_path': sys.path,\n"
    "  'etc_hostname': open('/etc/hostname').read().strip(), 'cwd': os.getcwd(),\n"
    "  'mem': int(mem[0]), 'cores': int(cpu[0]) / int(cpu[1]), 'pids': int(pids[0]),\n"
    "  'uid': os.getresuid(), 'caps': open('/proc/self/status').read().split('CapEff:')[1].split()[0]}))\n"
)


@pytest.fixture
async def engine() -> str:
    return await docker_host_or_skip()


def new_backend(engine: str, scratch: Path, agent_id: str, pool_size: int = 1) -> DockerBackend:
    return DockerBackend(scratch_root=scratch, agent_id=agent_id, docker_host=engine,
                         rescan_interval=0.5, pool_size=pool_size)


@pytest.fixture
async def backend(engine: str, tmp_path: Path):
    b = await started_backend(engine, tmp_path / "scratch", pool_size=1)
    yield b
    await finish(b)


async def standbys(engine: str, agent_id: str) -> list[dict]:
    """The engine's standby containers of ``agent_id``, unclaimed or claimed."""
    async with aiodocker.Docker(url=engine) as d:
        filters = json.dumps({"label": [f"ai.bai.agent_id={agent_id}", L_POOL]})
        return [c._container for c in await d.containers.list(all=True, filters=filters)]


async def container_of(engine: str, kernel_id: str) -> dict | None:
    async with aiodocker.Docker(url=engine) as d:
        try:
            return (await d.containers.get(f"bai-kernel-{kernel_id}"))._container
        except aiodocker.exceptions.DockerError:
            return None


async def pool_ready(backend: DockerBackend, n: int = 1) -> None:
    await wait_for(lambda: len(backend.pool.ready.get(test_image(), [])) >= n, timeout=30)


async def probe(inst: Instance) -> dict:
    out, err, code = await run(inst, PROBE)
    assert code == 0, err
    return json.loads(out)


async def test_a_claimed_kernel_is_like_a_created_one(backend: DockerBackend, engine: str):
    cold_spec = make_spec(environ={"FOO": "cold", "PYTHONPATH": "/home/work/lib"})
    cold = await backend.create(cold_spec)
    assert L_POOL not in cold.labels  # nothing was ready: created as before
    await pool_ready(backend)

    spec = make_spec(environ={"FOO": "warm", "PYTHONPATH": "/home/work/lib"})
    inst = await backend.create(spec)
    info = await container_of(engine, spec.kernel_id)
    assert info is not None and info["Config"]["Labels"].get(L_POOL) == spec.image  # a standby
    assert inst.state is InstanceState.RUNNING
    assert inst.workdir == backend.scratch_root / spec.kernel_id / "work"
    a, b = await probe(cold), await probe(inst)

    assert b["hostname"] == b["etc_hostname"] == spec.session_name
    assert b["cwd"] == "/home/work"
    # the runner is PID 1 in both
    assert (await ping_runner(inst.runner_socket))["pid"] == 1
    assert (await ping_runner(cold.runner_socket))["pid"] == 1
    # its own uid (not root), no capability, the runner's files where a created one has them
    assert 0 not in a["uid"] + b["uid"] and a["uid"] != b["uid"]
    assert int(a["caps"], 16) == int(b["caps"], 16) == 0
    assert sorted(os.listdir(run_dir_of(inst.workdir))) == sorted(
        os.listdir(run_dir_of(cold.workdir)))
    assert (b["mem"], b["cores"], b["pids"]) == (256 * MiB, 1.0, backend.pids_limit)
    assert b["env"]["FOO"] == "warm" and b["env"]["BACKENDAI_KERNEL_ID"] == spec.kernel_id
    assert b["env"]["BACKENDAI_SESSION_NAME"] == spec.session_name
    assert b["env"]["HOSTNAME"] == spec.session_name
    assert a["env"]["PYTHONPATH"] == b["env"]["PYTHONPATH"] == "/home/work/lib"
    assert "/home/work/lib" in a["sys_path"] and "/home/work/lib" in b["sys_path"]
    per_kernel = {"FOO", "HOSTNAME", "BACKENDAI_KERNEL_ID", "BACKENDAI_SESSION_ID",
                  "BACKENDAI_SESSION_NAME"}
    assert {k: v for k, v in b["env"].items() if k not in per_kernel} == \
        {k: v for k, v in a["env"].items() if k not in per_kernel}

    # the agent's view: labels as a created container's, a work dir the kernel sees
    assert json.loads(inst.labels["bai.spec"])["environ"] == {
        "FOO": "warm", "PYTHONPATH": "/home/work/lib"}
    assert inst.labels["ai.bai.kernel_id"] == spec.kernel_id
    assert inst.labels["ai.bai.session_id"] == spec.session_id
    (inst.workdir / "data.txt").write_text("uploaded\n")
    out, _, _ = await run(inst, "print(open('data.txt').read())")
    assert out.strip() == "uploaded"
    assert [i.kernel_id for i in await backend.list()].count(spec.kernel_id) == 1


async def test_a_claim_applies_the_requested_limits(backend: DockerBackend):
    await backend.create(make_spec())  # standbys follow this shape: 1 core, 256 MiB
    await pool_ready(backend)
    spec = make_spec(slots={"cpu": Decimal("0.5"), "mem": Decimal(160 * MiB)})
    inst = await backend.create(spec)
    assert L_POOL in inst.labels
    got = await probe(inst)
    assert (got["mem"], got["cores"], got["pids"]) == (160 * MiB, 0.5, backend.pids_limit)
    assert (await backend.stats(spec.kernel_id))["mem_limit_bytes"] == 160 * MiB


async def test_oom_in_a_claimed_kernel_is_reported(backend: DockerBackend):
    if backend.isolation()["engine"] != "docker":
        pytest.skip("Podman sets OOMKilled only when the container's main process is OOM-killed")
    await backend.create(make_spec())
    await pool_ready(backend)
    inst = await backend.create(make_spec(slots={"cpu": Decimal(1), "mem": Decimal(128 * MiB)}))
    assert L_POOL in inst.labels
    out, _, code = await run(inst, "x = bytearray(400 * 2**20); print('survived')")
    assert "survived" not in out and code != 0
    await wait_for(lambda: any(e.kernel_id == inst.kernel_id for e in backend.exits))
    (seen,) = [e for e in backend.exits if e.kernel_id == inst.kernel_id]
    assert seen.exit_reason == "oom-killed" and seen.state is InstanceState.EXITED
    assert await reason_before_engine_oom(backend, inst.kernel_id) == "oom-killed"
    gone = await backend.destroy(inst.kernel_id)
    assert gone is not None and gone.exit_reason == "oom-killed"


async def test_a_restarted_backend_knows_claimed_kernels(backend: DockerBackend, engine: str):
    await backend.create(make_spec())
    await pool_ready(backend)
    spec = make_spec()
    inst = await backend.create(spec)
    assert L_POOL in inst.labels
    await run(inst, "x = 42")
    other = new_backend(engine, backend.scratch_root, backend.agent_id, pool_size=0)
    await other.connect()
    try:
        found = {i.kernel_id: i for i in await other.list()}[spec.kernel_id]
        assert found.state is InstanceState.RUNNING and found.runner_socket == inst.runner_socket
        assert found.session_id == spec.session_id
        assert json.loads(found.labels["bai.spec"])["slots"] == {"cpu": "1", "mem": str(256 * MiB)}
        out, _, _ = await run(found, "print(x)")
        assert out.strip() == "42"
        gone = await other.destroy(spec.kernel_id)
        assert gone is not None and gone.exit_reason == "killed"
    finally:
        await other.stop()
    assert await container_of(engine, spec.kernel_id) is None
    assert not inst.workdir.exists()
    assert not (backend.scratch_root / ".claims" / f"{spec.kernel_id}.json").exists()


async def test_standbys_are_not_kernels_and_go_with_the_backend(engine: str, tmp_path: Path):
    agent_id = f"pool-{uuid.uuid4().hex[:10]}"
    scratch = tmp_path / "scratch"
    first = new_backend(engine, scratch, agent_id)

    async def ignore(inst: Instance) -> None:
        pass

    await first.start(ignore)
    kernel = await first.create(make_spec())
    await pool_ready(first)
    (left,) = [c for c in await standbys(engine, agent_id) if c["Names"][0].startswith("/bai-standby-")]
    assert [i.kernel_id for i in await first.list()] == [kernel.kernel_id]

    # an agent killed without stopping leaves its standbys; the next start removes them
    second = new_backend(engine, scratch, agent_id, pool_size=0)
    await second.start(ignore)
    try:
        assert await standbys(engine, agent_id) == []
        assert list((scratch / ".pool").iterdir()) == []
        assert [i.kernel_id for i in await second.list()] == [kernel.kernel_id]
        await second.destroy(kernel.kernel_id)
    finally:
        await second.stop()
    first.pool.discard(left["Id"])  # the engine's die event may not have reached it yet

    # a stopped backend leaves none
    third = new_backend(engine, scratch, agent_id)
    await third.start(ignore)
    await third.create(make_spec())
    await pool_ready(third)
    assert len(await standbys(engine, agent_id)) == 1
    await third.stop()
    assert await standbys(engine, agent_id) == []
    assert list((scratch / ".pool").iterdir()) == []
    for inst in await first.list():
        await first.destroy(inst.kernel_id)
    await first.stop()


async def test_a_standby_that_died_is_not_claimed(backend: DockerBackend, engine: str):
    await backend.create(make_spec())
    await pool_ready(backend)
    (entry,) = backend.pool.ready[test_image()]
    async with aiodocker.Docker(url=engine) as d:
        await d.containers.container(entry.container_id).kill(signal="SIGKILL")
    await wait_for(lambda: entry not in backend.pool.ready.get(test_image(), []))
    spec = make_spec()
    inst = await backend.create(spec)
    assert L_POOL not in inst.labels  # created, not claimed
    out, _, _ = await run(inst, "print('ok')")
    assert out.strip() == "ok"


async def test_kernels_a_started_interpreter_cannot_become_are_created(backend: DockerBackend):
    await backend.create(make_spec())
    await pool_ready(backend)
    fixed_seed = await backend.create(make_spec(environ={"PYTHONHASHSEED": "0", "LANG": "C"}))
    assert L_POOL not in fixed_seed.labels
    out, _, _ = await run(fixed_seed, "import os, sys; print(sys.flags.hash_randomization, "
                                      "os.environ['LANG'])")
    assert out.split() == ["0", "C"]  # honoured: only a fresh interpreter can
    assert len(backend.pool.ready[test_image()]) == 1


@needs_outbound
async def test_an_outbound_kernel_takes_a_standby_with_its_network_before_its_bootstrap(
        backend: DockerBackend, engine: str):
    """A kernel whose policy allows outbound network takes a standby (its runner is held back
    as a made outbound container's is): tap0, the blocking routes and slirp's DNS are there
    when its bootstrap, the first of its code, runs; its slirp4netns ends with it."""
    await backend.create(make_spec())
    await pool_ready(backend)
    spec = make_spec(network=True,
                     bootstrap_script="cat /proc/net/dev /proc/net/route > net.txt")
    inst = await backend.create(spec)
    info = await container_of(engine, spec.kernel_id)
    assert info is not None and info["Config"]["Labels"].get(L_POOL) == spec.image  # a standby
    assert info["HostConfig"]["NetworkMode"] == "none"
    await wait_for(lambda: "tap0" in ((inst.workdir / "net.txt").read_text()
                                      if (inst.workdir / "net.txt").exists() else ""),
                   timeout=60)  # the bootstrap saw the network: set up before it ran
    routes = (inst.workdir / "net.txt").read_text()
    out, _, _ = await run(inst, "print(open('/etc/resolv.conf').read())")
    assert "nameserver 10.0.2.3" in out, out
    home = inst.workdir.parent
    pid, start = (home / "slirp.pid").read_text().split()
    assert proc_start_time(int(pid)) == start
    # the same blocking routes as a made outbound container's (outbound.attach): unreachable
    # entries beside tap0's default route
    assert "tap0" in routes and routes.count("\n") > 3, routes
    await backend.destroy(spec.kernel_id)
    assert proc_start_time(int(pid)) != start
    assert not home.exists()


@needs_outbound
async def test_an_outbound_standby_whose_network_fails_is_removed_and_the_kernel_fails(
        backend: DockerBackend, engine: str):
    await backend.create(make_spec())
    await pool_ready(backend)
    (entry,) = backend.pool.ready[test_image()]
    assert backend.outbound is not None
    backend.outbound = {**backend.outbound, "ip": "/bin/false"}  # the blocking routes fail
    spec = make_spec(network=True)
    with pytest.raises(KernelCreationFailed, match="outbound network could not be set up"):
        await backend.create(spec)
    assert await container_of(engine, spec.kernel_id) is None
    assert entry.name not in [c["Names"][0].lstrip("/") for c in await standbys(
        engine, backend.agent_id)]
    assert not backend.workdir_of(spec.kernel_id).parent.exists()


# -- an agent that dies between a held-back runner's start and its claim ------------------------

DIES = r'''
import asyncio, json, os, sys, types
from bai.agent.backends import docker_pool
from bai.agent.backends.base import KernelSpec
from bai.agent.backends.docker import DockerBackend

where, engine, scratch, agent_id, spec, warm = sys.argv[1:7]


def die(*args, **kwargs):
    os._exit(17)  # the agent dies here: no clean-up of any kind


async def dying(*args, **kwargs):
    die()


async def main():
    b = DockerBackend(scratch_root=scratch, agent_id=agent_id, docker_host=engine,
                      pool_size=0 if where == "outbound-start" else 1)

    async def ignore(inst):
        pass

    await b.start(ignore)
    if where == "outbound-start":  # a container made for an outbound kernel, runner held back
        b.outbound = b.outbound or {}  # gated even where slirp4netns is absent: it dies first
        b._give_outbound = dying
    else:
        warm_spec = KernelSpec.from_json(json.loads(warm))
        await b.create(warm_spec)
        while not b.pool.ready.get(warm_spec.image):
            await asyncio.sleep(0.05)
        if where == "claim-send":  # renamed to the kernel's, its runner not yet claimed
            docker_pool.send_claim = dying
        else:  # "claim-rename": the folder is the kernel's, the container still a standby's
            docker_pool.statefiles = types.SimpleNamespace(write_text=die)
    await b.create(KernelSpec.from_json(json.loads(spec)))
    os._exit(0)


asyncio.run(main())
'''


@pytest.mark.parametrize("where", ["outbound-start", "claim-send", "claim-rename"])
async def test_an_agent_that_dies_before_a_held_back_runner_is_claimed(
        engine: str, tmp_path: Path, where: str):
    """The agent process dies after a container whose runner waits for its claim was started
    (an outbound kernel's made container, a standby being claimed) and before the claim: the
    next agent never adopts it as running; it ends it with a reason (recovery reports that)
    and removes it; a standby claimed halfway leaves no folder behind."""
    agent_id = f"dies-{uuid.uuid4().hex[:10]}"
    scratch = tmp_path / "scratch"
    spec = make_spec(network=where == "outbound-start")
    warm = make_spec()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DIES, where, engine, str(scratch), agent_id,
        json.dumps(spec.to_json()), json.dumps(warm.to_json()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 17, out.decode()
    if where != "claim-rename":
        info = await container_of(engine, spec.kernel_id)
        assert info is not None and info["State"]["Running"]  # what the dead agent left
        assert "--pooled" in info["Config"]["Cmd"]

    exits: list[Instance] = []

    async def on_exit(inst: Instance) -> None:
        exits.append(inst)

    after = new_backend(engine, scratch, agent_id, pool_size=0)
    await after.start(on_exit)
    try:
        found = {i.kernel_id: i for i in await after.list()}
        if where == "claim-rename":
            assert spec.kernel_id not in found
            assert not (scratch / spec.kernel_id).exists()
        else:
            inst = found[spec.kernel_id]
            assert inst.state is InstanceState.EXITED and inst.exit_reason == INTERRUPTED, inst
            assert [e.exit_reason for e in exits if e.kernel_id == spec.kernel_id] \
                == [INTERRUPTED]
            await after.destroy(spec.kernel_id)  # what recovery does with an ended kernel
            assert await container_of(engine, spec.kernel_id) is None
            assert not (scratch / spec.kernel_id).exists()
        assert not (scratch / ".claims" / f"{spec.kernel_id}.json").exists()
        assert [c for c in await standbys(engine, agent_id)
                if c["Names"][0].startswith("/bai-standby-")] == []
        # the kernel the dead agent had made fully is adopted as it was
        if where != "outbound-start":
            kept = found[warm.kernel_id]
            assert kept.state is InstanceState.RUNNING
            out, _, _ = await run(kept, "print('still here')")
            assert out.strip() == "still here"
    finally:
        await finish(after)
    assert not [line for line in open("/proc/self/mountinfo") if str(scratch) in line]
