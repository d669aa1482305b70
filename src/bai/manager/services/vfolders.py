"""Storage folders ("vfolders"): records, who may do what, and mounts for sessions.

Who reaches a folder (one rule, ``accessible``): its owner (a user folder's user), every member of
a group folder's group, and the users it is shared with. Everyone else gets "no such folder"
(404, never 403: the folder's existence is not told). What a user may do is the folder's
``permission`` for owners and group members, the share's permission for invitees:

* ``ro``: read (list, download, mount read-only);
* ``rw``: also write (upload, mkdir, move, mount read-write); an owner may also delete files;
* ``wd``: read-write-delete: also delete files.

Renaming, deleting, sharing and cloning settings are the owner's (for a group folder: an admin's).
Every refusal is a ``BaiError`` with a message that names the folder, so the CLI prints one line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from bai.common.errors import (
    InvalidAPIParameters, VFolderNotFound, VFolderPermissionDenied,
)
from bai.common.mounts import kernel_path
from bai.common.resources import parse_size
from bai.manager.store import tables as t
from bai.manager.store.engine import AsyncConnection

PERMISSIONS = ("ro", "rw", "wd")
_PERMISSION_ALIASES = {
    "ro": "ro", "read-only": "ro", "read_only": "ro",
    "rw": "rw", "read-write": "rw", "read_write": "rw",
    "wd": "wd", "rw-delete": "wd", "rw_delete": "wd", "read-write-delete": "wd",
}
USAGE_MODES = ("general", "model", "data")
#: a folder name: what a directory name and a mount name may safely be
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def checked_name(name: Any, what: str = "folder name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidAPIParameters(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit", data={"field": "name"})
    return name


def parse_permission(value: Any) -> str:
    perm = _PERMISSION_ALIASES.get(str(value).strip().lower()) if value is not None else None
    if perm is None:
        raise InvalidAPIParameters(
            f"invalid permission {value!r}: use ro (read-only), rw (read-write) or "
            "wd (read-write-delete)", data={"field": "permission"})
    return perm


def parse_usage_mode(value: Any) -> str:
    mode = str(value or "general").strip().lower()
    if mode not in USAGE_MODES:
        raise InvalidAPIParameters(
            f"invalid usage mode {value!r}: use {', '.join(USAGE_MODES)}",
            data={"field": "usage_mode"})
    return mode


def parse_quota(value: Any) -> int:
    """Bytes from ``"10g"``, ``"512m"``, ``1073741824``; ``0``/``""``/None = no quota."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "0")):
        return 0
    if isinstance(value, bool):
        value = str(value)
    try:
        n = int(parse_size(value.strip() if isinstance(value, str) else value))
    except (ValueError, ArithmeticError):
        raise InvalidAPIParameters(
            f"invalid quota {value!r}: use a size such as 512m, 10g or 0 (no quota)",
            data={"field": "quota"}) from None
    if n >= 2**63:
        raise InvalidAPIParameters(f"quota {value!r} is too large", data={"field": "quota"})
    return n


def may_write(perm: str) -> bool:
    return perm in ("rw", "wd")


@dataclass(frozen=True)
class Access:
    """A folder as one user reaches it."""

    row: dict
    #: what the user may do: "ro" | "rw" | "wd"
    permission: str
    is_owner: bool
    #: "owner" | "group" | "shared"
    via: str

    @property
    def id(self) -> uuid.UUID:
        return self.row["id"]

    @property
    def name(self) -> str:
        return self.row["name"]

    def may_delete_files(self) -> bool:
        return self.permission == "wd" or (self.is_owner and self.permission == "rw")

    def require_write(self, what: str) -> None:
        if not may_write(self.permission):
            raise VFolderPermissionDenied(
                f"folder {self.name!r} is {self.permission} for you: cannot {what}",
                data={"permission": self.permission})

    def require_delete(self, what: str) -> None:
        if not self.may_delete_files():
            raise VFolderPermissionDenied(
                f"folder {self.name!r} is {self.permission} for you: cannot {what} "
                "(needs wd, read-write-delete)", data={"permission": self.permission})



async def accessible(conn: AsyncConnection, user_id: uuid.UUID, *,
                     name: str | None = None, folder_id: uuid.UUID | None = None,
                     group_id: uuid.UUID | None = None) -> list[Access]:
    """Every folder ``user_id`` reaches (optionally only those of one name or id), own folders
    first, then group folders, then shared ones; one query. ``group_id`` limits group folders
    to that group (a session mounts only its own group's folders)."""
    v, p, gm = t.vfolders, t.vfolder_permissions, t.group_members
    groups = sa.select(gm.c.group_id).where(gm.c.user_id == user_id)
    if group_id is not None:
        groups = groups.where(gm.c.group_id == group_id)
    member = v.c.group_id.in_(groups.scalar_subquery())
    q = (sa.select(v, p.c.permission.label("shared_permission"), member.label("is_member"))
         .outerjoin(p, sa.and_(p.c.vfolder_id == v.c.id, p.c.user_id == user_id))
         .where(v.c.status == "ready",
                sa.or_(v.c.user_id == user_id, member, p.c.user_id.is_not(None))))
    if name is not None:
        q = q.where(v.c.name == name)
    if folder_id is not None:
        q = q.where(v.c.id == folder_id)
    out: list[tuple[int, Access]] = []
    for r in await conn.execute(q):
        m = dict(r._mapping)
        shared, is_member = m.pop("shared_permission"), m.pop("is_member")
        if m["user_id"] == user_id:
            out.append((0, Access(m, m["permission"], True, "owner")))
        elif m["group_id"] is not None and is_member:
            out.append((1, Access(m, m["permission"], False, "group")))
        elif shared is not None:
            out.append((2, Access(m, shared, False, "shared")))
    out.sort(key=lambda x: (x[0], x[1].row["name"], x[1].row["created_at"]))
    return [a for _, a in out]


