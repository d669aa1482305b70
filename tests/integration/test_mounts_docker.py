"""Storage folders in the docker runtime: bind mounts at /home/work/NAME (or the asked path),
read-only by the mount flag for ``ro``, writes on the host at once and after the container."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bai.agent.backends.base import KernelCreationFailed
from bai.agent.backends.docker_spec import L_POOL
from bai.agent.mounts import mounts_below
from bai.testing.docker import docker_host_or_skip, test_image
from tests.integration.test_docker_backend import (
    finish,
    make_spec,
    run,
    started_backend,
    wait_for,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def stack(tmp_path: Path):
    engine = await docker_host_or_skip()
    root = tmp_path / "storage"
    (root / "u1" / "data").mkdir(parents=True)
    (root / "u1/data/in.txt").write_text("data")
    os.chmod(root / "u1/data/in.txt", 0o666)  # only the mount's flag may stop a write
    b = await started_backend(engine, tmp_path / "scratch", storage_roots={"local": str(root)})
    yield b, root
    await finish(b)


def folder(mode: str, target: str = "/home/work/data", relpath: str = "u1/data") -> dict:
    return {"name": "data", "host": "local", "relpath": relpath, "kernel_path": target,
            "mode": mode}


async def test_rw_and_ro_folders(stack) -> None:
    b, root = stack
    first = make_spec(mounts=[folder("rw")])
    inst = await b.create(first)
    out, err, rc = await run(inst, (
        "import os\n"
        "print(open('data/in.txt').read())\n"
        "_ = open('/home/work/data/out.txt', 'w').write('one')\n"))
    assert (rc, out.strip()) == (0, "data"), err
    assert (root / "u1/data/out.txt").read_text() == "one"
    await b.destroy(first.kernel_id)
    assert (root / "u1/data/out.txt").read_text() == "one"

    ro = make_spec(mounts=[folder("ro", "/mnt/data")])
    inst = await b.create(ro)
    out, err, rc = await run(inst, (
        "import errno, os\n"
        "print(open('/mnt/data/out.txt').read())\n"
        "for act in (lambda: open('/mnt/data/new', 'w'), lambda: open('/mnt/data/in.txt', 'a'),\n"
        "            lambda: os.remove('/mnt/data/out.txt')):\n"
        "    try:\n"
        "        act()\n"
        "        print('WROTE')\n"
        "    except OSError as e:\n"
        "        print(errno.errorcode[e.errno])\n"))
    assert rc == 0, err
    assert out.split() == ["one", "EROFS", "EROFS", "EROFS"], out
    assert sorted(os.listdir(root / "u1/data")) == ["in.txt", "out.txt"]


async def test_a_folder_path_through_a_symlink_is_refused(stack) -> None:
    b, root = stack
    (root / "u3").symlink_to(root / "u1")
    with pytest.raises(KernelCreationFailed, match="symlink"):
        await b.create(make_spec(mounts=[folder("rw", relpath="u3/data")]))
    assert await b.list() == []


# -- folders joining a standby container (docker_pool: rslave work dir, attached at the claim) --

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="folders join standbys only as root")


@pytest.fixture
async def warm(tmp_path: Path):
    """A backend with one standby per image and two users' folders."""
    engine = await docker_host_or_skip()
    root = tmp_path / "storage"
    for user in ("u1", "u2"):
        (root / user / "data").mkdir(parents=True)
        (root / user / "data/in.txt").write_text(f"{user} data")
        os.chmod(root / user / "data/in.txt", 0o666)  # only the mount's flag may stop a write
    b = await started_backend(engine, tmp_path / "scratch", storage_roots={"local": str(root)},
                              pool_size=1)
    await b.create(make_spec())  # the pool follows this image and shape
    yield b, root
    await finish(b)


async def claimed(b, spec):
    """Create ``spec`` from a standby (waits until one is ready); asserts it was claimed."""
    await wait_for(lambda: bool(b.pool.ready.get(test_image())), timeout=60)
    if b.pool.no_folders.startswith("the engine refuses an rslave bind"):
        pytest.skip(f"standbys cannot take folders on this host: {b.pool.no_folders}")
    inst = await b.create(spec)
    assert L_POOL in inst.labels, f"not from a standby ({b.pool.no_folders or 'no reason'})"
    return inst


ATTEMPTS = (
    "import errno, os\n"
    "def attempt(act):\n"
    "    try:\n"
    "        act()\n"
    "        return 'WROTE'\n"
    "    except OSError as e:\n"
    "        return errno.errorcode[e.errno]\n"
)


