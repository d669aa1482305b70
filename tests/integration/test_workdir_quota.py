"""Work dir quotas (agent/quota.py): an empty filesystem made once per size and copied, mounted by
system calls; the quota holds, and removing the folder unmounts it and frees its loop device."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bai.agent.mounts import make_shared, mountinfo_below
from bai.agent.quota import (IMAGE, MIN_BYTES, PREZEROED, RECYCLE_MAX_BYTES, RECYCLE_MAX_FILES,
                            SPARES, TEMPLATES, WorkdirQuota, remove_folder)

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


def _propagation(work: Path) -> list[bytes]:
    [(_, fields)] = mountinfo_below(work)
    return [o for o in fields[6:fields.index(b"-")] if o.startswith((b"shared:", b"master:"))]


def test_a_pooled_runner_s_shared_work_dir_filesystem_is_recycled_private(
        tmp_path: Path) -> None:
    """A pre-started runner's work dir is shared (``make_shared``, so that folders reach its
    sandbox later): once its kernel is gone its filesystem is kept as any other's, and comes
    back private; a mount that receives from another (a slave) is not kept."""
    quota = _recycler(tmp_path)
    pooled, slave, other = tmp_path / "k1", tmp_path / "k2", tmp_path / "k3"
    peer = tmp_path / "peer"
    try:
        for k in (pooled, slave, other):
            (k / "work").mkdir(parents=True)
            quota.attach(k / "work", 32 * 2**20)
        make_shared(pooled / "work")
        (pooled / "work" / "f").write_text("the kernel's")
        assert _propagation(pooled / "work")[0].startswith(b"shared:")
        make_shared(other / "work")  # a peer outside the folder, then a slave of it
        peer.mkdir()
        subprocess.run(["mount", "--bind", str(other / "work"), str(peer)], check=True)
        subprocess.run(["mount", "--make-slave", str(other / "work")], check=True)
        assert _propagation(other / "work")[0].startswith(b"master:")
        assert quota.recycle(pooled)
        assert not quota.recycle(other)
        assert quota.reuse(slave / "again", 32 * 2**20)
        assert _propagation(slave / "again" / "work") == []
        assert os.listdir(slave / "again" / "work") == []
    finally:
        if peer.exists():
            subprocess.run(["umount", "-l", str(peer)], check=False)
        for k in (pooled, slave, other):
            if k.exists():
                remove_folder(k)
        quota.drop_spares()


def test_kept_filesystems_are_in_no_mount_table_and_gone_when_dropped(tmp_path: Path) -> None:
    """A kept filesystem is held by the agent, detached: no mount table lists it (every
    sandbox copies the agent's and reads it again for each of its mounts), its loop device
    stays; dropped, both are gone."""
    quota = _recycler(tmp_path)
    k = tmp_path / "k"
    (k / "work").mkdir(parents=True)
    quota.attach(k / "work", 32 * 2**20)
    assert quota.recycle(k)
    (kept,) = (tmp_path / SPARES).iterdir()
    assert not os.path.ismount(kept / "work")
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert loops_of(kept / IMAGE)
    quota.drop_spares()
    assert not kept.exists() and not loops_of(kept / IMAGE)
    assert not quota.reuse(tmp_path / "k2", 32 * 2**20)


def test_a_burst_of_64_work_dir_filesystems_is_kept_for_the_next(tmp_path: Path) -> None:
    """64 one-CPU jobs on 64 slots end together: each filesystem is kept for the next burst,
    which then mounts none (a fresh one costs a copy, a loop device and a mount, and its end an
    unmount)."""
    quota = _recycler(tmp_path)
    folders = [tmp_path / f"k{i}" for i in range(64)]
    try:
        for k in folders:
            (k / "work").mkdir(parents=True)
            quota.attach(k / "work", 32 * 2**20)
        assert all([quota.recycle(k) for k in folders])
        quota.mkfs = "/nonexistent/mkfs.ext4"
        quota.template_dir = tmp_path / "no-templates"  # a copy would fail: none is made
        assert all(quota.reuse(tmp_path / f"n{i}", 32 * 2**20) for i in range(64))
        assert not quota.reuse(tmp_path / "n64", 32 * 2**20)
    finally:
        for k in tmp_path.iterdir():
            if k.name.startswith(("k", "n")):
                remove_folder(k)
        quota.drop_spares()


def test_mounts_beneath_a_folder_with_odd_characters_are_found(tmp_path: Path) -> None:
    """A folder whose path mountinfo escapes (a space, a backslash): its work dir filesystem is
    recycled, and a folder bound beneath another one's work dir is unmounted before the removal
    (its files untouched) and stops that one's recycling."""
    quota = _recycler(tmp_path)
    odd, bound = tmp_path / "k 1\\x", tmp_path / "k 2\\x"
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "keep").write_text("a user's file")
    try:
        for k in (odd, bound):
            (k / "work").mkdir(parents=True)
            quota.attach(k / "work", 32 * 2**20)
        (bound / "work" / "data").mkdir()
        subprocess.run(["mount", "--bind", str(storage), str(bound / "work" / "data")], check=True)
        assert quota.recycle(odd)
        assert not quota.recycle(bound)
        assert (bound / "work" / "data" / "keep").exists()
        remove_folder(bound)
        assert not bound.exists() and not loops_of(bound / IMAGE)
        assert (storage / "keep").read_text() == "a user's file"
    finally:
        for k in (odd, bound):
            if k.exists():
                remove_folder(k)
        quota.drop_spares()


