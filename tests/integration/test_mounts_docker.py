"""Storage folders in the docker runtime: bind mounts at /home/work/NAME (or the asked path),
read-only by the mount flag for ``ro``, writes on the host at once and after the container."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bai.agent.backends.base import KernelCreationFailed
from bai.testing.docker import docker_host_or_skip
from tests.integration.test_docker_backend import finish, make_spec, run, started_backend

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
