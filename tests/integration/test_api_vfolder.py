"""``/folders`` on a real SQLite store and a real storage host directory: create, list, the
name rules, and ``resolve_mounts`` (the contract the session create uses) with its refusals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import subprocess
import uuid

import pytest
import sqlalchemy as sa
from api_support import ADMIN, OTHER, USER, ApiRoot, Signed, call, make_app, seed, start_client
from pg_support import private_store

from bai.common.errors import InvalidAPIParameters, VFolderNotFound, VFolderPermissionDenied
from bai.manager.api import admin, storage, vfolder
from bai.manager.services import vfolders as vf
from bai.manager.services.folders import FolderService
from bai.manager.services.storage import FolderImages
from bai.manager.settings import ManagerSettings
from bai.manager.store import tables as t


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request, tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                               state_dir=str(tmp_path / "state"))
    async with contextlib.AsyncExitStack() as stack:
        root = ApiRoot(settings)
        if request.param == "postgres":
            await root.store.close()
            root.store = await stack.enter_async_context(private_store("vf"))
        s = await seed(root.store)
        root.folders = FolderService(root)
        await root.folders.start()
        client = await start_client(make_app(root, vfolder, storage, admin))
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


# ---------------------------------------------------------------- files and bytes


async def _upload(client, signed: Signed, name: str, path: str, data: bytes,
                  chunks: int = 1) -> None:
    """request-upload, then tus PATCHes as the official client's aiotusclient sends them."""
    ticket = await call(signed, "POST", f"/folders/{name}/request-upload",
                        {"path": path, "size": len(data)})
    url = _local(ticket["url"]) + "?token=" + ticket["token"]
    step = max(1, -(-len(data) // chunks))
    for off in range(0, len(data), step):
        resp = await client.request("PATCH", url, data=data[off:off + step], headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": str(off),
            "Content-Type": "application/offset+octet-stream"})
        assert resp.status == 204, await resp.text()
        assert resp.headers["Upload-Offset"] == str(min(off + step, len(data)))


def _local(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


async def _download(client, signed: Signed, name: str, path: str, headers=None):
    ticket = await call(signed, "POST", f"/folders/{name}/request-download", {"path": path})
    resp = await client.request("GET", _local(ticket["url"]) + "?token=" + ticket["token"],
                                headers=headers or {})
    return resp


def _folder_dir(root, tmp_path, name="data") -> "os.PathLike":
    import asyncio  # noqa: F401

    return next(p for p in (tmp_path / "state" / "vfolders").glob("*/*") if p.is_dir())


async def test_upload_resume_download_and_ranges(env, tmp_path):
    root, s, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    data = os.urandom(3 * 1024 * 1024 + 17)
    await _upload(client, user, "data", "sub/train.bin", data, chunks=3)
    resp = await _download(client, user, "data", "sub/train.bin")
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Length"] == str(len(data))
    resp = await _download(client, user, "data", "/sub/train.bin",
                           headers={"Range": "bytes=100-", "If-Range":
                                    resp.headers["Last-Modified"]})
    assert resp.status == 206 and await resp.read() == data[100:]
    # a stale If-Range gets the whole file again
    resp = await _download(client, user, "data", "sub/train.bin",
                           headers={"Range": "bytes=100-", "If-Range": "Mon, 01 Jan 2001 "
                                    "00:00:00 GMT"})
    assert resp.status == 200 and len(await resp.read()) == len(data)
    # resume: HEAD says how much arrived; a PATCH at another offset is refused with 409
    ticket = await call(user, "POST", "/folders/data/request-upload",
                        {"path": "r.bin", "size": 10})
    url = _local(ticket["url"]) + "?token=" + ticket["token"]
    tus = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    resp = await client.request("PATCH", url, data=b"01234",
                                       headers={**tus, "Upload-Offset": "0"})
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "5"
    listed = await call(user, "GET", "/folders/data/files", {"path": "."})
    assert "r.bin" not in [f["name"] for f in json.loads(listed["files"])]  # not whole yet
    resp = await client.request("HEAD", url, headers={"Tus-Resumable": "1.0.0"})
    assert resp.headers["Upload-Offset"] == "5" and resp.headers["Upload-Length"] == "10"
    resp = await client.request("PATCH", url, data=b"xx",
                                       headers={**tus, "Upload-Offset": "2"})
    assert resp.status == 409 and resp.headers["Upload-Offset"] == "5"
    resp = await client.request("PATCH", url, data=b"56789-too-many",
                                       headers={**tus, "Upload-Offset": "5"})
    assert resp.status == 400
    resp = await client.request("PATCH", url, data=b"56789",
                                       headers={**tus, "Upload-Offset": "5"})
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "10"
    resp = await _download(client, user, "data", "r.bin")
    assert await resp.read() == b"0123456789"


async def test_an_empty_file_is_whole_at_request_upload(env):
    _, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await call(user, "POST", "/folders/data/request-upload", {"path": "empty", "size": 0})
    resp = await _download(client, user, "data", "empty")
    assert resp.status == 200 and await resp.read() == b""


async def test_tokens_are_bound_to_their_operation_and_checked(env):
    _, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await _upload(client, user, "data", "a.txt", b"hello")
    down = await call(user, "POST", "/folders/data/request-download", {"path": "a.txt"})
    up = await call(user, "POST", "/folders/data/request-upload", {"path": "b.txt", "size": 3})
    c = client
    for method, url in (("GET", "/storage/download?token=" + up["token"]),
                        ("HEAD", "/storage/upload?token=" + down["token"]),
                        ("GET", "/storage/download?token=" + down["token"][:-2] + "AA"),
                        ("GET", "/storage/download"),
                        ("PATCH", "/storage/upload?token=garbage")):
        resp = await c.request(method, url, headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"})
        assert resp.status == 401, (method, url)
    # deleting the folder ends its tokens
    await call(user, "DELETE", "/folders/data", status=204)
    resp = await c.request("GET", "/storage/download?token=" + down["token"])
    assert resp.status == 404


async def test_file_operations(env, tmp_path):
    _, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await call(user, "POST", "/folders/data/mkdir", {"path": "a/b", "parents": True}, status=201)
    await call(user, "POST", "/folders/data/mkdir", {"path": "a/b"}, status=409)
    await call(user, "POST", "/folders/data/mkdir", {"path": "a/b", "exist_ok": True}, status=201)
    await call(user, "POST", "/folders/data/mkdir", {"path": "x/y"}, status=404)
    await _upload(client, user, "data", "a/f.txt", b"f")
    await call(user, "POST", "/folders/data/move-file", {"src": "a/f.txt", "dst": "a/b"})
    await call(user, "POST", "/folders/data/rename-file",
               {"target_path": "a/b/f.txt", "new_name": "g.txt"})
    await call(user, "POST", "/folders/data/rename-file",
               {"target_path": "a/b/g.txt", "new_name": "../g.txt"}, status=400)
    page = await call(user, "GET", "/folders/data/files", {"path": "a/b", "limit": 10})
    assert [f["name"] for f in page["items"]] == ["g.txt"] and page["total"] == 1
    await call(user, "DELETE", "/folders/data/delete-files", {"files": ["a"]}, status=400)
    await call(user, "DELETE", "/folders/data/delete-files", {"files": ["a", "nope"],
                                                              "recursive": True}, status=404)
    await call(user, "DELETE", "/folders/data/delete-files", {"files": ["a"], "recursive": True})
    page = await call(user, "GET", "/folders/data/files", {"path": ".", "limit": 10})
    assert page["items"] == []


async def test_paths_and_links_never_lead_out(env, tmp_path):
    """A link planted inside the folder (as a session could) is never followed."""
    root, s, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    folder = _folder_dir(root, tmp_path)
    os.symlink(outside, folder / "link")
    os.symlink(outside / "secret", folder / "secret-link")
    for path in ("link/secret", "secret-link", "../../../etc/passwd", "/../x"):
        resp = await user.request("POST", "/folders/data/request-download", {"path": path})
        assert resp.status in (400, 404), path
    for path in ("link/new.txt", "../evil"):
        resp = await user.request("POST", "/folders/data/request-upload",
                                  {"path": path, "size": 1})
        assert resp.status in (400, 404), path
    await call(user, "POST", "/folders/data/mkdir", {"path": "link/x"}, status=400)
    await call(user, "GET", "/folders/data/files", {"path": "link"}, status=400)
    await call(user, "POST", "/folders/data/move-file",
               {"src": "secret-link", "dst": "link/moved"}, status=400)
    await call(user, "POST", "/folders/data/move-file", {"src": "secret-link", "dst": "link"},
               status=409)  # onto the link itself, which exists: not into where it points
    # removing a link removes the link, not what it points to
    await call(user, "DELETE", "/folders/data/delete-files", {"files": ["link"],
                                                              "recursive": True})
    await call(user, "DELETE", "/folders/data/delete-files", {"files": ["secret-link"]})
    assert (outside / "secret").read_text() == "secret"
    # a link planted where an upload's hidden file goes is not followed either
    ticket = await call(user, "POST", "/folders/data/request-upload", {"path": "t", "size": 2})
    from bai.manager.services.storage import StorageTokens  # noqa: F401

    upload_id = json.loads(_b64(ticket["token"].split(".")[0]))["upload"]
    os.symlink(outside / "secret", folder / f".bai-upload-{upload_id}")
    resp = await client.request(
        "PATCH", "/storage/upload?token=" + ticket["token"], data=b"xx",
        headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                 "Content-Type": "application/offset+octet-stream"})
    assert resp.status >= 400
    assert (outside / "secret").read_text() == "secret"


def _b64(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


async def test_share_permissions(env):
    _, s, client = env
    user, other = Signed(client, USER), Signed(client, OTHER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await _upload(client, user, "data", "a.txt", b"a")
    # not shared: nothing of it is reachable
    await call(other, "GET", "/folders/data", status=404)
    await call(other, "POST", "/folders/data/request-download", {"path": "a.txt"}, status=404)
    await call(user, "POST", "/folders/data/share", {"permission": "ro",
                                                     "emails": ["other@example.org"]}, status=201)
    assert [f["name"] for f in await call(other, "GET", "/folders")] == ["data"]
    resp = await _download(client, other, "data", "a.txt")
    assert await resp.read() == b"a"
    await call(other, "POST", "/folders/data/request-upload", {"path": "b", "size": 1},
               status=403)
    await call(other, "POST", "/folders/data/mkdir", {"path": "d"}, status=403)
    await call(other, "DELETE", "/folders/data/delete-files", {"files": ["a.txt"]}, status=403)
    await call(other, "DELETE", "/folders/data", status=403)
    await call(other, "POST", "/folders/data/rename", {"new_name": "mine"}, status=403)
    await call(other, "POST", "/folders/data/share", {"permission": "wd",
                                                      "emails": ["other@example.org"]},
               status=403)
    async with env[0].store.connect() as conn:
        got = await vf.resolve_mounts(conn, s.users[OTHER[0]], ["data"])
        assert got[0].mode == "ro"
        with pytest.raises(VFolderPermissionDenied):
            await vf.resolve_mounts(conn, s.users[OTHER[0]], ["data:/x:rw"])
    # rw: may write, not delete; wd: may delete
    await call(user, "POST", "/folders/data/share", {"permission": "rw",
                                                     "emails": ["other@example.org"]}, status=201)
    await _upload(client, other, "data", "b.txt", b"b")
    await call(other, "DELETE", "/folders/data/delete-files", {"files": ["b.txt"]}, status=403)
    await call(user, "POST", "/folders/data/share", {"permission": "wd",
                                                     "emails": ["other@example.org"]}, status=201)
    await call(other, "DELETE", "/folders/data/delete-files", {"files": ["b.txt"]})
    # an upload token outlives nothing: unshare ends it
    ticket = await call(other, "POST", "/folders/data/request-upload", {"path": "c", "size": 1})
    await call(user, "DELETE", "/folders/data/unshare", {"emails": ["other@example.org"]})
    resp = await client.request("HEAD", "/storage/upload?token=" + ticket["token"])
    assert resp.status == 404
    assert await call(other, "GET", "/folders") == []
    await call(user, "POST", "/folders/data/share", {"permission": "rwx",
                                                     "emails": ["other@example.org"]}, status=400)
    await call(user, "POST", "/folders/data/share", {"permission": "ro",
                                                     "emails": ["nobody@example.org"]}, status=404)


async def test_rename_delete_and_clone(env, tmp_path):
    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    await call(user, "POST", "/folders", {"name": "other"}, status=201)
    await call(user, "POST", "/folders/data/rename", {"new_name": "other"}, status=400)
    await call(user, "POST", "/folders/data/rename", {"new_name": "../x"}, status=400)
    await call(user, "POST", "/folders/data/rename", {"new_name": "renamed"}, status=201)
    await _upload(client, user, "renamed", "d/a.txt", b"a")
    folder = next(p for p in (tmp_path / "state" / "vfolders").glob("*/*")
                  if (p / "d").exists())
    os.symlink("/etc/passwd", folder / "link")
    made = await call(user, "POST", "/folders/renamed/clone", {"target_name": "copy"},
                      status=201)
    assert made["name"] == "copy"
    resp = await _download(client, user, "copy", "d/a.txt")
    assert await resp.read() == b"a"
    page = await call(user, "GET", "/folders/copy/files", {"path": ".", "limit": 10})
    assert {f["name"]: f["type"] for f in page["items"]} == {"d": "DIRECTORY",
                                                            "link": "SYMLINK"}
    await call(user, "POST", "/folders/renamed/clone", {"target_name": "copy"}, status=400)
    await call(user, "DELETE", "/folders/renamed", status=204)
    assert not folder.exists()
    await call(user, "GET", "/folders/renamed", status=404)


needs_images = pytest.mark.skipif(
    FolderImages.detect() is None,
    reason="folder quotas need root, /dev/loop-control and mkfs.ext4 (CI has them)")


@needs_images
def _raw_patch(base, token: str, size: int) -> bytes:
    """A tus PATCH of ``size`` bytes over a plain socket, sent whole before the answer is
    read; returns the answer's status line."""
    with socket.create_connection((base.host, base.port), timeout=60) as s:
        s.sendall(f"PATCH /storage/upload?token={token} HTTP/1.1\r\nHost: x\r\n"
                  f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Length: {size}\r\n"
                  "Content-Type: application/offset+octet-stream\r\n\r\n".encode())
        block = os.urandom(2**20)
        for _ in range(size // 2**20):
            s.sendall(block)
        return s.makefile("rb").readline()


async def test_a_quota_holds_against_uploads_and_direct_writes(env, tmp_path):
    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "q", "quota": "20m"}, status=201)
    folder = _folder_dir(root, tmp_path)
    try:
        assert os.path.ismount(folder)
        data = await call(user, "POST", "/folders/q/request-upload",
                          {"path": "big", "size": 21 * 2**20}, status=413)
        assert data["type"].endswith("vfolder-quota-exceeded")
        await _upload(client, user, "q", "a.bin", os.urandom(12 * 2**20), chunks=2)
        # 12 MiB more do not fit: the PATCH fails with one clear problem, nothing half-made
        ticket = await call(user, "POST", "/folders/q/request-upload",
                            {"path": "b.bin", "size": 12 * 2**20})
        resp = await client.request(
            "PATCH", "/storage/upload?token=" + ticket["token"], data=os.urandom(12 * 2**20),
            headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                     "Content-Type": "application/offset+octet-stream"})
        body = await resp.json()
        assert resp.status == 413 and body["title"] == "Disk quota exceeded.", body
        assert sorted(os.listdir(folder)) == ["a.bin"]
        # the same from a client that sends the whole body before it reads: the answer
        # reaches it (a server that stops reading and closes would reset the connection)
        ticket = await call(user, "POST", "/folders/q/request-upload",
                            {"path": "b.bin", "size": 19 * 2**20})
        status = await asyncio.to_thread(_raw_patch, client.make_url("/"), ticket["token"],
                                         19 * 2**20)
        assert status.startswith(b"HTTP/1.1 413"), status
        assert sorted(os.listdir(folder)) == ["a.bin"]
        # a write from inside a session lands in the same filesystem: the kernel stops it
        with pytest.raises(OSError) as err, open(folder / "direct.bin", "wb") as f:
            for _ in range(20):
                f.write(b"\0" * 2**20)
                f.flush()
                os.fsync(f.fileno())
        assert err.value.errno == errno.ENOSPC
        # the folder stays usable: remove what filled it and write again
        await call(user, "DELETE", "/folders/q/delete-files", {"files": ["a.bin", "direct.bin"]})
        await _upload(client, user, "q", "c.bin", b"fits")
        await call(user, "POST", "/folders/q/clone", {"target_name": "q2"}, status=201)
        # after a reboot the loop mount is gone: the manager's start mounts it again
        subprocess.run(["umount", str(folder)], check=True)
        assert not os.path.ismount(folder)
        await root.folders.start()
        assert os.path.ismount(folder) and (folder / "c.bin").read_bytes() == b"fits"
    finally:
        await call(user, "DELETE", "/folders/q", status=204)
        await user.request("DELETE", "/folders/q2")
    assert not os.path.ismount(folder) and not folder.exists()
    assert not FolderImages.image_of(folder).exists()


async def test_a_quota_is_refused_in_one_line_where_images_cannot_be_made(env, tmp_path):
    root, _, client = env
    root.folders.hosts.images = None
    data = await call(Signed(client, USER), "POST", "/folders", {"name": "q", "quota": "1g"},
                      status=400)
    assert "quota" in data["msg"] and data["data"]["field"] == "quota"
    assert list((tmp_path / "state" / "vfolders").iterdir()) == []


async def test_pages_of_a_big_folder(env, tmp_path):
    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "many"}, status=201)
    folder = _folder_dir(root, tmp_path)
    names = [f"f{i:03d}" for i in range(57)]
    for n in reversed(names):
        (folder / n).write_bytes(b"")
    seen = []
    for off in range(0, 60, 10):  # small pages: the heap; the last ones: a whole sort
        page = await call(user, "GET", "/folders/many/files",
                          {"path": ".", "offset": off, "limit": 10})
        assert page["total"] == 57 and page["offset"] == off
        seen += [i["name"] for i in page["items"]]
    assert seen == names
    loose = []
    for off in range(0, 60, 20):
        page = await call(user, "GET", "/folders/many/files",
                          {"path": ".", "offset": off, "limit": 20, "order": "none"})
        assert page["total"] == -1
        loose += [i["name"] for i in page["items"]]
    assert sorted(loose) == names and len(loose) == 57
    await call(user, "GET", "/folders/many/files", {"order": "size"}, status=400)


