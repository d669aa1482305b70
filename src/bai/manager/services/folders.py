"""Folder use cases: create, list, info, rename, delete, share, unshare, clone (no HTTP types).

The rules of who may do what are in ``services/vfolders.py``; the directories on storage hosts in
``services/storage.py``. A create makes the record and the directory in one step: when the
directory cannot be made the record is rolled back, when the record cannot be committed the
directory is removed, so a failure leaves nothing half-made.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bai.common.errors import (
    Forbidden, InvalidAPIParameters, NotFound, VFolderAlreadyExists, VFolderPermissionDenied,
)
from bai.manager.context import Caller
from bai.manager.services import vfolders as vf
from bai.manager.services.storage import StorageHosts, relpath_of
from bai.manager.store import tables as t


class FolderService:
    def __init__(self, root) -> None:
        self.root = root
        self.store = root.store
        self.hosts: StorageHosts = StorageHosts.from_settings(root.settings)

    def start(self) -> None:
        self.hosts.prepare()

    # ------------------------------------------------------------ hosts

    def list_hosts(self) -> dict[str, Any]:
        names = self.hosts.names()
        return {"default": self.hosts.default, "allowed": names,
                "volume_info": {n: {"backend": "posix", "capabilities": ["quota"]}
                                for n in names}}

    # ------------------------------------------------------------ records

    async def _group(self, conn, caller: Caller, group: str) -> uuid.UUID:
        g = t.groups
        gid = vf._as_id(group)
        where = (g.c.id == gid) if gid is not None else (g.c.name == group)
        row = (await conn.execute(sa.select(g.c.id, g.c.name).where(
            where, g.c.domain_name == caller.domain_name))).first()
        if row is None:
            raise NotFound(f"unknown group {group!r} in domain {caller.domain_name!r}")
        if not caller.is_admin:
            raise Forbidden(f"only an admin creates folders of group {row.name!r}")
        return row.id

    async def _name_free(self, conn, caller: Caller, name: str,
                         group_id: uuid.UUID | None) -> None:
        if group_id is not None:
            clash = (await conn.execute(sa.select(t.vfolders.c.id).where(
                t.vfolders.c.group_id == group_id, t.vfolders.c.name == name))).first()
        else:
            clash = await vf.accessible(conn, caller.user_id, name=name)
        if clash:
            raise VFolderAlreadyExists(f"a folder named {name!r} already exists",
                                       data={"name": name})

    async def create(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        name = vf.checked_name(body.get("name"))
        host = self.hosts.host(body.get("host") or None).name
        permission = vf.parse_permission(body.get("permission") or "rw")
        usage_mode = vf.parse_usage_mode(body.get("usage_mode"))
        quota = vf.parse_quota(body.get("quota"))
        if body.get("unmanaged_path"):
            raise InvalidAPIParameters("unmanaged folders (a host path) are not supported",
                                       data={"field": "unmanaged_path"})
        return await self._make(caller, name=name, host=host, permission=permission,
                                usage_mode=usage_mode, quota=quota,
                                cloneable=bool(body.get("cloneable")), group=body.get("group"))

    async def _make(self, caller: Caller, *, name: str, host: str, permission: str,
                    usage_mode: str, quota: int, cloneable: bool, group: str | None,
                    fill=None) -> dict[str, Any]:
        """Insert the record and make the directory (``fill(path)`` may copy into it, in a
        thread) before the commit; undo the directory if anything after it fails."""
        folder_id = uuid.uuid4()
        relpath = relpath_of(folder_id)
        made = False
        try:
            async with self.store.begin() as conn:
                group_id = await self._group(conn, caller, group) if group else None
                await self._name_free(conn, caller, name, group_id)
                row = {
                    "id": folder_id, "name": name, "host": host, "relpath": relpath,
                    "usage_mode": usage_mode, "permission": permission,
                    "ownership_type": "group" if group_id else "user",
                    "user_id": None if group_id else caller.user_id, "group_id": group_id,
                    "domain_name": caller.domain_name, "creator": caller.user_email,
                    "quota": quota, "cloneable": cloneable, "status": "ready",
                    "created_at": t.utcnow(),
                }
                await conn.execute(sa.insert(t.vfolders).values(**row))
                path = await asyncio.to_thread(self.hosts.make_folder, host, relpath)
                made = True
                if fill is not None:
                    await asyncio.to_thread(fill, path)
        except IntegrityError:
            if made:
                await asyncio.to_thread(self.hosts.remove_folder, host, relpath)
            raise VFolderAlreadyExists(f"a folder named {name!r} already exists",
                                       data={"name": name}) from None
        except BaseException:
            if made:
                await asyncio.to_thread(self.hosts.remove_folder, host, relpath)
            raise
        return {
            "id": folder_id.hex, "name": name, "quota_scope_id": None, "host": host,
            "usage_mode": usage_mode, "permission": permission, "max_size": quota,
            "creator": caller.user_email,
            "ownership_type": "group" if group_id else "user",
            "user": None if group_id else caller.user_id.hex,
            "group": group_id.hex if group_id else None,
            "cloneable": cloneable, "status": "ready",
        }

    async def list(self, caller: Caller, *, all_: bool = False,
                   group: str | None = None) -> list[dict[str, Any]]:
        async with self.store.connect() as conn:
            if all_ and caller.is_admin:
                rows = await conn.execute(sa.select(t.vfolders).order_by(t.vfolders.c.name))
                found = [vf.Access(dict(r._mapping), r.permission,
                                   r.user_id == caller.user_id, "admin") for r in rows]
            else:
                found = await vf.accessible(conn, caller.user_id)
            if group:
                gid = vf._as_id(group)
                found = [a for a in found if a.row["group_id"] is not None and (
                    a.row["group_id"] == gid or str(a.row["group_id"]) == group)]
            emails = await self._names(conn, t.users.c.id, t.users.c.email,
                                       {a.row["user_id"] for a in found})
            gnames = await self._names(conn, t.groups.c.id, t.groups.c.name,
                                       {a.row["group_id"] for a in found})
        return [vf.folder_json(a, user_email=emails.get(a.row["user_id"]),
                               group_name=gnames.get(a.row["group_id"])) for a in found]

    @staticmethod
    async def _names(conn, key, value, ids) -> dict:
        """``{id: name}`` of the given ids (users' e-mails, groups' names)."""
        ids = [i for i in ids if i is not None]
        if not ids:
            return {}
        return dict((await conn.execute(sa.select(key, value).where(key.in_(ids)))).all())

    async def find(self, caller: Caller, name: str) -> vf.Access:
        async with self.store.connect() as conn:
            return await vf.find(conn, caller.user_id, name)

    def _require_owner(self, caller: Caller, a: vf.Access, what: str) -> None:
        if a.is_owner or (a.via == "group" and caller.is_admin):
            return
        raise VFolderPermissionDenied(f"only the owner of folder {a.name!r} can {what} it")
