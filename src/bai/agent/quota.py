"""Disk quotas of work dirs: each quota'd work dir is a filesystem of its own size.

An ext4 image beside the work dir (sparse: it takes on disk only what was written), made by
``mkfs.ext4`` and loop-mounted ``nosuid,nodev`` on the work dir. Writes from inside the session
stop with ``ENOSPC`` at the quota; the kernel enforces it and nothing a session can do grows it
(project quotas would need a kernel built with ``CONFIG_QUOTA``, which some hosts lack, and
btrfs qgroups are escaped by a nested subvolume any user may create).

Needs root, ``mkfs.ext4`` (e2fsprogs, in every Debian), ``mount`` and loop devices. Where any is
missing ``WorkdirQuota.detect()`` answers None: work dirs stay plain folders and the agent reports
``disk_quota: false`` in its isolation (docs/security.md says what is lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE = "work.img"
#: ext4 wants a few MiB for itself; a smaller quota is raised to this
MIN_BYTES = 16 * 1024**2


class QuotaError(Exception):
    pass


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise QuotaError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[:300]}")


class WorkdirQuota:
    def __init__(self, mkfs: str, mount: str, umount: str) -> None:
        self.mkfs, self.mount, self.umount = mkfs, mount, umount

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
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, max(nbytes, MIN_BYTES))
        finally:
            os.close(fd)
        try:
            _run(self.mkfs, "-q", "-F", "-m", "0", "-O", "^has_journal",
                 "-E", "lazy_itable_init=1,nodiscard", str(image))
            _run(self.mount, "-o", "loop,nosuid,nodev,noatime", str(image), str(workdir))
        except (QuotaError, OSError, subprocess.SubprocessError) as e:
            image.unlink(missing_ok=True)
            raise QuotaError(f"the work dir quota could not be made: {e}") from None
        with contextlib.suppress(OSError):
            (workdir / "lost+found").rmdir()

    def size_of(self, workdir: Path) -> int | None:
        """The quota a work dir was made with (None: none)."""
        try:
            return (workdir.parent / IMAGE).stat().st_size
        except OSError:
            return None


def remove_folder(folder: Path) -> None:
    """``shutil.rmtree`` of a kernel's or pooled runner's folder, its work dir's filesystem
    and every storage folder bound beneath it unmounted first (else the loop device and the
    image would outlive it, and the removal would reach into the storage folders). Where a
    mount stays, nothing is removed (logged)."""
    from bai.agent.mounts import detach_below, mounts_below

    work, image = folder / "work", folder / IMAGE
    if os.path.ismount(work):
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
