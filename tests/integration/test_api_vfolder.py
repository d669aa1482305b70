"""``/folders`` on a real SQLite store and a real storage host directory: create, list, the
name rules, and ``resolve_mounts`` (the contract the session create uses) with its refusals."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from api_support import OTHER, USER, ApiRoot, Signed, call, make_app, seed, start_client

from bai.common.errors import InvalidAPIParameters, VFolderNotFound, VFolderPermissionDenied
from bai.manager.api import vfolder
from bai.manager.services import vfolders as vf
from bai.manager.services.folders import FolderService
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


@pytest.fixture
async def env(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                               state_dir=str(tmp_path / "state"))
    root = ApiRoot(settings)
    s = await seed(root.store)
    root.folders = FolderService(root)
    root.folders.start()
    client = await start_client(make_app(root, vfolder))
    yield root, s, client
    await client.close()
    await root.store.close()


async def test_create_list_and_the_directory(env, tmp_path):
    root, s, client = env
    user = Signed(client, USER)
    hosts = await call(user, "GET", "/folders/_/hosts")
    assert hosts["default"] == "local" and hosts["allowed"] == ["local"]
    made = await call(user, "POST", "/folders", {"name": "data", "host": None, "quota": "0"},
                      status=201)
    assert made["name"] == "data" and made["host"] == "local" and made["permission"] == "rw"
    host_root = tmp_path / "state" / "vfolders"
    assert os.stat(host_root).st_mode & 0o777 == 0o700
    async with root.store.connect() as conn:
        relpath = (await conn.execute(sa.select(t.vfolders.c.relpath))).scalar()
    assert (host_root / relpath).is_dir()
    listed = await call(user, "GET", "/folders", {"all": False})
    assert [f["name"] for f in listed] == ["data"] and listed[0]["is_owner"] is True
    # another user sees nothing of it
    assert await call(Signed(client, OTHER), "GET", "/folders") == []


@pytest.mark.parametrize("body, field", [
    ({"name": "../x"}, "name"), ({"name": ""}, "name"), ({"name": "a/b"}, "name"),
    ({"name": "ok", "permission": "rwx"}, "permission"), ({"name": "ok", "quota": "-1"}, "quota"),
    ({"name": "ok", "usage_mode": "weird"}, "usage_mode"), ({"name": "ok", "host": "nas9"}, None),
])
async def test_bad_create_is_a_clear_400_and_makes_nothing(env, tmp_path, body, field):
    root, s, client = env
    data = await call(Signed(client, USER), "POST", "/folders", body, status=400)
    assert data["title"] and data.get("msg")
    if field:
        assert data["data"]["field"] == field
    async with root.store.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t.vfolders))).scalar() == 0
    assert list((tmp_path / "state" / "vfolders").iterdir()) == []


async def test_name_clash(env):
    _, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    data = await call(user, "POST", "/folders", {"name": "data"}, status=400)
    assert data["type"].endswith("vfolder-already-exists")
    # the same name is free for another user
    await call(Signed(client, OTHER), "POST", "/folders", {"name": "data"}, status=201)


async def test_resolve_mounts(env):
    root, s, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await call(user, "POST", "/folders", {"name": "ref", "permission": "ro"}, status=201)
    await call(Signed(client, OTHER), "POST", "/folders", {"name": "theirs"}, status=201)
    uid = s.users[USER[0]]
    async with root.store.connect() as conn:
        got = await vf.resolve_mounts(conn, uid, ["data", "ref", "data:/data:ro"])
        assert [(m.name, m.host, m.kernel_path, m.mode) for m in got] == [
            ("data", "local", "/home/work/data", "rw"), ("ref", "local", "/home/work/ref", "ro"),
            ("data", "local", "/data", "ro")]
        assert got[0].relpath == got[2].relpath and got[0].relpath != got[1].relpath
        with pytest.raises(VFolderNotFound):
            await vf.resolve_mounts(conn, uid, ["theirs"])  # another user's folder
        with pytest.raises(VFolderNotFound):
            await vf.resolve_mounts(conn, uid, ["nope"])
        with pytest.raises(VFolderPermissionDenied):
            await vf.resolve_mounts(conn, uid, ["ref:/x:rw"])
        for bad in ["data:/home/work/../etc", "data:/", "data:/home/work", "../data"]:
            with pytest.raises(InvalidAPIParameters):
                await vf.resolve_mounts(conn, uid, [bad])
        with pytest.raises(InvalidAPIParameters):
            await vf.resolve_mounts(conn, uid, ["data", "ref:data"])  # same path twice
        assert await vf.resolve_mounts(conn, uid, []) == []
