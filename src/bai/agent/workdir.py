"""A kernel's work directory seen from the agent: the shape of relative paths, and listings.

A relative path is accepted when it is not absolute, has no ``..`` part and does not name the
runner's own ``.bai`` folder. A listing's folder must resolve inside the work dir. Files move in
and out through ``bai.agent.transfer``, which never follows a link at all.
"""

from __future__ import annotations

import os
import stat
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


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def resolve_dir(workdir: Path, rel: str | None) -> Path:
    """A folder inside the work dir (``rel`` empty or ``.`` = the work dir itself)."""
    root = workdir.resolve()
    if not rel or rel.strip() in (".", "/", ""):
        return root
    resolved = (root / checked_relative(rel)).resolve()
    if not _inside(root, resolved):
        raise PathEscapes(f"the path leads outside the work directory: {rel}")
    return resolved


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
