"""Reading request bodies the way every route expects them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bai.common.errors import InvalidAPIParameters


async def json_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body, ``{}`` when there is none (GETs with a body are allowed)."""
    text = await request.text() if request.can_read_body else ""
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        raise InvalidAPIParameters("The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise InvalidAPIParameters("The request body must be a JSON object.")
    return body