def _as_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None


async def find(conn: AsyncConnection, user_id: uuid.UUID, name_or_id: str, *,
               group_id: uuid.UUID | None = None) -> Access:
    """The one folder of this name (or id) the user reaches; own folders win over group and
    shared ones of the same name. ``VFolderNotFound`` otherwise."""
    if not isinstance(name_or_id, str) or not name_or_id or len(name_or_id) > 64:
        raise VFolderNotFound(f"no such folder: {name_or_id!r}")
    found = await accessible(conn, user_id, name=name_or_id, group_id=group_id)
    if not found and (fid := _as_id(name_or_id)) is not None:
        found = await accessible(conn, user_id, folder_id=fid, group_id=group_id)
    if not found:
        raise VFolderNotFound(f"no such folder: {name_or_id}", data={"name": name_or_id})
    return found[0]


# ---------------------------------------------------------------- mounts (contract with agents)


@dataclass(frozen=True)
class MountSpec:
    """One ``-m`` request: a folder name, where it goes in the session (None: the default),
    and the mode asked for (None: the most the user may have)."""

    name: str
    kernel_path: str | None = None
    mode: Literal["ro", "rw"] | None = None


@dataclass(frozen=True)
class ResolvedMount:
    """A folder to mount into a session: ``<root of host on the agent>/<relpath>`` at
    ``kernel_path``, read-only when ``mode`` is ``ro``."""

    name: str
    host: str
    relpath: str
    kernel_path: str
    mode: Literal["ro", "rw"]
    vfolder_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "host": self.host, "relpath": self.relpath,
                "kernel_path": self.kernel_path, "mode": self.mode}


def parse_mount_spec(text: str) -> MountSpec:
    """``NAME``, ``NAME:/path``, ``NAME:/path:ro`` or ``NAME:ro`` (the official client's
    ``-m`` forms plus a mode)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidAPIParameters("empty mount")
    parts = text.strip().split(":")
    mode = None
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) > 2:
        raise InvalidAPIParameters(f"invalid mount {text!r}: use NAME, NAME:/path or "
                                   "NAME:/path:ro")
    return MountSpec(parts[0], parts[1] if len(parts) == 2 and parts[1] else None, mode)  # type: ignore[arg-type]


async def resolve_mounts(conn: AsyncConnection, user_id: uuid.UUID,
                         specs: Sequence[MountSpec | str], *,
                         group_id: uuid.UUID | None = None) -> list[ResolvedMount]:
    """The folders a session of ``user_id`` asked for, checked: each must be one the user
    reaches (``VFolderNotFound``: 404 otherwise), a read-write mount needs ``rw``/``wd``
    (``VFolderPermissionDenied``: 403), no two mounts may share a path (400). A spec without a
    mode mounts read-write when allowed, read-only otherwise. Reads only; no side effects."""
    out: list[ResolvedMount] = []
    paths: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            spec = parse_mount_spec(spec)
        checked_name(spec.name)
        access = await find(conn, user_id, spec.name, group_id=group_id)
        if spec.mode == "rw" and not may_write(access.permission):
            raise VFolderPermissionDenied(
                f"folder {spec.name!r} is read-only for you: it can only be mounted :ro",
                data={"name": spec.name, "permission": access.permission})
        if spec.mode not in (None, "ro", "rw"):
            raise InvalidAPIParameters(f"invalid mount mode {spec.mode!r}: use ro or rw")
        mode = spec.mode or ("rw" if may_write(access.permission) else "ro")
        path = kernel_path(spec.name, spec.kernel_path)  # the one rule for mount paths
        if path in paths:
            raise InvalidAPIParameters(f"two mounts at {path}")
        paths.add(path)
        row = access.row
        out.append(ResolvedMount(spec.name, row["host"], row["relpath"], path, mode,
                                 str(row["id"])))
    return out


# ---------------------------------------------------------------- answers


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def folder_json(a: Access, *, user_email: str | None = None,
                group_name: str | None = None) -> dict[str, Any]:
    """A folder as ``GET /folders`` lists it (the reference manager's keys)."""
    r = a.row
    return {
        "id": r["id"].hex,
        "name": r["name"],
        "host": r["host"],
        "quota_scope_id": f"{r['ownership_type']}:{(r['user_id'] or r['group_id']).hex}",
        "usage_mode": r["usage_mode"],
        "created_at": _iso(r["created_at"]),
        "is_owner": a.is_owner,
        "permission": a.permission,
        "user": r["user_id"].hex if r["user_id"] else None,
        "group": r["group_id"].hex if r["group_id"] else None,
        "creator": r["creator"],
        "user_email": user_email,
        "group_name": group_name,
        "ownership_type": r["ownership_type"],
        "type": r["ownership_type"],
        "max_files": 0,
        "max_size": r["quota"],
        "quota": r["quota"],
        "cur_size": 0,
        "status": r["status"],
        "cloneable": r["cloneable"],
        "via": a.via,
        "unmanaged_path": None,
        "last_used": None,
        "num_files": None,
    }
