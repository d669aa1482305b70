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
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging

from aiohttp import web

from bai.common import auth as hmac_auth
from bai.common.errors import PROBLEM_BASE, BaiError
from bai.manager.api import params
from bai.manager.context import Caller
from bai.manager.services import auth

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
        return problem_response(
            500,
            {
                "type": PROBLEM_BASE + "internal-server-error",
                "title": "Internal server error.",
                "msg": "The manager failed unexpectedly; its log has the details.",
            },
        )


def needs_auth(request: web.Request) -> bool:
    if request.method == "OPTIONS":
        return False
    path = request.path
    if path.startswith(("/internal/", "/storage/")) or path in ("/health/live", "/health/ready", "/openapi.json"):
        return False
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


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    if needs_auth(request):
        from bai.manager.app import ROOT

        root = request.app[ROOT]
        req = signed_request(request)
        async with root.store.connect() as conn:
            caller = await auth.authenticate(
                conn, req, skew_seconds=root.settings.clock_skew_seconds
            )
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
