"""Admin REST API (issue 8); every route refuses a non-admin keypair with a 403 problem.

| method & path | body | answer |
| --- | --- | --- |
| GET /admin/images | | {"images": [{name, registry, runtimes, architecture, labels, min_slots, service_ports, aliases}]} |
| POST /admin/images | {name, registry?, runtimes?, architecture?, labels?, min_slots?, service_ports?} | 201 {"image"} |
| PATCH /admin/images/{name} | {labels?, min_slots?, service_ports?} | {"image"} (labels merged, an empty value removes one) |
| DELETE /admin/images/{name} | | {"image"} (its aliases go too) |
| GET /admin/aliases | | {"aliases": [{alias, target}]} |
| POST /admin/aliases | {alias, target} | 201 {"alias"} (replaces an existing alias) |
| DELETE /admin/aliases/{alias} | | {"alias"} |
| GET /admin/users | | {"users": [...]} |
| POST /admin/users | {email, username?, domain?, group?, role?} | 201 {"user"} |
| PATCH /admin/users/{email} | {is_active?, password?} | {"user"} (a password ends the user's browser logins) |
| DELETE /admin/users/{email} | | {"user", "removed_folders"}: with their keypairs, ended sessions' records and owned folders (records and directories); refused while they have a session that did not end |
| GET /admin/keypairs[?user=email] | | {"keypairs": [...]} (never the secret keys) |
| POST /admin/keypairs | {user, is_admin?, resource_policy?} | 201 {"keypair"} with secret_key, shown once |
| PATCH /admin/keypairs/{ak} | {is_active?, is_admin?, resource_policy?} | {"keypair"} |
| DELETE /admin/keypairs/{ak} | | {"keypair"} (refused while it has sessions that did not end) |
| GET /admin/resource-policies | | {"resource_policies": [...]} |
| POST /admin/resource-policies | {name, max_concurrent_sessions?, total_resource_slots?, idle_timeout?, pids_limit?, disk_quota?, min_resource_slots?, allow_outbound?} | 201 {"resource_policy"} |
| PATCH /admin/resource-policies/{name} | same fields | {"resource_policy"} |
| GET /admin/scaling-groups | | {"scaling_groups": [...]} (with alive_agents) |
| POST /admin/scaling-groups | {name, scheduler?: fifo|lifo|drf, agent_selection?: concentrated|dispersed} | 201 {"scaling_group"} |
| PATCH /admin/scaling-groups/{name} | {scheduler?, agent_selection?, is_active?} | {"scaling_group"} |
| GET /admin/agents | | {"agents": [...]} with status, address, available/occupied/free slots, schedulable |
| PATCH /admin/agents/{id} | {schedulable} | {"agent"} |

Changes that can let queued sessions start (a policy, a keypair's policy, an agent back in
service) kick the scheduler so they apply to the next pass at once.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.manager.api.middleware import require_admin
from bai.manager.api import models as m
from bai.manager.api.params import fields_of
from bai.manager.services import admin as svc


def _root(request: web.Request) -> Any:
    from bai.manager.app import ROOT

    return request.app[ROOT]


def _kick(root: Any) -> None:
    scheduler = getattr(root, "scheduler", None)
    if scheduler is not None and hasattr(scheduler, "kick"):
        scheduler.kick()


async def _read(request: web.Request, fn, *args) -> Any:
    async with _root(request).store.connect() as conn:
        return await fn(conn, *args)


async def _write(request: web.Request, fn, *args, kick: bool = False) -> Any:
    root = _root(request)
    async with root.store.begin() as conn:
        result = await fn(conn, *args)
    if kick:
        _kick(root)
    return result


def _not_self(request: web.Request, access_key: str, what: str) -> None:
    if request["caller"].access_key == access_key:
        raise Forbidden(f"Refusing to {what} the keypair this request is signed with.",
                        title="That would lock you out.")


async def images_list(request: web.Request) -> web.Response:
    return web.json_response({"images": await _read(request, svc.list_images)})


async def images_register(request: web.Request) -> web.Response:
    body = await fields_of(request, m.RegisterImage)
    return web.json_response({"image": await _write(request, svc.register_image, body)}, status=201)


async def images_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdateImage)
    return web.json_response(
        {"image": await _write(request, svc.update_image, request.match_info["name"], body)})


async def images_forget(request: web.Request) -> web.Response:
    return web.json_response({"image": await _write(request, svc.forget_image, request.match_info["name"])})


async def aliases_list(request: web.Request) -> web.Response:
    return web.json_response({"aliases": await _read(request, svc.list_aliases)})


async def aliases_set(request: web.Request) -> web.Response:
    body = await fields_of(request, m.SetAlias)
    return web.json_response({"alias": await _write(request, svc.set_alias, body)}, status=201)


async def aliases_remove(request: web.Request) -> web.Response:
    return web.json_response({"alias": await _write(request, svc.remove_alias, request.match_info["alias"])})


async def users_list(request: web.Request) -> web.Response:
    return web.json_response({"users": await _read(request, svc.list_users)})


async def users_create(request: web.Request) -> web.Response:
    body = await fields_of(request, m.CreateUser)
    return web.json_response({"user": await _write(request, svc.create_user, body)}, status=201)


async def users_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdateUser)
    active = svc.parse_bool(body, "is_active")
    password = body.get("password")
    if active is None and password is None:
        raise InvalidAPIParameters("give is_active: true or false, or password")
    email = request.match_info["email"]
    if active is False and request["caller"].user_email == email:
        raise Forbidden("Refusing to deactivate the user this request is signed by.",
                        title="That would lock you out.")

    async def update(conn: Any) -> dict[str, Any]:
        from bai.manager.services import web_login

        if password is not None:
            await web_login.set_for(conn, email, password)
        if active is not None:
            return await svc.set_user_active(conn, email, active)
        return next(u for u in await svc.list_users(conn) if u["email"] == email)

    return web.json_response({"user": await _write(request, update)})


async def keypairs_list(request: web.Request) -> web.Response:
    user = request.query.get("user") or None
    return web.json_response({"keypairs": await _read(request, svc.list_keypairs, user)})


async def keypairs_create(request: web.Request) -> web.Response:
    body = await fields_of(request, m.CreateKeypair)
    return web.json_response({"keypair": await _write(request, svc.create_keypair, body)}, status=201)


async def keypairs_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdateKeypair)
    ak = request.match_info["access_key"]
    if body.get("is_active") is False or body.get("is_admin") is False:
        _not_self(request, ak, "deactivate or demote")
    kp = await _write(request, svc.update_keypair, ak, body, kick="resource_policy" in body)
    return web.json_response({"keypair": kp})


async def users_delete(request: web.Request) -> web.Response:
    email = request.match_info["email"]
    if request["caller"].user_email == email:
        raise Forbidden("Refusing to delete the user this request is signed by.",
                        title="That would lock you out.")
    root = _root(request)
    user, places = await _write(request, svc.delete_user, email, root.folders)
    await root.folders.remove_directories(places)  # the records are gone: nobody reaches them
    return web.json_response({"user": user, "removed_folders": len(places)})


async def keypairs_delete(request: web.Request) -> web.Response:
    ak = request.match_info["access_key"]
    _not_self(request, ak, "delete")
    return web.json_response({"keypair": await _write(request, svc.delete_keypair, ak)})


async def policies_list(request: web.Request) -> web.Response:
    return web.json_response({"resource_policies": await _read(request, svc.list_policies)})


async def policies_create(request: web.Request) -> web.Response:
    body = await fields_of(request, m.CreatePolicy)
    default_idle = _root(request).settings.default_idle_timeout
    policy = await _write(request, svc.create_policy, body, default_idle)
    return web.json_response({"resource_policy": policy}, status=201)


async def policies_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdatePolicy)
    policy = await _write(request, svc.update_policy, request.match_info["name"], body, kick=True)
    return web.json_response({"resource_policy": policy})


async def sgroups_list(request: web.Request) -> web.Response:
    return web.json_response({"scaling_groups": await _read(request, svc.list_scaling_groups)})


async def sgroups_create(request: web.Request) -> web.Response:
    body = await fields_of(request, m.CreateScalingGroup)
    group = await _write(request, svc.create_scaling_group, body)
    return web.json_response({"scaling_group": group}, status=201)


async def sgroups_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdateScalingGroup)
    group = await _write(request, svc.update_scaling_group, request.match_info["name"], body,
                         kick=True)
    return web.json_response({"scaling_group": group})


async def agents_list(request: web.Request) -> web.Response:
    return web.json_response({"agents": await _read(request, svc.list_agents)})


async def agents_update(request: web.Request) -> web.Response:
    body = await fields_of(request, m.UpdateAgent)
    schedulable = svc.parse_bool(body, "schedulable")
    if schedulable is None:
        raise InvalidAPIParameters("give schedulable: true or false")
    agent = await _write(request, svc.set_agent_schedulable, request.match_info["agent_id"],
                         schedulable, kick=schedulable)
    return web.json_response({"agent": agent})


def _admin_only(handler):
    """Refuse non-admin keypairs before the handler reads its body or parameters."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded


