"""``backend.ai vfolder upload`` / ``download`` without click, asyncio or httpx.

A 1 GiB transfer is compared with ``cp`` of the same file (issue 14: at least 70 % of its
throughput), and ``cp`` moves a GiB in about 0.3 s: the ~150 ms that importing click, httpx and
asyncio costs before the first byte moves is a third of the budget. These two commands are
therefore carried out here in full, for both paths: ``bai.client.cli.main`` sends the command
line here when ``parse`` takes it (the express path), and the click commands of
``bai.client.cli.vfolder`` call ``upload``/``download`` with what click parsed (``--help``,
bundled short options, ``--``, anything unusual). The ticket is a signed request on the
blocking client (``bai.client.blocking``, as ``run``'s express path), the bytes move through
``bai.client.vfolder_wire``. ``BAI_CLI_EXPRESS=0`` turns the express path off.

``download -r`` fetches folders: each listing page is walked as it comes (depth first), each file
downloaded in turn; every name a listing gives must be one plain path component (no ``/``,
``..``, ``.``, NUL), so that a server cannot make the client write outside the target.
"""

from __future__ import annotations

import json
import os
import sys

from bai.client.blocking import BlockingHTTP
from bai.client.endpoint import USER_AGENT, Endpoints, decode_answer, read_timeout
from bai.client.http1 import ConnectFailed, ReadTimeout, WireError, quote_plain
from bai.client.units import humanize_bytes

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

#: the options each command takes: flags, and options with one value
FLAGS = {"upload": {"-r": "recursive", "--recursive": "recursive"},
         "download": {"-r": "recursive", "--recursive": "recursive"}}
VALUES = {"upload": {"-b": "base_dir", "--base-dir": "base_dir", "-d": "dst", "--dst": "dst",
                     "--output": "output"},
          "download": {"-b": "base_dir", "--base-dir": "base_dir", "--output": "output"}}
GLOBAL_VALUES = {"--output": "output", "--profile": "profile"}
OUTPUTS = ("table", "json", "console")
#: entries asked for per listing page of ``download -r``
PAGE = 1000


def _usage(msg: str) -> Exception:
    from bai.client.errors import UsageError

    return UsageError(msg)


def _take(args: list[str], i: int, values: dict[str, str], plan: dict[str, Any]
          ) -> int | None:
    """Take the option ``args[i]`` (with its value) into ``plan``; the next index, or None
    when it is not one of ``values``."""
    opt, eq, value = args[i].partition("=") if args[i].startswith("--") else (args[i], "", "")
    if opt not in values:
        return None
    if not eq:
        if i + 1 >= len(args):
            return None
        value = args[i + 1]
        i += 1
    plan[values[opt]] = value
    return i + 1


def parse(args: list[str]) -> dict[str, Any] | None:
    """The plan of a ``[--output F] [--profile P] vfolder upload|download ...`` command line,
    or None for click (anything else, ``--help``, bundled options, a missing argument ...)."""
    if os.environ.get("BAI_CLI_EXPRESS", "1") in ("0", "no", "false"):
        return None
    plan: dict[str, Any] = {"output": None, "profile": None, "base_dir": None, "dst": "",
                            "recursive": False}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i = _take(args, i, GLOBAL_VALUES, plan)
        if i is None:
            return None
    if args[i:i + 1] != ["vfolder"] or len(args) < i + 2 or args[i + 1] not in FLAGS:
        return None
    command = plan["command"] = args[i + 1]
    positional: list[str] = []
    i += 2
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            i += 1
        elif "=" not in arg and arg in FLAGS[command]:
            plan[FLAGS[command][arg]] = True
            i += 1
        else:
            i = _take(args, i, VALUES[command], plan)
            if i is None:
                return None
    if len(positional) < 2 or (plan["output"] or "table").lower() not in OUTPUTS:
        return None
    plan["name"], plan["files"] = positional[0], positional[1:]
    if plan["profile"] is None:
        plan["profile"] = os.environ.get("BAI_PROFILE") or None
    return plan


def run(plan: dict[str, Any]) -> int:
    """Carry out a plan of ``parse``."""
    from pathlib import Path

    as_json = (plan["output"] or "table").lower() == "json"
    base = Path(plan["base_dir"]) if plan["base_dir"] is not None else None
    if plan["command"] == "upload":
        upload(plan["name"], [Path(f) for f in plan["files"]], base, plan["recursive"],
               plan["dst"], as_json=as_json, profile=plan["profile"])
    else:
        download(plan["name"], plan["files"], base, as_json=as_json, profile=plan["profile"],
                 recursive=plan["recursive"])
    return 0


