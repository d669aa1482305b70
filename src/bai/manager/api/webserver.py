"""The official client's session mode (``BACKEND_ENDPOINT_TYPE=session``): the wire of
Backend.AI's web server, answered by the manager itself (docs/webserver-mode.md has the wire).

| method & path | auth | answer |
| --- | --- | --- |
| POST /server/login | {username (the email), password} as JSON | 200 ``{"authenticated": true, "data": {access_key, role, status}}`` and the ``bai_session`` cookie; a refused login is 200 ``{"authenticated": false, "data": {type, title, details}}`` (what the client reads) |
| POST /server/logout | cookie + ``X-BackendAI-Version`` | 200 ``{}``; the login ends and the cookie is cleared |
| GET /func/ | none | the version probe (``GET /``) |
| any /func/{path} | cookie + ``X-BackendAI-Version`` | ``{path}`` of this API, as the login's keypair |

The login is the dashboard's (``services/web_login.py``: a ``web_sessions`` row, the same
cookie, the same limiter); a ``/func`` request acts as the login's keypair, so it reaches exactly
what that keypair's signed request would.

Why a ``/func`` request needs no CSRF token (the client has none) and a browser still cannot
abuse the cookie:

* Every ``/func`` request (any method, WebSocket upgrades included) must carry the
  ``X-BackendAI-Version`` header, which the official client sends on every request. A page of
  another site cannot send a custom header with the user's cookie: HTML forms, links, images
  and ``<script>`` cannot set headers, a ``fetch`` with one needs a CORS preflight that this
  server never grants (it sends no ``Access-Control-Allow-*`` at all), and a browser's
  WebSocket handshake cannot carry extra headers (so no cross-site WebSocket hijacking).
* A request whose ``Origin`` names another site is refused besides, and the cookie is
  ``SameSite=Strict`` and ``HttpOnly``: a browser does not attach it to cross-site requests at
  all, and no script reads it.
* ``/server/login`` takes only ``application/json`` (which a cross-site form cannot send) from
  no foreign ``Origin`` (no login CSRF); ``/server/logout`` needs the header too.
* Only the public API is reachable under ``/func``: not ``/internal``, ``/storage``,
  ``/dashboard``, ``/health`` or ``/server`` (the version probe ``/func/`` answers anyone, as ``/`` does).
"""

from __future__ import annotations

from aiohttp import web

from bai.common.errors import AuthFailed, BaiError, Forbidden, NotFound
from bai.manager.api.dashboard import attempt_login, credentials, end_login, set_cookie
from bai.manager.api.middleware import CALLER_KEY, same_origin
from bai.manager.api.root import version_probe
from bai.manager.app import ROOT
from bai.manager.services import web_login

#: the header the official client sends on every request and a cross-site page cannot send
CLIENT_HEADER = "X-BackendAI-Version"
#: what ``/func`` never forwards to (they are not the public API, or authenticate otherwise)
_NOT_FORWARDED = ("/internal/", "/storage/", "/dashboard", "/server/", "/func/", "/health/")


def _client_check(request: web.Request) -> None:
    if not request.headers.get(CLIENT_HEADER) or not same_origin(request):
        raise Forbidden(f"A request of the session mode needs the {CLIENT_HEADER} header (the "
                        "official client sends it) and no foreign Origin.",
                        title="CSRF check failed.")


async def login(request: web.Request) -> web.Response:
    email, password = await credentials(request)
    try:
        ws = await attempt_login(request, email, password)
    except BaiError as e:
        if e.status >= 500:
            raise
        # the official client reads a refusal from a 200 answer (``data.details``) and exits 1;
        # a 4xx would make it print the error and exit 0 as if it had logged in
        problem = e.to_problem()
        return web.json_response({"authenticated": False, "data": {
            "type": problem["type"], "title": problem["title"],
            "details": problem.get("msg") or problem["title"]}})
    caller = ws.caller
    resp = web.json_response({"authenticated": True, "data": {
        "access_key": caller.access_key, "role": caller.role, "status": "active"}})
    set_cookie(request, resp, ws)
    return resp


async def logout(request: web.Request) -> web.Response:
    _client_check(request)
    return await end_login(request)


async def func(request: web.Request) -> web.StreamResponse:
    """``/func/{path}``: the API route ``/{path}``, authenticated by the login cookie."""
    tail = "/" + request.match_info["tail"]
    if tail == "/" and request.method in ("GET", "HEAD"):
        return await version_probe(request)
    _client_check(request)
    token = request.cookies.get(web_login.COOKIE)
    if not token:
        raise AuthFailed("Log in first: backend.ai login (with BACKEND_ENDPOINT_TYPE=session).",
                         title="Not logged in.")
    async with request.app[ROOT].store.connect() as conn:
        caller, _ = await web_login.authenticate(conn, token)
    raw = request.raw_path[len("/func"):]
    inner = request.clone(rel_url=raw)
    inner[CALLER_KEY] = caller
    match = await request.app.router.resolve(inner)
    resource = match.route.resource
    # judged by the route that would serve it, so no spelling of the path (%2e%2e, //) gets past
    if resource is not None and resource.canonical.startswith(_NOT_FORWARDED):
        raise NotFound("No such API endpoint under /func.", title="Not found.")
    match.add_app(request.app)
    match.freeze()
    inner._match_info = match  # what aiohttp does for a request it routes itself
    return await match.handler(inner)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/server/login", login)
    r.add_post("/server/logout", logout)
    r.add_route("*", "/func/{tail:.*}", func)
