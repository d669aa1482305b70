"""Disk quotas of work dirs: each quota'd work dir is a filesystem of its own size.

An ext4 image beside the work dir (sparse: it takes on disk only what was written), made by
``mkfs.ext4`` and loop-mounted ``nosuid,nodev`` on the work dir. Writes from inside the session
stop with ``ENOSPC`` at the quota; the kernel enforces it and nothing a session can do grows it
(project quotas would need a kernel built with ``CONFIG_QUOTA``, which some hosts lack, and
btrfs qgroups are escaped by a nested subvolume any user may create).

Each size's empty filesystem is made once by ``mkfs.ext4`` (``TEMPLATES`` beside the work dirs'
folders) and copied for each work dir (its written blocks only, ``copy_file_range``); the image is
attached to a loop device and mounted by system calls (``LOOP_CONFIGURE`` with autoclear,
``mount(2)``; ``umount2(MNT_DETACH)`` to remove): no process is started per work dir. Where a
call fails the tools do it as before (``mkfs.ext4``, ``mount -o loop``, ``umount -l``).

A work dir's filesystem that its kernel left (nearly) empty is kept for the next work dir of its
size (``recycle`` / ``reuse``: at most ``SPARES_MAX``, beside the work dirs' folders in
``SPARES``) instead of being unmounted and a copy mounted again: mount and unmount cost a job
more CPU than anything else the agent does for it (and wall time: both wait for the kernel's
mount lock). What the kernel wrote is removed first (the filesystem must hold at most
``RECYCLE_MAX_FILES`` files and ``RECYCLE_MAX_BYTES``, see there), its root is made root's, mode
0700, without extended attributes (ACLs), as a fresh one; the caller recycles only when every
process of the kernel is known gone (its cgroup removed), so nothing still holds a file of it.

A kept filesystem is held detached (``open_tree``, then its mount detached: an fd of the agent's,
in no mount table) and attached again by ``move_mount``: every sandbox copies the agent's mount
table and bwrap reads it again for each of its ~14 mounts, so 64 kept mounts cost each job ~1 ms
of CPU there. Where the kernel lacks those calls (Linux < 5.2) it stays mounted in ``SPARES``.
When the agent ends, even killed, its detached filesystems go with it.

Needs root, ``mkfs.ext4`` (e2fsprogs, in every Debian), ``mount`` and loop devices. Where any is
missing ``WorkdirQuota.detect()`` answers None: work dirs stay plain folders and the agent reports
``disk_quota: false`` in its isolation (docs/security.md says what is lost).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE = "work.img"
#: ext4 wants a few MiB for itself; a smaller quota is raised to this
MIN_BYTES = 16 * 1024**2
#: empty filesystems, one per size, copied for each work dir (beside the kernels' folders)
TEMPLATES = ".quota-templates"
#: emptied filesystems kept for the next work dirs (``WorkdirQuota.recycle``)
SPARES = ".quota-spares"
#: as many as a busy agent's kernels come and go at once (64 jobs of 1 CPU on 64 slots): with
#: fewer, a burst mounts fresh filesystems and unmounts as many again at its end; each kept one
#: costs a loop device and the template's written blocks (~2 MiB for 4 GiB), no CPU
SPARES_MAX = 64
#: a used filesystem is recycled only when it holds at most this many files (its root, the
#: ext4 reserved inodes and lost+found apart) and bytes, and its image takes at most
#: ``RECYCLE_MAX_GROWTH`` more on the host's disk than the empty one (what was written and
#: removed again); else it is unmounted and its image removed
RECYCLE_MAX_FILES = 64
RECYCLE_MAX_BYTES = 4 * 1024**2
RECYCLE_MAX_GROWTH = 32 * 1024**2
#: inodes of an empty filesystem as mkfs.ext4 makes it (10 reserved, root, lost+found, ...)
_EXT4_FIRST_INO = 11
MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard")
#: the images are sparse files (holes read as zeros): e2fsprogs >= 1.47 then marks the inode
#: tables zeroed, and the kernel's ext4lazyinit does not zero them again in the background
#: for each work dir mounted (~21 ms of kernel threads' CPU per fresh 4 GiB filesystem here).
#: An older mkfs.ext4 refuses the option: then without it
PREZEROED = "assume_storage_prezeroed=1"
#: <linux/loop.h>, <sys/mount.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID, MS_NODEV, MS_NOATIME = 2, 4, 1024
MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


class QuotaError(Exception):
    pass


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise QuotaError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[:300]}")


def copy_sparse(src: Path, dst_fd: int) -> None:
    """Copy ``src`` into the empty file ``dst_fd``: its data extents only, holes stay holes."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        os.ftruncate(dst_fd, size)
        off = 0
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    return
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            while data < hole:
                n = os.copy_file_range(fd, dst_fd, hole - data, data, data)
                if n <= 0:
                    raise OSError(errno.EIO, f"short copy of {src}")
                data += n
            off = hole
    finally:
        os.close(fd)


