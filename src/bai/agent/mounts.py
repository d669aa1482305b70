"""Storage folders bound into kernels: the kernel spec's ``mounts`` resolved on this agent.

Each mount names a storage host and the folder's path beneath it (``relpath``). The agent looks
the host up in its own ``storage_roots`` and walks ``relpath`` one component at a time with
``O_NOFOLLOW``: a symlink or a non-folder anywhere on the way, an absolute path or ``..`` is
refused, so nothing outside the root is ever bound. The folder itself is then bound at its
``kernel_path`` by the runtime (bubblewrap ``--bind``/``--ro-bind`` in the process runtime, a
Docker bind mount, read-only for ``ro``): read-only is the kernel's mount flag, not a promise.

What the walk cannot see changing afterwards: the folders on the way are made by the manager's
folder service beneath a root that no kernel can write, and a kernel only ever sees the inside
of its folders, so a symlink planted *inside* a folder resolves within the kernel's own view.

Kernels run as uids of their own (one per kernel), so each folder gets a default POSIX ACL
``rwx`` for owner, group and others: what one session writes, the next (another uid) can read
and change, whatever the writer's umask. Only the kernels that bind the folder (and root) can
reach it; the storage root's parent must not be open to other host users (the embedded default
keeps it in the private state dir).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bai.common.mounts import MODES, path_problem, relpath_problem

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: ``system.posix_acl_default``: version 2, then (tag, perm, id) for USER_OBJ, GROUP_OBJ, OTHER
#: (the stdlib has no ACL call and Debian's ``acl`` tools are not installed everywhere)
_ACL_NAME = "system.posix_acl_default"
_ACL_ALL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, 7, 0xFFFFFFFF) for tag in (0x01, 0x04, 0x20))


class MountRefused(Exception):
    """A mount of the kernel spec that this agent will not bind (the message says why)."""


@dataclass(frozen=True)
class HostMount:
    name: str
    #: the folder on this host
    source: str
    #: where the kernel sees it
    target: str
    read_only: bool
    #: the storage root and the folder's path beneath it (to walk again when attaching)
    root: str = ""
    relpath: str = ""


def _walk(fd: int, parts: list[str], make: bool = False) -> int:
    """From directory ``fd`` (consumed) down ``parts`` without following a link, making the
    missing folders (0755) if ``make``: the last one's fd. Raises OSError."""
    try:
        for part in parts:
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_beneath(root: str, relpath: str) -> int:
    """A directory fd of ``root/relpath`` reached without following any symlink below ``root``
    (``root`` itself is the operator's: it may be a link). Raises MountRefused."""
    problem = relpath_problem(relpath)
    if problem:
        raise MountRefused(f"folder path {relpath!r} is {problem}")
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise MountRefused(f"storage root {root}: {e.strerror}") from None
    try:
        return _walk(fd, relpath.split("/"))
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise MountRefused(f"folder path {relpath!r}: a symlink or not a folder on the "
                               "way") from None
        if e.errno == errno.ENOENT:
            raise MountRefused(f"folder {relpath!r} does not exist under {root} (is the "
                               "storage host mounted on this agent?)") from None
        raise MountRefused(f"folder {relpath!r}: {e.strerror}") from None


def share(fd: int, name: str) -> None:
    """Let every kernel uid that binds the folder read and write what others wrote (see the
    module doc); where the filesystem cannot, the folder stays as it is (logged)."""
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o777:
            os.chmod(fd, 0o777)
        try:
            current = os.getxattr(fd, _ACL_NAME)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
            current = None
        if current != _ACL_ALL:
            os.setxattr(fd, _ACL_NAME, _ACL_ALL)
    except OSError as e:
        log.warning("folder %s: cannot open it to every kernel uid (%s): files one session "
                    "writes may not be writable by the next", name, e)


def resolve(roots: Mapping[str, str], mounts: list[dict[str, Any]]) -> list[HostMount]:
    """The host folders of a kernel spec's ``mounts``. Raises MountRefused for the first one
    this agent cannot or may not bind."""
    out: list[HostMount] = []
    for m in mounts:
        name, host = str(m.get("name", "")), str(m.get("host", ""))
        relpath, target, mode = m.get("relpath"), str(m.get("kernel_path", "")), m.get("mode")
        root = roots.get(host)
        if root is None:
            raise MountRefused(f"folder {name!r}: storage host {host!r} is not configured on "
                               f"this agent (storage_roots: {', '.join(sorted(roots)) or 'none'})")
        if mode not in MODES:
            raise MountRefused(f"folder {name!r}: invalid mode {mode!r}")
        if not target.startswith("/") or os.path.normpath(target) != target or path_problem(
                target):
            raise MountRefused(f"folder {name!r}: invalid mount point {target!r}")
        fd = open_beneath(root, str(relpath))
        try:
            share(fd, name)
        finally:
            os.close(fd)
        out.append(HostMount(name, os.path.join(root, str(relpath)), target, mode == "ro",
                             root, str(relpath)))
    return out


