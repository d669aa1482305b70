"""Folder calls for the mount tests, signed with a stack's keypairs through bai's SDK (the
``vfolder`` CLI is tested by its own suite)."""

from __future__ import annotations

import asyncio
from typing import Any

from bai.client.config import ClientConfig
from bai.client.connection import Connection


def folder_api(st: Any, method: str, path: str, body: Any = None, *, user: bool = True) -> Any:
    """One signed request as the stack's user (or admin) keypair; the decoded answer."""

    async def go() -> Any:
        cfg = ClientConfig.load(None, env=st.user_env if user else st.env)
        async with Connection(cfg) as conn:
            return await conn.request(method, path, json_body=body)

    return asyncio.run(go())


def make_folder(st: Any, name: str, *, user: bool = True) -> dict:
    return folder_api(st, "POST", "/folders", {"name": name}, user=user)
