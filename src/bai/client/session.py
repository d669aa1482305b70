"""The compute-session SDK: create, upload, execute, destroy, list, events, history.

Every call speaks the wire of ``reference/client-protocol.md`` (the official client's), so this
SDK works against our manager and against an upstream one::

    async with Connection(ClientConfig.load()) as conn:
        api = SessionAPI(conn)
        created = await api.create(CreateSpec(image="python", name="s1"))
        async for frame in api.execute(created.session_id, code="print(1)"):
            ...

The SDK runs on any asyncio event loop; ``bai.client.eventloop.run(main())`` runs a program on
uvloop's where installed (less client CPU per request).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bai.client.bodies import BRIEF_QUERY
from bai.client.connection import Connection, FilePart, SSEMessage, WSMsgType, session_path
from bai.client.endpoint import create_timeout
from bai.client.errors import ProtocolError, UsageError
from bai.client.models import CreatedSession, CreateSpec, ExecFrame, HistoryEntry
from bai.common.errors import BaiError, GraphQLError, SessionNotFound, error_from_problem
from bai.common.ids import parse_uuid

KEYPAIR_QUERY = "query {  keypair {    user_id access_key secret_key is_active is_admin  }}"

LIST_QUERY = (
    "query($limit:Int!, $offset:Int!, $status: String, $access_key: String, $filter: String,"
    " $order: String) {\n"
    "  compute_session_list(\n"
    "      limit:$limit, offset:$offset, status:$status, access_key:$access_key,"
    " filter:$filter, order:$order) {\n"
    "    items { %s }\n"
    "    total_count\n"
    "  }\n"
    "}"
)

DETAIL_QUERY = (
    "query($id: UUID!) {  compute_session(id: $id) {    name id main_kernel_id image tag"
    " created_at terminated_at status status_info status_data occupying_slots mounts idle_checks"
    " service_ports"
    " containers { id cluster_role cluster_idx cluster_hostname session_id image registry status"
    " status_info status_data status_changed agent container_id resource_opts occupied_slots"
    " preopen_ports live_stat last_stat id } dependencies { name id }  }}"
)

RESOLVE_QUERY = (
    "query($id: UUID!) {  compute_session(id: $id) {    id name status status_info access_key"
    "  }}"
)


def gql_field(name: str) -> str:
    return "dependencies { name id }" if name == "dependencies" else name


class SessionAPI:
    """Operations on compute sessions over one ``Connection``."""

    def __init__(self, conn: Connection):
        self.conn = conn

    # -- GraphQL --------------------------------------------------------------------------

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await self.conn.request(
            "POST", "/admin/gql", json_body={"query": query, "variables": variables or {}}
        )
        if not isinstance(body, dict):
            raise ProtocolError("the GraphQL endpoint did not answer a JSON object")
        if body.get("errors"):
            msgs = "; ".join(str(e.get("message", e)) for e in body["errors"])
            raise GraphQLError(msgs, data=body["errors"])
        return body.get("data") or {}

    async def whoami(self) -> dict[str, Any]:
        data = await self.gql(KEYPAIR_QUERY)
        return data.get("keypair") or {}

    async def list_page(
        self,
        fields: Sequence[str],
        *,
        statuses: Sequence[str],
        limit: int,
        offset: int = 0,
        access_key: str | None = None,
        filter: str | None = None,
        order: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of ``compute_session_list``: (items, total_count)."""
        query = LIST_QUERY % " ".join(gql_field(f) for f in fields)
        variables = {
            "status": ",".join(statuses),
            "access_key": access_key,
            "filter": filter,
            "order": order,
            "limit": limit,
            "offset": offset,
        }
        data = await self.gql(query, variables)
        result = data.get("compute_session_list") or {}
        items = result.get("items") or []
        return items, int(result.get("total_count") or 0)

    async def brief(self, session_id: str) -> dict[str, Any]:
        """Name, status and why (``status_info``, ``status_data``) of one session by UUID."""
        data = await self.gql(BRIEF_QUERY, {"id": session_id})
        found = data.get("compute_session")
        if not found:
            raise SessionNotFound(f"no session with id {session_id}")
        return found

    async def detail(self, session_id: str) -> dict[str, Any] | None:
        data = await self.gql(DETAIL_QUERY, {"id": session_id})
        return data.get("compute_session")

    async def resolve(self, name_or_id: str, *, access_key: str | None = None) -> dict[str, Any]:
        """Find a session by UUID or name, as the manager resolves names: the caller's own (or
        ``access_key``'s) session of that name, preferring one that has not ended."""
        from bai.common.status import FINAL, LIST_ALL

        fields = ["id", "name", "status", "status_info", "access_key"]
        statuses = [str(s) for s in LIST_ALL]
        wanted = parse_uuid(name_or_id)
        if wanted:
            found = (await self.gql(RESOLVE_QUERY, {"id": str(wanted)})).get("compute_session")
            if found:
                return found
        owner = access_key or self.conn.config.access_key or None
        items, _ = await self.list_page(
            fields, statuses=statuses, limit=100, offset=0, access_key=owner,
            filter=f"name == {json.dumps(name_or_id)}",
        )
        matches = [it for it in items if it.get("name") == name_or_id]
        for it in matches:
            if it.get("status") not in {str(s) for s in FINAL}:
                return it
        if matches:
            return matches[0]
        raise SessionNotFound(f"no such session: {name_or_id}")

    # -- lifecycle ----------------------------------------------------------------------------

    async def create(self, spec: CreateSpec) -> CreatedSession:
        sent = spec.to_body()
        body = await self.conn.request("POST", "/session", json_body=sent,
                                       timeout=create_timeout(sent, self.conn.read_timeout))
        if not isinstance(body, dict) or not parse_uuid(str(body.get("sessionId", ""))):
            raise ProtocolError("the manager's create answer carries no session id")
        return CreatedSession.from_json(body, spec.name)

    async def upload(self, name: str, files: Sequence[str], basedir: str | None = None) -> list[str]:
        """Upload ``files`` as multipart ``src`` parts named by their path relative to basedir."""
        base = Path(basedir or os.getcwd()).resolve()
        form: list[FilePart] = []
        names = []
        for f in files:
            path = Path(f).resolve()
            try:
                rel = path.relative_to(base)
            except ValueError:
                raise UsageError(f"{f} is outside the base directory {base}") from None
            if not path.is_file():
                raise UsageError(f"no such file: {f}")
            form.append(FilePart("src", rel.as_posix(), str(path)))
            names.append(rel.as_posix())
        await self.conn.request("POST", session_path(name, "/upload"), form=form)
        return names

    async def execute(
        self,
        session_id: str,
        *,
        code: str = "",
        mode: str = "query",
        options: dict[str, Any] | None = None,
        read_input: Callable[[bool], Awaitable[str]] | None = None,
    ) -> AsyncIterator[ExecFrame]:
        """Stream the frames of one execution; answers ``waiting-input`` with ``read_input``."""
        path = f"/stream/session/{session_id}/execute"
        async with self.conn.websocket(path) as ws:
            await ws.send_str(json.dumps({"code": code, "mode": mode, "options": options or {}}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    raw = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(raw, dict) or "status" not in raw:
                    continue
                frame = ExecFrame.from_json(raw)
                yield frame
                if frame.status == "waiting-input":
                    text = await read_input(bool(frame.options.get("is_password"))) if read_input else ""
                    await ws.send_str(text)
                elif frame.status == "finished":
                    break

    async def destroy(
        self, name: str, *, owner: str | None = None, forced: bool = False, recursive: bool = False
    ) -> dict[str, Any]:
        params = [("owner_access_key", owner)] if owner else []
        if forced:
            params.append(("forced", "true"))
        if recursive:
            params.append(("recursive", "true"))
        body = await self.conn.request("DELETE", session_path(name), params=params)
        return body if isinstance(body, dict) else {}

    async def destroy_many(self, names: Sequence[str], *, owner: str | None = None,
                           forced: bool = False, recursive: bool = False
                           ) -> list[dict[str, Any] | BaiError]:
        """``destroy`` of several sessions as one request (none of them is started while the
        others end): per name, in order, the answer (``{"stats": ...}``) or the typed error.
        A manager without ``POST /session/_/destroy`` gets one ``DELETE`` per name."""
        body = {"names": list(names), "forced": forced, "recursive": recursive,
                "owner_access_key": owner}
        try:
            answer = await self.conn.request("POST", "/session/_/destroy", json_body=body)
        except BaiError as e:
            if e.status not in (404, 405):
                raise
            return [await self.destroy_or_error(n, owner, forced, recursive) for n in names]
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(names):
            raise ProtocolError("the manager's destroy answer does not match the names sent")
        out: list[dict[str, Any] | BaiError] = []
        for r in results:
            err = r.get("error") if isinstance(r, dict) else None
            if isinstance(err, dict):
                out.append(error_from_problem(int(err.get("status") or 400), err))
            else:
                out.append(r if isinstance(r, dict) else {})
        return out

    async def destroy_or_error(self, name: str, owner: str | None, forced: bool,
                                recursive: bool) -> dict[str, Any] | BaiError:
        try:
            return await self.destroy(name, owner=owner, forced=forced, recursive=recursive)
        except BaiError as e:
            return e

    async def download(self, name: str, files: Sequence[str], dest: str | os.PathLike = ".",
                       *, owner: str | None = None) -> list[str]:
        """Fetch ``files`` (paths in the work dir) into ``dest``, streamed; returns the names
        extracted. Past the manager's ``session_file_max``: ``FilesTooLarge`` (413)."""
        from bai.client.transfer import receive

        params = {"owner_access_key": owner} if owner else None
        async with self.conn.streamed("GET", session_path(name, "/download"), params=params,
                                      json_body={"files": list(files)}) as resp:
            return await receive(resp.aiter_bytes(), resp.headers.get("content-type", ""),
                                 Path(dest))

    async def logs(self, name: str, *, owner: str | None = None) -> str:
        params = {"owner_access_key": owner} if owner else None
        body = await self.conn.request("GET", session_path(name, "/logs"), params=params)
        if isinstance(body, dict):
            res = body.get("result", body)
            return str(res.get("logs", "") if isinstance(res, dict) else res)
        return str(body or "")

    async def history(self, name: str, *, owner: str | None = None) -> list[HistoryEntry]:
        params = {"owner_access_key": owner} if owner else None
        body = await self.conn.request("GET", session_path(name, "/history"), params=params)
        rows: Any = body
        if isinstance(body, dict):
            rows = body.get("history", body.get("result", body.get("items", [])))
        if not isinstance(rows, list):
            raise ProtocolError("the history answer is not a list of transitions")
        return [HistoryEntry.from_json(r) for r in rows if isinstance(r, dict)]

    async def events(
        self, name_or_id: str, *, owner: str | None = None, scope: str = "*"
    ) -> AsyncIterator[SSEMessage]:
        """The session's lifecycle events as the manager sends them (ends at the stream's end)."""
        if parse_uuid(name_or_id):
            params: list[tuple[str, str]] = [("sessionId", name_or_id)]
        else:
            params = [("sessionName", name_or_id)]
            if owner:
                params.append(("owner_access_key", owner))
        params.append(("scope", scope))
        async for msg in self.conn.sse("/events/session", params):
            yield msg
