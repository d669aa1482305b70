"""A session's folder mounts: the create's requests resolved to folders (before anything is
written), the ``mounts`` column, what the kernel spec carries and what listings show.

The session row keeps ``[{name, host, relpath, kernel_path, mode}]``; the kernel spec carries
the same (the agent resolves ``relpath`` beneath its own root of ``host``); GraphQL's
``mounts: [String]`` is the folder names, as the reference manager answers and the official
client prints them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bai.common.errors import InvalidAPIParameters
from bai.common.mounts import MountRequest


@dataclass(frozen=True)
class ResolvedMount:
    name: str
    host: str
    relpath: str
    kernel_path: str
    mode: str  # "ro" | "rw"


async def resolve(conn: AsyncConnection, owner: dict, requests: list[MountRequest]
                  ) -> list[dict[str, Any]]:
    """The session's ``mounts`` value; raises the problem of the first folder the owner may not
    mount (unknown, not theirs nor shared with them, rw asked of a read-only share)."""
    if not requests:
        return []
    # TODO(#14): vfolder's resolve_mounts (folders table); until it lands no folder exists
    raise InvalidAPIParameters(f"unknown storage folder {requests[0].name!r}",
                               data={"field": "mounts", "name": requests[0].name})


def as_row(mounts: list[ResolvedMount]) -> list[dict[str, Any]]:
    return [asdict(m) for m in mounts]


def kernel_mounts(row_mounts: Any) -> list[dict[str, str]]:
    """The kernel spec's ``mounts`` from a session row's."""
    return [{k: str(m[k]) for k in ("name", "host", "relpath", "kernel_path", "mode")}
            for m in (row_mounts or []) if isinstance(m, dict)]


def names(row_mounts: Any) -> list[str]:
    """What listings show: the folder names (older rows may hold plain names)."""
    return [m["name"] if isinstance(m, dict) else str(m) for m in (row_mounts or [])]
