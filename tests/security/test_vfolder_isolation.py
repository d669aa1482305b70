"""Attacks on storage folders as a normal user (the stack's ``user`` keypair) against another
user's folder: every ``/folders`` route, by name and by id, the GraphQL lists, the storage
endpoint with forged or borrowed tokens, and links a session plants inside a folder.

Each must fail, leave the victim's folder as it was, and never tell that it exists (404, not 403).
Runs on the manager's real routes with a real SQLite store and storage host (in-process, fast).
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import pytest
from integration.api_support import OTHER, USER, ApiRoot, Signed, call, make_app, seed, start_client

from bai.manager.api import gql, storage, vfolder
from bai.manager.services.folders import FolderService
from bai.manager.settings import ManagerSettings


@pytest.fixture
async def env(tmp_path):
    settings = ManagerSettings(db_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                               state_dir=str(tmp_path / "state"))
    root = ApiRoot(settings)
    await seed(root.store)
    root.folders = FolderService(root)
    await root.folders.start()
    client = await start_client(make_app(root, vfolder, storage, gql))
    victim, attacker = Signed(client, OTHER), Signed(client, USER)
    made = await call(victim, "POST", "/folders", {"name": "victim"}, status=201)
    ticket = await call(victim, "POST", "/folders/victim/request-upload",
                        {"path": "secret.txt", "size": 6})
    resp = await client.request(
        "PATCH", urlsplit(ticket["url"]).path + "?token=" + ticket["token"], data=b"secret",
        headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                 "Content-Type": "application/offset+octet-stream"})
    assert resp.status == 204
    yield root, client, victim, attacker, made["id"]
    await client.close()
    await root.store.close()


async def _victim_unchanged(victim: Signed, client) -> None:
    info = await call(victim, "GET", "/folders/victim")
    assert info["name"] == "victim" and info["permission"] == "rw"
    files = json.loads((await call(victim, "GET", "/folders/victim/files", {"path": "."}))["files"])
    assert [f["name"] for f in files] == ["secret.txt"]
    shared = await call(victim, "GET", "/folders")
    assert [f["name"] for f in shared] == ["victim"]


ROUTES = [
    ("GET", "/folders/{x}", None),
    ("DELETE", "/folders/{x}", None),
    ("POST", "/folders/{x}/rename", {"new_name": "stolen"}),
    ("GET", "/folders/{x}/files", {"path": "."}),
    ("POST", "/folders/{x}/mkdir", {"path": "planted"}),
    ("POST", "/folders/{x}/request-upload", {"path": "planted", "size": 1}),
    ("POST", "/folders/{x}/request-download", {"path": "secret.txt"}),
    ("POST", "/folders/{x}/rename-file", {"target_path": "secret.txt", "new_name": "y"}),
    ("POST", "/folders/{x}/move-file", {"src": "secret.txt", "dst": "y"}),
    ("DELETE", "/folders/{x}/delete-files", {"files": ["secret.txt"]}),
    ("POST", "/folders/{x}/share", {"permission": "wd", "emails": ["user@example.org"]}),
    ("POST", "/folders/{x}/invite", {"perm": "wd", "user_ids": ["user@example.org"]}),
    ("DELETE", "/folders/{x}/unshare", {"emails": ["other@example.org"]}),
    ("POST", "/folders/{x}/leave", None),
    ("POST", "/folders/{x}/clone", {"target_name": "loot"}),
    ("POST", "/folders/{x}/update-options", {"permission": "ro"}),
]


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_no_route_reaches_another_users_folder(env, method, path, body):
    _, client, victim, attacker, victim_id = env
    for ref in ("victim", victim_id, victim_id.upper()):
        resp = await attacker.request(method, path.format(x=ref), body)
        data = await resp.json()
        assert resp.status == 404, (ref, data)
        assert "victim" not in json.dumps(data).replace(ref, "") or ref == "victim"
    await _victim_unchanged(victim, client)
    assert await call(attacker, "GET", "/folders") == []


async def test_delete_by_id_and_lists_show_nothing(env):
    _, client, victim, attacker, victim_id = env
    await call(attacker, "DELETE", "/folders", {"id": victim_id}, status=404)
    assert await call(attacker, "GET", "/folders", {"all": True}) == []  # not an admin
    for field in ("vfolder_list", "vfolder_own_list", "vfolder_invited_list",
                  "vfolder_project_list"):
        got = await attacker.gql(f"{{ {field}(limit: 10, offset: 0) {{ items {{ name }} "
                                 "total_count } }")
        assert got["data"][field] == {"items": [], "total_count": 0}, field
    # creating a folder of the victim's name is the attacker's own, separate folder
    await call(attacker, "POST", "/folders", {"name": "victim"}, status=201)
    files = await call(attacker, "GET", "/folders/victim/files", {"path": "."})
    assert json.loads(files["files"]) == []
    await _victim_unchanged(victim, client)


async def test_forged_and_borrowed_tokens(env):
    _, client, victim, attacker, _ = env
    await call(attacker, "POST", "/folders", {"name": "mine"}, status=201)
    own = await call(attacker, "POST", "/folders/mine/request-upload", {"path": "a", "size": 1})
    head, mac = own["token"].split(".")
    payload = json.loads(_unb64(head))
    victim_id = (await call(victim, "GET", "/folders/victim"))["id"]
    payload.update({"folder": victim_id, "path": "secret.txt"})
    forged = _b64(json.dumps(payload).encode()) + "." + mac
    for method, url in (("PATCH", "/storage/upload?token=" + forged),
                        ("HEAD", "/storage/upload?token=" + forged),
                        ("GET", "/storage/download?token=" + forged.replace("upload", "x"))):
        resp = await client.request(method, url, data=b"x", headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"})
        assert resp.status == 401, (method, await resp.text())
    # a token of the victim's, once the folder is no longer theirs to reach, is worthless
    down = await call(victim, "POST", "/folders/victim/request-download", {"path": "secret.txt"})
    await call(victim, "DELETE", "/folders/victim", status=204)
    resp = await client.request("GET", "/storage/download?token=" + down["token"])
    assert resp.status == 404


async def test_a_link_a_session_planted_leads_nowhere(env, tmp_path):
    """The attacker's session writes a link to the victim's folder (or /etc) into the
    attacker's own folder; the storage routes must not follow it."""
    root, client, victim, attacker, _ = env
    await call(attacker, "POST", "/folders", {"name": "mine"}, status=201)
    hosts = root.folders.hosts
    rows = {f["name"]: f for f in await call(attacker, "GET", "/folders")}
    import sqlalchemy as sa

    from bai.manager.store import tables as t
    async with root.store.connect() as conn:
        rel = dict((await conn.execute(sa.select(t.vfolders.c.id, t.vfolders.c.relpath))).all())
    import uuid

    mine = hosts.path("local", rel[uuid.UUID(rows["mine"]["id"])])
    victim_dir = next(hosts.path("local", r) for i, r in rel.items()
                      if i != uuid.UUID(rows["mine"]["id"]))
    os.symlink(victim_dir, mine / "theirs")
    os.symlink(victim_dir / "secret.txt", mine / "secret.txt")
    os.symlink("/etc", mine / "etc")
    for path in ("theirs/secret.txt", "secret.txt", "etc/passwd"):
        resp = await attacker.request("POST", "/folders/mine/request-download", {"path": path})
        assert resp.status in (400, 404), path
    for path in ("theirs", "etc"):
        resp = await attacker.request("GET", "/folders/mine/files", {"path": path})
        assert resp.status == 400, path
    for path in ("theirs/planted", "etc/planted"):
        resp = await attacker.request("POST", "/folders/mine/request-upload",
                                      {"path": path, "size": 1})
        assert resp.status in (400, 404), path
        resp = await attacker.request("POST", "/folders/mine/mkdir", {"path": path})
        assert resp.status == 400, path
    resp = await attacker.request("DELETE", "/folders/mine/delete-files",
                                  {"files": ["theirs/secret.txt"]})
    assert resp.status == 400
    resp = await attacker.request("POST", "/folders/mine/move-file",
                                  {"src": "theirs/secret.txt", "dst": "loot"})
    assert resp.status == 400
    # cloning copies the links as links, never what they point to
    await call(attacker, "POST", "/folders/mine/clone", {"target_name": "copy"}, status=201)
    copy = await call(attacker, "GET", "/folders/copy/files", {"path": ".", "limit": 10})
    assert {i["name"]: i["type"] for i in copy["items"]} == {
        "etc": "SYMLINK", "secret.txt": "SYMLINK", "theirs": "SYMLINK"}
    await _victim_unchanged(victim, client)


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
