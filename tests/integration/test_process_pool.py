"""Pre-started (pooled) kernel runners of the process backend: a claimed runner is exactly the
kernel a cold start gives (work dir, environment, limits, OOM reporting, adoption), and every
case the pool cannot serve starts cold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import psutil
import pytest

from bai.agent.backends.base import Instance, InstanceState, KernelSpec
from bai.agent.backends.cgroup import CgroupDriver, CgroupError
from bai.agent.backends import sandbox as sandboxing
from bai.agent.backends.process import ProcessBackend, block_pipe
from bai.agent.backends.process_pool import POOL_DIR, kill_tree, startup_fixed
from bai.agent.settings import AgentSettings
from bai.testing.contract import run

needs_cgroups = pytest.mark.skipif(CgroupDriver.detect() is None,
                                   reason="no writable memory cgroup on this host")

PROBE = (
    "import os, sys, resource\n"
    "print(os.getcwd())\n"
    "print(os.environ['HOME'], os.environ['BACKENDAI_KERNEL_ID'], os.environ.get('FOO'))\n"
    "print(os.environ.get('PYTHONPATH'), sys.path[1])\n"
    "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
    "print(os.getpid())\n"
)


def spec(mem: str = "256m", **kw) -> KernelSpec:
    from bai.common.resources import parse_size

    return KernelSpec(kernel_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()),
                      session_name="pooled", session_type=kw.pop("session_type", "INTERACTIVE"),
                      image="python", slots={"cpu": Decimal(1), "mem": parse_size(mem)}, **kw)


async def make(tmp_path: Path, **settings) -> ProcessBackend:
    exits: list[Instance] = []

    async def on_exit(inst: Instance) -> None:
        exits.append(inst)

    settings.setdefault("process_pool_size", 1)  # one runner waits: the tests name it
    settings.setdefault("monitor_interval", 0.1)
    b = ProcessBackend(AgentSettings.load(None, scratch_root=str(tmp_path), **settings))
    await b.start(on_exit)
    b.exits = exits  # type: ignore[attr-defined]
    return b


async def pooled_ready(b: ProcessBackend) -> None:
    """Wait until a pooled runner waits for the default interpreter."""
    for _ in range(400):
        if b.pool.idle.get(b.settings.process_interpreter):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no runner was pre-started")


async def shut(b: ProcessBackend) -> None:
    """Destroy the backend's kernels and stop it."""
    for inst in await b.list():
        await b.destroy(inst.kernel_id)
    await b.stop()


@pytest.fixture
async def backend(tmp_path: Path):
    b = await make(tmp_path)
    yield b
    await shut(b)


def descendants(root: int) -> list[bytes]:
    """The command lines of ``root`` and every process below it."""
    parent = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit():
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        todo += [p for p, pp in parent.items() if pp == pid]
    return found


async def probe(b: ProcessBackend, inst: Instance, code: str = PROBE) -> tuple[str, int | None]:
    channel = await b.open_channel(inst)
    try:
        out, err, exit_code, _ = await run(channel, {"mode": "query", "code": code})
    finally:
        await channel.close()
    return out + err, exit_code


async def test_a_claimed_runner_is_the_kernel_s_own(backend: ProcessBackend, caplog) -> None:
    await pooled_ready(backend)
    [runner] = backend.pool.idle[backend.settings.process_interpreter]
    s = spec("96m", environ={"FOO": "bar", "PYTHONPATH": "/opt/userlib"})
    inst = await backend.create(s)
    assert inst.labels.get("bai.pooled") == "1", caplog.text
    assert inst.workdir == backend.root / s.kernel_id / "work"
    out, code = await probe(backend, inst)
    assert code == 0, out
    cwd, env, paths, rlimit, _pid = out.splitlines()
    seen = "/home/work" if backend.sandbox.active else str(inst.workdir)  # where it sees it
    assert cwd == seen
    assert env == f"{seen} {s.kernel_id} bar"
    assert paths == "/opt/userlib /opt/userlib"  # the user's PYTHONPATH, not the runner's
    assert not runner.folder.exists()  # moved to the kernel's folder, out of the pool
    labels = json.loads((backend.root / s.kernel_id / "labels.json").read_text())
    assert labels["bai.pid"] == str(inst.container_id.removeprefix("pid:"))
    if backend.cgroups is not None:
        cg = backend.cgroups.open(s.kernel_id)
        assert cg.memory_limit() == 96 * 2**20
        assert len(cg.pids()) >= 3  # unshare/launcher, runner, worker: all in the kernel's
        assert runner.cgroup_name not in backend.cgroups.names("pool-")  # renamed: the kernel's
    else:
        assert int(rlimit) == 96 * 2**20


