"""Folder use cases: create, list, info, rename, delete, share, unshare, clone (no HTTP types).

The rules of who may do what are in ``services/vfolders.py``; the directories on storage hosts in
``services/storage.py``. A create makes the record and the directory in one step: when the
directory cannot be made the record is rolled back, when the record cannot be committed the
directory is removed, so a failure leaves nothing half-made.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bai.common.errors import (
    BaiError, Forbidden, InvalidAPIParameters, NotFound, VFolderAlreadyExists, VFolderNotFound,
    VFolderPermissionDenied,
)
from bai.common import zerocopy
from bai.common.status import FINAL
from bai.manager.context import Caller
from bai.manager.services import folder_files as ff
from bai.manager.services import vfolders as vf
from bai.manager.services.loops import stopping as _stopping
from bai.manager.services.storage import StorageHosts, StorageTokens, relpath_of
from bai.manager.store import tables as t

log = logging.getLogger(__name__)


class VFolderMounted(BaiError):
    code = "vfolder-mounted"
    status = 409
    title = "The folder is mounted in a session."


class FolderService:
    def __init__(self, root) -> None:
        self.root = root
        self.hosts: StorageHosts = StorageHosts.from_settings(root.settings)
        self.tokens = StorageTokens.from_settings(root.settings)
        #: the unix socket of local uploads (``api/storage.py``), while it listens
        self.local_socket: str | None = None

    @property
    def store(self):
        return self.root.store  # read at each use: tests and tools swap the root's store

    async def start(self) -> None:
        """Make the host roots; mount the filesystems of quota folders again (after a
        reboot their loop mounts are gone)."""
        await asyncio.to_thread(self.hosts.prepare)
        if self.hosts.images is None:
            return
        async with self.store.connect() as conn:
            rows = (await conn.execute(sa.select(t.vfolders.c.host, t.vfolders.c.relpath)
                                       .where(t.vfolders.c.quota > 0))).all()
        for host, relpath in rows:
            if host in self.hosts.hosts:
                await asyncio.to_thread(self.hosts.remount, host, relpath)

    async def sweep_parts(self, now: float | None = None) -> int:
        """Remove the parts of uploads nobody wrote to for ``upload_part_expiry`` seconds
        (abandoned tus uploads), in every folder of this manager's storage hosts; returns how
        many were removed."""
        expiry = float(getattr(self.root.settings, "upload_part_expiry", DEFAULT_PART_EXPIRY))
        if expiry <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - expiry
        async with self.store.connect() as conn:
            rows = (await conn.execute(sa.select(t.vfolders.c.host, t.vfolders.c.relpath))).all()
        removed = 0
        for host, relpath in rows:
            if host in self.hosts.hosts:
                removed += await asyncio.to_thread(ff.sweep_parts,
                                                   self.hosts.path(host, relpath), cutoff)
        return removed

    async def sweep_loop(self) -> None:
        """``sweep_parts`` every expiry/4 (at least every second, at most hourly) while the
        manager runs."""
        expiry = float(getattr(self.root.settings, "upload_part_expiry", DEFAULT_PART_EXPIRY))
        if expiry <= 0:
            return
        while True:
            try:
                removed = await self.sweep_parts()
                if removed:
                    log.info("removed %d abandoned upload part(s) older than %g s", removed,
                             expiry)
            except Exception:  # noqa: BLE001 - a failed sweep waits for the next one
                if _stopping():
                    raise
                log.exception("sweeping abandoned upload parts failed")
            await asyncio.sleep(max(1.0, min(expiry / 4, 3600.0)))

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
        self.hosts.check_quota(quota)
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
                path = await asyncio.to_thread(self.hosts.make_folder, host, relpath, quota)
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

    async def info(self, caller: Caller, name: str) -> dict[str, Any]:
        a = await self.find(caller, name)
        path = self.hosts.path(a.row["host"], a.row["relpath"])
        try:
            files, used = await asyncio.to_thread(ff.usage, path)
        except BaiError:
            files, used = 0, 0
        async with self.store.connect() as conn:
            emails = await self._names(conn, t.users.c.id, t.users.c.email, {a.row["user_id"]})
            gnames = await self._names(conn, t.groups.c.id, t.groups.c.name, {a.row["group_id"]})
        out = vf.folder_json(a, user_email=emails.get(a.row["user_id"]),
                             group_name=gnames.get(a.row["group_id"]))
        out.update({"numFiles": files, "num_files": files, "used_bytes": used, "cur_size": used,
                    "created": out["created_at"]})
        return out

    async def rename(self, caller: Caller, name: str, new_name: str) -> None:
        new_name = vf.checked_name(new_name, "new folder name")
        async with self.store.begin() as conn:
            a = await vf.find(conn, caller.user_id, name)
            self._require_owner(caller, a, "rename")
            if new_name == a.name:
                return
            await self._name_free(conn, caller, new_name,
                                  a.row["group_id"] if a.via == "group" else None)
            try:
                await conn.execute(sa.update(t.vfolders).where(t.vfolders.c.id == a.id)
                                   .values(name=new_name))
            except IntegrityError:
                raise VFolderAlreadyExists(f"a folder named {new_name!r} already exists") \
                    from None

    async def delete(self, caller: Caller, name: str, *, by_id: bool = False) -> None:
        """The record first (a folder nobody reaches any more), then its bytes."""
        async with self.store.begin() as conn:
            if by_id:
                fid = vf._as_id(name)
                found = await vf.accessible(conn, caller.user_id, folder_id=fid) if fid else []
                if not found:
                    raise VFolderNotFound(f"no such folder: {name}")
                a = found[0]
            else:
                a = await vf.find(conn, caller.user_id, name)
            self._require_owner(caller, a, "delete")
            await self._not_mounted(conn, a)
            await conn.execute(sa.delete(t.vfolders).where(t.vfolders.c.id == a.id))
        await asyncio.to_thread(self.hosts.remove_folder, a.row["host"], a.row["relpath"])

    async def _not_mounted(self, conn, a: vf.Access) -> None:
        """Refuse while a session that has not ended has the folder mounted (its files would
        vanish under it); ERROR sessions count as ended."""
        users = await self._mounted_in(conn, [(a.row["host"], a.row["relpath"])])
        if users:
            raise VFolderMounted(
                f"folder {a.name!r} is mounted in {users} session(s) that have not ended; "
                "remove them first", data={"sessions": users})

    @staticmethod
    async def _mounted_in(conn, places: list[tuple[str, str]]) -> int:
        """How many sessions that have not ended mount one of the folders at ``places``
        ((host, relpath) pairs)."""
        s = t.sessions
        ended = [str(x) for x in FINAL] + ["ERROR"]
        wanted = set(places)
        rows = await conn.execute(sa.select(s.c.mounts).where(s.c.status.not_in(ended)))
        return sum(1 for (mounts,) in rows
                   if any(isinstance(m, dict) and (m.get("host"), m.get("relpath")) in wanted
                          for m in (mounts or [])))

    async def take_user_folders(self, conn, user_id: uuid.UUID) -> list[tuple[str, str]]:
        """Delete the records of the folders a user owns (with their shares), in the caller's
        transaction; refused while one is mounted in a session that has not ended (theirs or,
        shared, another's). Returns their (host, relpath), whose directories
        ``remove_directories`` removes once the transaction committed."""
        v = t.vfolders
        rows = (await conn.execute(sa.select(v.c.id, v.c.host, v.c.relpath).where(
            v.c.user_id == user_id, v.c.ownership_type == "user"))).all()
        places = [(host, relpath) for _, host, relpath in rows]
        users = await self._mounted_in(conn, places) if places else 0
        if users:
            raise VFolderMounted(
                f"a folder of this user is mounted in {users} session(s) that have not ended; "
                "remove them first", data={"sessions": users})
        ids = [fid for fid, _, _ in rows]
        if ids:
            await conn.execute(sa.delete(t.vfolder_permissions)
                               .where(t.vfolder_permissions.c.vfolder_id.in_(ids)))
            await conn.execute(sa.delete(v).where(v.c.id.in_(ids)))
        return places

    async def remove_directories(self, places: list[tuple[str, str]]) -> None:
        """Remove the directories (and quota filesystems) of folders whose records are gone."""
        for host, relpath in places:
            if host in self.hosts.hosts:
                await asyncio.to_thread(self.hosts.remove_folder, host, relpath)

    async def _users_by_email(self, conn, emails: list[str]) -> dict[str, uuid.UUID]:
        if not isinstance(emails, list) or not emails or not all(
                isinstance(e, str) and e for e in emails):
            raise InvalidAPIParameters("give the e-mails of the users", data={"field": "emails"})
        rows = await conn.execute(sa.select(t.users.c.email, t.users.c.id)
                                  .where(t.users.c.email.in_(emails)))
        found = dict(rows.all())
        missing = [e for e in emails if e not in found]
        if missing:
            raise NotFound(f"no such user: {', '.join(missing)}", data={"emails": missing})
        return found

    async def share(self, caller: Caller, name: str, permission: Any,
                    emails: list[str]) -> list[str]:
        perm = vf.parse_permission(permission if permission is not None else "ro")
        async with self.store.begin() as conn:
            a = await vf.find(conn, caller.user_id, name)
            self._require_owner(caller, a, "share")
            users = await self._users_by_email(conn, emails)
            for email, uid in users.items():
                if uid == a.row["user_id"]:
                    raise InvalidAPIParameters(f"{email} owns folder {a.name!r}")
                p = t.vfolder_permissions
                exists = (await conn.execute(sa.select(p.c.user_id).where(
                    p.c.vfolder_id == a.id, p.c.user_id == uid))).first()
                if exists:
                    await conn.execute(sa.update(p).where(p.c.vfolder_id == a.id,
                                                          p.c.user_id == uid)
                                       .values(permission=perm))
                else:
                    await conn.execute(sa.insert(p).values(
                        vfolder_id=a.id, user_id=uid, permission=perm, created_at=t.utcnow()))
        return list(users)

    async def unshare(self, caller: Caller, name: str, emails: list[str]) -> list[str]:
        async with self.store.begin() as conn:
            a = await vf.find(conn, caller.user_id, name)
            self._require_owner(caller, a, "unshare")
            users = await self._users_by_email(conn, emails)
            p = t.vfolder_permissions
            await conn.execute(sa.delete(p).where(p.c.vfolder_id == a.id,
                                                  p.c.user_id.in_(list(users.values()))))
        return list(users)

    async def leave(self, caller: Caller, name: str) -> None:
        async with self.store.begin() as conn:
            a = await vf.find(conn, caller.user_id, name)
            if a.via != "shared":
                raise InvalidAPIParameters(f"folder {a.name!r} is not shared with you")
            p = t.vfolder_permissions
            await conn.execute(sa.delete(p).where(p.c.vfolder_id == a.id,
                                                  p.c.user_id == caller.user_id))

    async def update_options(self, caller: Caller, name: str, body: dict[str, Any]) -> None:
        values: dict[str, Any] = {}
        if body.get("permission") is not None:
            values["permission"] = vf.parse_permission(body["permission"])
        if body.get("cloneable") is not None:
            values["cloneable"] = bool(body["cloneable"])
        async with self.store.begin() as conn:
            a = await vf.find(conn, caller.user_id, name)
            self._require_owner(caller, a, "change the options of")
            if values:
                await conn.execute(sa.update(t.vfolders).where(t.vfolders.c.id == a.id)
                                   .values(**values))

    async def clone(self, caller: Caller, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A new folder of the caller's with a copy of what the source holds (the source must
        be the caller's own or cloneable). Links are copied as links, never followed."""
        a = await self.find(caller, name)
        if not (a.is_owner or a.row["cloneable"]):
            raise VFolderPermissionDenied(f"folder {a.name!r} does not allow cloning")
        target = vf.checked_name(body.get("target_name"), "target folder name")
        host = self.hosts.host(body.get("target_host") or a.row["host"]).name
        src = self.hosts.path(a.row["host"], a.row["relpath"])

        def fill(dst: Path) -> None:
            try:
                ff.copy_tree(src, dst)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ff.FolderQuotaExceeded(
                        f"folder {a.name!r} does not fit in its quota "
                        f"({a.row['quota']:,} bytes) as a copy") from None
                raise BaiError(f"cloning {a.name!r} failed: {e.strerror}") from None

        return await self._make(
            caller, name=target, host=host,
            permission=vf.parse_permission(body.get("permission") or "rw"),
            usage_mode=vf.parse_usage_mode(body.get("usage_mode") or a.row["usage_mode"]),
            quota=a.row["quota"], cloneable=False, group=None, fill=fill)

    # ------------------------------------------------------------ files

    async def _folder(self, caller: Caller, name: str) -> tuple[vf.Access, Path]:
        a = await self.find(caller, name)
        return a, self.hosts.path(a.row["host"], a.row["relpath"])

    async def list_files(self, caller: Caller, name: str, path: str, *,
                         offset: int | None = None, limit: int | None = None,
                         order: str = "name"):
        _, folder = await self._folder(caller, name)
        if offset is None and limit is None:
            return await asyncio.to_thread(ff.list_all, folder, path or ".")
        return await asyncio.to_thread(ff.list_dir, folder, path or ".",
                                       offset=offset or 0, limit=limit, order=order)

    async def mkdir(self, caller: Caller, name: str, path: Any, *, parents: bool,
                    exist_ok: bool) -> None:
        a, folder = await self._folder(caller, name)
        a.require_write("make folders in it")
        await asyncio.to_thread(ff.mkdir, folder, path, parents=parents, exist_ok=exist_ok)

    async def delete_files(self, caller: Caller, name: str, files: Any, recursive: bool) -> None:
        a, folder = await self._folder(caller, name)
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not files:
            raise InvalidAPIParameters("name the files to remove", data={"field": "files"})
        a.require_delete("remove files")
        await asyncio.to_thread(ff.remove, folder, files, recursive=recursive)

    async def move_file(self, caller: Caller, name: str, src: Any, dst: Any) -> None:
        a, folder = await self._folder(caller, name)
        a.require_write("move files")
        await asyncio.to_thread(ff.move, folder, src, dst)

    async def rename_file(self, caller: Caller, name: str, target: Any, new_name: Any) -> None:
        a, folder = await self._folder(caller, name)
        a.require_write("rename files")
        await asyncio.to_thread(ff.rename, folder, target, new_name)

    # ------------------------------------------------------------ the storage endpoint

    async def request_upload(self, caller: Caller, name: str, path: Any, size: Any) -> str:
        a, folder = await self._folder(caller, name)
        a.require_write("upload")
        try:
            size = int(size)
        except (TypeError, ValueError):
            raise InvalidAPIParameters("'size' must be the file's size in bytes",
                                       data={"field": "size"}) from None
        if size < 0:
            raise InvalidAPIParameters("'size' must not be negative", data={"field": "size"})
        quota = a.row["quota"]
        if quota and size > quota:
            raise ff.FolderQuotaExceeded(
                f"the file ({size:,} bytes) is larger than folder {a.name!r}'s quota "
                f"({quota:,} bytes)", data={"quota": quota, "size": size})
        parts = await asyncio.to_thread(ff.check_target, folder, path)
        upload_id = secrets.token_hex(16)
        if size == 0:  # tus clients send no PATCH for an empty file: it is whole already
            await self.write_upload({"folder": a.id.hex, "user": caller.user_id.hex,
                                     "path": "/".join(parts), "size": 0, "upload": upload_id},
                                    0, None)
        return self.tokens.issue({"op": "upload", "folder": a.id.hex, "user": caller.user_id.hex,
                                  "path": "/".join(parts), "size": size, "upload": upload_id},
                                 UPLOAD_TTL)

    async def request_download(self, caller: Caller, name: str, path: Any) -> str:
        a, folder = await self._folder(caller, name)
        fd = await asyncio.to_thread(ff.open_file, folder, path)  # exists, a regular file
        os.close(fd)
        return self.tokens.issue({"op": "download", "folder": a.id.hex,
                                  "user": caller.user_id.hex,
                                  "path": "/".join(ff.parts_of(path))}, DOWNLOAD_TTL)

    async def _claimed(self, claims: dict, write: bool) -> Path:
        """The folder of a token, re-checked now: it still exists and its user still reaches
        it (an unshare or a delete ends every token handed out before)."""
        async with self.store.connect() as conn:
            found = await vf.accessible(conn, uuid.UUID(claims["user"]),
                                        folder_id=uuid.UUID(claims["folder"]))
        if not found:
            raise VFolderNotFound("the folder of this token is gone or no longer yours")
        if write:
            found[0].require_write("upload")
        return self.hosts.path(found[0].row["host"], found[0].row["relpath"])

    async def upload_state(self, token: str | None) -> tuple[dict, int]:
        claims = self.tokens.check(token, "upload")
        folder = await self._claimed(claims, write=True)
        offset = await asyncio.to_thread(ff.upload_offset, folder, claims["path"],
                                         claims["upload"])
        return claims, offset

    async def write_upload(self, claims: dict, offset: int, body) -> int:
        """Append ``body`` (an aiohttp stream, the rest of a body still in its socket, or
        None) at ``offset``; the upload becomes the file under its real name once ``size``
        bytes arrived. Returns the new offset."""
        folder = await self._claimed(claims, write=True)
        size = int(claims["size"])
        fd, pfd = await asyncio.to_thread(ff.open_upload, folder, claims["path"],
                                          claims["upload"], offset)
        try:
            if isinstance(body, zerocopy.SocketBody):
                if offset + body.length > size:
                    raise InvalidAPIParameters(
                        f"more bytes than the {size:,} announced", data={"size": size})
                try:
                    moved = await zerocopy.body_to_file(body, fd)
                except (TimeoutError, ConnectionError):
                    raise ConnectionResetError("the upload's connection broke") from None
                except OSError as e:
                    await asyncio.to_thread(ff.drop_upload, pfd, claims["upload"])
                    raise ff.oserror(e, ff.parts_of(claims["path"])) from None
                offset += moved
                if moved < body.length:
                    raise ConnectionResetError("the client closed the connection mid-upload")
            elif isinstance(body, LocalBody):
                try:
                    moved = await asyncio.to_thread(body.copy_to, fd, size - offset)
                except OSError as e:
                    await asyncio.to_thread(ff.drop_upload, pfd, claims["upload"])
                    raise ff.oserror(e, ff.parts_of(claims["path"])) from None
                offset += moved
            elif body is not None:
                buf = bytearray()
                while True:
                    chunk = await body.read(CHUNK)
                    if chunk:
                        if offset + len(buf) + len(chunk) > size:
                            raise InvalidAPIParameters(
                                f"more bytes than the {size:,} announced", data={"size": size})
                        buf += chunk
                        if len(buf) < CHUNK:
                            continue
                    if buf:  # one thread hop per MiB, not per network read
                        try:
                            await asyncio.to_thread(_write_all, fd, buf)  # untouched meanwhile
                        except OSError as e:
                            await asyncio.to_thread(ff.drop_upload, pfd, claims["upload"])
                            raise ff.oserror(e, ff.parts_of(claims["path"])) from None
                        offset += len(buf)
                        buf.clear()
                    if not chunk:
                        break
            if offset == size:
                await asyncio.to_thread(ff.finish_upload, pfd, claims["path"], claims["upload"])
        finally:
            os.close(fd)
            os.close(pfd)
        return offset

    async def open_download(self, token: str | None) -> tuple[int, str]:
        claims = self.tokens.check(token, "download")
        folder = await self._claimed(claims, write=False)
        fd = await asyncio.to_thread(ff.open_file, folder, claims["path"])
        return fd, ff.parts_of(claims["path"])[-1]


class LocalBody:
    """The rest of an upload read from a file the client handed over (a descriptor passed on
    the storage endpoint's unix socket, ``api/storage.py``): copied inside the kernel from
    ``offset`` of that file, as ``cp`` copies."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset

    def copy_to(self, out_fd: int, most: int) -> int:
        """Copy up to ``most`` bytes (fewer when the file is shorter); returns how many."""
        return zerocopy.copy_range(self.fd, out_fd, self.offset, most)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


#: seconds an upload token lasts (resumes included), and a download token
UPLOAD_TTL = 24 * 3600.0
#: seconds an unfinished upload's part is kept after its last write (setting
#: ``upload_part_expiry``)
DEFAULT_PART_EXPIRY = 24 * 3600.0
DOWNLOAD_TTL = 3600.0
CHUNK = 1024 * 1024