async def test_group_folders(env):
    """An admin makes a folder of a group; its members reach it with the folder's permission,
    others do not."""
    root, s, client = env
    admin, user, other = Signed(client, ADMIN), Signed(client, USER), Signed(client, OTHER)
    gid = uuid.uuid4()
    async with root.store.begin() as conn:
        await conn.execute(t.groups.insert().values(id=gid, name="lab", domain_name="default",
                                                    total_resource_slots={}))
        await conn.execute(t.group_members.insert().values(group_id=gid,
                                                           user_id=s.users[USER[0]]))
    await call(user, "POST", "/folders", {"name": "shared", "group": "lab"}, status=403)
    made = await call(admin, "POST", "/folders", {"name": "shared", "group": "lab",
                                                  "permission": "ro"}, status=201)
    assert made["ownership_type"] == "group" and made["group"] == gid.hex
    await call(admin, "POST", "/folders", {"name": "x", "group": "nolab"}, status=404)
    listed = await call(user, "GET", "/folders")
    assert [(f["name"], f["ownership_type"], f["permission"], f["is_owner"])
            for f in listed] == [("shared", "group", "ro", False)]
    await call(user, "POST", "/folders/shared/request-upload", {"path": "a", "size": 1},
               status=403)
    await call(user, "DELETE", "/folders/shared", status=403)
    await call(other, "GET", "/folders/shared", status=404)
    async with root.store.connect() as conn:
        got = await vf.resolve_mounts(conn, s.users[USER[0]], ["shared"])
        assert got[0].mode == "ro"
        with pytest.raises(VFolderNotFound):  # a session of another group does not see it
            await vf.resolve_mounts(conn, s.users[USER[0]], ["shared"], group_id=s.group_id)
    # an admin lists every folder with all=true, a user only their own
    assert "shared" in [f["name"] for f in await call(admin, "GET", "/folders", {"all": True})]
    assert [f["name"] for f in await call(other, "GET", "/folders", {"all": True})] == []
    await call(admin, "DELETE", "/folders/shared", status=404)  # not a member: not reached


