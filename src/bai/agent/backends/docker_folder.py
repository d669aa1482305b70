"""A docker kernel's host folder ``<scratch_root>/<kernel_id>`` (or a standby's
``<scratch_root>/.pool/<token>``, renamed when claimed):

* the folder itself: root's, 0700 -- no host user and no session can rename or swap what is in it;
* ``work/`` (mounted at ``/home/work``): the kernel's uid owns it; the agent bind-mounts it onto
  itself with ``nosuid,nodev`` before the container starts (a Docker bind mount cannot say
  ``nosuid``, but it inherits the flags of the mount it copies), so a setuid binary or a device
  node a session makes there means nothing, on the host either. Unmounted when the folder goes;
* ``run/`` (mounted at ``/run/bai``): root's, 0700 -- the runner binds its socket and opens its
  log there while still root, so no session can replace the socket the agent connects to or the
  log the agent reads.

Storage folders a claimed standby takes (``docker_pool``) are bound beneath ``work/`` on the
host (``agent/mounts.py``: ``work/`` is a shared mount bound ``rslave`` into the container);
``remove`` detaches them with ``work/`` and removes nothing while any mount is left beneath
the folder (the removal would reach into a storage folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
from pathlib import Path

from bai.agent.backends.docker_cgroup import in_container
from bai.agent.backends.docker_spec import RUN_DIR, WORK_DIR
from bai.agent.mounts import detach_below, mounts_below
from bai.agent.quota import IMAGE, WorkdirQuota

log = logging.getLogger(__name__)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    if _libc.mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def make(home: Path, uid: int, quota: WorkdirQuota | None = None, nbytes: int = 0) -> bool:
    """Make ``home`` with ``work/`` (owned by ``uid``) and ``run/``; True when ``work/`` is
    mounted ``nosuid,nodev`` (False where the agent may not mount: not root). With ``quota``,
    ``work/`` is a filesystem of ``nbytes`` (``agent/quota.py``, mounted ``nosuid,nodev``);
    raises QuotaError where it cannot be made."""
    home.mkdir(mode=0o700)
    os.chmod(home, 0o700)  # whatever the umask
    work, run = home / WORK_DIR, home / RUN_DIR
    work.mkdir(mode=0o755)
    run.mkdir(mode=0o700)
    os.chmod(run, 0o700)
    if quota is not None:
        quota.attach(work, nbytes)
    os.chmod(work, 0o755)
    os.chown(work, uid, uid)
    if quota is not None:
        return True
    try:
        _mount(str(work), str(work), MS_BIND)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            return False
        raise
    try:
        _mount(None, str(work), MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    except BaseException:
        unmount(work)
        raise
    return True


def unmount(work: Path) -> None:
    """Detach every mount at ``work`` (none: nothing happens)."""
    for _ in range(8):  # a mount per make(); stacked ones only if something went wrong before
        if _libc.umount2(str(work).encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            return


def remove(home: Path) -> None:
    """Unmount ``home/work`` (and every folder bound beneath it) and remove ``home`` (never
    following a link inside); nothing is removed while a mount stays beneath it (logged).
    Idempotent."""
    with contextlib.suppress(OSError):
        unmount(home / WORK_DIR)
    detach_below(home)
    left = mounts_below(home)
    if left:
        log.error("not removing %s: still mounted beneath it: %s", home, ", ".join(left))
        return
    with contextlib.suppress(OSError):
        (home / IMAGE).unlink()  # a quota's image (its loop device went with the unmount)
    shutil.rmtree(home, ignore_errors=True)


def is_nosuid(path: Path) -> bool:
    flags = os.statvfs(path).f_flag
    return bool(flags & os.ST_NOSUID) and bool(flags & os.ST_NODEV)


def make_shared(work: Path) -> None:
    """Give the mount at ``work`` (``make`` made it one) a peer group of its own, so that what
    the agent binds beneath it reaches a container that binds ``work`` ``rslave``. The mount
    table says whether it is a mount (``os.path.ismount`` cannot see a bind onto itself), so
    no second mount is stacked on it (the engine would look at the lower one)."""
    if str(work.absolute()) not in mounts_below(work):
        _mount(str(work), str(work), MS_BIND)
    _mount(None, str(work), MS_PRIVATE)
    _mount(None, str(work), MS_SHARED)


def seen_in(pid: int, container_id: str) -> dict[str, set[str]]:
    """The mount points of process ``pid``'s mount namespace (as the container sees them) and
    each one's mount options. Raises OSError when ``pid`` is not container ``container_id``'s."""
    raw = Path(f"/proc/{pid}/mountinfo").read_bytes()
    if not in_container(pid, container_id):  # read from a recycled pid
        raise OSError(errno.ESRCH, "the container's process is gone")
    out: dict[str, set[str]] = {}
    for line in raw.splitlines():
        fields = line.split(b" ")
        if len(fields) > 5:  # \040 etc. are octal escapes
            out[fields[4].decode("unicode_escape")] = set(fields[5].decode().split(","))
    return out
