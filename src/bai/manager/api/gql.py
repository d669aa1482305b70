"""``POST /admin/gql``: the GraphQL listing the official client (and ours) uses.

A real GraphQL engine (graphql-core) answers, so the response keys come in the order the fields
were requested (the official console table relies on it, client-protocol 3.3) and ``JSONString``
fields are JSON-encoded strings. Queries: ``keypair`` (the caller's own), ``compute_session_list``
and ``compute_session``. Failures come back as ``{"data": ..., "errors": [{"message", "path"}]}``
with HTTP 200, which the official client prints as a graphql-error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime
import functools
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bai.common.errors import BaiError
from bai.manager.api.middleware import caller_of
from bai.manager.api.models import GraphQLQuery
from bai.manager.api.params import body_of
from bai.manager.services import auth, listing

if TYPE_CHECKING:
    from graphql import GraphQLError

# graphql-core (~16 MB of a manager's RSS, 150 modules) is imported by the first GraphQL request,
# not at start-up: a manager the official client never queries this way does without it.

log = logging.getLogger(__name__)

SDL = """
scalar UUID
scalar DateTime
scalar JSONString

type Query {
  keypair: KeyPair
  compute_session_list(limit: Int!, offset: Int!, status: String, access_key: String,
                       filter: String, order: String,
                       domain_name: String, group_id: UUID): ComputeSessionList
  compute_session(id: UUID!): ComputeSession
  vfolder_list(limit: Int!, offset: Int!, filter: String, order: String,
               domain_name: String, group_id: UUID, access_key: String): VirtualFolderList
  vfolder_own_list(limit: Int!, offset: Int!, filter: String, order: String,
                   domain_name: String, access_key: String): VirtualFolderList
  vfolder_invited_list(limit: Int!, offset: Int!, filter: String, order: String,
                       domain_name: String, access_key: String): VirtualFolderList
  vfolder_project_list(limit: Int!, offset: Int!, filter: String, order: String,
                       domain_name: String, access_key: String): VirtualFolderList
}

type VirtualFolderList {
  items: [VirtualFolder]!
  total_count: Int!
}

type VirtualFolder {
  id: UUID
  host: String
  quota_scope_id: String
  name: String
  user: UUID
  user_email: String
  group: UUID
  group_name: String
  creator: String
  unmanaged_path: String
  usage_mode: String
  permission: String
  ownership_type: String
  max_files: Int
  max_size: Float
  created_at: DateTime
  last_used: DateTime
  num_files: Int
  cur_size: Float
  cloneable: Boolean
  status: String
}

type KeyPair {
  user_id: String
  user_uuid: UUID
  email: String
  access_key: String
  secret_key: String
  is_active: Boolean
  is_admin: Boolean
  resource_policy: String
  domain_name: String
  role: String
}

type ComputeSessionList {
  items: [ComputeSession]!
  total_count: Int!
}

type ComputeSession {
  id: UUID
  session_id: UUID
  main_kernel_id: UUID
  tag: String
  name: String
  type: String
  image: String
  architecture: String
  registry: String
  cluster_template: String
  cluster_mode: String
  cluster_size: Int
  domain_name: String
  group_name: String
  group_id: UUID
  agent_ids: [String]
  user_email: String
  user_id: UUID
  access_key: String
  created_user_email: String
  created_user_id: UUID
  status: String
  status_info: String
  status_data: JSONString
  status_changed: DateTime
  created_at: DateTime
  terminated_at: DateTime
  starts_at: DateTime
  scheduled_at: DateTime
  startup_command: String
  result: String
  resource_opts: JSONString
  scaling_group: String
  service_ports: JSONString
  mounts: [String]
  occupying_slots: JSONString
  occupied_slots: JSONString
  requested_slots: JSONString
  containers: [ComputeContainer]
  dependencies: [ComputeSession]
  abusing_reports: [JSONString]
  idle_checks: JSONString
}