async def test_a_mounted_folder_is_not_deleted(env):
    root, s, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    async with root.store.connect() as conn:
        mounts = [m.to_json() for m in await vf.resolve_mounts(conn, s.users[USER[0]], ["data"])]
    from api_support import add_session

    await add_session(root.store, s, name="uses-it", status="RUNNING", mounts=mounts)
    data = await call(user, "DELETE", "/folders/data", status=409)
    assert "mounted in 1 session" in data["msg"]
    async with root.store.begin() as conn:
        await conn.execute(sa.update(t.sessions).values(status="TERMINATED"))
    await call(user, "DELETE", "/folders/data", status=204)


def _parts(folder) -> list:
    """The parts of unfinished uploads (``.bai-upload-`` + 32 hex digits) under ``folder``."""
    return sorted(p for p in folder.rglob(".bai-upload-*") if len(p.name) == 12 + 32)


async def test_abandoned_upload_parts_are_swept_after_the_expiry(env, tmp_path):
    import time

    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    folder = _folder_dir(root, tmp_path)
    tus = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}

    async def half_upload(path: str) -> str:
        ticket = await call(user, "POST", "/folders/data/request-upload", {"path": path,
                                                                           "size": 10})
        resp = await client.request("PATCH", "/storage/upload?token=" + ticket["token"],
                                    data=b"01234", headers={**tus, "Upload-Offset": "0"})
        assert resp.status == 204
        return ticket["token"]

    token = await half_upload("half.bin")
    await half_upload("sub/deeper/half.bin")
    parts = _parts(folder)
    assert len(parts) == 2
    # what stays: a whole file, a session's own folder and link named like parts (the link
    # leads out of the folder: neither it nor its target is touched)
    await _upload(client, user, "data", "whole.bin", b"whole")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    os.symlink(outside, folder / ".bai-upload-link")
    (folder / ".bai-upload-dir").mkdir()
    old = time.time() - 3 * 3600
    for p in (outside, folder / "whole.bin", folder / ".bai-upload-dir", *parts):
        os.utime(p, (old, old))
    os.utime(folder / ".bai-upload-link", (old, old), follow_symlinks=False)
    used = (await call(user, "GET", "/folders/data"))["used_bytes"]
    root.settings.upload_part_expiry = 4 * 3600.0  # not expired yet
    assert await root.folders.sweep_parts() == 0 and _parts(folder) == parts
    root.settings.upload_part_expiry = 3600.0
    assert await root.folders.sweep_parts() == 2
    assert _parts(folder) == []
    assert outside.read_bytes() == b"x" and (folder / ".bai-upload-link").is_symlink()
    assert (folder / ".bai-upload-dir").is_dir() and (folder / "whole.bin").read_bytes() == b"whole"
    assert (await call(user, "GET", "/folders/data"))["used_bytes"] < used  # no longer counted
    # the abandoned upload, taken up again, starts over
    resp = await client.request("HEAD", "/storage/upload?token=" + token,
                                headers={"Tus-Resumable": "1.0.0"})
    assert resp.status == 200 and resp.headers["Upload-Offset"] == "0"
    # the manager's own loop with a small expiry: a fresh part goes once it is a second old
    await half_upload("late.bin")
    assert len(_parts(folder)) == 1
    root.settings.upload_part_expiry = 1.0
    task = asyncio.create_task(root.folders.sweep_loop())
    try:
        for _ in range(600):
            if not _parts(folder):
                break
            await asyncio.sleep(0.1)
        assert _parts(folder) == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (folder / "whole.bin").read_bytes() == b"whole"


