"""The web dashboard: its page and static files, and the login routes behind it.

| method & path | auth | answer |
| --- | --- | --- |
| GET /dashboard/ | none | the page (``bai/manager/dashboard/index.html``); the rest of the UI is ES modules under /dashboard/static/ |
| POST /dashboard/api/login | {email, password} | {"user": ..., "csrf"} and the ``bai_session`` cookie (HttpOnly, SameSite=Strict, Secure over TLS) |
| POST /dashboard/api/logout | cookie + CSRF | {} and the cookie cleared |
| GET /dashboard/api/me | cookie or keypair | who is logged in, the CSRF token, the policy, images and slot names the launcher offers |
| POST /dashboard/api/password | cookie + CSRF (or keypair) | {current_password, new_password}: the caller's own password |
| GET /dashboard/api/stats?hours=H | admin | queue length and utilisation over the last H hours (``services/cluster_history.py``) |

The page talks to the same API as the CLI (``/session``, ``/admin/gql``, ``/events/session``,
``/admin/*``) with the cookie; ``api/middleware.py`` says how cookie requests are checked (CSRF
token, origin). Every response under /dashboard carries a strict Content-Security-Policy: no
inline script, nothing from another origin (sites are air-gapped; no CDN is ever needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from bai.common.errors import Forbidden, InvalidAPIParameters
from bai.manager.api import models as m
from bai.manager.api.middleware import caller_of, require_admin, same_origin
from bai.manager.api.params import fields_of
from bai.manager.app import ROOT
from bai.manager.services import web_login

STATIC = Path(__file__).resolve().parent.parent / "dashboard"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _user(caller: Any) -> dict[str, Any]:
    return {"email": caller.user_email, "role": caller.role, "is_admin": caller.is_admin,
            "access_key": caller.access_key, "domain": caller.domain_name,
            "resource_policy": caller.resource_policy}


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def attempt_login(request: web.Request, email: str, password: str) -> web_login.WebSession:
    """One password login (the dashboard's and the official client's session mode), counted
    by the login limiter that every manager replica shares."""
    return await web_login.throttled_login(request.app[ROOT].store, email, password)


def set_cookie(request: web.Request, resp: web.StreamResponse, ws: web_login.WebSession) -> None:
    resp.set_cookie(web_login.COOKIE, ws.token, max_age=int(web_login.LIFETIME.total_seconds()),
                    path="/", httponly=True, samesite="Strict", secure=request.secure)


async def credentials(request: web.Request) -> tuple[str, str]:
    """The email and password of a login request (the dashboard's or the client's)."""
    if request.content_type != "application/json":
        # a cross-site HTML form cannot send JSON: this (and the origin check) stops login CSRF
        raise InvalidAPIParameters("send the login as application/json")
    if not same_origin(request):
        raise Forbidden("Log in from this server's own page or client.",
                        title="CSRF check failed.")
    return web_login.parse_credentials(await fields_of(request, m.Login))


async def login(request: web.Request) -> web.Response:
    email, password = await credentials(request)
    ws = await attempt_login(request, email, password)
    resp = web.json_response({"user": _user(ws.caller), "csrf": ws.csrf})
    set_cookie(request, resp, ws)
    return resp


async def logout(request: web.Request) -> web.Response:
    caller_of(request)  # the middleware checked the cookie and the CSRF token
    return await end_login(request)


async def end_login(request: web.Request) -> web.Response:
    """Delete the cookie's login (if any) and clear the cookie."""
    token = request.cookies.get(web_login.COOKIE)
    if token:
        async with request.app[ROOT].store.begin() as conn:
            await web_login.logout(conn, token)
    resp = web.json_response({})
    resp.del_cookie(web_login.COOKIE, path="/")
    return resp


async def me(request: web.Request) -> web.Response:
    import sqlalchemy as sa

    from bai.manager.services import admin as admin_svc
    from bai.manager.store import tables as t

    caller = caller_of(request)
    csrf = None
    token = request.cookies.get(web_login.COOKIE)
    async with request.app[ROOT].store.connect() as conn:
        if token and "Authorization" not in request.headers:
            csrf = (await conn.execute(sa.select(t.web_sessions.c.csrf_token).where(
                t.web_sessions.c.token_hash == web_login.token_hash(token)))).scalar()
        policy = next((p for p in await admin_svc.list_policies(conn)
                       if p["name"] == caller.resource_policy), None)
        images = [{"name": i["name"], "aliases": i["aliases"], "min_slots": i["min_slots"],
                   "service_ports": i["service_ports"]}
                  for i in await admin_svc.list_images(conn)]
        slots: set[str] = set()
        for (avail,) in (await conn.execute(sa.select(t.agents.c.available_slots)
                                            .where(t.agents.c.status == "ALIVE"))).all():
            slots.update(avail or {})
    return web.json_response({"user": _user(caller), "csrf": csrf, "policy": policy,
                              "images": images, "slots": sorted(slots)},
                             headers={"Cache-Control": "no-store"})


async def password(request: web.Request) -> web.Response:
    caller = caller_of(request)
    body = await fields_of(request, m.ChangePassword)
    signed = "Authorization" in request.headers
    token = None if signed else request.cookies.get(web_login.COOKIE)
    async with request.app[ROOT].store.begin() as conn:
        await web_login.change_own(conn, caller, body.get("current_password"),
                                   body.get("new_password"), token)
    return web.json_response({})


async def stats(request: web.Request) -> web.Response:
    from bai.manager.services import cluster_history

    require_admin(request)
    try:
        hours = float(request.query.get("hours", "6"))
    except ValueError:
        raise InvalidAPIParameters("hours must be a number", data={"field": "hours"}) from None
    if not 0 < hours <= cluster_history.MAX_HOURS:
        raise InvalidAPIParameters(f"hours must be in (0, {cluster_history.MAX_HOURS}]",
                                   data={"field": "hours"})
    async with request.app[ROOT].store.connect() as conn:
        return web.json_response(await cluster_history.history(conn, hours))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/dashboard"):
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        storage = getattr(request.app[ROOT].settings, "storage_url", None)
        if storage:  # uploads and downloads go to the storage endpoint, maybe elsewhere
            from urllib.parse import urlsplit

            parts = urlsplit(storage)
            origin = f"{parts.scheme}://{parts.netloc}"
            policy = HEADERS["Content-Security-Policy"]
            response.headers["Content-Security-Policy"] = policy.replace(
                "connect-src 'self'", f"connect-src 'self' {origin}")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/dashboard", to_page)
    r.add_get("/dashboard/", page)
    r.add_static("/dashboard/static/", STATIC, show_index=False, follow_symlinks=False)
    r.add_post("/dashboard/api/login", login)
    r.add_post("/dashboard/api/logout", logout)
    r.add_get("/dashboard/api/me", me)
    r.add_post("/dashboard/api/password", password)
    r.add_get("/dashboard/api/stats", stats)
    app.on_response_prepare.append(_security_headers)
