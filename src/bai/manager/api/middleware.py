"""The two middlewares every public request passes: errors as problem JSON, then authentication.

``error_middleware`` (outermost) turns every failure into a problem JSON object with ``type`` and
``title`` (the official client crashes on anything else, client-protocol section 1.5):
``BaiError`` keeps its own status and code, aiohttp's HTTP errors (unknown route, wrong method)
become problems with their status, and anything unexpected is logged with its traceback and
answered as a 500 problem.

``auth_middleware`` verifies the HMAC signature (and, where the request carries
``X-BAI-Content-SHA256``, that the body is the one signed) of every request except the unauthenticated
version probe (``GET /`` without ``Authorization``), the cluster-internal ``/internal/*`` routes
(they check the cluster token themselves), the storage endpoint ``/storage/*`` (it checks the
token ``request-upload``/``request-download`` handed out), the health probes ``/health/live|ready``, ``/openapi.json`` and
``OPTIONS``; it stores the ``Caller`` in
``request["caller"]``.

A request without ``Authorization`` that carries the dashboard's login cookie is authenticated
by that cookie instead (``services/web_login.py``): the caller is the login's keypair. Such a
request may change nothing unless it also carries the login's CSRF token (``X-BAI-CSRF``, or
``csrf=`` in the query of a WebSocket, which a browser cannot give headers) and, when the
browser names an ``Origin``, comes from this server's own origin: every method but GET and HEAD,
and every WebSocket upgrade (a WebSocket runs code), needs both. A signed request ignores the
cookie, so keypair clients are unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web
from pydantic_core import to_json

from bai.common import auth as hmac_auth
from bai.common.errors import PROBLEM_BASE, BaiError
from bai.manager.api import params
from bai.manager.app import ROOT
from bai.manager.context import Caller
from bai.manager.services import auth
from bai.manager.services.web_login import COOKIE

log = logging.getLogger(__name__)

CALLER_KEY = "caller"

_HTTP_CODES = {
    400: "invalid-api-params",
    401: "auth-failed",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "request-too-large",
    415: "unsupported-media-type",
}


def _to_json_keywords() -> dict[str, str] | None:
    """NaN and infinities written as the json module writes them; None where this pydantic-core
    cannot (``inf_nan_mode`` is newer than the floor's 2.14.1, whose ``to_json`` writes null)."""
    try:
        to_json(0.0, inf_nan_mode="constants")
    except TypeError:
        return None
    return {"inf_nan_mode": "constants"}


_TO_JSON = _to_json_keywords()


def json_answer(data: Any, status: int = 200) -> web.Response:
    """``web.json_response`` written by pydantic-core (a fourth of ``json.dumps``'s
    instructions): the same JSON value, without spaces and with UTF-8 text unescaped; the json
    module writes what it refuses (a lone surrogate), and all of it on a pydantic-core too old
    to write NaN as the json module does."""
    try:
        if _TO_JSON is None:
            raise ValueError
        body = to_json(data, **_TO_JSON)
    except ValueError:
        body = json.dumps(data).encode()
    return web.Response(body=body, status=status, content_type="application/json",
                        charset="utf-8")


def problem_response(status: int, body: dict) -> web.Response:
    return web.json_response(body, status=status, content_type="application/problem+json")


def _http_problem(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http-error" if exc.status < 500 else "internal-server-error")
    body = {"type": PROBLEM_BASE + code, "title": exc.reason or "HTTP error"}
    text = exc.text or ""
    # aiohttp's default texts are just "404: Not Found"; keep only informative ones.
    if text and not text.startswith(f"{exc.status}:"):
        body["msg"] = text
    if exc.status == 404:
        body["title"] = "Not found."
        body["msg"] = body.get("msg") or "No such API endpoint."
    elif exc.status == 405:
        body["title"] = "Method not allowed."
    return problem_response(exc.status, body)


def unexpected_problem() -> dict:
    """The 500 problem of a failure nobody foresaw (its traceback goes to the log)."""
    return {
        "type": PROBLEM_BASE + "internal-server-error",
        "title": "Internal server error.",
        "msg": "The manager failed unexpectedly; its log has the details.",
    }


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BaiError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return problem_response(exc.status, exc.to_problem())
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and empty successes pass through unchanged
            raise
        return _http_problem(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(500, unexpected_problem())


def needs_auth(request: web.Request) -> bool:
    if request.method == "OPTIONS":
        return False
    path = request.path
    if path.startswith(("/internal/", "/storage/")) or path in ("/health/live", "/health/ready", "/openapi.json"):
        return False
    if path.startswith("/dashboard") and path not in _DASHBOARD_AUTHED:
        return False  # the page and its static files; /dashboard/api/login checks itself
    if path.startswith(("/func/", "/server/")):
        return False  # the official client's session mode: api/webserver.py checks the cookie
    if path == "/" and request.method in ("GET", "HEAD") and "Authorization" not in request.headers:
        return False
    return True


def signed_request(request: web.Request) -> auth.SignedRequest:
    h = request.headers
    return auth.SignedRequest(
        method=request.method,
        path_qs=request.raw_path,
        host=h.get("Host", request.host),
        content_type=request.content_type,
        authorization=h.get("Authorization"),
        date=h.get("Date") or h.get("X-BackendAI-Date"),
        version=h.get("X-BackendAI-Version"),
        body_sha256=h.get(hmac_auth.BODY_HASH_HEADER, None) and h[hmac_auth.BODY_HASH_HEADER].lower(),
    )


#: dashboard routes that need a login (the others under /dashboard are public)
_DASHBOARD_AUTHED = frozenset({
    "/dashboard/api/me", "/dashboard/api/logout", "/dashboard/api/password",
    "/dashboard/api/stats",
})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a cross-site browser request (browsers send Origin on those)
    return origin == f"{request.scheme}://{request.host}"


async def cookie_caller(request: web.Request, token: str) -> Caller:
    """The caller of a request authenticated by the login cookie (see the module text)."""
    from bai.common.errors import Forbidden
    from bai.manager.services import web_login

    async with request.app[ROOT].store.connect() as conn:
        caller, csrf = await web_login.authenticate(conn, token)
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method not in _SAFE_METHODS or upgrade:
        given = request.headers.get(web_login.CSRF_HEADER) or (
            request.query.get("csrf") if upgrade else None)
        if not web_login.csrf_ok(csrf, given) or not same_origin(request):
            raise Forbidden(
                f"A request authenticated by the login cookie needs the {web_login.CSRF_HEADER} "
                "header of its login and this server's origin.", title="CSRF check failed.")
    return caller


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    # (ROOT and COOKIE are imported with the module: an import statement in here costs each
    # request a failed ``__path__`` look-up, its AttributeError formatted and dropped)
    if needs_auth(request):
        root = request.app[ROOT]
        token = request.cookies.get(COOKIE)
        if token and "Authorization" not in request.headers:
            request[CALLER_KEY] = await cookie_caller(request, token)
            return await handler(request)
        req = signed_request(request)
        caller = await auth.authenticate(root.store, req,
                                         skew_seconds=root.settings.clock_skew_seconds,
                                         cache=root.keypairs)
        if req.body_sha256 is not None:
            # the signature covers this hash: the body must be the one signed (JSON bodies
            # only: a body past MAX_JSON_BYTES is a 413 before it is hashed)
            body = await params.read_body(request)
            if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), req.body_sha256):
                raise auth.mismatch()
            request[params.BODY_KEY] = body
        request[CALLER_KEY] = caller
    return await handler(request)


def caller_of(request: web.Request) -> Caller:
    """The authenticated caller of a request (set by ``auth_middleware``)."""
    caller = request.get(CALLER_KEY)
    if caller is None:
        raise BaiError("request reached a handler without authentication")
    return caller


def require_admin(request: web.Request) -> Caller:
    """The caller, or a 403 problem when the keypair is not an admin's."""
    from bai.common.errors import Forbidden

    caller = caller_of(request)
    if not caller.is_admin:
        raise Forbidden(
            f"The keypair {caller.access_key} is not an admin keypair.",
            title="Admin privilege required.",
        )
    return caller
