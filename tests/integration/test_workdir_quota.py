"""Work dir quotas (agent/quota.py): an empty filesystem made once per size and copied, mounted by
system calls; the quota holds, and removing the folder unmounts it and frees its loop device."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bai.agent.quota import IMAGE, TEMPLATES, WorkdirQuota, remove_folder

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
