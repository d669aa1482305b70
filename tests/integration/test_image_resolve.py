"""``resolve_image`` (one statement for a create): a canonical name, an alias, a name that is
also another image's alias (the name wins), an unknown one (refused with the list)."""

from __future__ import annotations

import pytest
from api_support import ApiRoot, seed

from bai.common.errors import UnknownImage
from bai.manager.services.images import resolve_image
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


@pytest.fixture
async def store(tmp_path):
    root = ApiRoot(ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db"))
    await seed(root.store)
    async with root.store.begin() as conn:
        for name in ("python:3.11-debian12", "python", "r:4"):
            await conn.execute(t.images.insert().values(name=name))
        await conn.execute(t.image_aliases.insert().values(alias="py", target="python:3.11-debian12"))
        await conn.execute(t.image_aliases.insert().values(alias="python", target="r:4"))
    yield root.store
    await root.store.close()


async def test_names_aliases_and_unknown(store):
    async with store.connect() as conn:
        assert (await resolve_image(conn, "python:3.11-debian12"))["name"] == "python:3.11-debian12"
        assert (await resolve_image(conn, " py "))["name"] == "python:3.11-debian12"
        assert (await resolve_image(conn, "python"))["name"] == "python"  # the name wins
        with pytest.raises(UnknownImage) as e:
            await resolve_image(conn, "nope")
        assert "available images" in str(e.value) and "py -> python:3.11-debian12" in str(e.value)
