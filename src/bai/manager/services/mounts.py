"""A session's folder mounts: the create's requests resolved to folders (before anything is
written), the ``mounts`` column, what the kernel spec carries and what listings show.

The session row keeps ``[{name, host, relpath, kernel_path, mode}]``; the kernel spec carries
the same (the agent resolves ``relpath`` beneath its own root of ``host``); GraphQL's
``mounts: [String]`` is the folder names, as the reference manager answers and the official
client prints them.
"""

from __future__ import annotations

from typing import Any

from bai.common.mounts import MountRequest
from bai.manager.services.vfolders import MountSpec, resolve_mounts
from bai.manager.store.engine import AsyncConnection


async def resolve(conn: AsyncConnection, owner: dict, requests: list[MountRequest]
                  ) -> list[dict[str, Any]]:
    """The session's ``mounts`` value; raises the problem of the first folder the owner may not
    mount (unknown or not theirs nor shared with them: 404, rw of a read-only one: 403)."""
    if not requests:
        return []
    found = await resolve_mounts(
        conn, owner["user_id"], [MountSpec(r.name, r.kernel_path, r.mode) for r in requests],
        group_id=owner.get("group_id"))
    return [m.to_json() for m in found]


def kernel_mounts(row_mounts: Any) -> list[dict[str, str]]:
    """The kernel spec's ``mounts`` from a session row's."""
    return [{k: str(m[k]) for k in ("name", "host", "relpath", "kernel_path", "mode")}
            for m in (row_mounts or []) if isinstance(m, dict)]


def names(row_mounts: Any) -> list[str]:
    """What listings show: the folder names (older rows may hold plain names)."""
    return [m["name"] if isinstance(m, dict) else str(m) for m in (row_mounts or [])]