@needs_cgroups
async def test_a_claimed_runner_still_reports_oom(backend: ProcessBackend, caplog) -> None:
    await pooled_ready(backend)
    s = spec("64m")
    inst = await backend.create(s)
    assert inst.labels.get("bai.pooled") == "1", caplog.text
    out, code = await probe(backend, inst, "x = b'\\x01' * (512 * 1024 * 1024)\nprint('survived')")
    assert code == 137 and "survived" not in out
    for _ in range(100):
        if backend.exits:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert [(i.kernel_id, i.exit_reason, i.exit_code)
            for i in backend.exits] == [(s.kernel_id, "oom-killed", 137)]  # type: ignore[attr-defined]
    await backend.destroy(s.kernel_id)
    assert not any(d.exists() for d in backend.cgroups.open(s.kernel_id).dirs.values())


async def test_bootstrap_and_startup_command_run_in_a_claimed_runner(
        backend: ProcessBackend) -> None:
    await pooled_ready(backend)
    s = spec(bootstrap_script="echo booted > boot.txt; echo $BACKENDAI_SESSION_NAME >> boot.txt")
    inst = await backend.create(s)
    assert inst.labels.get("bai.pooled") == "1"
    out, code = await probe(backend, inst, "print(open('boot.txt').read().split())")
    assert (out, code) == ("['booted', 'pooled']\n", 0)


async def test_startup_fixed_environments_start_cold(backend: ProcessBackend) -> None:
    assert startup_fixed({"LANG": "de_DE.UTF-8", "PYTHONHASHSEED": "1", "PYTHONPATH": "/x",
                          "FOO": "1", "LD_PRELOAD": "x"}) == ["LANG", "LD_PRELOAD", "PYTHONHASHSEED"]
    await pooled_ready(backend)
    waiting = list(backend.pool.idle[backend.settings.process_interpreter])
    s = spec(environ={"PYTHONHASHSEED": "7"})
    inst = await backend.create(s)
    assert "bai.pooled" not in inst.labels
    out, code = await probe(backend, inst, "import sys; print(sys.flags.hash_randomization)")
    assert (out, code) == ("1\n", 0)  # PYTHONHASHSEED=7 set at start (0 would disable it)
    assert backend.pool.idle[backend.settings.process_interpreter] == waiting


async def test_a_failed_claim_starts_the_kernel_cold(backend: ProcessBackend, monkeypatch) -> None:
    await pooled_ready(backend)
    [runner] = backend.pool.idle[backend.settings.process_interpreter]

    def refuse(*args, **kw):
        raise CgroupError("no")

    def refuse_rlimit(*args, **kw):
        raise OSError("no")

    monkeypatch.setattr(backend, "_claim_cgroup", refuse)
    monkeypatch.setattr(backend, "_limit_address_space", refuse_rlimit)
    s = spec()
    inst = await backend.create(s)
    assert "bai.pooled" not in inst.labels and inst.state == InstanceState.RUNNING
    out, code = await probe(backend, inst, "import os; print(os.environ['BACKENDAI_KERNEL_ID'])")
    assert (out, code) == (s.kernel_id + "\n", 0)
    assert not runner.alive() and not runner.folder.exists()
    if backend.cgroups is not None:
        assert runner.cgroup_name and runner.cgroup_name not in backend.cgroups.names("pool-")


async def test_a_dead_pooled_runner_is_skipped(backend: ProcessBackend) -> None:
    await pooled_ready(backend)
    [runner] = backend.pool.idle[backend.settings.process_interpreter]
    runner.kill()
    inst = await backend.create(spec())
    assert "bai.pooled" not in inst.labels and inst.state == InstanceState.RUNNING
    assert not runner.folder.exists()
    if backend.cgroups is not None:
        assert runner.cgroup_name and runner.cgroup_name not in backend.cgroups.names("pool-")


