"""Uploads and downloads cannot escape a kernel's work directory or follow a planted link."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest

from bai.agent.transfer import Download, write_file
from bai.agent.workdir import PathEscapes, checked_relative, list_dir
from bai.common.errors import FilesTooLarge, InvalidAPIParameters


async def _data(b: bytes = b"content"):
    yield b


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a/b/../../../x", "~/x",
                                  ".bai/runner.sock", "./.bai/x"])
def test_escaping_shapes_are_refused(name: str) -> None:
    with pytest.raises(InvalidAPIParameters):
        checked_relative(name)


@pytest.mark.parametrize("name,expected", [("a.py", "a.py"), ("./a.py", "a.py"),
                                           ("d/e/f.txt", "d/e/f.txt"), ("d//e.txt", "d/e.txt")])
def test_ordinary_names_are_kept(name: str, expected: str) -> None:
    assert str(checked_relative(name)) == expected


async def test_writes_inside_and_creates_folders(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert await write_file(work, "d/e/f.txt", _data()) == "d/e/f.txt"
    assert (work / "d" / "e" / "f.txt").read_bytes() == b"content"
    assert [e["filename"] for e in list_dir(work, "d")] == ["e"]


async def test_symlinked_folder_pointing_out_is_refused(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    os.symlink(outside, work / "out")
    with pytest.raises(PathEscapes):
        await write_file(work, "out/x.txt", _data())
    with pytest.raises(PathEscapes):
        list_dir(work, "out")
    assert list(outside.iterdir()) == []


async def test_symlinked_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, work / "f.txt")
    await write_file(work, "f.txt", _data())
    assert target.read_text() == "keep"
    assert not (work / "f.txt").is_symlink() and (work / "f.txt").read_bytes() == b"content"


async def test_a_link_on_the_way_is_never_followed_even_inside(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    os.symlink(work / "real", work / "alias")
    with pytest.raises(PathEscapes):
        await write_file(work, "alias/x.txt", _data())
    assert list((work / "real").iterdir()) == []


async def _tar(work: Path, path: str, max_bytes: int = 2**40) -> bytes:
    dl = await asyncio.to_thread(Download.open, work, path, max_bytes)
    return b"".join([c async for c in dl.chunks()])


async def test_download_tars_a_file_or_folder_inside_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "a.txt").write_text("A")
    (work / ".bai").mkdir()
    (work / ".bai" / "secret").write_text("runner state")
    os.symlink("/etc/passwd", work / "d" / "pw")

    async def names(path: str) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(await _tar(work, path))) as tar:
            return sorted(tar.getnames())

    assert await names("d") == ["d", "d/a.txt", "d/pw"]
    with tarfile.open(fileobj=io.BytesIO(await _tar(work, f"{work}/d/pw"))) as tar:
        assert tar.getmember("pw").issym()  # stored as a link, never the host file's content
    assert await names("/home/work/d/a.txt") == ["a.txt"]
    assert ".bai/secret" not in await names(".")
    for bad in ("../x", "/etc/passwd", "nope.txt"):
        with pytest.raises(InvalidAPIParameters):
            await _tar(work, bad)


async def test_download_never_goes_through_a_linked_folder(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    os.symlink(outside, work / "out")
    os.symlink(work, work / "self")
    for path in ("out/secret.txt", "self/out/secret.txt"):
        with pytest.raises(PathEscapes):
            await _tar(work, path)
    data = await _tar(work, "out")  # the link itself is sent as a link
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [m.name for m in tar.getmembers()] == ["out"] and tar.getmember("out").issym()


async def test_download_counts_apparent_size_before_sending(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    with open(work / "d" / "sparse", "wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB that take no disk
    (work / "small").write_bytes(b"x" * 1000)
    with pytest.raises(FilesTooLarge) as err:
        await asyncio.to_thread(Download.open, work, "d", 1024**3)
    assert err.value.status == 413
    with pytest.raises(FilesTooLarge):
        await asyncio.to_thread(Download.open, work, ".", 1024**3)
    data = await _tar(work, "small", 1000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("small").read() == b"x" * 1000
    with pytest.raises(FilesTooLarge):
        await _tar(work, "small", 999)


async def test_an_upload_past_its_limit_leaves_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(b"old")

    async def chunks():
        for _ in range(10):
            yield b"y" * 1000

    with pytest.raises(FilesTooLarge):
        await write_file(work, "big.bin", chunks(), max_bytes=5000)
    assert sorted(p.name for p in work.iterdir()) == ["big.bin"]
    assert (work / "big.bin").read_bytes() == b"old"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change owners")
async def test_uploads_belong_to_the_workdir_owner(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, 65534, 65534)
    await write_file(work, "d/f.txt", _data())
    assert (work / "d").stat().st_uid == 65534
    assert (work / "d" / "f.txt").stat().st_uid == 65534


def test_an_agent_imports_tarfile_only_to_write_a_download() -> None:
    # 0.4 MB of an agent's memory for as long as it runs, for the downloads it may never serve
    import subprocess
    import sys

    code = ("import sys\nimport bai.agent.__main__, bai.agent.server, bai.agent.transfer\n"
            "print('tarfile' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