# -- the manager ------------------------------------------------------------------------------

class Manager:
    """Signed JSON requests to the manager on one blocking keep-alive connection, failing over
    between the configured endpoints as ``bai.client.connection`` does."""

    def __init__(self, profile: str | None) -> None:
        from bai.client.config import ClientConfig

        self.config = ClientConfig.load(profile)
        self.eps = Endpoints(self.config)
        self.read_timeout = read_timeout()
        self.http = BlockingHTTP(headers={"User-Agent": USER_AGENT}, connect_timeout=10,
                                 read_timeout=self.read_timeout, local=self.eps.local_sockets())
        #: the endpoints that answered (later requests to them may meet a closed keep-alive)
        self.answered: set[int] = set()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        last_error = ""
        for idx in self.eps.order():
            url, headers, data = self.eps.prepare(idx, method, path, None, body)
            try:
                ans = self._send(idx, method, url, headers, data)
            except ConnectFailed as e:
                last_error = str(e)
                continue
            except ReadTimeout as e:
                raise self.eps.timed_out(idx, e.seconds) from None
            except WireError as e:
                raise self.eps.lost(idx, e) from None
            self.eps.active = idx
            self.answered.add(idx)
            return decode_answer(ans.status, ans.reason, ans.content_type, ans.text("replace"))
        raise self.eps.unreachable(last_error)

    def _send(self, idx: int, method: str, url: str, headers: dict[str, str],
              data: bytes | None) -> Any:
        try:
            return self.http.request(method, url, headers=headers, body=data)
        except (ConnectFailed, ReadTimeout):
            raise
        except WireError:
            if idx not in self.answered:
                raise
        # the connection kept alive from an earlier answer was closed by the server while a
        # file moved (its keep-alive timeout): once more on a fresh one (a ticket or a
        # listing may well be asked for twice)
        self.http.close()
        return self.http.request(method, url, headers=headers, body=data)

    def close(self) -> None:
        self.http.close()


def folder_path(name: str) -> str:
    return "/folders/" + quote_plain(name)


def _ticket(mgr: Manager, name: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """The manager's ticket, with ``address``: its storage URL with the token."""
    from bai.client.vfolder_wire import with_token

    got = mgr.request("POST", f"{folder_path(name)}/request-{op}", body)
    if not isinstance(got, dict) or not got.get("url") or not got.get("token"):
        from bai.client.errors import ProtocolError

        raise ProtocolError(f"the manager's request-{op} answer names no storage URL and token")
    return {**got, "address": with_token(str(got["url"]), str(got["token"]))}


# -- output -----------------------------------------------------------------------------------

def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class Report:
    """A line on stderr per file moved, or one JSON list on stdout at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.done: list[dict[str, Any]] = []

    def add(self, local: Any, path: str, size: int, line: str) -> None:
        self.done.append({"file": str(local), "path": path, "size": size})
        if not self.as_json:
            _note(line)

    def close(self) -> None:
        if self.as_json:
            _json(self.done)


# -- upload -----------------------------------------------------------------------------------

def local_files(sources: list[Any], base: Any, recursive: bool) -> list[tuple[Any, str]]:
    """(local file, its path in the folder) for each file to upload."""
    out: list[tuple[Any, str]] = []
    for src in sources:
        if not src.exists():
            raise _usage(f"no such file: {src}")
        root = base or src.parent
        if src.is_dir():
            if not recursive:
                raise _usage(f"{src} is a folder: upload it with -r")
            for p in sorted(src.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    out.append((p, _rel(p, root)))
        else:
            out.append((src, _rel(src, root)))
    return out


def _rel(p: Any, root: Any) -> str:
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise _usage(f"{p} is not inside the base folder {root}") from None


def upload(name: str, sources: list[Any], base: Any, recursive: bool, dst: str, *,
           as_json: bool, profile: str | None) -> None:
    """``vfolder upload``: each file in turn, one ticket and one tus PATCH each."""
    from pathlib import PurePosixPath

    from bai.client import vfolder_wire as wire

    files = local_files(sources, base, recursive)
    prefix = PurePosixPath(dst) if dst else None
    report = Report(as_json)
    mgr = Manager(profile)
    try:
        for local, remote in files:
            target = str(prefix / remote) if prefix else remote
            size = local.stat().st_size
            ticket = _ticket(mgr, name, "upload", {"path": target, "size": size})
            wire.upload(ticket["address"], local, size, mgr.read_timeout,
                        local_socket=ticket.get("local_socket"), token=str(ticket["token"]))
            report.add(local, target, size,
                       f"Uploaded {local} to {name}:{target} ({humanize_bytes(size)})")
    finally:
        mgr.close()
    report.close()


# -- download ---------------------------------------------------------------------------------

def _safe_name(entry: Any) -> str:
    """The name of a listing entry, refused unless it is one plain path component."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\x00" in name
            or "\\" in name):
        from bai.client.errors import ProtocolError

        raise ProtocolError(f"the folder listing names an unsafe path: {name!r} (nothing is "
                            "written outside the target)")
    return name