async def test_deleting_a_user_removes_their_folders_from_disk(env, tmp_path):
    from api_support import add_session

    root, s, client = env
    user, other, admin = Signed(client, USER), Signed(client, OTHER), Signed(client, ADMIN)
    for name in ("mine", "lent"):
        await call(user, "POST", "/folders", {"name": name}, status=201)
    await _upload(client, user, "mine", "deep/a.txt", b"data")
    await call(user, "POST", "/folders/lent/share", {"permission": "rw",
                                                     "emails": ["other@example.org"]}, status=201)
    await call(other, "POST", "/folders", {"name": "theirs"}, status=201)
    await call(other, "POST", "/folders/theirs/share", {"permission": "ro",
                                                        "emails": ["user@example.org"]}, status=201)
    v = t.vfolders
    async with root.store.connect() as conn:
        rows = (await conn.execute(sa.select(v.c.name, v.c.host, v.c.relpath))).all()
    dirs = {name: root.folders.hosts.path(host, relpath) for name, host, relpath in rows}
    assert all(d.is_dir() for d in dirs.values())
    # refused while the user has a session that has not ended, and while another's session
    # mounts a folder of theirs (shared): nothing is removed
    await add_session(root.store, s, name="theirs-running", status="RUNNING")
    data = await call(admin, "DELETE", "/admin/users/user@example.org", status=409)
    assert "not ended" in data["msg"]
    async with root.store.begin() as conn:
        await conn.execute(sa.update(t.sessions).values(status="TERMINATED"))
        lent = [m.to_json() for m in await vf.resolve_mounts(conn, s.users[OTHER[0]], ["lent"])]
    await add_session(root.store, s, access_key=OTHER[0], name="uses-lent", status="RUNNING",
                      mounts=lent)
    data = await call(admin, "DELETE", "/admin/users/user@example.org", status=409)
    assert "mounted in 1 session" in data["msg"]
    assert all(d.is_dir() for d in dirs.values())
    async with root.store.begin() as conn:
        await conn.execute(sa.update(t.sessions).values(status="TERMINATED"))
    # an admin cannot delete the user they sign as; an unknown user is a 404
    await call(admin, "DELETE", "/admin/users/admin@example.org", status=403)
    await call(admin, "DELETE", "/admin/users/nobody@example.org", status=404)
    await call(user, "DELETE", "/admin/users/other@example.org", status=403)  # not an admin
    got = await call(admin, "DELETE", "/admin/users/user@example.org")
    assert got["user"]["email"] == "user@example.org" and got["removed_folders"] == 2
    assert not dirs["mine"].exists() and not dirs["lent"].exists()
    assert (dirs["theirs"]).is_dir()  # another's folder, only shared with them, stays
    async with root.store.connect() as conn:
        left = (await conn.execute(sa.select(v.c.name))).scalars().all()
        gone = (await conn.execute(sa.select(sa.func.count()).select_from(t.users).where(
            t.users.c.email == "user@example.org"))).scalar()
    assert left == ["theirs"] and gone == 0
    assert [f["name"] for f in await call(other, "GET", "/folders")] == ["theirs"]
    await call(user, "GET", "/folders", status=401)  # their keypair went with them


