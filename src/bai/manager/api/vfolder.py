"""``/folders`` routes: storage folders as the official client 23.9.10 calls them (thin; the use
cases are in ``services/folders.py``; docs/vfolder-protocol.md records the wire)."""

from __future__ import annotations

import json

from aiohttp import web

from bai.manager.api import models as m
from bai.manager.api.params import body_of
from bai.manager.app import ROOT


def _folders(request: web.Request):
    return request.app[ROOT].folders


def _name(request: web.Request) -> str:
    return request.match_info["name"]


def storage_url(request: web.Request, op: str) -> str:
    """Where the client reaches the storage endpoint: the manager setting ``storage_url``, or
    the origin this request came to."""
    base = request.app[ROOT].settings.storage_url or str(request.url.origin())
    return f"{base.rstrip('/')}/storage/{op}"


async def list_hosts(request: web.Request) -> web.Response:
    return web.json_response(_folders(request).list_hosts())


async def allowed_types(request: web.Request) -> web.Response:
    return web.json_response(["user", "group"])


async def create(request: web.Request) -> web.Response:
    body = (await body_of(request, m.CreateFolder)).model_dump(exclude_unset=True)
    answer = await _folders(request).create(request["caller"], body)
    return web.json_response(answer, status=201)


async def list_folders(request: web.Request) -> web.Response:
    body = await body_of(request, m.ListFolders)
    all_ = bool(body.all) or request.query.get("all", "").lower() in ("1", "true", "yes")
    group = body.group_id or request.query.get("group_id") or None
    return web.json_response(await _folders(request).list(request["caller"], all_=all_,
                                                          group=group))


async def delete_by_id(request: web.Request) -> web.Response:
    body = await body_of(request, m.DeleteFolderById)
    await _folders(request).delete(request["caller"], body.id or "", by_id=True)
    return web.Response(status=204)


async def info(request: web.Request) -> web.Response:
    return web.json_response(await _folders(request).info(request["caller"], _name(request)))


async def delete(request: web.Request) -> web.Response:
    await _folders(request).delete(request["caller"], _name(request))
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    body = await body_of(request, m.RenameFolder)
    await _folders(request).rename(request["caller"], _name(request), body.new_name)
    return web.Response(status=201)


async def files(request: web.Request) -> web.Response:
    body = await body_of(request, m.FolderFiles)
    path = body.path or request.query.get("path") or "."
    got = await _folders(request).list_files(request["caller"], _name(request), path,
                                             offset=body.offset, limit=body.limit,
                                             order=body.order or "name")
    if isinstance(got, list):  # the official client's form: every entry, as a JSON string
        return web.json_response({"files": json.dumps(got), "folder_path": path})
    return web.json_response({"items": got.entries, "total": got.total, "offset": got.offset,
                              "folder_path": path})


async def mkdir(request: web.Request) -> web.Response:
    body = await body_of(request, m.MakeFolderDir)
    paths = body.path if isinstance(body.path, list) else [body.path]
    for path in paths:
        await _folders(request).mkdir(request["caller"], _name(request), path,
                                      parents=bool(body.parents), exist_ok=bool(body.exist_ok))
    return web.json_response({"results": paths}, status=201)


async def request_upload(request: web.Request) -> web.Response:
    body = await body_of(request, m.RequestUpload)
    token = await _folders(request).request_upload(request["caller"], _name(request),
                                                   body.path, body.size)
    return _ticket(request, token, "upload")


def _ticket(request: web.Request, token: str, op: str) -> web.Response:
    answer = {"token": token, "url": storage_url(request, op)}
    local = _folders(request).local_socket
    if local:  # bai's CLI on the manager's machine passes file descriptors there (api/storage.py)
        answer["local_socket"] = local
    return web.json_response(answer)


async def request_download(request: web.Request) -> web.Response:
    body = await body_of(request, m.RequestDownload)
    token = await _folders(request).request_download(request["caller"], _name(request),
                                                     body.path)
    return _ticket(request, token, "download")


async def rename_file(request: web.Request) -> web.Response:
    body = await body_of(request, m.RenameFolderFile)
    await _folders(request).rename_file(request["caller"], _name(request), body.target_path,
                                        body.new_name)
    return web.json_response({})


async def move_file(request: web.Request) -> web.Response:
    body = await body_of(request, m.MoveFolderFile)
    await _folders(request).move_file(request["caller"], _name(request), body.src, body.dst)
    return web.json_response({})


async def delete_files(request: web.Request) -> web.Response:
    body = await body_of(request, m.DeleteFolderFiles)
    await _folders(request).delete_files(request["caller"], _name(request), body.files,
                                         bool(body.recursive))
    return web.json_response({})


async def share(request: web.Request) -> web.Response:
    body = await body_of(request, m.ShareFolder)
    done = await _folders(request).share(request["caller"], _name(request), body.permission,
                                         body.emails or [])
    return web.json_response({"shared_emails": done}, status=201)


async def invite(request: web.Request) -> web.Response:
    """The older invitation form: bai shares at once (nothing to accept)."""
    body = await body_of(request, m.InviteToFolder)
    done = await _folders(request).share(request["caller"], _name(request), body.perm,
                                         body.user_ids or [])
    return web.json_response({"invited_ids": done}, status=201)


async def invitations(request: web.Request) -> web.Response:
    return web.json_response({"invitations": []})


async def unshare(request: web.Request) -> web.Response:
    body = await body_of(request, m.UnshareFolder)
    done = await _folders(request).unshare(request["caller"], _name(request), body.emails or [])
    return web.json_response({"unshared_emails": done})


async def leave(request: web.Request) -> web.Response:
    await _folders(request).leave(request["caller"], _name(request))
    return web.json_response({"msg": "left the shared folder"})


async def clone(request: web.Request) -> web.Response:
    body = (await body_of(request, m.CloneFolder)).model_dump(exclude_unset=True)
    answer = await _folders(request).clone(request["caller"], _name(request), body)
    return web.json_response(answer, status=201)


async def update_options(request: web.Request) -> web.Response:
    body = (await body_of(request, m.FolderOptions)).model_dump(exclude_unset=True)
    await _folders(request).update_options(request["caller"], _name(request), body)
    return web.Response(status=201, text="")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/folders/_/hosts", list_hosts)
    r.add_get("/folders/_/all_hosts", list_hosts)
    r.add_get("/folders/_/allowed_types", allowed_types)
    r.add_get("/folders/invitations/list", invitations)
    r.add_post("/folders", create)
    r.add_get("/folders", list_folders)
    r.add_delete("/folders", delete_by_id)
    r.add_get("/folders/{name}", info)
    r.add_delete("/folders/{name}", delete)
    r.add_post("/folders/{name}/rename", rename)
    r.add_get("/folders/{name}/files", files)
    r.add_post("/folders/{name}/mkdir", mkdir)
    r.add_post("/folders/{name}/request-upload", request_upload)
    r.add_post("/folders/{name}/request-download", request_download)
    r.add_post("/folders/{name}/rename-file", rename_file)
    r.add_post("/folders/{name}/move-file", move_file)
    r.add_delete("/folders/{name}/delete-files", delete_files)
    r.add_post("/folders/{name}/share", share)
    r.add_post("/folders/{name}/invite", invite)
    r.add_delete("/folders/{name}/unshare", unshare)
    r.add_post("/folders/{name}/leave", leave)
    r.add_post("/folders/{name}/clone", clone)
    r.add_post("/folders/{name}/update-options", update_options)
