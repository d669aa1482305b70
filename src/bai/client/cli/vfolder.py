"""``backend.ai vfolder ...``: storage folders (data that outlives sessions), option for option
as the official client 23.9.10 names them, plus ``--output json`` on every command.

Mount one into a session with ``backend.ai run -m NAME ...``; it appears at ``/home/work/NAME``
(containers) or as ``NAME`` in the work dir (process runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bai.client.cli.context import get_ctx, output_option


def _call(fn: Callable[[Any], Any]) -> Any:
    async def body(conn: Any) -> Any:
        from bai.client.vfolder import VFolderAPI

        return await fn(VFolderAPI(conn))

    return get_ctx().run(body)


def _done(message: str, data: Any = None) -> None:
    out = get_ctx().output
    if out.is_json:
        out.json(data if data is not None else {"result": "ok", "message": message})
    else:
        click.echo(message)


def _size(n: Any) -> str:
    from bai.client.cli.output import humanize_bytes

    return humanize_bytes(float(n or 0))


PERMISSION = click.Choice(["ro", "rw", "wd"])


@click.group()
def vfolder() -> None:
    """Storage folders: create, list, upload, download, share, mount (-m on run/start)."""


@vfolder.command("list-hosts")
@output_option
def list_hosts() -> None:
    """List the storage hosts folders can be created on.

    \b
    Example:
      backend.ai vfolder list-hosts
    """
    got = _call(lambda api: api.hosts())
    out = get_ctx().output
    if out.is_json:
        out.json(got)
        return
    click.echo(f"Default vfolder host: {got['default']}")
    click.echo(f"Usable hosts: {', '.join(got['allowed'])}")


@vfolder.command()
@click.argument("name")
@click.argument("host", required=False)
@click.option("-g", "--group", default=None, help="Make a group folder of GROUP (admins).")
@click.option("-m", "--usage-mode", default="general", show_default=True,
              type=click.Choice(["general", "data", "model"]), help="Purpose of the folder.")
@click.option("-p", "--permission", default="rw", show_default=True, type=PERMISSION,
              help="What the owner (and a group folder's members) may do: ro, rw or "
              "wd (read-write-delete).")
@click.option("-q", "--quota", default="0", show_default=True,
              help="Most bytes the folder may hold, e.g. 10g (0 = no quota); enforced by the "
              "kernel, also against writes from sessions.")
@click.option("--cloneable", "--allow-clone", is_flag=True, help="Let users clone it.")
@output_option
def create(name, host, group, usage_mode, permission, quota, cloneable) -> None:
    """Create a folder NAME (on storage HOST; default: the default host).

    \b
    Example:
      backend.ai vfolder create data
      backend.ai vfolder create -q 10g results local
    """
    got = _call(lambda api: api.create(name, host=host, group=group, usage_mode=usage_mode,
                                       permission=permission, quota=quota,
                                       cloneable=cloneable))
    _done(f'Virtual folder "{got["name"]}" is created.', got)


COLUMNS = [("name", "Name"), ("host", "Host"), ("permission", "Permission"),
           ("ownership_type", "Owner type"), ("owner", "Owner"), ("usage_mode", "Usage"),
           ("quota", "Quota"), ("created_at", "Created")]


@vfolder.command("list")
@click.option("-a", "--all", "all_", is_flag=True, help="Every user's folders (admins).")
@output_option
def list_(all_) -> None:
    """List the folders you own, your groups' folders and those shared with you.

    \b
    Example:
      backend.ai vfolder list
    """
    items = _call(lambda api: api.list(all_=all_))
    out = get_ctx().output
    if out.is_json:
        out.json(items)
        return
    if not items:
        out.warn("No folders. Create one: backend.ai vfolder create NAME")
        return
    rows = []
    for f in items:
        owner = "you" if f.get("is_owner") else (f.get("user_email") or f.get("group_name") or "")
        rows.append([f["name"], f["host"], f["permission"], f["ownership_type"], owner,
                     f["usage_mode"], _size(f["quota"]) if f.get("quota") else "-",
                     (f.get("created_at") or "")[:19]])
    out.table([h for _, h in COLUMNS], rows)


@vfolder.command()
@click.argument("name")
@output_option
def info(name) -> None:
    """Show one folder.

    \b
    Example:
      backend.ai vfolder info data
    """
    got = _call(lambda api: api.info(name))
    out = get_ctx().output
    if out.is_json:
        out.json(got)
        return
    out.record([("Name", got["name"]), ("ID", got["id"]), ("Host", got["host"]),
                ("Owner", "you" if got["is_owner"] else got.get("user_email") or
                 got.get("group_name")),
                ("Ownership type", got["ownership_type"]), ("Permission", got["permission"]),
                ("Usage mode", got["usage_mode"]),
                ("Quota", _size(got["quota"]) if got.get("quota") else "-"),
                ("Used", _size(got.get("used_bytes"))), ("Files", got.get("numFiles")),
                ("Cloneable", "yes" if got.get("cloneable") else "no"),
                ("Status", got["status"]), ("Created", got.get("created_at"))])


@vfolder.command()
@click.argument("old_name")
@click.argument("new_name")
@output_option
def rename(old_name, new_name) -> None:
    """Rename a folder of yours.

    \b
    Example:
      backend.ai vfolder rename data dataset
    """
    _call(lambda api: api.rename(old_name, new_name))
    _done(f"Renamed {old_name} to {new_name}.")


@vfolder.command()
@click.argument("name")
@output_option
def delete(name) -> None:
    """Delete a folder of yours and everything in it (irreversible).

    \b
    Example:
      backend.ai vfolder delete data
    """
    _call(lambda api: api.delete(name))
    _done(f"Deleted {name}.")


@vfolder.command()
@click.argument("name")
@click.argument("path", default=".")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Skip this many entries (sorted by name).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Show at most this many entries.")
@click.option("-U", "--unsorted", is_flag=True,
              help="In the directory's own order: the first page of a huge folder at once "
              "(no total is counted).")
@output_option
def ls(name, path, offset, limit, unsorted) -> None:
    """List the files in PATH of folder NAME (one page).

    \b
    Example:
      backend.ai vfolder ls data
      backend.ai vfolder ls data sub/dir --offset 1000
    """
    got = _call(lambda api: api.files(name, path, offset=offset, limit=limit,
                                      order="none" if unsorted else "name"))
    items = got.get("items", [])
    out = get_ctx().output
    if out.is_json:
        out.json({"items": items, "total": got.get("total"), "offset": got.get("offset")})
        return
    from datetime import datetime

    out.table(["Name", "Type", "Size", "Modified", "Mode"],
              [[f["name"], f["type"].lower(), f["size"],
                datetime.fromtimestamp(f["mtime"]).strftime("%Y-%m-%d %H:%M:%S"), f["mode"]]
               for f in items])
    total = got.get("total", len(items))
    if total < 0 and len(items) == limit:
        out.note(f"({len(items)} entries shown; next: --offset {offset + len(items)} -U)")
    elif offset + len(items) < total:
        out.note(f"({len(items)} of {total} entries shown; next: --offset {offset + len(items)})")


@vfolder.command()
@click.argument("name")
@click.argument("path")
@click.option("-p", "--parents", is_flag=True, help="Make missing parent folders too.")
@click.option("-e", "--exist-ok", is_flag=True, help="No error when it exists.")
@output_option
def mkdir(name, path, parents, exist_ok) -> None:
    """Make a folder PATH inside folder NAME.

    \b
    Example:
      backend.ai vfolder mkdir data inputs/2026 -p
    """
    _call(lambda api: api.mkdir(name, path, parents=parents, exist_ok=exist_ok))
    _done(f"Made {path} in {name}.")


@vfolder.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Remove folders with what they hold.")
@output_option
def rm(name, paths, recursive) -> None:
    """Remove files (and, with -r, folders) from folder NAME.

    \b
    Example:
      backend.ai vfolder rm data old.csv
      backend.ai vfolder rm -r data outputs
    """
    _call(lambda api: api.rm(name, list(paths), recursive=recursive))
    _done(f"Removed {', '.join(paths)} from {name}.")


@vfolder.command()
@click.argument("name")
@click.argument("src")
@click.argument("dst")
@output_option
def mv(name, src, dst) -> None:
    """Move or rename SRC to DST inside folder NAME (into DST when it is a folder).

    \b
    Example:
      backend.ai vfolder mv data out.txt results/
    """
    _call(lambda api: api.mv(name, src, dst))
    _done(f"Moved {src} to {dst} in {name}.")


def _express(ctx_fn: str, *args: Any, **kw: Any) -> None:
    """Carry out upload/download as the express path does (``vfolder_express``: one
    implementation for both paths), with the output format and profile click parsed."""
    from bai.client.cli import vfolder_express

    ctx = get_ctx()
    getattr(vfolder_express, ctx_fn)(*args, as_json=ctx.output.is_json, profile=ctx.profile,
                                     **kw)


@vfolder.command()
@click.argument("name")
@click.argument("filenames", type=Path, nargs=-1, required=True)
@click.option("-b", "--base-dir", type=Path, default=None,
              help="Local folder the files' paths in the folder are taken relative to "
              "[default: each file's own folder].")
@click.option("-r", "--recursive", is_flag=True, help="Upload folders with what they hold.")
@click.option("-d", "--dst", default="", help="Folder inside NAME to upload into.")
@output_option
def upload(name, filenames, base_dir, recursive, dst) -> None:
    """Upload files to folder NAME (streamed; a broken connection resumes).

    \b
    Example:
      backend.ai vfolder upload data ./train.csv
      backend.ai vfolder upload -r data ./images
    """
    _express("upload", name, list(filenames), base_dir, recursive, dst)


@vfolder.command()
@click.argument("name")
@click.argument("filenames", nargs=-1, required=True)
@click.option("-b", "--base-dir", type=Path, default=None,
              help="Local folder to download into [default: the current folder].")
@click.option("-r", "--recursive", is_flag=True,
              help="Download folders with what they hold (into a local folder of the same "
              "name; links in them are left out).")
@output_option
def download(name, filenames, base_dir, recursive) -> None:
    """Download files (with -r, folders) of folder NAME (streamed, resumed after a broken
    connection).

    \b
    Example:
      backend.ai vfolder download data out.txt
      backend.ai vfolder download -r data results
    """
    _express("download", name, list(filenames), base_dir, recursive=recursive)


@vfolder.command()
@click.argument("name")
@click.argument("emails", nargs=-1, required=True)
@click.option("-p", "--permission", "--perm", default="rw", show_default=True, type=PERMISSION,
              help="What they may do: ro, rw or wd (read-write-delete).")
@output_option
def share(name, emails, permission) -> None:
    """Share folder NAME with users (by e-mail).

    \b
    Example:
      backend.ai vfolder share data bob@example.org --permission ro
    """
    done = _call(lambda api: api.share(name, list(emails), permission))
    _done(f"Shared {name} ({permission}) with {', '.join(done)}.", {"shared_emails": done})


@vfolder.command()
@click.argument("name")
@click.argument("emails", nargs=-1, required=True)
@output_option
def unshare(name, emails) -> None:
    """Stop sharing folder NAME with users (by e-mail).

    \b
    Example:
      backend.ai vfolder unshare data bob@example.org
    """
    done = _call(lambda api: api.unshare(name, list(emails)))
    _done(f"Stopped sharing {name} with {', '.join(done)}.", {"unshared_emails": done})


@vfolder.command()
@click.argument("name")
@click.argument("target_name")
@click.argument("target_host", required=False)
@click.option("-m", "--usage-mode", default=None,
              type=click.Choice(["general", "data", "model"]),
              help="Purpose of the new folder [default: the source's].")
@click.option("-p", "--permission", default="rw", show_default=True, type=PERMISSION,
              help="What you may do in the new folder: ro, rw or wd.")
@output_option
def clone(name, target_name, target_host, usage_mode, permission) -> None:
    """Copy folder NAME into a new folder TARGET_NAME of yours.

    \b
    Example:
      backend.ai vfolder clone data data-copy
    """
    got = _call(lambda api: api.clone(name, target_name, host=target_host,
                                      usage_mode=usage_mode, permission=permission))
    _done(f'Cloned {name} to "{got["name"]}".', got)
