"""``resolve_image`` (one statement for a create): a canonical name, an alias, a name that is
also another image's alias (the name wins), an unknown one (refused with the list)."""

from __future__ import annotations

import pytest
from api_support import ApiRoot, seed

from bai.common.errors import UnknownImage
from bai.manager.services.images import image_cache, resolve_image
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


async def test_a_resolved_name_stands_until_the_images_are_written(store):
    cache = image_cache()
    async with store.connect() as conn:
        await resolve_image(conn, "py", store, cache)
        before = store.statements
        hit = await resolve_image(conn, "py", store, cache)
        assert store.statements == before  # not read again
        hit["name"] = "changed by the caller"  # what the cache gives is the caller's
        assert (await resolve_image(conn, "py", store, cache))["name"] == "python:3.11-debian12"
    async with store.begin() as conn:
        await conn.execute(t.groups.update().values(description="x"))  # another table
    async with store.connect() as conn:
        before = store.statements
        await resolve_image(conn, "py", store, cache)
        assert store.statements == before
    async with store.begin() as conn:
        await conn.execute(t.image_aliases.update().where(t.image_aliases.c.alias == "py")
                           .values(target="r:4"))
    async with store.connect() as conn:
        assert (await resolve_image(conn, "py", store, cache))["name"] == "r:4"
    async with store.begin() as conn:
        await conn.execute(t.images.update().where(t.images.c.name == "r:4")
                           .values(architecture="aarch64"))
    async with store.connect() as conn:
        assert (await resolve_image(conn, "py", store, cache))["architecture"] == "aarch64"


async def test_a_resolved_name_is_read_again_on_every_create_without_sqlite(store):
    # PostgreSQL: another replica may write the images, which this process would not see
    cache = image_cache()
    store.is_sqlite = False
    try:
        async with store.connect() as conn:
            await resolve_image(conn, "py", store, cache)
            before = store.statements
            await resolve_image(conn, "py", store, cache)
            assert store.statements == before + 1
    finally:
        store.is_sqlite = True


async def test_a_name_resolved_while_a_write_is_open_is_read_again_after_its_commit(store):
    cache = image_cache()
    async with store.begin() as writing:
        await writing.execute(t.image_aliases.update().where(t.image_aliases.c.alias == "py")
                              .values(target="r:4"))
        async with store.connect() as conn:  # sees the alias as committed
            assert (await resolve_image(conn, "py", store, cache))["name"] == "python:3.11-debian12"
    async with store.connect() as conn:
        assert (await resolve_image(conn, "py", store, cache))["name"] == "r:4"
