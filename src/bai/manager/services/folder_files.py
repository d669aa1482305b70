"""Files inside a folder, never through a link: listing, mkdir, remove, move, upload, download.

Sessions write folders too, so anything in a folder may be a link planted to lead out of it.
Every operation walks from a descriptor pinned on the folder's directory, one component at a time
with ``O_NOFOLLOW | O_DIRECTORY``, and acts on the last component relative to its parent's
descriptor (``openat``, ``mkdirat``, ``renameat``, ``unlinkat``): a link on the way is refused,
a link at the end is handled as the link itself (removed, moved, listed), never followed. Paths
are relative, without ``..``; absolute ones are taken relative to the folder (``/a`` = ``a``)
the way the official client sends them.

All functions block (call them in a thread). Errors are ``BaiError``s that name the path.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bai.common.errors import BaiError, InvalidAPIParameters, NotFound

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: what the manager makes in a folder is writable by every kernel uid that mounts it (the agent
#: gives folders a default ACL to the same end): only kernels that bind the folder and root reach
#: it at all, the storage root above it is closed (0700). Modes are set explicitly, whatever the
#: server's umask (the embedded default runs with 077).
DIR_MODE = 0o777
FILE_MODE = 0o666
#: the hidden name an upload is written under until it is whole (beside its target)
UPLOAD_PREFIX = ".bai-upload-"
#: listing page size when none is asked for, and the most one page may hold
PAGE = 1000
MAX_PAGE = 10_000


class PathEscapes(InvalidAPIParameters):
    title = "The path is outside the folder."


class FolderFileNotFound(NotFound):
    code = "vfolder-file-not-found"
    title = "No such file or folder in the storage folder."


class FolderQuotaExceeded(BaiError):
    code = "vfolder-quota-exceeded"
    status = 413
    title = "Disk quota exceeded."


class FolderFileExists(BaiError):
    code = "vfolder-file-exists"
    status = 409
    title = "The path already exists in the storage folder."


def parts_of(rel: Any, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of a path inside a folder; ``()`` is the folder itself (only when
    ``allow_root``)."""
    if not isinstance(rel, str) or "\x00" in rel:
        raise InvalidAPIParameters(f"invalid path {rel!r}")
    parts = tuple(p for p in PurePosixPath(rel).parts if p not in ("/", "", "."))
    if ".." in parts:
        raise PathEscapes(f"'..' is not allowed in folder paths: {rel}")
    if not parts and not allow_root:
        raise InvalidAPIParameters(f"not a file name: {rel!r}")
    return parts


def _shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts) or "."


def oserror(e: OSError, parts: tuple[str, ...]) -> BaiError:
    shown = _shown(parts)
    if e.errno == errno.ENOENT:
        return FolderFileNotFound(f"no such file or folder: {shown}", data={"path": shown})
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return PathEscapes(f"{shown}: a folder on the way is a link or not a folder")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return FolderQuotaExceeded(f"disk quota exceeded writing {shown}")
    if e.errno == errno.EEXIST:
        return FolderFileExists(f"already exists: {shown}", data={"path": shown})
    if e.errno == errno.ENOTEMPTY:
        return InvalidAPIParameters(f"{shown} is a folder that is not empty (use recursive)")
    if e.errno == errno.EISDIR:
        return InvalidAPIParameters(f"{shown} is a folder")
    return BaiError(f"{shown}: {e.strerror}")