async def test_no_pool_when_its_size_is_0(tmp_path: Path) -> None:
    b = await make(tmp_path, process_pool_size=0)
    try:
        inst = await b.create(spec())
        assert "bai.pooled" not in inst.labels
        await asyncio.sleep(0.2)
        assert not (tmp_path / POOL_DIR).exists() or not list((tmp_path / POOL_DIR).iterdir())
    finally:
        await shut(b)


async def test_rlimit_without_cgroups_is_set_on_the_claimed_tree(tmp_path: Path, caplog) -> None:
    b = await make(tmp_path, process_cgroups=False)
    try:
        await pooled_ready(b)
        s = spec("300m")
        inst = await b.create(s)
        assert inst.labels.get("bai.pooled") == "1" and b.cgroups is None, caplog.text
        out, code = await probe(b, inst)
        assert code == 0 and int(out.splitlines()[3]) == 300 * 2**20
    finally:
        await shut(b)


async def test_a_pooled_kernel_is_adopted_and_stale_pooled_runners_swept(tmp_path: Path) -> None:
    first = await make(tmp_path)
    await pooled_ready(first)
    s = spec()
    inst = await first.create(s)
    assert inst.labels.get("bai.pooled") == "1"
    await pooled_ready(first)
    [idle] = first.pool.idle[first.settings.process_interpreter]
    first.pool.idle.clear()  # as if the agent died without stopping: its runner stays behind
    await first.stop()
    assert idle.alive()

    second = await make(tmp_path)
    try:
        assert not idle.alive() and not idle.folder.exists()
        [adopted] = await second.list()
        assert adopted.kernel_id == s.kernel_id and adopted.state == InstanceState.RUNNING
        out, code = await probe(second, adopted, "print(1)")
        assert (out, code) == ("1\n", 0)
        gone = await second.destroy(s.kernel_id)
        assert gone is not None and gone.state == InstanceState.EXITED
    finally:
        await second.stop()
    assert not (tmp_path / s.kernel_id).exists()


async def test_a_runner_claimed_before_its_launcher_ran_is_still_the_kernel_s(
        tmp_path: Path, monkeypatch, caplog) -> None:
    """The claim renames the pool cgroup and folder; a launcher that has not yet joined the
    cgroup (by its path) would find it gone. The claim waits until the runner listens."""
    from bai.agent.backends import process

    monkeypatch.setattr(process, "LAUNCHER", "sleep 0.5; " + process.LAUNCHER)
    b = await make(tmp_path)
    try:
        await pooled_ready(b)  # spawned: its launcher still sleeps
        s = spec()
        inst = await b.create(s)
        assert inst.labels.get("bai.pooled") == "1", caplog.text
        out, code = await probe(b, inst, "print(2 * 21)")
        assert (out, code) == ("42\n", 0)
        if b.cgroups is not None:
            assert inst.container_id.removeprefix("pid:") in {
                str(p) for p in b.cgroups.open(s.kernel_id).pids()}
    finally:
        await shut(b)


async def test_a_pooled_runner_answers_while_it_waits_and_its_claim_does_not_ask_again(
        backend: ProcessBackend, monkeypatch, caplog) -> None:
    """The pool asks each new runner whether it listens while it waits there, so a kernel's
    claim need not (one exchange fewer on the way to RUNNING); the kernel is the same."""
    from bai.agent.backends import process

    await pooled_ready(backend)
    [runner] = backend.pool.idle[backend.settings.process_interpreter]
    for _ in range(400):
        if runner.answered:
            break
        await asyncio.sleep(0.025)
    assert runner.answered
    asked: list[Path] = []
    wait = process.wait_runner_ready

    async def recorded(path, *args, **kw):
        asked.append(path)
        return await wait(path, *args, **kw)

    monkeypatch.setattr(process, "wait_runner_ready", recorded)
    s = spec()
    inst = await backend.create(s)
    assert inst.labels.get("bai.pooled") == "1", caplog.text
    assert runner.folder not in [p.parent for p in asked]  # (its replacement is asked)
    out, code = await probe(backend, inst, "print(2 * 21)")
    assert (out, code) == ("42\n", 0)


