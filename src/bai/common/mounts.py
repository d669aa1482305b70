"""Storage-folder mounts of a session: the request as the official client sends it, and where a
folder may appear inside a kernel. Pure: the manager checks a create with it, the agent checks
the kernel spec again before it binds anything.

The official client 23.9.10 (``-m/-v/--mount/--volume NAME[=PATH]`` or ``NAME:PATH``) sends
``config.mounts`` (folder names, unordered) and ``config.mount_map`` (``{name: path}``); bai reads
a mode from the path's end (``data:/data:ro`` arrives as ``{"data": "/data:ro"}``, ``data:ro``
as ``{"data": "ro"}``) and also takes ``config.mount_options`` (``{name: {"permission": "ro"}}``,
the newer clients' field). A relative path is placed under ``/home/work``; the default is
``/home/work/NAME`` (the process runtime's sandbox shows its work dir there too). A path may not
contain ``..``, cover the work dir, the runner's state or a system folder, or nest in another
mount.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

from bai.common.errors import InvalidAPIParameters

WORKDIR = "/home/work"
#: the runner's state inside the work dir (``bai.kernel.STATE_DIR``)
STATE_DIR = ".bai"
MODES = ("ro", "rw")
Mode = Literal["ro", "rw"]
#: system folders no mount may cover or enter (the sandbox and images need them as they are)
RESERVED = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
            "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var")
MAX_MOUNTS = 64


@dataclass(frozen=True)
class MountRequest:
    """One folder a create asks for: where it goes and, if the user said, how (None: what the
    folder's permission allows)."""

    name: str
    kernel_path: str
    mode: Mode | None = None


def _refuse(msg: str, name: str | None = None) -> InvalidAPIParameters:
    data: dict[str, Any] = {"field": "mounts"}
    if name is not None:
        data["name"] = str(name)[:256]
    return InvalidAPIParameters(msg, data=data)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def path_problem(path: str) -> str | None:
    """Why ``path`` (absolute, normalized) may not be a mount point, or None."""
    if _under(WORKDIR, path):
        return f"{path} would cover the work dir {WORKDIR}"
    if _under(path, f"{WORKDIR}/{STATE_DIR}"):
        return f"{path} is the runner's state folder"
    for top in RESERVED:
        if _under(path, top):
            return f"{path} is a system folder ({top})"
    return None


def kernel_path(name: str, requested: str | None) -> str:
    """Where folder ``name`` appears in the kernel: ``/home/work/NAME`` by default, a relative
    ``requested`` under ``/home/work``, an absolute one as given. Raises InvalidAPIParameters."""
    raw = requested if requested else name
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw or len(raw) > 4096:
        raise _refuse(f"invalid mount path for folder {name!r}", name)
    raw = raw.strip()
    if ".." in raw.split("/"):
        raise _refuse(f"mount path {raw!r} of folder {name!r} may not contain '..'", name)
    path = posixpath.normpath(raw if raw.startswith("/") else f"{WORKDIR}/{raw}")
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    problem = path_problem(path)
    if problem:
        raise _refuse(f"cannot mount folder {name!r} at {problem}", name)
    return path


def _split_mode(value: str) -> tuple[str, Mode | None]:
    """``/data:ro`` -> (``/data``, ro); ``ro`` -> ("", ro); ``rel`` -> (``rel``, None)."""
    if value in MODES:
        return "", value  # type: ignore[return-value]
    head, sep, tail = value.rpartition(":")
    if sep and tail in MODES:
        return head, tail  # type: ignore[return-value]
    return value, None


def _check_name(name: Any) -> str:
    if (not isinstance(name, str) or not name or len(name) > 256 or "\0" in name
            or "/" in name or name in (".", "..")):
        raise _refuse(f"invalid folder name {str(name)[:64]!r}", None)
    return name


def parse_mounts(mounts: Any, mount_map: Any = None,
                 mount_options: Any = None) -> list[MountRequest]:
    """The requests of a create's ``config`` (names in ``mounts`` or ``mount_map``), in the
    order given, each folder once. Raises InvalidAPIParameters for any bad one."""
    mounts = mounts or []
    mount_map = mount_map or {}
    mount_options = mount_options or {}
    if not isinstance(mounts, list):
        raise _refuse("config.mounts must be a list of folder names")
    if not isinstance(mount_map, dict) or not isinstance(mount_options, dict):
        raise _refuse("config.mount_map and config.mount_options must be objects")
    names = list(dict.fromkeys([_check_name(n) for n in mounts]
                               + [_check_name(n) for n in mount_map]))
    if len(names) > MAX_MOUNTS:
        raise _refuse(f"at most {MAX_MOUNTS} folders may be mounted in one session")
    out: list[MountRequest] = []
    for name in names:
        raw = mount_map.get(name)
        if raw is not None and not isinstance(raw, str):
            raise _refuse(f"the mount path of folder {name!r} must be a string", name)
        path, mode = _split_mode(raw or "")
        opts = mount_options.get(name) or {}
        if not isinstance(opts, dict):
            raise _refuse(f"mount_options of folder {name!r} must be an object", name)
        perm = opts.get("permission", opts.get("mode"))
        if perm is not None:
            perm = {"wd": "rw"}.get(str(perm).lower(), str(perm).lower())
            if perm not in MODES or (mode is not None and mode != perm):
                raise _refuse(f"invalid mount mode {opts.get('permission', opts.get('mode'))!r}"
                              f" for folder {name!r}: use ro or rw", name)
            mode = perm  # type: ignore[assignment]
        out.append(MountRequest(name, kernel_path(name, path), mode))
    seen: list[MountRequest] = []
    for m in out:
        for other in seen:
            if _under(m.kernel_path, other.kernel_path) or _under(other.kernel_path,
                                                                  m.kernel_path):
                raise _refuse(f"folders {other.name!r} and {m.name!r} would be mounted at "
                              f"{other.kernel_path} and {m.kernel_path}: one inside the other",
                              m.name)
        seen.append(m)
    return out


def relpath_problem(relpath: Any) -> str | None:
    """Why ``relpath`` (a folder's place under its storage host) is not a plain relative path."""
    if not isinstance(relpath, str) or not relpath or "\0" in relpath:
        return "empty or invalid"
    if relpath.startswith("/"):
        return "absolute"
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        return "has an empty, '.' or '..' component"
    return None