ROUTES = [
    ("GET", "/admin/images", images_list),
    ("POST", "/admin/images", images_register),
    ("PATCH", "/admin/images/{name:.+}", images_update),
    ("DELETE", "/admin/images/{name:.+}", images_forget),
    ("GET", "/admin/aliases", aliases_list),
    ("POST", "/admin/aliases", aliases_set),
    ("DELETE", "/admin/aliases/{alias:.+}", aliases_remove),
    ("GET", "/admin/users", users_list),
    ("POST", "/admin/users", users_create),
    ("PATCH", "/admin/users/{email}", users_update),
    ("DELETE", "/admin/users/{email}", users_delete),
    ("GET", "/admin/keypairs", keypairs_list),
    ("POST", "/admin/keypairs", keypairs_create),
    ("PATCH", "/admin/keypairs/{access_key}", keypairs_update),
    ("DELETE", "/admin/keypairs/{access_key}", keypairs_delete),
    ("GET", "/admin/resource-policies", policies_list),
    ("POST", "/admin/resource-policies", policies_create),
    ("PATCH", "/admin/resource-policies/{name}", policies_update),
    ("GET", "/admin/scaling-groups", sgroups_list),
    ("POST", "/admin/scaling-groups", sgroups_create),
    ("PATCH", "/admin/scaling-groups/{name}", sgroups_update),
    ("GET", "/admin/agents", agents_list),
    ("PATCH", "/admin/agents/{agent_id}", agents_update),
]


def setup(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, _admin_only(handler))
