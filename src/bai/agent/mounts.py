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

import errno
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
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
        for part in relpath.split("/"):
            try:
                nfd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise MountRefused(
                        f"folder path {relpath!r}: {part!r} is a symlink or not a folder"
                    ) from None
                if e.errno == errno.ENOENT:
                    raise MountRefused(
                        f"folder {relpath!r} does not exist under {root} (is the storage host "
                        "mounted on this agent?)") from None
                raise MountRefused(f"folder {relpath!r}: {e.strerror}") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


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
        out.append(HostMount(name, os.path.join(root, str(relpath)), target, mode == "ro"))
    return out
