"""Uploads cannot escape a kernel's work directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bai.agent.workdir import PathEscapes, checked_relative, list_dir, write_file
from bai.common.errors import InvalidAPIParameters


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


async def test_symlinked_file_is_not_written_through(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, work / "f.txt")
    with pytest.raises(PathEscapes):
        await write_file(work, "f.txt", _data())
    assert target.read_text() == "keep"


async def test_symlink_inside_the_workdir_is_fine(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    os.symlink(work / "real", work / "alias")
    assert await write_file(work, "alias/x.txt", _data()) == "alias/x.txt"
    assert (work / "real" / "x.txt").read_bytes() == b"content"


def test_download_tars_a_file_or_folder_inside_only(tmp_path: Path) -> None:
    import io
    import tarfile

    from bai.agent.workdir import tar_of

    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "a.txt").write_text("A")
    (work / ".bai").mkdir()
    (work / ".bai" / "secret").write_text("runner state")
    os.symlink("/etc/passwd", work / "d" / "pw")

    def names(path: str) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(tar_of(work, path))) as tar:
            return sorted(tar.getnames())

    assert names("d") == ["d", "d/a.txt", "d/pw"]
    with tarfile.open(fileobj=io.BytesIO(tar_of(work, f"{work}/d/pw"))) as tar:
        assert tar.getmember("pw").issym()  # stored as a link, never the host file's content
    assert names("/home/work/d/a.txt") == ["a.txt"]
    assert ".bai/secret" not in names(".")
    for bad in ("../x", "/etc/passwd", "nope.txt"):
        with pytest.raises(InvalidAPIParameters):
            tar_of(work, bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change owners")
async def test_uploads_belong_to_the_workdir_owner(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, 65534, 65534)
    await write_file(work, "d/f.txt", _data())
    assert (work / "d").stat().st_uid == 65534
    assert (work / "d" / "f.txt").stat().st_uid == 65534
