"""The administration SDK: images and aliases, users, keypairs, resource policies, agents.

REST over the same signed transport (the "Admin API" of docs/internals.md). Every call is
refused by the manager with 403 for a keypair that is not an admin's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bai.client.connection import Connection


def _seg(value: str) -> str:
    return quote(str(value), safe="")


def _unwrap(body: Any, key: str) -> Any:
    """``{"images": [...]}`` -> ``[...]``; tolerant of a bare answer."""
    if isinstance(body, dict):
        if key in body:
            return body[key]
        if len(body) == 1:
            return next(iter(body.values()))
    return body


class AdminAPI:
    def __init__(self, conn: Connection):
        self.conn = conn

    async def _call(self, method: str, path: str, key: str, body: Any = None,
                    params: dict[str, Any] | None = None) -> Any:
        answer = await self.conn.request(method, path, json_body=body, params=params)
        return _unwrap(answer, key)

    # images and aliases
    async def images(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/images", "images")

    async def register_image(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/admin/images", "image", spec)

    async def update_image(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/images/{_seg(name)}", "image", spec)

    async def forget_image(self, name: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/admin/images/{_seg(name)}", "image")

    async def aliases(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/aliases", "aliases")

    async def set_alias(self, alias: str, target: str) -> dict[str, Any]:
        return await self._call("POST", "/admin/aliases", "alias",
                                {"alias": alias, "target": target})

    async def remove_alias(self, alias: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/admin/aliases/{_seg(alias)}", "alias")

    # users
    async def users(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/users", "users")

    async def create_user(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/admin/users", "user", spec)

    async def set_user_active(self, email: str, active: bool) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/users/{_seg(email)}", "user",
                                {"is_active": active})

    async def set_user_password(self, email: str, password: str) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/users/{_seg(email)}", "user",
                                {"password": password})

    async def delete_user(self, email: str) -> dict[str, Any]:
        """The deleted user, with ``removed_folders``: how many folders of theirs went."""
        answer = await self.conn.request("DELETE", f"/admin/users/{_seg(email)}")
        return {**_unwrap(answer, "user"), "removed_folders": answer.get("removed_folders", 0)}

    # keypairs
    async def keypairs(self, user: str | None = None) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/keypairs", "keypairs",
                                params={"user": user} if user else None)

    async def create_keypair(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/admin/keypairs", "keypair", spec)

    async def update_keypair(self, access_key: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/keypairs/{_seg(access_key)}", "keypair",
                                changes)

    async def delete_keypair(self, access_key: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/admin/keypairs/{_seg(access_key)}", "keypair")

    # resource policies
    async def policies(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/resource-policies", "resource_policies")

    async def create_policy(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/admin/resource-policies", "resource_policy", spec)

    async def update_policy(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/resource-policies/{_seg(name)}",
                                "resource_policy", changes)

    # resource groups
    async def scaling_groups(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/scaling-groups", "scaling_groups")

    async def create_scaling_group(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/admin/scaling-groups", "scaling_group", spec)

    async def update_scaling_group(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/scaling-groups/{_seg(name)}", "scaling_group",
                                changes)

    # agents
    async def agents(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/admin/agents", "agents")

    async def set_agent_schedulable(self, agent_id: str, schedulable: bool) -> dict[str, Any]:
        return await self._call("PATCH", f"/admin/agents/{_seg(agent_id)}", "agent",
                                {"schedulable": schedulable})
