"""The OpenAPI 3.1 document of the public REST API, made from the routes the manager serves and
the request models it validates with (``bai.manager.api.models``), served at
``GET /openapi.json`` and kept in ``docs/openapi.json`` (``python -m bai.manager.api.openapi``
writes it; a test checks the two agree). The GraphQL schema goes the same way:
``GET /admin/gql/schema.graphql`` and ``docs/schema.graphql``.

A route's request body is the model its handler reads (``body_of``/``fields_of``), found by
name in the handler's code. Cluster-internal routes (``/internal/*``) are left out.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from typing import Any

from aiohttp import web
from pydantic import BaseModel

import bai
from bai.manager.api import models

PROBLEM = {
    "type": "object",
    "description": "RFC 7807 problem JSON: every error answer",
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "msg": {"type": "string"}},
    "required": ["type", "title"],
}
AUTH = ("Backend.AI HMAC-SHA256 request signature: "
        "`Authorization: BackendAI signMethod=HMAC-SHA256, credential=<access key>:<signature>` "
        "with `Date` and `X-BackendAI-Version` (see the client protocol reference).")
#: routes anyone may call unsigned
PUBLIC = {("GET", "/"), ("GET", "/health/live"), ("GET", "/health/ready"),
          ("GET", "/openapi.json"), ("GET", "/dashboard"), ("GET", "/dashboard/"),
          ("GET", "/dashboard/static"), ("POST", "/dashboard/api/login"),
          ("POST", "/server/login"), ("GET", "/dashboard/terminal")}
COOKIE = ("The dashboard's login (POST /dashboard/api/login): the bai_session cookie; a request "
          "that may change state also sends the login's X-BAI-CSRF header.")


def _body_models() -> dict[str, type[BaseModel]]:
    return {name: obj for name, obj in vars(models).items()
            if inspect.isclass(obj) and issubclass(obj, models.Body) and obj is not models.Body}


def _functions(handler: Any) -> list[Any]:
    """The handler and what it wraps (``__wrapped__``, closures such as ``_admin_only``)."""
    out, todo = [], [handler]
    while todo:
        fn = todo.pop()
        if fn in out or not callable(fn):
            continue
        out.append(fn)
        if getattr(fn, "__wrapped__", None) is not None:
            todo.append(fn.__wrapped__)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if inspect.isfunction(value):
                todo.append(value)
    return out


def body_model(handler: Any) -> type[BaseModel] | None:
    known = _body_models()
    for fn in _functions(handler):
        code = getattr(fn, "__code__", None)
        if code is None:
            continue
        for name in code.co_names:
            if name in known:
                return known[name]
    return None


def _path(canonical: str) -> tuple[str, list[str]]:
    """aiohttp's ``/session/{name}`` (or ``{name:regex}``) -> OpenAPI path and its params."""
    params = re.findall(r"{(\w+)(?::[^}]*)?}", canonical)
    return re.sub(r"{(\w+)(?::[^}]*)?}", r"{\1}", canonical), params


def build(app: web.Application) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Problem": PROBLEM}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        method = route.method.upper()
        if resource is None or method in ("HEAD", "*"):
            continue
        path, params = _path(resource.canonical)
        if path.startswith("/internal/"):
            continue
        handler = route.handler
        op: dict[str, Any] = {
            "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}",
            "summary": f"{method} {path}",
            "parameters": [{"name": p, "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}} for p in params],
            "responses": {
                "200": {"description": "success (JSON unless the route streams)"},
                "default": {"description": "an error",
                            "content": {"application/problem+json": {
                                "schema": {"$ref": "#/components/schemas/Problem"}}}},
            },
        }
        model = body_model(handler)
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            op["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        if (method, path) in PUBLIC:
            op["security"] = []
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "bai manager API (Backend.AI 23.09 compatible)",
                 "version": bai.__version__},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "backendai-hmac": {"type": "apiKey", "in": "header", "name": "Authorization",
                                   "description": AUTH},
                "bai-session": {"type": "apiKey", "in": "cookie", "name": "bai_session",
                                "description": COOKIE},
            },
        },
        "security": [{"backendai-hmac": []}, {"bai-session": []}],
    }


def render(app: web.Application) -> str:
    return json.dumps(build(app), indent=2, sort_keys=False) + "\n"


def graphql_sdl() -> str:
    from bai.manager.api.gql import SDL

    return SDL.strip() + "\n"


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.Response(text=render(request.app), content_type="application/json")


async def graphql_schema(request: web.Request) -> web.Response:
    """The GraphQL schema (SDL) of ``POST /admin/gql``."""
    return web.Response(text=graphql_sdl(), content_type="text/plain")


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/admin/gql/schema.graphql", graphql_schema)


def main() -> None:
    """``python -m bai.manager.api.openapi [graphql]``: print the document (or the SDL)."""
    from bai.manager.app import create_app
    from bai.manager.settings import ManagerSettings

    if sys.argv[1:] == ["graphql"]:
        sys.stdout.write(graphql_sdl())
        return
    sys.stdout.write(render(create_app(ManagerSettings(db_url="sqlite+aiosqlite://"))))


if __name__ == "__main__":
    main()