async def test_an_agent_starting_leaves_another_agent_s_pooled_runners_alone(
        tmp_path: Path) -> None:
    first = await make(tmp_path / "one")
    try:
        await pooled_ready(first)
        [runner] = first.pool.idle[first.settings.process_interpreter]
        second = await make(tmp_path / "two")  # sweeps its own leftovers at start
        try:
            await pooled_ready(second)
            assert runner.alive()
            inst = await first.create(spec())
            assert inst.labels.get("bai.pooled") == "1"
        finally:
            await second.stop()
        assert runner.alive()
    finally:
        await shut(first)


async def test_stopping_while_a_runner_is_being_started_leaves_none_behind(
        tmp_path: Path) -> None:
    b = await make(tmp_path, process_pool_size=0)
    b.pool.size = 1
    spawn = b.pool.spawn
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_spawn(*args):
        loop.call_soon_threadsafe(started.set)
        import time
        time.sleep(0.4)
        return spawn(*args)

    b.pool.spawn = slow_spawn
    b.pool.refill(b.settings.process_interpreter, b.cgroups is not None)
    await started.wait()
    await b.stop()
    await asyncio.sleep(0.6)  # past the spawn that was under way
    assert not list((tmp_path / POOL_DIR).iterdir())
    if b.cgroups is not None:
        assert b.cgroups.names(b.pool.cgroup_prefix) == []


async def test_a_pooled_runner_that_dies_while_starting_is_dropped_and_the_kernel_starts_cold(
        tmp_path: Path, monkeypatch, caplog) -> None:
    from bai.agent.backends import process

    monkeypatch.setattr(process, "LAUNCHER",
                        'case "$*" in *--pooled*) sleep 0.3; echo no pool here; exit 3;; esac; '
                        + process.LAUNCHER)
    b = await make(tmp_path)
    try:
        await pooled_ready(b)
        [runner] = b.pool.idle[b.settings.process_interpreter]
        inst = await b.create(spec())
        assert "bai.pooled" not in inst.labels and inst.state == InstanceState.RUNNING
        assert "did not start" in caplog.text and "no pool here" in caplog.text
        assert not runner.alive() and not runner.folder.exists()
        if b.cgroups is not None:
            assert runner.cgroup_name not in b.cgroups.names("pool-")
    finally:
        await shut(b)


async def wait_exits(b: ProcessBackend, n: int = 1) -> list[Instance]:
    for _ in range(600):
        if len(b.exits) >= n:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.1)
    return list(b.exits)  # type: ignore[attr-defined]


async def test_a_batch_command_runs_in_the_sandbox_without_any_python(
        backend: ProcessBackend) -> None:
    """A batch session whose work is its startup command leaves the pool alone and runs no
    Python at all: the sandbox runs the command itself; its output lands in the kernel's log
    and its exit status is the kernel's."""
    await pooled_ready(backend)
    waiting = list(backend.pool.idle[backend.settings.process_interpreter])
    s = spec(session_type="BATCH",
             startup_command="echo out-$FOO pp-$PYTHONPATH; echo err >&2; "
                             "while [ ! -e go ]; do sleep 0.05; done; exit 4",
             environ={"FOO": "bar", "PYTHONPATH": "/mine"})
    inst = await backend.create(s)
    assert "bai.pooled" not in inst.labels and inst.labels.get("bai.direct") == "1"
    assert backend.pool.idle[backend.settings.process_interpreter] == waiting
    for _ in range(200):  # (a process just started may show an empty command line)
        tree = descendants(int(inst.labels["bai.pid"]))  # launcher, sandbox, command
        if any(c.endswith(b"exit 4\x00") for c in tree):
            break
        await asyncio.sleep(0.05)
    assert any(c.endswith(b"exit 4\x00") for c in tree), tree
    assert not any(b"bai.kernel" in c or b"worker.py" in c or b"python" in c.split(b"\0")[0]
                   for c in tree), tree
    if backend.sandbox.active:  # bwrap starts it alone: no launcher shell before it
        assert not any(b"bai-launch" in c for c in tree), tree
    (inst.workdir / "go").touch()
    [ended] = await wait_exits(backend)
    assert (ended.kernel_id, ended.exit_code, ended.exit_reason) == \
        (s.kernel_id, 4, "self-terminated")
    said = await backend.logs(s.kernel_id)
    assert "out-bar pp-/mine\n" in said and "err" in said, said