def _entries(mgr: Manager, name: str, path: str) -> Iterator[dict[str, Any]]:
    """The entries of the folder ``path`` in folder ``name``, page by page as they come."""
    offset = 0
    while True:
        got = mgr.request("GET", f"{folder_path(name)}/files",
                          {"path": path, "offset": offset, "limit": PAGE, "order": "name"})
        items = got.get("items") if isinstance(got, dict) else None
        if not isinstance(items, list):
            from bai.client.errors import ProtocolError

            raise ProtocolError("the manager's folder listing has no items")
        yield from items
        offset += len(items)
        total = got.get("total")
        if not items or len(items) < PAGE or (isinstance(total, int) and 0 <= total <= offset):
            return


def _is_folder(mgr: Manager, name: str, path: str) -> bool:
    """Whether ``path`` is a folder inside folder ``name`` (a listing of it works)."""
    from bai.common.errors import BaiError

    try:
        mgr.request("GET", f"{folder_path(name)}/files",
                    {"path": path, "offset": 0, "limit": 1, "order": "none"})
    except BaiError as e:
        if e.status >= 500 or e.status in (401, 403):
            raise
        return False  # a file (or nothing): the download of it says which
    return True


def download(name: str, remotes: list[str], base: Any, *, as_json: bool,
             profile: str | None, recursive: bool = False) -> None:
    """``vfolder download``: each file (with ``recursive``, each folder's files too) in turn,
    one ticket and one streamed GET each."""
    from pathlib import Path, PurePosixPath

    base = base or Path.cwd()
    targets = []
    for remote in remotes:
        leaf = PurePosixPath(remote).name
        if recursive and leaf in ("", ".") and "/" not in name and name not in (".", ".."):
            leaf = name  # the whole folder: into a local folder of its name
        local = base / leaf
        if local.exists():
            raise _usage(f"{local} already exists; remove it or use --base-dir")
        targets.append((remote, local))
    report = Report(as_json)
    mgr = Manager(profile)
    try:
        for remote, local in targets:
            if recursive and _is_folder(mgr, name, remote):
                _download_tree(mgr, name, remote, local, report)
            else:
                _download_one(mgr, name, remote, local, report)
    finally:
        mgr.close()
    report.close()


def _download_one(mgr: Manager, name: str, remote: str, local: Any, report: Report) -> None:
    from bai.client import vfolder_wire as wire

    ticket = _ticket(mgr, name, "download", {"path": remote})
    size = wire.download(ticket["address"], local, mgr.read_timeout,
                         local_socket=ticket.get("local_socket"), token=str(ticket["token"]))
    report.add(local, remote, size, f"Downloaded {name}:{remote} to {local} "
                                    f"({humanize_bytes(size)})")


def _download_tree(mgr: Manager, name: str, remote: str, local: Any, report: Report) -> None:
    """The folder ``remote`` into the new local folder ``local``, depth first; links in the
    folder are left out (as ``upload -r`` leaves local links out)."""
    os.mkdir(local)
    stack = [(remote.rstrip("/") or ".", local)]
    while stack:
        rdir, ldir = stack.pop()
        subdirs = []
        for entry in _entries(mgr, name, rdir):
            child = _safe_name(entry)
            rpath = child if rdir == "." else f"{rdir}/{child}"
            lpath = ldir / child
            kind = entry.get("type")
            if kind == "DIRECTORY":
                os.mkdir(lpath)
                subdirs.append((rpath, lpath))
            elif kind == "FILE":
                _download_one(mgr, name, rpath, lpath, report)
        stack.extend(reversed(subdirs))