# -- folders added to a sandbox that is already running (pre-started runners) ----------------
#
# A pre-started runner's sandbox exists before its session's folders are known. Its work dir is
# a mount of its own with shared propagation (``make_shared``), so the sandbox's /home/work is a
# slave of it: a mount the agent attaches beneath the work dir on the host appears inside at
# once. Each folder is cloned into a detached mount (``open_tree``), given nosuid, nodev and,
# for ``ro``, the read-only flag (``mount_setattr``) while detached, and only then attached
# (``move_mount``): every copy propagation makes carries the flags from the start. Linux >= 5.12;
# where a call fails the session starts cold instead.

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and arm64 alike
_OPEN_TREE_CLONE, _AT_EMPTY_PATH = 0x1, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MS_BIND, _MS_PRIVATE, _MS_SHARED = 0x1000, 1 << 18, 1 << 20
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
           f"mount {target}")


def _escaped(path: str) -> bytes:
    """``path`` as /proc/self/mountinfo writes it (space, tab, newline and backslash octal)."""
    return (os.fsencode(path).replace(b"\\", b"\\134").replace(b" ", b"\\040")
            .replace(b"\t", b"\\011").replace(b"\n", b"\\012"))


def mountinfo_below(folder: Path | str) -> list[tuple[str, list[bytes]]]:
    """(mount point, the line's fields) of each mount at or beneath ``folder`` in this mount
    namespace, in mountinfo's order; OSError when mountinfo cannot be read. Only the lines that
    name ``folder`` are parsed: a host has hundreds of mounts, a kernel's folder one or two."""
    top = os.path.abspath(folder)
    mark = b" " + _escaped(top)
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    if mark not in data:
        return []
    out = []
    for line in data.split(b"\n"):
        if mark not in line:
            continue
        fields = line.split(b" ")
        point = fields[4].decode("unicode_escape")  # \040 etc. are octal
        if point == top or point.startswith(top + "/"):
            out.append((point, fields))
    return out


def mounts_below(folder: Path) -> list[str]:
    """The mount points at or beneath ``folder`` in this mount namespace, deepest first."""
    try:
        found = mountinfo_below(folder)
    except OSError:
        return []
    return sorted({point for point, _ in found}, key=lambda p: -p.count("/"))


def detach_below(folder: Path) -> None:
    """Detach every mount at or beneath ``folder`` (lazily; errors ignored)."""
    for point in mounts_below(folder):
        _libc.umount2(point.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW)


def make_shared(work: Path) -> None:
    """Make ``work`` a mount of its own in a peer group of its own (a bind onto itself if it is
    not a mount yet), so that mounts attached beneath it reach a sandbox that binds it."""
    if not os.path.ismount(work):
        _mount(str(work), str(work), _MS_BIND)
    _mount(None, str(work), _MS_PRIVATE)
    _mount(None, str(work), _MS_SHARED)


def attach(m: HostMount, workdir: Path, workdir_inside: str) -> None:
    """Bind folder ``m`` beneath the host's ``workdir`` (seen at ``workdir_inside`` by the
    kernel) as a detached clone attached at once (see above). Raises OSError or MountRefused."""
    if not m.target.startswith(workdir_inside + "/"):
        raise MountRefused(f"folder {m.name!r}: {m.target} is outside the work dir")
    src = open_beneath(m.root, m.relpath)
    try:
        tree = _check(_libc.syscall(_SYS_OPEN_TREE, src, b"",
                                    _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH),
                      "open_tree")
    finally:
        os.close(src)
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
                          | (_MOUNT_ATTR_RDONLY if m.read_only else 0))
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH,
                             ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")
        dest = _walk(os.open(workdir, _DIR_FLAGS | os.O_NOFOLLOW),
                     m.target[len(workdir_inside) + 1:].split("/"), make=True)
        try:
            _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", dest, b"",
                                 _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH),
                   "move_mount")
        finally:
            os.close(dest)
    finally:
        os.close(tree)