@needs_cgroups
async def test_a_batch_command_runs_in_its_cgroups_and_reports_oom(
        backend: ProcessBackend) -> None:
    """Started without a launcher, the sandbox joins the kernel's cgroups before the command
    runs: the command's processes are there, and its memory limit holds (OOM reported)."""
    s = spec("64m", session_type="BATCH",
             startup_command="while [ ! -e go ]; do sleep 0.05; done; "
                             "python3 -c 'x = bytearray(512 * 2**20); print(\"survived\")'")
    inst = await backend.create(s)
    assert inst.labels.get("bai.direct") == "1"
    cg = backend.cgroups.open(s.kernel_id)
    for _ in range(200):
        tree = {int(p.pid) for p in psutil.Process(int(inst.labels["bai.pid"])).children(
            recursive=True) if b"go ]" in Path(f"/proc/{p.pid}/cmdline").read_bytes()}
        if tree:
            break
        await asyncio.sleep(0.05)
    assert tree and tree <= cg.pids(), (tree, cg.pids())
    (inst.workdir / "go").touch()
    [ended] = await wait_exits(backend)
    assert (ended.kernel_id, ended.exit_code, ended.exit_reason) == \
        (s.kernel_id, 137, "oom-killed")
    assert "survived" not in await backend.logs(s.kernel_id)


def test_a_bare_sandbox_never_runs_the_command_when_the_agent_is_gone_before_it_joined(
        tmp_path: Path) -> None:
    """``block_pipe``: an agent that dies before ``_join`` closes its end unwritten; the
    sandbox then waits for good rather than run the command outside the kernel's cgroups."""
    sb = sandboxing.probe("bwrap", True, False, "/usr/bin/python3")
    if not sb.active:
        pytest.skip(f"no sandbox here: {sb.reason}")
    (tmp_path / "work").mkdir()
    block, agent_end = block_pipe()
    argv = sb.argv("/usr/bin/python3", tmp_path / "work", None, block_fd=block)
    sandbox = subprocess.Popen(argv + ["/bin/sh", "-c", f"touch {sandboxing.WORKDIR}/ran"],
                               pass_fds=(block,), start_new_session=True)
    os.close(block)
    os.close(agent_end)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            sandbox.wait(timeout=1)
        assert not (tmp_path / "work" / "ran").exists()
    finally:
        kill_tree(sandbox.pid)
        sandbox.wait()


async def test_a_kernel_s_account_is_given_in_memory(backend: ProcessBackend) -> None:
    """whoami works in the sandbox; its passwd and group are no files on the host's disk; it
    looks accounts up in them alone (no NSS module of the host's is loaded for them). A
    command in the runner's place has no runner code in its sandbox."""
    if not (backend.sandbox.active and backend.sandbox.privileged):
        pytest.skip("no uid of its own here: the kernel keeps the agent's account")
    s = spec(session_type="BATCH", startup_command=(
        "whoami; id -gn; ls -l /etc/passwd; grep -E '^(passwd|group):' /etc/nsswitch.conf; "
        "echo runner-code: $(ls -A /opt/bai/lib/bai/kernel)."))
    inst = await backend.create(s)
    await wait_exits(backend)
    said = await backend.logs(s.kernel_id)
    assert said.startswith("work\nwork\n-rw-r--r--") and " root root " in said, said
    if os.path.exists("/etc/nsswitch.conf"):
        assert "\npasswd: files\ngroup: files\n" in said, said
    assert "runner-code: .\n" in said, said
    assert not any((tmp / name).exists() for tmp in (inst.workdir.parent,)
                   for name in ("passwd", "group"))


async def test_a_batch_command_killed_by_a_signal_reports_it(backend: ProcessBackend) -> None:
    """The sandbox's exit status says a signal as the shell would (128 + its number)."""
    s = spec(session_type="BATCH", startup_command="kill -9 $$")
    await backend.create(s)
    [ended] = await wait_exits(backend)
    assert (ended.kernel_id, ended.exit_code) == (s.kernel_id, 137)


