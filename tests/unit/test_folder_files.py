"""Files inside a storage folder, never through a link (``bai.manager.services.folder_files``):
the races a session can run against the manager while it walks a folder."""

from __future__ import annotations

import os
import shutil

from bai.manager.services import folder_files as ff


def test_a_folder_swapped_for_a_link_during_a_clone_is_not_followed(tmp_path, monkeypatch):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in (src / "d", dst, outside):
        d.mkdir(parents=True)
    (outside / "secret").write_text("secret")
    (src / "d" / "mine").write_text("mine")
    swapped = []

    def swap() -> None:
        # the session's move: right after the manager saw a folder, it is a link out
        if not swapped:
            swapped.append(True)
            shutil.rmtree(src / "d")
            os.symlink(outside, src / "d")

    real_listdir, real_scandir, real_stat = os.listdir, os.scandir, os.stat

    def listdir(path=".", *a):
        names = real_listdir(path, *a)
        swap()
        return names

    def scandir(path=".", *a):
        entries = list(real_scandir(path, *a))
        swap()
        return _Entries(entries)

    def stat(path, *a, **kw):  # the narrowest window: between a look and the descent
        st = real_stat(path, *a, **kw)
        if path == "d":
            swap()
        return st

    for name, fn in (("listdir", listdir), ("scandir", scandir), ("stat", stat)):
        monkeypatch.setattr(os, name, fn)
    ff.copy_tree(src, dst)
    monkeypatch.undo()
    assert swapped
    # at most the link itself was copied (as a link); nothing of what it points to
    copied = [f for _, _, files in os.walk(dst) for f in files]  # walk follows no link
    assert "secret" not in copied
    assert (dst / "d").is_symlink() or not os.path.lexists(dst / "d")


def test_copy_keeps_files_folders_and_links_as_links(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a" / "b").mkdir(parents=True)
    dst.mkdir()
    (src / "a" / "b" / "f.txt").write_bytes(b"x" * 100_000)
    os.symlink("/etc/passwd", src / "a" / "passwd")
    os.mkfifo(src / "fifo")
    ff.copy_tree(src, dst)
    assert (dst / "a" / "b" / "f.txt").read_bytes() == b"x" * 100_000
    assert os.readlink(dst / "a" / "passwd") == "/etc/passwd"
    assert not (dst / "fifo").exists()


class _Entries(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