def loop_mount(image: Path, target: Path) -> None:
    """What ``mount -o loop,nosuid,nodev,noatime IMAGE TARGET`` does, by system calls: a free
    loop device gets the image (autoclear: it is released when the filesystem is unmounted, or
    at once if the mount fails), then ``mount(2)``. OSError when any step fails."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(16):  # another process may take the free device first
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            lfd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                img = os.open(image, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    info = struct.pack("=5Q4I", 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR)
                    config = struct.pack("=II", img, 0) + info + bytes(160 + 16 + 64)
                    try:
                        fcntl.ioctl(lfd, LOOP_CONFIGURE, config)
                    except OSError as e:
                        if e.errno == errno.EBUSY:
                            continue
                        raise
                finally:
                    os.close(img)
                if _libc.mount(dev.encode(), str(target).encode(), b"ext4",
                               MS_NOSUID | MS_NODEV | MS_NOATIME, None) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mount {dev} on {target}: {os.strerror(err)}")
                return
            finally:
                os.close(lfd)
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(ctl)


def detach(target: Path) -> None:
    """``umount -l TARGET`` by a system call (OSError when it fails)."""
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


class WorkdirQuota:
    def __init__(self, mkfs: str, mount: str, umount: str) -> None:
        self.mkfs, self.mount, self.umount = mkfs, mount, umount
        self._lock = threading.Lock()
        #: where the empty filesystems are kept (None: ``TEMPLATES`` beside the folder of the
        #: work dir's folder)
        self.template_dir: Path | None = None
        #: where recycled filesystems wait (None: none are kept), and those kept, by size
        self.spare_dir: Path | None = None
        #: by size: (folder, its filesystem detached (``open_tree``) or None: mounted there)
        self._spares: dict[int, list[tuple[Path, int | None]]] = {}

    @classmethod
    def detect(cls) -> WorkdirQuota | None:
        if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
            return None
        tools = [shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
                 for t in ("mkfs.ext4", "mount", "umount")]
        if not all(tools):
            return None
        return cls(*tools)  # type: ignore[arg-type]

    def attach(self, workdir: Path, nbytes: int) -> None:
        """Make the empty folder ``workdir`` a filesystem of ``nbytes``; raises QuotaError."""
        image = workdir.parent / IMAGE
        size = max(nbytes, MIN_BYTES)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            made = self._from_template(
                self.template_dir or workdir.parent.parent / TEMPLATES, size, fd)
            if not made:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        try:
            if not made:
                self._mkfs(image)
            try:
                loop_mount(image, workdir)
            except OSError as e:
                log.debug("loop mount by system calls failed (%s): mount -o loop", e)
                _run(self.mount, "-o", "loop,nosuid,nodev,noatime", str(image), str(workdir))
        except (QuotaError, OSError, subprocess.SubprocessError) as e:
            image.unlink(missing_ok=True)
            raise QuotaError(f"the work dir quota could not be made: {e}") from None
        with contextlib.suppress(OSError):
            (workdir / "lost+found").rmdir()

    def _mkfs(self, image: Path) -> None:
        """An empty ext4 filesystem in the sparse file ``image``; raises QuotaError."""
        *head, extended = MKFS_OPTIONS
        try:
            _run(self.mkfs, *head, f"{extended},{PREZEROED}", str(image))
        except QuotaError:
            _run(self.mkfs, *MKFS_OPTIONS, str(image))

    def _from_template(self, templates: Path, size: int, fd: int) -> bool:
        """Copy the empty filesystem of ``size`` (made once in ``templates``) into the image
        ``fd``; False where that cannot be done (the caller runs mkfs.ext4 instead)."""
        template = templates / f"{size}.img"
        try:
            with self._lock:
                if not template.is_file():
                    templates.mkdir(mode=0o700, exist_ok=True)
                    tmp = templates / f".{uuid.uuid4().hex}.tmp"
                    try:
                        with open(tmp, "xb") as f:
                            f.truncate(size)
                        self._mkfs(tmp)
                        tmp.rename(template)
                    finally:
                        tmp.unlink(missing_ok=True)
            copy_sparse(template, fd)
            return True
        except (QuotaError, OSError, subprocess.SubprocessError) as e:
            log.warning("work dir quota: no copy of an empty filesystem (%s): mkfs.ext4", e)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            return False

    def reuse(self, folder: Path, nbytes: int) -> bool:
        """Make the absent ``folder`` a kept one (``recycle``) whose ``work`` is an empty
        filesystem of ``nbytes``, mode 0700, root's; False where none of that size is kept."""
        size = max(nbytes, MIN_BYTES)
        while True:
            with self._lock:
                kept = self._spares.get(size)
                spare, tree = kept.pop() if kept else (None, None)
            if spare is None:
                return False
            try:
                spare.rename(folder)
            except OSError as e:
                log.warning("kept work dir filesystem %s unusable (%s): removed", spare, e)
                _close(tree)
                remove_folder(spare)
                continue
            try:
                if tree is not None:
                    _attach_tree(tree, folder / "work")
                return True
            except OSError as e:
                log.warning("kept work dir filesystem %s unusable (%s): removed", spare, e)
                remove_folder(folder)
            finally:
                _close(tree)

    def recycle(self, folder: Path) -> bool:
        """Keep the filesystem of ``folder/work`` for another work dir (``reuse``), emptied,
        and remove the rest of ``folder``; False (``folder`` then still to be removed, as
        ``remove_folder`` does) where it is not kept: no spares wanted, not a filesystem of
        this quota, not a private mount, something else mounted beneath ``folder``, enough
        kept already, more than a few files or MiB written. The caller makes sure nothing of
        the kernel runs any more."""
        work, image = folder / "work", folder / IMAGE
        if self.spare_dir is None:
            return False
        with self._lock:
            if sum(map(len, self._spares.values())) >= SPARES_MAX:
                return False
        if not _only_private_mount(folder, work):
            return False
        try:
            st = os.stat(image, follow_symlinks=False)
            template = (self.template_dir or folder.parent.parent / TEMPLATES) / f"{st.st_size}.img"
            blank = os.stat(template).st_blocks
            fs = os.statvfs(work)
        except OSError:
            return False
        if (st.st_blocks - blank) * 512 > RECYCLE_MAX_GROWTH \
                or (fs.f_blocks - fs.f_bfree) * fs.f_frsize > RECYCLE_MAX_BYTES \
                or fs.f_files - fs.f_ffree > _EXT4_FIRST_INO + 1 + RECYCLE_MAX_FILES:
            return False
        try:
            _empty(work)
            os.chown(work, 0, 0, follow_symlinks=False)
            os.chmod(work, 0o700, follow_symlinks=False)
            for attr in os.listxattr(work, follow_symlinks=False):
                os.removexattr(work, attr, follow_symlinks=False)
            if os.listdir(work) or os.listxattr(work, follow_symlinks=False):
                return False
            for entry in os.scandir(folder):
                if entry.name not in ("work", IMAGE):
                    _remove_entry(entry)
            self.spare_dir.mkdir(mode=0o700, exist_ok=True)
            spare = self.spare_dir / uuid.uuid4().hex
            folder.rename(spare)
        except OSError as e:
            log.debug("work dir filesystem of %s not kept: %s", folder, e)
            return False
        tree = _detach_tree(spare / "work")
        with self._lock:
            self._spares.setdefault(st.st_size, []).append((spare, tree))
        return True

    def drop_spares(self) -> None:
        """Unmount and remove every kept filesystem (and what a previous agent kept)."""
        with self._lock:
            kept, self._spares = self._spares, {}
        for _, tree in (spare for spares in kept.values() for spare in spares):
            _close(tree)
        if self.spare_dir is not None and self.spare_dir.is_dir():
            for folder in self.spare_dir.iterdir():
                remove_folder(folder)

    def size_of(self, workdir: Path) -> int | None:
        """The quota a work dir was made with (None: none)."""
        try:
            return (workdir.parent / IMAGE).stat().st_size
        except OSError:
            return None


