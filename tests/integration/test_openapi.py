"""The OpenAPI document and the GraphQL schema: made from what the manager serves and
validates with, valid, served, and the copies in docs/ up to date."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from graphql import build_schema
from openapi_spec_validator import validate

from bai.manager.api import openapi
from bai.manager.app import create_app
from bai.manager.settings import ManagerSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = "regenerate it: python -m bai.manager.api.openapi [graphql] > docs/..."


def app():
    return create_app(ManagerSettings(db_url="sqlite+aiosqlite://"))


def test_the_document_is_valid_and_docs_has_it():
    doc = openapi.build(app())
    validate(doc)
    assert json.loads((DOCS / "openapi.json").read_text()) == doc, REGENERATE
    create = doc["paths"]["/session"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateSession"}
    props = doc["components"]["schemas"]["CreateSession"]["properties"]
    assert {"image", "enqueueOnly", "maxWaitSeconds", "config"} <= set(props)
    assert doc["paths"]["/admin/users"]["post"]["requestBody"]  # behind _admin_only
    assert not any(p.startswith("/internal/") for p in doc["paths"])
    assert doc["paths"]["/health/ready"]["get"]["security"] == []


def test_the_graphql_schema_is_published():
    sdl = openapi.graphql_sdl()
    assert (DOCS / "schema.graphql").read_text() == sdl, REGENERATE
    schema = build_schema(sdl)
    assert "compute_session_list" in schema.query_type.fields


async def test_the_manager_serves_its_document_unsigned(tmp_path):
    the_app = create_app(ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"))
    client = TestClient(TestServer(the_app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert await resp.json() == openapi.build(the_app)
        resp = await client.get("/admin/gql/schema.graphql")  # signed requests only
        assert resp.status == 401
    finally:
        await client.close()
