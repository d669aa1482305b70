"""``/session`` routes: create, destroy, info, history, logs, restart, rename (thin)."""

from __future__ import annotations

import json

from aiohttp import web

from bai.common.errors import InvalidAPIParameters
from bai.manager.api.middleware import json_answer
from bai.manager.api.models import CreateSession, DestroySessions
from bai.manager.api.params import body_of, fields_of
from bai.manager.app import ROOT

#: the latest answers of ``GET /session/_/list`` (``listing.ListingCache``)
LISTING_CACHE: web.AppKey = web.AppKey("listing_cache")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _owner(request: web.Request) -> str | None:
    return request.query.get("owner_access_key") or request.query.get("ownerAccessKey") or None


async def create(request: web.Request) -> web.Response:
    params = await fields_of(request, CreateSession)
    answer = await request.app[ROOT].sessions.create(request["caller"], params)
    return json_answer(answer, status=201 if answer.get("created") else 200)


async def destroy(request: web.Request) -> web.Response:
    answer = await request.app[ROOT].sessions.destroy(
        request["caller"], request.match_info["name"], _owner(request),
        forced=_flag(request, "forced"), recursive=_flag(request, "recursive"),
    )
    return web.json_response(answer)


async def destroy_many(request: web.Request) -> web.Response:
    """``POST /session/_/destroy`` ``{"names": [...], "forced"?, "recursive"?,
    "owner_access_key"?}``: one request for several sessions (``rm A B``), so that none of them
    is started by the scheduler while the others end. Answers ``{"results": [{"name", "stats"}
    | {"name", "error"}]}`` in the order asked."""
    body = await body_of(request, DestroySessions)
    results = await request.app[ROOT].sessions.destroy_many(
        request["caller"], body.names, body.owner_access_key or None,
        forced=body.forced, recursive=body.recursive)
    return web.json_response({"results": results})


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidAPIParameters(f"{name} must be a whole number, not {raw!r}") from None


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /session/_/list?fields=name,status,...&status=&limit=&offset=&access_key=&filter=
    &order=``: a page of sessions as ``compute_session_list`` would answer it (same fields, same
    values, same visibility), but as rows already made: ``{"fields": [...], "items": [[...]],
    "total_count": N, "is_admin": bool}``. What ``backend.ai ps`` uses (one statement, no
    GraphQL per row); ``is_admin`` lets it drop the owner column for users without asking first.

    ``render=table`` (``&user_drops=access_key``): ``ps``'s plain table itself, as text, the
    fields in ``user_drops`` left out for users, the counts in ``X-BAI-Count`` and
    ``X-BAI-Total-Count``, up to ``MAX_TABLE`` rows at once. Answers are kept as bytes until a
    session (or what a listing reads) changes (``listing.ListingCache``).
    """
    from bai.manager.services import listing

    q = request.query
    render = q.get("render") or None
    if render not in (None, "table"):
        raise InvalidAPIParameters(f"render must be 'table', not {render!r}")
    fields = [f.strip() for f in q.get("fields", "").split(",") if f.strip()] or ["id", "name"]
    query = listing.ListQuery(
        fields=tuple(fields), limit=_int(request, "limit", 10),
        offset=_int(request, "offset", 0), status=q.get("status") or None,
        access_key=q.get("access_key") or None, filter=q.get("filter") or None,
        order=q.get("order") or None, render=render,
        user_drops=tuple(f.strip() for f in q.get("user_drops", "").split(",") if f.strip()))
    answer = await listing.list_answer(request.app[ROOT].store, request["caller"], query,
                                       request.app.get(LISTING_CACHE))
    return web.Response(body=answer.body, headers={"Content-Type": answer.content_type,
                                                   **answer.headers})


def session_info(row: dict, deps: list[dict]) -> dict:
    """What ``GET /session/{x}`` answers (camelCase, like the upstream get_info)."""
    def iso(v):
        return v.isoformat() if v is not None else None

    return {
        "sessionId": str(row["id"]),
        "sessionName": row["name"],
        "mainKernelId": str(row["main_kernel_id"]) if row.get("main_kernel_id") else None,
        "type": row["type"],
        "tag": row.get("tag"),
        "domainName": row["domain_name"],
        "groupId": str(row["group_id"]),
        "userId": str(row["user_id"]),
        "accessKey": row["access_key"],
        "image": row["image"],
        "lang": row["image"],
        "registry": row["registry"],
        "architecture": row["architecture"],
        "status": row["status"],
        "statusInfo": row.get("status_info"),
        "statusData": row.get("status_data") or {},
        "statusChanged": iso(row.get("status_changed")),
        "creationTime": iso(row.get("created_at")),
        "scheduledAt": iso(row.get("scheduled_at")),
        "startsAt": iso(row.get("starts_at")),
        "terminationTime": iso(row.get("terminated_at")),
        "result": row.get("result"),
        "startupCommand": row.get("startup_command"),
        "resourceOpts": row.get("resource_opts") or {},
        "requestedSlots": row.get("requested_slots") or {},
        "occupyingSlots": row.get("occupying_slots") or {},
        "occupiedSlots": row.get("occupying_slots") or {},
        "scalingGroup": row.get("scaling_group"),
        "agentIds": row.get("agent_ids") or [],
        "servicePorts": row.get("service_ports") or [],
        "environ": row.get("environ") or {},
        "dependencies": deps,
        "idleTimeout": row.get("idle_timeout"),
        "lastActivityAt": iso(row.get("last_activity_at")),
        "numQueriesExecuted": 0,
    }


async def info(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    row = await root.sessions.resolve(request["caller"], request.match_info["name"], _owner(request))
    deps = await root.sessions.dependencies_of(row["id"])
    return web.json_response(session_info(row, deps))


async def status_history(request: web.Request) -> web.Response:
    result = await request.app[ROOT].sessions.status_history(
        request["caller"], request.match_info["name"], _owner(request))
    return web.json_response({"result": result})


async def history(request: web.Request) -> web.Response:
    items = await request.app[ROOT].sessions.history(
        request["caller"], request.match_info["name"], _owner(request))
    return web.json_response({"result": items})


async def logs(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    row = await root.sessions.resolve(request["caller"], request.match_info["name"], _owner(request))
    address, kernel_id = await root.agents.kernel_target(row)
    text = await root.agents.rpc.logs(address, kernel_id)
    return web.json_response({"result": {"logs": text}})


async def restart(request: web.Request) -> web.Response:
    await request.app[ROOT].sessions.restart(
        request["caller"], request.match_info["name"], _owner(request))
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    new_name = request.query.get("name")
    if not new_name:
        raise InvalidAPIParameters("missing ?name= for the new session name")
    await request.app[ROOT].sessions.rename(request["caller"], request.match_info["name"], new_name)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    from bai.manager.services.listing import ListingCache

    app[LISTING_CACHE] = ListingCache()
    r = app.router
    r.add_post("/session", create)
    r.add_post("/session/_/create", create)
    r.add_post("/session/_/destroy", destroy_many)
    r.add_get("/session/_/list", list_sessions)
    r.add_get("/session/{name}", info)
    r.add_delete("/session/{name}", destroy)
    r.add_patch("/session/{name}", restart)
    r.add_get("/session/{name}/status-history", status_history)
    r.add_get("/session/{name}/history", history)
    r.add_get("/session/{name}/logs", logs)
    r.add_post("/session/{name}/rename", rename)