def _zeroed_groups(image: Path) -> tuple[int, int]:
    """(block groups, those whose inode table is marked zeroed) of the ext4 image."""
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True).stdout
    groups = [line for line in out.splitlines()
              if line.startswith("Group ") and line.split()[1][:-1].isdigit()]
    return len(groups), sum("ITABLE_ZEROED" in line for line in groups)


def _mkfs_knows_prezeroed(tmp_path: Path) -> bool:
    assert QUOTA is not None
    probe = tmp_path / "probe.img"
    with open(probe, "xb") as f:
        f.truncate(MIN_BYTES)
    return subprocess.run([QUOTA.mkfs, "-q", "-F", "-E", PREZEROED, str(probe)],
                          capture_output=True).returncode == 0


def test_an_empty_filesystem_is_made_with_its_inode_tables_marked_zeroed(
        tmp_path: Path) -> None:
    """The images are sparse (holes read as zeros): marked so, the kernel does not zero each
    work dir's inode tables again in the background (ext4lazyinit) after its mount."""
    if shutil.which("dumpe2fs") is None or not _mkfs_knows_prezeroed(tmp_path):
        pytest.skip("needs mkfs.ext4 >= 1.47 (assume_storage_prezeroed) and dumpe2fs")
    quota = _recycler(tmp_path)
    k = tmp_path / "k"
    (k / "work").mkdir(parents=True)
    quota.attach(k / "work", 256 * 2**20)
    try:
        groups, zeroed = _zeroed_groups(tmp_path / TEMPLATES / f"{256 * 2**20}.img")
        assert groups > 1 and zeroed == groups
    finally:
        remove_folder(k)


def test_a_mkfs_without_the_prezeroed_option_still_makes_work_dirs(tmp_path: Path) -> None:
    assert QUOTA is not None
    old = tmp_path / "old-mkfs"
    old.write_text(f'#!/bin/sh\ncase "$*" in *{PREZEROED}*) echo "Bad option(s)" >&2; '
                   f'exit 1;; esac\nexec {QUOTA.mkfs} "$@"\n')
    old.chmod(0o755)
    quota = _recycler(tmp_path)
    quota.mkfs = str(old)
    k = tmp_path / "k"
    (k / "work").mkdir(parents=True)
    quota.attach(k / "work", 32 * 2**20)
    try:
        assert os.path.ismount(k / "work")
        (k / "work" / "f").write_text("x")
    finally:
        remove_folder(k)
