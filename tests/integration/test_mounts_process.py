"""Storage folders in the process runtime: bound into the bwrap sandbox, read-only by the kernel's
mount flag, writes land at once and outlive the kernel; nothing outside the storage root binds."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from bai.agent.backends.base import Instance, KernelCreationFailed, KernelSpec
from bai.agent.backends.process import ProcessBackend
from bai.agent.settings import AgentSettings
from bai.testing.contract import run
from tests.integration.test_process_pool import shut

needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="the process sandbox needs root and bubblewrap (CI installs both)")


def spec(*mounts: dict) -> KernelSpec:
    return KernelSpec(kernel_id=str(uuid.uuid4()), session_id=str(uuid.uuid4()),
                      session_name="m", session_type="INTERACTIVE", image="python",
                      slots={"cpu": Decimal(1), "mem": Decimal(256 * 2**20)},
                      mounts=list(mounts))


def mount(relpath: str = "u1/data", target: str = "/home/work/data", mode: str = "rw",
          host: str = "local") -> dict:
    return {"name": relpath.rsplit("/", 1)[-1], "host": host, "relpath": relpath,
            "kernel_path": target, "mode": mode}


async def started(tmp_path: Path, pool_size: int, **settings: object):
    root = tmp_path / "storage"
    (root / "u1" / "data").mkdir(parents=True)
    os.chmod(tmp_path, 0o700)

    async def ignore(inst: Instance) -> None:
        pass

    b = ProcessBackend(AgentSettings.load(
        None, scratch_root=str(tmp_path / "scratch"), monitor_interval=0.1,
        process_pool_size=pool_size, storage_roots={"local": str(root)}, **settings))
    await b.start(ignore)
    return b, root


@pytest.fixture
async def stack(tmp_path: Path):
    b, root = await started(tmp_path, 0)  # every kernel cold: folders are bwrap binds
    yield b, root
    await shut(b)


@pytest.fixture(params=["quota", "no-quota"])
async def pooled(tmp_path: Path, request):
    # folders attached to a pre-started runner; its work dir a filesystem of its own, or a
    # plain folder bound onto itself (whose removal must not reach through the binds)
    extra = {"disk_quota": 0} if request.param == "no-quota" else {}
    b, root = await started(tmp_path, 1, **extra)
    yield b, root
    await shut(b)


async def py(b: ProcessBackend, s: KernelSpec, code: str) -> tuple[str, str, int | None]:
    inst = await b.inspect(s.kernel_id)
    channel = await b.open_channel(inst)
    try:
        out, err, rc, _ = await run(channel, {"mode": "query", "code": code})
    finally:
        await channel.close()
    return out, err, rc


@needs_sandbox
async def test_rw_folder_writes_land_at_once_and_outlive_the_kernel(stack) -> None:
    b, root = stack
    first = spec(mount(), mount("u1/data", "/data", "rw") | {"name": "again"})
    # the same folder twice is fine for the agent (the manager refuses nesting, not this)
    await b.create(first)
    out, err, rc = await py(b, first, (
        "import os\n"
        "open('/home/work/data/out.txt', 'w').write('one')\n"
        "os.makedirs('/home/work/data/sub')\n"
        "print(open('/data/out.txt').read(), os.getuid())"))
    assert rc == 0, err
    assert (root / "u1/data/out.txt").read_text() == "one"  # before the kernel ends
    first_uid = out.split()[1]
    await b.destroy(first.kernel_id)
    assert (root / "u1/data/out.txt").read_text() == "one"

    second = spec(mount())
    await b.create(second)
    out, err, rc = await py(b, second, (
        "import os\n"
        "print(open('data/out.txt').read(), os.getuid())\n"
        "open('data/out.txt', 'w').write('two')\n"
        "open('data/sub/x', 'w').write('x')"))
    assert rc == 0, err
    assert out.split()[0] == "one" and out.split()[1] != first_uid  # another kernel uid
    assert (root / "u1/data/out.txt").read_text() == "two"


@needs_sandbox
async def test_ro_folder_is_read_only_to_the_kernel(stack) -> None:
    b, root = stack
    (root / "u1/data/in.txt").write_text("data")
    os.chmod(root / "u1/data/in.txt", 0o666)  # only the mount's flag may stop a write
    s = spec(mount(mode="ro"))
    await b.create(s)
    out, err, rc = await py(b, s, (
        "import errno, os\n"
        "print(open('data/in.txt').read())\n"
        "for act in (lambda: open('data/new', 'w'), lambda: open('data/in.txt', 'a'),\n"
        "            lambda: os.remove('data/in.txt'), lambda: os.mkdir('data/d'),\n"
        "            lambda: os.chmod('data', 0o700)):\n"
        "    try:\n"
        "        act()\n"
        "        print('WROTE')\n"
        "    except OSError as e:\n"
        "        print(errno.errorcode[e.errno])\n"))
    assert rc == 0, err
    lines = out.split()
    assert lines[0] == "data"
    assert lines[1:] == ["EROFS"] * 5, out
    assert sorted(os.listdir(root / "u1/data")) == ["in.txt"]


@needs_sandbox
async def test_a_symlink_planted_inside_reaches_nothing_outside(stack, tmp_path: Path) -> None:
    b, root = stack
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (root / "u2" / "other").mkdir(parents=True)
    (root / "u2/other/theirs.txt").write_text("theirs")
    s = spec(mount())
    await b.create(s)
    # the kernel plants links to host paths it knows, then follows them
    out, err, rc = await py(b, s, (
        "import os\n"
        f"os.symlink({str(secret)!r}, 'data/s1')\n"
        f"os.symlink({str(root / 'u2/other')!r}, 'data/s2')\n"
        "os.symlink('../../u2/other', 'data/s3')\n"
        "for p in ('data/s1', 'data/s2/theirs.txt', 'data/s3/theirs.txt'):\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"))
    assert rc == 0, err
    assert "secret" not in out and "theirs" not in out
    assert out.split() == ["FileNotFoundError"] * 3
    await b.destroy(s.kernel_id)
    # a later kernel of another folder whose path leads through a link is refused outright
    (root / "u3").symlink_to(root / "u2")
    with pytest.raises(KernelCreationFailed, match="symlink"):
        await b.create(spec(mount("u3/other")))


@needs_sandbox
@pytest.mark.parametrize("m, said", [
    (mount("../outside"), "'..'"),
    (mount("/etc"), "absolute"),
    (mount("u1/missing"), "does not exist"),
    (mount(host="elsewhere"), "not configured"),
    (mount(target="/etc/data"), "mount point"),
    (mount(target="/home/work"), "mount point"),
    (mount(mode="rwx"), "mode"),
])
async def test_refused_mounts_fail_the_create_and_leave_nothing(stack, m, said) -> None:
    b, root = stack
    with pytest.raises(KernelCreationFailed, match=said):
        await b.create(spec(m))
    assert await b.list() == []
    assert os.listdir(b.root) in ([], [".pool"]) or not [
        d for d in os.listdir(b.root) if not d.startswith(".")]



async def pool_ready(b: ProcessBackend, timeout: float = 60.0) -> None:
    """Until a pre-started runner waits (generous: CI machines are loaded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not b.pool.idle.get(b.settings.process_interpreter):
        assert asyncio.get_running_loop().time() < deadline, "no runner was pre-started"
        await asyncio.sleep(0.05)


@needs_sandbox
async def test_a_pooled_runner_takes_the_folders_and_its_removal_keeps_them(pooled) -> None:
    b, root = pooled
    (root / "u1/data/keep.txt").write_text("keep")
    for mode in ("rw", "ro"):
        await pool_ready(b)
        s = spec(mount(mode=mode), mount(target="/home/work/sub/again", mode="rw"))
        inst = await b.create(s)
        assert inst.labels.get("bai.pooled") == "1"  # not a cold start
        out, err, rc = await py(b, s, (
            "import errno\n"
            "try:\n"
            "    _ = open('data/w.txt', 'w').write('pooled')\n"
            "    print('wrote')\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno])\n"
            "print(open('sub/again/keep.txt').read())"))
        assert rc == 0, err
        assert out.split() == (["wrote", "keep"] if mode == "rw" else ["EROFS", "keep"])
        await b.destroy(s.kernel_id)
        assert not (b.root / s.kernel_id).exists()

    def left() -> list[str]:  # the kernels' folders (removed in the background) and mounts
        trash = b.root / ".removing"
        return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(b.root) in line and "/work/" in line.split()[4]] + (
            os.listdir(trash) if trash.is_dir() else [])

    deadline = asyncio.get_running_loop().time() + 60
    while left():
        assert asyncio.get_running_loop().time() < deadline, left()
        await asyncio.sleep(0.1)
    # the kernels' folders went, through their mounts: the storage folder is intact
    assert sorted(os.listdir(root / "u1/data")) == ["keep.txt", "w.txt"]
    assert (root / "u1/data/keep.txt").read_text() == "keep"


async def test_without_the_sandbox_rw_folders_are_links_and_ro_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    (root / "u1" / "data").mkdir(parents=True)

    async def ignore(inst: Instance) -> None:
        pass

    b = ProcessBackend(AgentSettings.load(
        None, scratch_root=str(tmp_path / "scratch"), monitor_interval=0.1, process_pool_size=0,
        process_sandbox=False, storage_roots={"local": str(root)}))
    await b.start(ignore)
    try:
        s = spec(mount())
        inst = await b.create(s)
        out, err, rc = await py(b, s, "_ = open('data/x.txt', 'w').write('linked')")
        assert rc == 0, err
        assert (root / "u1/data/x.txt").read_text() == "linked"
        await b.destroy(s.kernel_id)
        assert (root / "u1/data/x.txt").read_text() == "linked"  # removal kept the folder
        assert inst.workdir.parent.exists() is False
        with pytest.raises(KernelCreationFailed, match="read-only mount needs the process sandbox"):
            await b.create(spec(mount(mode="ro")))
        with pytest.raises(KernelCreationFailed, match="only appear under /home/work"):
            await b.create(spec(mount(target="/data")))
    finally:
        await shut(b)
