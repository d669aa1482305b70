"""Reading request bodies: JSON checked for shape, then validated by a declared model.

Every route reads its body through ``body_of(request, Model)`` (``api/models.py`` declares one
model per body); anything malformed is a 400 ``invalid-api-params`` problem whose ``data.field``
names the first bad field (dotted path, ``""`` for the body itself), never a 500:

* not UTF-8, not JSON, not an object, nested deeper than ``MAX_DEPTH``, a NUL in any string
  (PostgreSQL text cannot hold one; nothing of ours has a use for it);
* a field of the wrong type or out of its declared range (numbers stay within 64-bit columns).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic
from aiohttp import web
from pydantic_core import from_json

from bai.common.errors import InvalidAPIParameters

#: objects and lists nested deeper than this are refused (nothing we take nests beyond ~5)
MAX_DEPTH = 32
#: a JSON body larger than this is refused with 413 (the largest field, a bootstrap script, is 1 MiB)
MAX_JSON_BYTES = 4 * 1024 * 1024

M = TypeVar("M", bound=pydantic.BaseModel)
#: where ``read_body`` keeps the body it read
BODY_KEY = "bai.body"


def _bad(field: str, msg: str) -> InvalidAPIParameters:
    where = f"'{field}'" if field else "the request body"
    return InvalidAPIParameters(f"{where}: {msg}", data={"field": field},
                                title=f"Invalid request field {field!r}." if field else None)


def _path(parts: tuple | list) -> str:
    return ".".join(str(p) for p in parts)


def check_json(value: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and NUL characters anywhere (keys too)."""
    stack: list[tuple[Any, list, int]] = [(value, [], 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise _bad(_path(where), "a NUL character is not allowed")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise _bad(_path(where), f"nested deeper than {MAX_DEPTH} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for k, v in pairs:
                if isinstance(k, str) and "\x00" in k:
                    raise _bad(_path(where), "a NUL character is not allowed in a key")
                stack.append((v, [*where, k], depth + 1))


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body (``None`` when it is empty), checked by ``check_json``.

    pydantic-core's parser reads it first (half the instructions of the json module's); where
    it refuses (any body that is no JSON, and the few that are but that it reads otherwise: a
    lone surrogate escape, nesting past 200) the json module decides, as it always did."""
    try:
        value = from_json(raw, allow_inf_nan=False)
    except ValueError:
        value = _json_module(raw)
    # only a \u0000 escape makes a NUL (a raw one is no JSON), and each level of nesting opens
    # a bracket: a body with neither cannot fail the walk (most bodies: it skips ~15 us). (In
    # UTF-8 no byte of a longer character is ASCII: the bytes tell what the text would.)
    if b"\\u0000" in raw or raw.count(b"{") + raw.count(b"[") >= MAX_DEPTH:
        check_json(value)
    return value


def _json_module(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("", "the body must be UTF-8 JSON") from None
    if not text.strip():
        return None
    try:
        return _DECODER.decode(text)  # json.loads with a keyword builds a decoder per call
    except (ValueError, RecursionError):
        raise _bad("", "the body must be JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: NaN and Infinity are no JSON: refused
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


async def read_body(request: web.Request) -> bytes:
    """The whole body, at most MAX_JSON_BYTES (413 past it); once read it stays in the request
    (the auth middleware reads it to check a body hash before the handler parses it)."""
    if BODY_KEY in request:
        return request[BODY_KEY]
    if not request.can_read_body:
        return b""
    length = request.content_length
    if length is not None and length > MAX_JSON_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_JSON_BYTES, length)
    if length is not None:  # request.read() keeps it for request.json() and .text() too
        request[BODY_KEY] = body = await request.read()
        return body
    chunks, size = [], 0
    while chunk := await request.content.read(65536):  # also bounds a chunked body
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_JSON_BYTES, size)
        chunks.append(chunk)
    request[BODY_KEY] = body = b"".join(chunks)
    return body


async def json_body(request: web.Request) -> Any:
    return parse_json(await read_body(request))


async def json_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body, ``{}`` when there is none (GETs with a body are allowed)."""
    body = await json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _bad("", "the body must be a JSON object")
    return body


def validate(model: type[M], value: Any) -> M:
    """``value`` as ``model`` or a 400 problem naming the first bad field."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("", "the body must be a JSON object")
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        raise _bad(_path(first.get("loc", ())), first.get("msg", "invalid")) from None
    except RecursionError:
        raise _bad("", f"nested deeper than {MAX_DEPTH} levels") from None


async def body_of(request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated by ``model`` (an absent body is ``{}``)."""
    return validate(model, await json_body(request))


async def fields_of(request: web.Request, model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The validated body as the dict of the fields the request gave (for services that take
    a mapping): values coerced to their declared types, undeclared keys dropped."""
    return (await body_of(request, model)).model_dump(exclude_unset=True)