async def test_a_batch_command_keeps_its_runner_when_asked(tmp_path: Path) -> None:
    """``process_direct_command = false``: the runner runs the command, but starts no Python
    worker (one interpreter a job, not two); the command's exit ends it."""
    b = await make(tmp_path, process_direct_command=False)
    try:
        s = spec(session_type="BATCH", startup_command="sleep 1; exit 4")
        inst = await b.create(s)
        assert "bai.pooled" not in inst.labels and "bai.direct" not in inst.labels
        tree = descendants(int(inst.labels["bai.pid"]))  # launcher, sandbox, runner, command
        assert any(b"bai.kernel" in c for c in tree), tree
        assert not any(b"worker.py" in c for c in tree), tree
        assert [(i.kernel_id, i.exit_code) for i in await wait_exits(b)] == [(s.kernel_id, 4)]
    finally:
        await shut(b)


async def test_a_batch_command_that_ends_while_no_agent_watches_keeps_its_status(
        tmp_path: Path) -> None:
    """The launcher writes the command's exit status where the kernel cannot reach: an agent
    started after the command ended reports it as the kernel's."""
    b = await make(tmp_path, process_pool_size=0)
    s = spec(session_type="BATCH",
             startup_command="while [ ! -e go ]; do sleep 0.05; done; exit 5")
    inst = await b.create(s)
    await b.stop()  # the kernel goes on without an agent
    (inst.workdir / "go").touch()
    status = tmp_path / s.kernel_id / "exit.json"  # (made at the start, the code at the end)
    for _ in range(600):
        if status.exists() and sandboxing.json_exit_code(status.read_text()) is not None:
            break
        await asyncio.sleep(0.05)
    second = await make(tmp_path, process_pool_size=0)
    try:
        [found] = await second.list()
        assert (found.kernel_id, found.state, found.exit_code, found.exit_reason) == \
            (s.kernel_id, InstanceState.EXITED, 5, "self-terminated")
    finally:
        await shut(second)


async def test_an_ended_kernel_is_reported_without_waiting_for_the_monitor(
        tmp_path: Path) -> None:
    """The event loop watches each launcher (a pidfd): a kernel's end is reported when it
    happens, with the monitor's tick an hour away; a runner's as a command's."""
    b = await make(tmp_path, monitor_interval=3600)
    try:
        direct = spec(session_type="BATCH", startup_command="exit 3")
        runner = spec()
        await asyncio.gather(b.create(direct), b.create(runner))
        channel = await b.open_channel(await b.inspect(runner.kernel_id))
        try:
            await run(channel, {"mode": "query", "code": "import os; os._exit(6)"})
        except Exception:
            pass
        finally:
            await channel.close()
        ended = await wait_exits(b, 2)
        assert sorted((i.kernel_id, i.exit_code) for i in ended) == sorted(
            [(direct.kernel_id, 3), (runner.kernel_id, 6)]), ended
    finally:
        await shut(b)


async def test_the_pool_follows_the_agents_free_slots(tmp_path: Path) -> None:
    """Pre-started runners: one per free whole CPU slot, at most process_pool_size; more start
    when slots come free again, none while the slots are taken."""
    from bai.common.resources import ResourceSlot

    b = await make(tmp_path, process_pool_size=3)
    interp = b.settings.process_interpreter
    try:
        b.slots_free(ResourceSlot({"cpu": Decimal(1), "mem": Decimal(2**30)}))
        for _ in range(400):
            if len(b.pool.idle.get(interp) or []) >= 1 and interp not in b.pool._filling:
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.3)  # (nothing more may start)
        assert len(b.pool.idle[interp]) == 1 and b.pool.target() == 1
        b.slots_free(ResourceSlot({"cpu": Decimal("64.5")}))
        assert b.pool.target() == 3
        for _ in range(400):
            if len(b.pool.idle[interp]) == 3:
                break
            await asyncio.sleep(0.025)
        assert len(b.pool.idle[interp]) == 3
        b.slots_free(ResourceSlot({"cpu": Decimal(0)}))
        assert b.pool.target() == 0
        surplus = b.pool.take(interp)
        assert surplus is not None  # surplus stays usable
        b.pool.discard(surplus)  # (taken from the pool, it is no longer the pool's to remove)
    finally:
        await shut(b)
