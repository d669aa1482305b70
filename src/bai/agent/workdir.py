"""A kernel's work directory seen from the agent: uploads that cannot escape it, and listings.

A relative path is accepted when it is not absolute, has no ``..`` part, does not name the
runner's own ``.bai`` folder, and every folder on the way resolves (symlinks followed) inside the
work dir. The file itself is opened with ``O_NOFOLLOW``, so a symlink planted at the target name
is refused rather than written through.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import bai.kernel
from bai.common.errors import InvalidAPIParameters

#: where the work dir appears inside containers
CONTAINER_WORKDIR = "/home/work"


class PathEscapes(InvalidAPIParameters):
    title = "The path is outside the session's work directory."


def checked_relative(rel: str) -> PurePosixPath:
    """Validate the shape of a relative path (no I/O)."""
    if not rel or "\x00" in rel:
        raise InvalidAPIParameters("empty or invalid file name")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("~"):
        raise PathEscapes(f"absolute paths are not allowed: {rel}")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise InvalidAPIParameters(f"not a file name: {rel}")
    if ".." in parts:
        raise PathEscapes(f"'..' is not allowed in paths: {rel}")
    if parts[0] == bai.kernel.STATE_DIR:
        raise PathEscapes(f"{bai.kernel.STATE_DIR}/ is reserved for the kernel runner: {rel}")
    return PurePosixPath(*parts)


def _own_like_root(root: Path, target: Path | int) -> None:
    """Give what the agent (root) makes in the work dir to the work dir's owner (the kernel's
    user when kernels do not run as root)."""
    st = root.stat()
    if os.geteuid() == 0 and st.st_uid != 0:
        if isinstance(target, int):
            os.fchown(target, st.st_uid, st.st_gid)
        else:
            os.lchown(target, st.st_uid, st.st_gid)


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def resolve_dir(workdir: Path, rel: str | None, create: bool = False) -> Path:
    """A folder inside the work dir (``rel`` empty or ``.`` = the work dir itself)."""
    root = workdir.resolve()
    if not rel or rel.strip() in (".", "/", ""):
        return root
    p = checked_relative(rel)
    target = root / p
    if create:
        current = root
        for part in p.parts:
            current = current / part
            if not current.exists():
                current.mkdir(mode=0o755)
                _own_like_root(root, current)
            if not _inside(root, current.resolve()):
                raise PathEscapes(f"the path leads outside the work directory: {rel}")
    resolved = target.resolve()
    if not _inside(root, resolved):
        raise PathEscapes(f"the path leads outside the work directory: {rel}")
    return resolved


async def write_file(workdir: Path, rel: str, chunks: AsyncIterator[bytes]) -> str:
    """Write an uploaded file; returns the normalized relative path."""
    p = checked_relative(rel)
    parent = resolve_dir(workdir, str(p.parent), create=True) if str(p.parent) != "." \
        else workdir.resolve()
    target = parent / p.name
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if os.path.islink(target):
            raise PathEscapes(f"refusing to write through a symbolic link: {rel}") from None
        raise InvalidAPIParameters(f"cannot write {rel}: {e.strerror}") from None
    _own_like_root(workdir.resolve(), fd)
    with os.fdopen(fd, "wb") as f:
        async for chunk in chunks:
            f.write(chunk)
    return str(p)


def list_dir(workdir: Path, rel: str | None) -> list[dict[str, Any]]:
    folder = resolve_dir(workdir, rel)
    if not folder.is_dir():
        raise InvalidAPIParameters(f"not a folder in the work directory: {rel}")
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if folder == workdir.resolve() and entry.name == bai.kernel.STATE_DIR:
            continue
        st = entry.stat(follow_symlinks=False)
        out.append({
            "filename": entry.name,
            "size": st.st_size,
            "mtime": st.st_mtime,
            "mode": stat.filemode(st.st_mode),
        })
    return out


def resolve_existing(workdir: Path, path: str) -> Path:
    """A file or folder to read: relative to the work dir, or absolute inside it (the host path
    or the container view ``/home/work/...``)."""
    root = workdir.resolve()
    rel = path or "."
    if rel.startswith("/"):
        for prefix in (str(root), str(workdir), CONTAINER_WORKDIR):
            if rel == prefix or rel.startswith(prefix.rstrip("/") + "/"):
                rel = rel[len(prefix):].lstrip("/") or "."
                break
        else:
            raise PathEscapes(f"not inside the work directory: {path}")
    target = root if rel in (".", "./") else root / checked_relative(rel)
    # a final symlink is sent as a link (never followed), so only the folders must be inside
    resolved = target.parent.resolve() / target.name if target.is_symlink() else target.resolve()
    if not _inside(root, resolved):
        raise PathEscapes(f"the path leads outside the work directory: {path}")
    if not target.exists() and not target.is_symlink():
        raise InvalidAPIParameters(f"no such file or folder in the work directory: {path}")
    return target


def tar_of(workdir: Path, path: str) -> bytes:
    """An uncompressed tar of one file or folder (symlinks are stored as links, not followed)."""
    target = resolve_existing(workdir, path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        name = target.name if target != workdir.resolve() else "."

        def skip_runner_state(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = PurePosixPath(info.name).parts
            return None if name == "." and len(parts) > 1 and parts[1] == bai.kernel.STATE_DIR \
                else info

        tar.add(target, arcname=name, filter=skip_runner_state)
    return buf.getvalue()