@contextlib.contextmanager
def _local_conn(path: str):
    """A connection to the manager's local storage socket."""
    from bai.client.vfolder_wire import _connect_local

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _connect_local(sock, path)
        sock.settimeout(60.0)
        yield sock


def _send_local(path: str, message: bytes, fds: list[int]) -> dict:
    """One request on the local upload socket; the manager's JSON answer."""
    with _local_conn(path) as sock:
        socket.send_fds(sock, [message], fds)
        return json.loads(sock.makefile("rb").readline())


async def test_a_local_client_hands_its_file_over_and_nothing_else(env, tmp_path):
    from bai.client import vfolder_wire as wire
    from bai.common.errors import BaiError

    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    folder = _folder_dir(root, tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 2**20 + 5))
    ticket = await call(user, "POST", "/folders/data/request-upload",
                        {"path": "in/src.bin", "size": src.stat().st_size})
    sock_path = ticket["local_socket"]
    assert os.path.basename(sock_path) == "storage.sock"
    got = await asyncio.to_thread(wire.upload_local, sock_path, ticket["token"], src)
    assert got == src.stat().st_size
    assert (folder / "in" / "src.bin").read_bytes() == src.read_bytes() and _parts(folder) == []

    async def refused(token: str, fds: list[int], offset: int = 0) -> dict:
        msg = json.dumps({"token": token, "offset": offset}).encode()
        return await asyncio.to_thread(_send_local, sock_path, msg, fds)

    ticket = await call(user, "POST", "/folders/data/request-upload", {"path": "x", "size": 4})
    r, w = os.pipe()
    try:  # a pipe, a socket: only a regular file's bytes are copied
        os.write(w, b"pipe")
        assert (await refused(ticket["token"], [r]))["status"] == 400
        with socket.socket() as s:
            assert (await refused(ticket["token"], [s.fileno()]))["status"] == 400
    finally:
        os.close(r)
        os.close(w)
    assert (await refused(ticket["token"], []))["status"] == 400  # no descriptor
    with open(src, "rb") as f:
        assert (await refused(ticket["token"] + "x", [f.fileno()]))["status"] == 401
        dl = await call(user, "POST", "/folders/data/request-download", {"path": "in/src.bin"})
        assert (await refused(dl["token"], [f.fileno()]))["status"] == 401  # not an upload
        assert (await refused(ticket["token"], [f.fileno()], offset=2))["status"] == 409
    bad = await asyncio.to_thread(_send_local, sock_path, b"not json", [])
    assert bad["status"] == 400
    assert not (folder / "x").exists() and _parts(folder) == []
    # another user's folder stays out of reach: their token is needed, not a path
    with pytest.raises(BaiError):
        await asyncio.to_thread(wire.upload_local, sock_path, "forged.token", src)
    # a path that is no socket here (another machine's manager): the PATCH takes over
    assert await asyncio.to_thread(wire.upload_local, str(tmp_path / "none.sock"),
                                   ticket["token"], src) is None