@needs_root
async def test_folders_join_a_standby_rw_and_ro_and_leave_nothing_behind(warm) -> None:
    """A session with folders takes a standby container: its folders appear at their paths,
    writes land in the folder at once, a ``ro`` one is EROFS to the kernel (the mount's flag),
    and after destroy no mount is left beneath the scratch root (the folders' files stay)."""
    b, root = warm
    spec = make_spec(mounts=[folder("rw"), folder("ro", "/home/work/ref", "u2/data")])
    inst = await claimed(b, spec)
    out, err, rc = await run(inst, ATTEMPTS + (
        "print(open('data/in.txt').read().replace(' ', '_'))\n"
        "print(open('/home/work/ref/in.txt').read().replace(' ', '_'))\n"
        "print(attempt(lambda: open('data/out.txt', 'w').write('one')))\n"
        "for act in (lambda: open('ref/new', 'w'), lambda: open('ref/in.txt', 'a'),\n"
        "            lambda: os.remove('ref/in.txt'), lambda: os.mkdir('ref/d')):\n"
        "    print(attempt(act))\n"))
    assert rc == 0, err
    assert out.split() == ["u1_data", "u2_data", "WROTE", "EROFS", "EROFS", "EROFS", "EROFS"], out
    assert (root / "u1/data/out.txt").read_text() == "one"  # on the host at once
    assert sorted(os.listdir(root / "u2/data")) == ["in.txt"]
    scratch = str(b.scratch_root)
    assert any(p.startswith(scratch) for p in mounts_below(b.scratch_root / spec.kernel_id))

    await b.destroy(spec.kernel_id)
    await wait_for(lambda: not (b.scratch_root / spec.kernel_id).exists())
    assert mounts_below(b.scratch_root / spec.kernel_id) == []
    assert not [line for line in open("/proc/self/mountinfo") if spec.kernel_id in line]
    assert (root / "u1/data/out.txt").read_text() == "one"  # the folder itself is untouched
    assert (root / "u2/data/in.txt").read_text() == "u2 data"


@needs_root
async def test_a_standby_claimed_kernel_sees_no_other_sessions_folders(warm) -> None:
    """Two sessions from standbys, each with its own folder: neither sees the other's, not at
    its path, not in its mount table, not through /proc; a session without folders sees none."""
    b, root = warm
    one = await claimed(b, make_spec(mounts=[folder("rw")]))
    two = await claimed(b, make_spec(mounts=[folder("rw", "/home/work/other", "u2/data")]))
    plain = await claimed(b, make_spec())
    probe = ("import os\n"
             "print(sorted(os.listdir('/home/work')))\n"
             "print([l.split()[4] for l in open('/proc/self/mountinfo')"
             " if 'home/work/' in l.split()[4]])\n")
    seen = {}
    for name, inst in (("one", one), ("two", two), ("plain", plain)):
        out, err, rc = await run(inst, probe)
        assert rc == 0, err
        seen[name] = out
    assert "data" in seen["one"] and "other" not in seen["one"], seen
    assert "other" in seen["two"] and "data" not in seen["two"], seen
    assert "data" not in seen["plain"] and "other" not in seen["plain"], seen
    out, _, _ = await run(two, "import glob; print(glob.glob('/proc/*/root/home/work/data/*'))")
    assert "in.txt" not in out, out
    out, _, _ = await run(one, "print(open('data/in.txt').read())")
    assert out.strip() == "u1 data"


@needs_root
async def test_folders_outside_the_work_dir_or_without_standby_support_start_cold(warm) -> None:
    b, root = warm
    await wait_for(lambda: bool(b.pool.ready.get(test_image())), timeout=60)
    inst = await b.create(make_spec(mounts=[folder("ro", "/mnt/data")]))
    assert L_POOL not in inst.labels  # only the work dir's mount takes folders later
    out, _, _ = await run(inst, "print(open('/mnt/data/in.txt').read())")
    assert out.strip() == "u1 data"
    # a standby whose work dir is not a shared mount is never given folders
    b.pool.no_folders = "test"
    await b.destroy(inst.kernel_id)
    for entry in b.pool.ready.get(test_image(), []):
        entry.attachable = False
    inst = await b.create(make_spec(mounts=[folder("rw")]))
    assert L_POOL not in inst.labels
    out, _, _ = await run(inst, "print(open('data/in.txt').read())")
    assert out.strip() == "u1 data"