def _only_private_mount(folder: Path, work: Path) -> bool:
    """Whether ``work`` is the only mount at or beneath ``folder``, and a private one (not in
    a peer group: nothing mounted there elsewhere would show up in it). A pre-started runner's
    work dir is shared in a peer group of its own (``mounts.make_shared``; its sandbox's copy
    was a slave of it, gone with the sandbox): it is made private here, and then is one."""
    from bai.agent.mounts import _MS_PRIVATE, _mount, mountinfo_below

    try:
        found = mountinfo_below(folder)
    except (OSError, ValueError):
        return False
    if len(found) != 1 or found[0][0] != os.path.abspath(work):
        return False
    fields = found[0][1]
    try:
        optional = fields[6:fields.index(b"-")]
    except ValueError:
        return False
    if any(o.startswith(b"master:") for o in optional):
        return False
    if any(o.startswith(b"shared:") for o in optional):
        try:
            _mount(None, str(work), _MS_PRIVATE)
        except OSError:
            return False
    return True


def _detach_tree(work: Path) -> int | None:
    """Hold the filesystem mounted on ``work`` by an fd (a detached clone of its mount,
    ``open_tree``) and detach the mount, so that it is in no mount table; None (still mounted)
    where the kernel lacks ``open_tree`` or the detach fails."""
    from bai.agent.mounts import _OPEN_TREE_CLONE, _SYS_OPEN_TREE

    tree = _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(work),
                         _OPEN_TREE_CLONE | os.O_CLOEXEC)
    if tree < 0:
        return None
    if _libc.umount2(os.fsencode(work), MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
        os.close(tree)  # (the clone goes; the mount stays)
        return None
    return tree


def _attach_tree(tree: int, work: Path) -> None:
    """Mount the filesystem held by ``tree`` (``_detach_tree``) on ``work`` (OSError)."""
    from bai.agent.mounts import _MOVE_MOUNT_F_EMPTY_PATH, _SYS_MOVE_MOUNT

    if _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(work),
                     _MOVE_MOUNT_F_EMPTY_PATH) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount onto {work}: {os.strerror(err)}")


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _remove_entry(entry: os.DirEntry) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)


def _empty(folder: Path) -> None:
    """Remove everything in ``folder`` (not following links; OSError when anything stays)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            _remove_entry(entry)


def remove_folder(folder: Path) -> None:
    """``shutil.rmtree`` of a kernel's or pooled runner's folder, its work dir's filesystem
    and every storage folder bound beneath it unmounted first (else the loop device and the
    image would outlive it, and the removal would reach into the storage folders). Where a
    mount stays, nothing is removed (logged)."""
    from bai.agent.mounts import detach_below, mounts_below

    work, image = folder / "work", folder / IMAGE
    if os.path.ismount(work):
        try:
            detach(work)
        except OSError:
            umount = shutil.which("umount", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
            with contextlib.suppress(QuotaError, OSError, subprocess.SubprocessError):
                _run(umount or "umount", "-l", str(work))
    detach_below(folder)
    left = mounts_below(folder)
    if left:
        log.error("not removing %s: still mounted beneath it: %s", folder, ", ".join(left))
        return
    image.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
