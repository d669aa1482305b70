"""``/folders`` routes: storage folders as the official client 23.9.10 calls them (thin; the use
cases are in ``services/folders.py``; docs/vfolder-protocol.md records the wire)."""

from __future__ import annotations

from aiohttp import web

from bai.manager.api.models import CreateFolder, ListFolders
from bai.manager.api.params import body_of, fields_of
from bai.manager.app import ROOT


def _folders(request: web.Request):
    return request.app[ROOT].folders


async def list_hosts(request: web.Request) -> web.Response:
    return web.json_response(_folders(request).list_hosts())


async def allowed_types(request: web.Request) -> web.Response:
    return web.json_response(["user", "group"])


async def create(request: web.Request) -> web.Response:
    body = await fields_of(request, CreateFolder)
    answer = await _folders(request).create(request["caller"], body)
    return web.json_response(answer, status=201)


async def list_folders(request: web.Request) -> web.Response:
    body = await body_of(request, ListFolders)
    all_ = bool(body.all) or request.query.get("all", "").lower() in ("1", "true", "yes")
    group = body.group_id or request.query.get("group_id") or None
    return web.json_response(await _folders(request).list(request["caller"], all_=all_,
                                                          group=group))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/folders/_/hosts", list_hosts)
    r.add_get("/folders/_/all_hosts", list_hosts)
    r.add_get("/folders/_/allowed_types", allowed_types)
    r.add_post("/folders", create)
    r.add_get("/folders", list_folders)