type ComputeContainer {
  id: UUID
  kernel_id: UUID
  cluster_role: String
  role: String
  cluster_idx: Int
  idx: Int
  cluster_hostname: String
  hostname: String
  session_id: UUID
  image: String
  registry: String
  status: String
  status_info: String
  status_data: JSONString
  status_changed: DateTime
  created_at: DateTime
  terminated_at: DateTime
  agent: String
  agent_addr: String
  container_id: String
  resource_opts: JSONString
  occupied_slots: JSONString
  requested_slots: JSONString
  preopen_ports: [Int]
  exit_code: Int
  live_stat: JSONString
  last_stat: JSONString
}
"""

#: How long ``compute_session`` waits for an agent's live stats before showing the last ones.
LIVE_STAT_TIMEOUT = 2.0


def _serialize_uuid(value: Any) -> str:
    return str(value)


def _parse_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        from graphql import GraphQLError

        raise GraphQLError(f"{value!r} is not a UUID") from None


def _serialize_datetime(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _serialize_json(value: Any) -> str:
    return json.dumps(value)


def _parse_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _requested_fields(node: Any) -> set[str]:
    from graphql.language import FieldNode, InlineFragmentNode

    names: set[str] = set()
    selection_set = getattr(node, "selection_set", None)
    for sel in selection_set.selections if selection_set else ():
        if isinstance(sel, FieldNode):
            names.add(sel.name.value)
        elif isinstance(sel, InlineFragmentNode):
            names |= _requested_fields(sel)
    return names


def _item_fields(info) -> set[str]:
    """Names requested under ``compute_session_list { items { ... } }``."""
    from graphql.language import FieldNode

    names: set[str] = set()
    for node in info.field_nodes:
        for sel in node.selection_set.selections if node.selection_set else ():
            if isinstance(sel, FieldNode) and sel.name.value == "items":
                names |= _requested_fields(sel)
    return names


async def _attach_relations(ctx: dict, items: list[dict], wanted: set[str]) -> None:
    ids = [uuid.UUID(i["id"]) for i in items]
    conn = ctx["conn"]
    if "dependencies" in wanted:
        deps = await listing.load_dependencies(conn, ids)
        for item in items:
            item["dependencies"] = deps[uuid.UUID(item["id"])]
    if "containers" in wanted:
        kernels = await listing.load_kernels(conn, ids)
        for item in items:
            item["_kernels"] = kernels[uuid.UUID(item["id"])]


async def resolve_keypair(_root, info) -> dict | None:
    ctx = info.context
    record = await auth.load_keypair(ctx["conn"], ctx["caller"].access_key)
    if record is None:
        return None
    return {
        "user_id": record.user_email,  # upstream's keypair.user_id is the user's login id
        "user_uuid": record.user_id,
        "email": record.user_email,
        "access_key": record.access_key,
        "secret_key": record.secret_key,
        "is_active": record.is_active,
        "is_admin": record.is_admin,
        "resource_policy": record.resource_policy,
        "domain_name": record.domain_name,
        "role": record.role,
    }


async def resolve_session_list(
    _root, info, limit: int, offset: int, status: str | None = None,
    access_key: str | None = None, filter: str | None = None, order: str | None = None,
    domain_name: str | None = None, group_id: uuid.UUID | None = None,
) -> dict:
    ctx = info.context
    extra = []
    if domain_name:
        extra.append(f'domain_name == "{domain_name}"')
    if group_id:
        extra.append(f'group_id == "{group_id}"')
    if extra:
        filter = " & ".join([f"({filter})"] * bool(filter) + extra)
    page = await listing.list_sessions(
        ctx["conn"], ctx["caller"], limit=limit, offset=offset, status=status,
        access_key=access_key, filter=filter, order=order,
    )
    await _attach_relations(ctx, page.items, _item_fields(info))
    return {"items": page.items, "total_count": page.total_count}


async def resolve_session(_root, info, id: uuid.UUID) -> dict | None:
    ctx = info.context
    item = await listing.get_session(ctx["conn"], ctx["caller"], id)
    if item is None:
        return None
    wanted = set()
    for node in info.field_nodes:
        wanted |= _requested_fields(node)
    await _attach_relations(ctx, [item], wanted)
    return item


async def _live_stat(ctx: dict, kernel: dict) -> Any:
    agents = getattr(ctx["root"], "agents", None)
    if kernel["status"] != "RUNNING" or not kernel.get("agent_address") or agents is None:
        return None
    try:
        return await asyncio.wait_for(
            agents.rpc.stats(kernel["agent_address"], str(kernel["id"])), LIVE_STAT_TIMEOUT
        )
    except Exception as exc:  # stats are best effort; the listing must not fail for them
        log.debug("live stats of kernel %s unavailable: %s", kernel["id"], exc)
        return None


async def resolve_containers(session: dict, info) -> list[dict]:
    kernels = session.get("_kernels")
    if kernels is None:
        kernels = (await listing.load_kernels(info.context["conn"], [uuid.UUID(session["id"])]))[
            uuid.UUID(session["id"])
        ]
    out = [listing.container_fields(k, session) for k in kernels]
    if "live_stat" in set().union(*(_requested_fields(n) for n in info.field_nodes)):
        stats = await asyncio.gather(*(_live_stat(info.context, k) for k in kernels))
        for item, stat in zip(out, stats, strict=True):
            item["live_stat"] = stat
    return out


async def resolve_dependencies(session: dict, info) -> list[dict]:
    if "dependencies" in session:
        return session["dependencies"]
    sid = uuid.UUID(session["id"])
    return (await listing.load_dependencies(info.context["conn"], [sid]))[sid]


def _folder_list(kind: str):
    """``vfolder_list`` (admins: every folder; users: what they reach), ``vfolder_own_list``,
    ``vfolder_invited_list`` (shared with the caller) and ``vfolder_project_list`` (groups')."""
    async def resolve(_root, info, limit: int, offset: int, filter: str | None = None,
                      order: str | None = None, **_ignored: Any) -> dict:
        if filter:
            from graphql import GraphQLError

            raise GraphQLError("filter is not supported on folder lists; list all and search")
        ctx = info.context
        caller = ctx["caller"]
        items = await ctx["root"].folders.list(caller, all_=kind == "all")
        wanted = {"own": (True,), "invited": ("shared",), "project": ("group",)}.get(kind)
        if kind == "own":
            items = [i for i in items if i["is_owner"]]
        elif wanted:
            items = [i for i in items if i.get("via") == wanted[0]]
        if order:
            key = order.lstrip("+-")
            items.sort(key=lambda i: str(i.get(key) or ""), reverse=order.startswith("-"))
        page = items[offset:offset + limit] if limit > 0 else items[offset:]
        return {"items": page, "total_count": len(items)}

    return resolve


def _container_alias(name: str):
    return lambda obj, _info: obj.get(name)


def build() -> Any:
    from graphql import build_schema

    schema = build_schema(SDL)
    tm = schema.type_map
    for name, out, parse in (
        ("UUID", _serialize_uuid, _parse_uuid),
        ("DateTime", _serialize_datetime, None),
        ("JSONString", _serialize_json, _parse_json),
    ):
        # graphql-core 3.2 calls serialize/parse_value, 3.3 coerce_output/input_value.
        tm[name].serialize = tm[name].coerce_output_value = out
        if parse is not None:
            tm[name].parse_value = tm[name].coerce_input_value = parse
    query = tm["Query"]
    query.fields["keypair"].resolve = resolve_keypair
    query.fields["compute_session_list"].resolve = resolve_session_list
    query.fields["compute_session"].resolve = resolve_session
    for kind in ("all", "own", "invited", "project"):
        query.fields["vfolder_list" if kind == "all" else f"vfolder_{kind}_list"].resolve = \
            _folder_list(kind)
    session = tm["ComputeSession"]
    session.fields["containers"].resolve = resolve_containers
    session.fields["dependencies"].resolve = resolve_dependencies
    container = tm["ComputeContainer"]
    for alias, name in (("role", "cluster_role"), ("idx", "cluster_idx"), ("hostname", "cluster_hostname")):
        container.fields[alias].resolve = _container_alias(name)
    return schema


#: the executable schema, built once, by the first request
schema = functools.cache(build)


def _format_error(err: GraphQLError) -> dict:
    original = err.original_error
    body = err.formatted
    if isinstance(original, BaiError):
        body["message"] = str(original)
        body.setdefault("extensions", {})["code"] = original.code
    elif original is not None:
        log.error("GraphQL resolver failed", exc_info=original)
        body["message"] = "Internal error while resolving this field; see the manager log."
    return body


async def execute(root: Any, caller: Any, query: str, variables: dict | None) -> dict:
    """Run one GraphQL request for ``caller``; returns the response envelope."""
    from graphql import graphql

    async with root.store.connect() as conn:
        result = await graphql(
            schema(),
            query,
            variable_values=variables or {},
            context_value={"conn": conn, "caller": caller, "root": root},
        )
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [_format_error(e) for e in result.errors]
    return body


async def handle_gql(request: web.Request) -> web.Response:
    from bai.manager.app import ROOT

    caller = caller_of(request)
    payload = await body_of(request, GraphQLQuery)
    body = await execute(request.app[ROOT], caller, payload.query, payload.variables or {})
    return web.json_response(body)


def setup(app: web.Application) -> None:
    app.router.add_post("/admin/gql", handle_gql)