def _ask_local(path: str, message: bytes) -> tuple[dict, int]:
    """One download request on the local socket: the manager's answer and how many
    descriptors came with it (closed here)."""
    with _local_conn(path) as sock:
        sock.sendall(message)
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        for fd in fds:
            os.close(fd)
        return json.loads(msg), len(fds)


async def test_a_local_client_gets_a_descriptor_of_the_folders_file_and_nothing_else(
        env, tmp_path):
    from bai.client import vfolder_wire as wire

    root, _, client = env
    user = Signed(client, USER)
    await call(user, "POST", "/folders", {"name": "data"}, status=201)
    folder = _folder_dir(root, tmp_path)
    (folder / "in").mkdir()
    data = os.urandom(3 * 2**20 + 5)
    (folder / "in" / "f.bin").write_bytes(data)
    ticket = await call(user, "POST", "/folders/data/request-download", {"path": "in/f.bin"})
    sock_path, token = ticket["local_socket"], ticket["token"]

    def local_into(path, token: str, head: bytes = b"") -> int | None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, head)
            return wire.download_local(sock_path, token, fd, 30.0)
        finally:
            os.close(fd)

    got = tmp_path / "got.bin"
    assert await asyncio.to_thread(local_into, got, token) == len(data)
    assert got.read_bytes() == data
    # a part already there (a broken try) is kept and the rest copied after it
    assert await asyncio.to_thread(local_into, got, token, data[:2**20 + 3]) == len(data)
    assert got.read_bytes() == data
    # the whole download through the descriptor, no HTTP needed (a dead URL)
    whole = tmp_path / "whole.bin"
    assert await asyncio.to_thread(wire.download, "http://127.0.0.1:9/storage/download?token=x",
                                   whole, 30.0, None, sock_path, token) == len(data)
    assert whole.read_bytes() == data

    async def refused(message: bytes, status: int) -> None:
        answer, fds = await asyncio.to_thread(_ask_local, sock_path, message)
        assert (answer.get("status"), fds) == (status, 0), answer

    def asking(token: str) -> bytes:
        return json.dumps({"op": "download", "token": token}).encode()

    await refused(asking(token + "x"), 401)  # forged
    await refused(asking(token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")), 401)
    await refused(asking(""), 401)
    up = await call(user, "POST", "/folders/data/request-upload", {"path": "u", "size": 4})
    await refused(asking(up["token"]), 401)  # an upload's token is no download's
    await refused(b"[1]", 400)
    # another user reaches nothing of this folder: no ticket, and the token is the user's own
    resp = await Signed(client, OTHER).request("POST", "/folders/data/request-download",
                                               {"path": "in/f.bin"})
    assert resp.status == 404
    # what the token named is replaced after the ticket was given: never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.bin").write_bytes(b"secret")
    (folder / "in" / "f.bin").unlink()
    os.symlink(outside / "f.bin", folder / "in" / "f.bin")  # a link to a file outside
    await refused(asking(token), 400)
    (folder / "in" / "f.bin").unlink()
    os.rename(folder / "in", folder / "in.old")
    os.symlink(outside, folder / "in")  # a link on the way, to a folder holding f.bin
    await refused(asking(token), 400)
    os.unlink(folder / "in")
    os.rename(folder / "in.old", folder / "in")
    (folder / "in" / "f.bin").mkdir()  # a folder
    await refused(asking(token), 400)
    (folder / "in" / "f.bin").rmdir()
    os.mkfifo(folder / "in" / "f.bin")  # a FIFO: refused, no one waits on it
    await refused(asking(token), 400)
    # the client's side takes HTTP then, which refuses the same
    assert await asyncio.to_thread(local_into, tmp_path / "no.bin", token) is None
    assert (tmp_path / "no.bin").read_bytes() == b"" and (outside / "f.bin").read_bytes() == b"secret"


def test_a_descriptor_goes_only_where_it_gives_no_more_than_reading():
    from types import SimpleNamespace

    mine, other = os.geteuid(), os.geteuid() + 4242

    def st(uid: int, mode: int):
        return SimpleNamespace(st_uid=uid, st_mode=0o100000 | mode)

    assert storage.may_hold(st(mine, 0o600), mine)  # the manager's own user
    assert storage.may_hold(st(mine, 0o666), 0)  # root
    assert storage.may_hold(st(mine, 0o644), other)
    assert not storage.may_hold(st(other, 0o444), other)  # its owner could chmod it
    assert not storage.may_hold(st(mine, 0o664), other)  # group-writable
    assert not storage.may_hold(st(mine, 0o646), other)  # world-writable
    assert not storage.may_hold(st(mine, 0o644), None)  # a peer of unknown user
