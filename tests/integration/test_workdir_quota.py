"""Work dir quotas (agent/quota.py): an empty filesystem made once per size and copied, mounted by
system calls; the quota holds, and removing the folder unmounts it and frees its loop device."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bai.agent.quota import (IMAGE, RECYCLE_MAX_BYTES, RECYCLE_MAX_FILES, SPARES, TEMPLATES,
                            WorkdirQuota, remove_folder)

QUOTA = WorkdirQuota.detect()
pytestmark = pytest.mark.skipif(QUOTA is None, reason="needs root, mkfs.ext4 and loop devices")


def loops_of(image: Path) -> list[str]:
    return [line for line in os.popen("losetup -a").read().splitlines() if str(image) in line]


def mount_options(target: Path) -> set[str]:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(target):
            return set(fields[3].split(","))
    return set()


def test_work_dirs_are_copies_of_one_empty_filesystem_that_hold_their_quota(
        tmp_path: Path) -> None:
    assert QUOTA is not None
    quota = WorkdirQuota(QUOTA.mkfs, QUOTA.mount, QUOTA.umount)
    first = tmp_path / "k1"
    (first / "work").mkdir(parents=True)
    quota.attach(first / "work", 32 * 2**20)
    assert (tmp_path / TEMPLATES / f"{32 * 2**20}.img").is_file()
    # the next work dir of that size is a copy: no mkfs.ext4 is needed any more
    quota.mkfs = "/nonexistent/mkfs.ext4"
    second = tmp_path / "k2"
    (second / "work").mkdir(parents=True)
    quota.attach(second / "work", 32 * 2**20)
    try:
        for k in (first, second):
            work = k / "work"
            assert os.path.ismount(work)
            assert {"nosuid", "nodev", "noatime"} <= mount_options(work)
            assert os.listdir(work) == []
            assert loops_of(k / IMAGE)
        (first / "work" / "mine").write_text("first")
        assert not (second / "work" / "mine").exists()  # each a filesystem of its own
        with pytest.raises(OSError) as err:
            (second / "work" / "big").write_bytes(b"x" * (48 * 2**20))
        assert err.value.errno == errno.ENOSPC
    finally:
        for k in (first, second):
            remove_folder(k)
    for k in (first, second):
        assert not k.exists() and not loops_of(k / IMAGE)


def _recycler(tmp_path: Path) -> WorkdirQuota:
    assert QUOTA is not None
    quota = WorkdirQuota(QUOTA.mkfs, QUOTA.mount, QUOTA.umount)
    quota.template_dir = tmp_path / TEMPLATES
    quota.spare_dir = tmp_path / SPARES
    return quota


def test_a_recycled_work_dir_filesystem_comes_back_empty_and_root_s(tmp_path: Path) -> None:
    """What a kernel left in its work dir's filesystem (files, a folder it locked itself out
    of, a link out, extended attributes on the root, its own ownership) is gone before the
    filesystem serves the next work dir; the quota still holds there."""
    quota = _recycler(tmp_path)
    first = tmp_path / "k1"
    work = first / "work"
    work.mkdir(parents=True)
    quota.attach(work, 32 * 2**20)
    (work / "secret").write_text("first kernel's")
    (work / "deep" / "er").mkdir(parents=True)
    (work / "deep" / "er" / "f").write_text("x")
    os.chmod(work / "deep", 0)
    (work / "out").symlink_to(tmp_path)
    os.chown(work, 2_000_123, 2_000_123)
    os.chmod(work, 0o777)
    os.setxattr(work, "user.mark", b"first")
    (first / "labels.json").write_text("{}")
    assert quota.recycle(first)
    assert not first.exists() and tmp_path.exists()  # (the link was removed, not followed)
    second = tmp_path / "k2"
    quota.mkfs = "/nonexistent/mkfs.ext4"
    assert quota.reuse(second, 32 * 2**20)
    try:
        work = second / "work"
        assert os.path.ismount(work)
        assert {"nosuid", "nodev", "noatime"} <= mount_options(work)
        assert sorted(os.listdir(second)) == sorted(["work", IMAGE])
        assert os.listdir(work) == []
        st = os.stat(work)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o700)
        assert os.listxattr(work) == []
        with pytest.raises(OSError) as err:
            (work / "big").write_bytes(b"x" * (48 * 2**20))
        assert err.value.errno == errno.ENOSPC
        assert not quota.reuse(tmp_path / "k3", 32 * 2**20)  # one kept, one taken
    finally:
        remove_folder(second)
    assert not loops_of(second / IMAGE)


def test_a_work_dir_filesystem_with_much_written_is_not_recycled(tmp_path: Path) -> None:
    quota = _recycler(tmp_path)
    many, big = tmp_path / "many", tmp_path / "big"
    for k in (many, big):
        (k / "work").mkdir(parents=True)
        quota.attach(k / "work", 32 * 2**20)
    try:
        for i in range(RECYCLE_MAX_FILES + 5):
            (many / "work" / str(i)).write_text("")
        (big / "work" / "blob").write_bytes(os.urandom(RECYCLE_MAX_BYTES + 2**20))
        assert not quota.recycle(many) and not quota.recycle(big)
        assert (many / "work" / "0").exists() and (big / "work" / "blob").exists()
    finally:
        for k in (many, big):
            remove_folder(k)


def test_kept_filesystems_are_unmounted_when_dropped(tmp_path: Path) -> None:
    quota = _recycler(tmp_path)
    k = tmp_path / "k"
    (k / "work").mkdir(parents=True)
    quota.attach(k / "work", 32 * 2**20)
    assert quota.recycle(k)
    (kept,) = (tmp_path / SPARES).iterdir()
    assert os.path.ismount(kept / "work")
    quota.drop_spares()
    assert not kept.exists() and not loops_of(kept / IMAGE)
    assert not quota.reuse(tmp_path / "k2", 32 * 2**20)