@contextlib.contextmanager
def pinned(folder: Path) -> Iterator[int]:
    """A descriptor on the folder's own directory (its last part must not be a link)."""
    try:
        fd = os.open(folder, O_DIR)
    except OSError as e:
        raise BaiError(f"the folder's storage is not available: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent_of(root_fd: int, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
    """A descriptor on the folder holding ``parts[-1]`` (``create``: make missing folders)."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts[:-1]):
            try:
                nxt = os.open(name, O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise oserror(FileNotFoundError(errno.ENOENT, "missing"), parts[:i + 1]) \
                        from None
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                    os.chmod(name, DIR_MODE, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise oserror(e, parts[:i + 1]) from None
                try:
                    nxt = os.open(name, O_DIR, dir_fd=fd)
                except OSError as e:
                    raise oserror(e, parts[:i + 1]) from None
            except OSError as e:
                raise oserror(e, parts[:i + 1]) from None
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory(root_fd: int, parts: tuple[str, ...]) -> Iterator[int]:
    """A descriptor on the folder ``parts`` (``()``: the folder itself)."""
    if not parts:
        fd = os.dup(root_fd)
    else:
        with parent_of(root_fd, parts) as pfd:
            try:
                fd = os.open(parts[-1], O_DIR, dir_fd=pfd)
            except OSError as e:
                raise oserror(e, parts) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _entry(name: str, st: os.stat_result) -> dict[str, Any]:
    kind = "DIRECTORY" if stat.S_ISDIR(st.st_mode) else (
        "SYMLINK" if stat.S_ISLNK(st.st_mode) else "FILE")
    return {"name": name, "filename": name, "type": kind, "size": st.st_size,
            "mode": stat.filemode(st.st_mode), "mtime": st.st_mtime, "created": st.st_ctime,
            "modified": st.st_mtime}


@dataclass
class Page:
    entries: list[dict[str, Any]]
    total: int
    offset: int


def list_dir(folder: Path, rel: str = ".", *, offset: int = 0, limit: int | None = None,
             order: str = "name") -> Page:
    """One page of a folder's entries, sorted by name (``order="none"``: in the directory's
    own order, which stays the same while it is unchanged). Only the page is stat-ed. Sorted:
    every name is read (a sort needs them) but only the first ``offset + limit`` are ordered
    (a heap, O(n log k)); unsorted: reading stops after the page, so the first page costs the
    same in a folder of any size (``total`` is then -1: not counted)."""
    parts = parts_of(rel or ".", allow_root=True)
    limit = PAGE if limit is None else max(0, min(limit, MAX_PAGE))
    with pinned(folder) as root, directory(root, parts) as dfd:
        if order == "none":
            names, total = [], -1
            with os.scandir(dfd) as it:
                for i, entry in enumerate(it):
                    if i >= offset + limit:
                        break
                    if i >= offset:
                        names.append(entry.name)
            page_names = names
        else:
            names = os.listdir(dfd)
            total = len(names)
            want = offset + limit
            head = heapq.nsmallest(want, names) if want < total // 2 else sorted(names)
            page_names = head[offset:want]
        page = []
        for name in page_names:
            with contextlib.suppress(FileNotFoundError):
                page.append(_entry(name, os.stat(name, dir_fd=dfd, follow_symlinks=False)))
    return Page(page, total, offset)


def list_all(folder: Path, rel: str = ".") -> list[dict[str, Any]]:
    """Every entry of a folder (the official client's ``files`` answer has no pages)."""
    parts = parts_of(rel or ".", allow_root=True)
    out = []
    with pinned(folder) as root, directory(root, parts) as dfd:
        for name in sorted(os.listdir(dfd)):
            with contextlib.suppress(FileNotFoundError):
                out.append(_entry(name, os.stat(name, dir_fd=dfd, follow_symlinks=False)))
    return out


def mkdir(folder: Path, rel: str, *, parents: bool = False, exist_ok: bool = False) -> None:
    parts = parts_of(rel)
    with pinned(folder) as root, parent_of(root, parts, create=parents) as pfd:
        try:
            os.mkdir(parts[-1], DIR_MODE, dir_fd=pfd)
            os.chmod(parts[-1], DIR_MODE, dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            if not (exist_ok and stat.S_ISDIR(st.st_mode)):
                raise oserror(FileExistsError(errno.EEXIST, "exists"), parts) from None
        except OSError as e:
            raise oserror(e, parts) from None


def remove(folder: Path, rels: list[str], *, recursive: bool = False) -> None:
    """Remove files (and, ``recursive``, folders with what they hold); every path is checked
    before anything is removed."""
    all_parts = [parts_of(r) for r in rels]
    with pinned(folder) as root:
        for parts in all_parts:  # all exist first: a typo removes nothing
            with parent_of(root, parts) as pfd:
                try:
                    os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                except OSError as e:
                    raise oserror(e, parts) from None
        for parts in all_parts:
            with parent_of(root, parts) as pfd:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                try:
                    if stat.S_ISDIR(st.st_mode):
                        if not recursive:
                            raise InvalidAPIParameters(
                                f"{_shown(parts)} is a folder: remove it with recursive (-r)")
                        # rmtree with dir_fd walks by openat and never follows a link
                        shutil.rmtree(parts[-1], dir_fd=pfd)
                    else:
                        os.unlink(parts[-1], dir_fd=pfd)
                except OSError as e:
                    raise oserror(e, parts) from None


def move(folder: Path, src: str, dst: str) -> None:
    """``mv``: onto ``dst``, or into it when it is an existing folder; never over a folder."""
    sp, dp = parts_of(src), parts_of(dst, allow_root=True)
    with pinned(folder) as root, parent_of(root, sp) as sfd:
        try:
            os.stat(sp[-1], dir_fd=sfd, follow_symlinks=False)
        except OSError as e:
            raise oserror(e, sp) from None
        into = False
        if not dp:
            into = True
        else:
            with parent_of(root, dp) as dfd:
                with contextlib.suppress(OSError):
                    into = stat.S_ISDIR(os.stat(dp[-1], dir_fd=dfd, follow_symlinks=False).st_mode)
        target = dp + (sp[-1],) if into else dp
        if target[:len(sp)] == sp:
            raise InvalidAPIParameters(f"cannot move {_shown(sp)} into itself")
        with parent_of(root, target) as dfd:
            if _exists(dfd, target[-1]):
                raise oserror(FileExistsError(errno.EEXIST, "exists"), target)
            try:
                os.rename(sp[-1], target[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
            except OSError as e:
                raise oserror(e, target) from None


def rename(folder: Path, rel: str, new_name: str) -> None:
    """Rename a file or folder in place (``new_name`` is one name, not a path)."""
    parts = parts_of(rel)
    if not isinstance(new_name, str) or len(parts_of(new_name)) != 1 or "/" in new_name:
        raise InvalidAPIParameters(f"invalid new name {new_name!r}: one name, no '/'")
    move(folder, rel, "/".join(parts[:-1] + (new_name,)))


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


# ---------------------------------------------------------------- upload and download


def check_target(folder: Path, rel: str) -> tuple[str, ...]:
    """The upload target's parts: it may not be a folder (missing parents are made later)."""
    parts = parts_of(rel)
    if parts[-1].startswith(UPLOAD_PREFIX):
        raise InvalidAPIParameters(f"{UPLOAD_PREFIX}* names are the uploads' own")
    with pinned(folder) as root:
        with contextlib.suppress(FolderFileNotFound), parent_of(root, parts) as pfd:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise InvalidAPIParameters(f"{_shown(parts)} is a folder")
    return parts


def upload_offset(folder: Path, rel: str, upload_id: str) -> int:
    """How many bytes of an upload arrived (0: none yet)."""
    parts = parts_of(rel)
    with pinned(folder) as root:
        try:
            with parent_of(root, parts) as pfd:
                fd = os.open(UPLOAD_PREFIX + upload_id, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=pfd)
        except (FolderFileNotFound, FileNotFoundError):
            return 0
        except OSError as e:
            raise oserror(e, parts) from None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)


def open_upload(folder: Path, rel: str, upload_id: str, offset: int) -> tuple[int, int]:
    """``(fd, parent fd)`` of the upload's hidden file positioned at ``offset``, which must
    be what arrived so far (tus: 409 otherwise). The caller closes both."""
    parts = parts_of(rel)
    with pinned(folder) as root, parent_of(root, parts, create=True) as pfd:
        keep = os.dup(pfd)
    try:
        fd = os.open(UPLOAD_PREFIX + upload_id,
                     os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=keep)
    except OSError as e:
        os.close(keep)
        raise oserror(e, parts) from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        os.fchmod(fd, FILE_MODE)  # whatever the server's umask
    if not stat.S_ISREG(st.st_mode) or st.st_size != offset:
        os.close(fd)
        os.close(keep)
        raise UploadOffsetMismatch(f"the upload is at {st.st_size if stat.S_ISREG(st.st_mode) else 0} "
                                   f"bytes, not {offset}", data={"offset": st.st_size})
    os.lseek(fd, offset, os.SEEK_SET)
    return fd, keep


class UploadOffsetMismatch(BaiError):
    code = "upload-offset-mismatch"
    status = 409
    title = "Upload-Offset does not match what arrived."


def finish_upload(parent_fd: int, rel: str, upload_id: str) -> None:
    """Rename the whole upload onto its target (a folder at the target is refused)."""
    parts = parts_of(rel)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise InvalidAPIParameters(f"{_shown(parts)} is a folder")
    try:
        os.rename(UPLOAD_PREFIX + upload_id, parts[-1], src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except OSError as e:
        raise oserror(e, parts) from None


def drop_upload(parent_fd: int, upload_id: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(UPLOAD_PREFIX + upload_id, dir_fd=parent_fd)


def sweep_parts(folder: Path, cutoff: float) -> int:
    """Remove the parts of uploads (``.bai-upload-*`` regular files) last written before
    ``cutoff`` (a ``time.time()``) anywhere in the folder, walked from descriptors without
    following links; returns how many were removed. A part being written is fresh; a part
    whose upload is taken up again after the sweep starts over (HEAD answers 0)."""
    try:
        with pinned(folder) as root:
            return _sweep(root, cutoff)
    except BaiError:
        return 0  # the storage is not available now: the next sweep tries again


def _sweep(root: int, cutoff: float) -> int:
    removed = 0
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        try:
            with directory(root, parts) as dfd, os.scandir(dfd) as it:
                for entry in it:
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            pending.append((*parts, entry.name))
                        elif (entry.name.startswith(UPLOAD_PREFIX)
                              and entry.is_file(follow_symlinks=False)
                              and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                            os.unlink(entry.name, dir_fd=dfd)
                            removed += 1
        except (OSError, BaiError):
            continue  # gone or replaced meanwhile (sessions write here too)
    return removed


def open_file(folder: Path, rel: str) -> int:
    """A read descriptor on a regular file of the folder (links and folders refused)."""
    parts = parts_of(rel)
    with pinned(folder) as root, parent_of(root, parts) as pfd:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=pfd)
        except OSError as e:
            raise oserror(e, parts) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidAPIParameters(f"{_shown(parts)} is not a regular file (a folder? "
                                   "download the files in it)")
    return fd


def usage(folder: Path, limit: int = 100_000) -> tuple[int, int]:
    """``(files, bytes)`` under the folder, walked without following links; stops counting
    past ``limit`` entries (info stays fast on huge folders)."""
    files = size = 0
    with pinned(folder) as root:
        stack = [os.dup(root)]
        while stack:
            fd = stack.pop()
            try:
                for entry in os.scandir(fd):
                    files += 1
                    st = entry.stat(follow_symlinks=False)
                    size += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode) and files < limit:
                        with contextlib.suppress(OSError):
                            stack.append(os.open(entry.name, O_DIR, dir_fd=fd))
            finally:
                os.close(fd)
            if files >= limit:
                for fd in stack:
                    os.close(fd)
                break
    return files, size


def copy_tree(src: Path, dst: Path) -> None:
    """Copy what folder ``src`` holds into the empty folder ``dst``, walking both by
    descriptors: a folder that a session swaps for a link while the copy runs is skipped, never
    followed (``shutil.copytree`` walks by path and would follow it); links are copied as
    links, FIFOs and devices are left out."""
    with pinned(src) as s, pinned(dst) as d:
        stack = [(os.dup(s), os.dup(d))]
        while stack:
            sfd, dfd = stack.pop()
            try:
                for name in os.listdir(sfd):
                    _copy_entry(sfd, dfd, name, stack)
            finally:
                os.close(sfd)
                os.close(dfd)


def _copy_entry(sfd: int, dfd: int, name: str, stack: list[tuple[int, int]]) -> None:
    try:
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
    elif stat.S_ISDIR(st.st_mode):
        try:
            child = os.open(name, O_DIR, dir_fd=sfd)
        except OSError:  # gone, or a link by now
            return
        try:
            os.mkdir(name, DIR_MODE, dir_fd=dfd)
            os.chmod(name, DIR_MODE, dir_fd=dfd, follow_symlinks=False)
            stack.append((child, os.open(name, O_DIR, dir_fd=dfd)))
        except BaseException:
            os.close(child)
            raise
    elif stat.S_ISREG(st.st_mode):
        try:
            fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=sfd)
        except OSError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fin).st_mode):
                return
            fout = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, FILE_MODE, dir_fd=dfd)
            try:
                os.fchmod(fout, FILE_MODE | (os.fstat(fin).st_mode & 0o111))
                while os.sendfile(fout, fin, None, 1 << 30):
                    pass
            finally:
                os.close(fout)
        finally:
            os.close(fin)
