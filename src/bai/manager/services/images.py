"""Images: resolution of names and aliases, and the images a fresh installation registers."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bai.common.errors import UnknownImage
from bai.common.services import DEFAULT_SERVICES
from bai.manager.store.cached import Cached
from bai.manager.store.engine import AsyncConnection
from bai.manager.store.tables import image_aliases, images

HOST_PYTHON = "/usr/bin/python3"
#: What a session gets when the user asks for nothing (and the floor it may ask for).
DEFAULT_REQUEST = {"cpu": "1", "mem": str(256 * 2**20)}
MIN_SLOTS = {"cpu": "0.1", "mem": str(64 * 2**20)}


def _os_tag(os_release: str = "/etc/os-release") -> str:
    values: dict[str, str] = {}
    try:
        for line in Path(os_release).read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                values[k.strip()] = v.strip().strip('"')
    except OSError:
        return "linux"
    return f"{values.get('ID', 'linux')}{values.get('VERSION_ID', '')}"


def _python_version(interpreter: str) -> str:
    try:
        out = subprocess.run(
            [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    major, minor = platform.python_version_tuple()[:2]
    return f"{major}.{minor}"


def default_images() -> list[dict[str, Any]]:
    """The host's Python, named for what it is: ``python:3.11-debian12`` on this machine."""
    interpreter = HOST_PYTHON if Path(HOST_PYTHON).exists() else "python3"
    name = f"python:{_python_version(interpreter)}-{_os_tag()}"
    return [
        {
            "name": name,
            "registry": "local",
            "architecture": platform.machine() or "x86_64",
            "labels": {"bai.process.interpreter": interpreter},
            "min_slots": dict(MIN_SLOTS),
            "service_ports": [dict(p) for p in DEFAULT_SERVICES],
            "aliases": ["python"],
        }
    ]


async def list_images(conn: AsyncConnection) -> tuple[list[str], dict[str, str]]:
    names = list((await conn.execute(sa.select(images.c.name).order_by(images.c.name))).scalars())
    aliases = dict((await conn.execute(sa.select(image_aliases.c.alias, image_aliases.c.target))).all())
    return names, aliases


#: the image of a name and the image an alias of that name points to (built once: a create runs it)
_RESOLVE = sa.select(images).where(sa.or_(
    images.c.name == sa.bindparam("ref"),
    images.c.name == sa.select(image_aliases.c.target)
    .where(image_aliases.c.alias == sa.bindparam("ref")).scalar_subquery()))


def image_cache() -> Cached:
    """The images ``resolve_image`` found, by the name or alias asked for (``store/cached.py``):
    valid until a write to ``images`` or ``image_aliases``. An unknown image is never kept (its
    refusal lists what exists, read then)."""
    return Cached("images", 256)


async def resolve_image(conn: AsyncConnection, ref: str, store: Any = None,
                        cache: Cached | None = None) -> dict[str, Any]:
    """The image row for a canonical name or an alias; ``UnknownImage`` lists what exists.
    With ``store`` and ``cache`` (``image_cache``), a name resolved since the last write to
    the images is not read again (a create runs this). The row is the caller's to change."""
    ref = (ref or "").strip()
    generation = cache.generation(store) if cache is not None else None
    hit = cache.get(ref, generation) if cache is not None else None
    if hit is not None:
        return dict(hit)
    # one statement: the image of that name, and the alias's target; the name wins over an
    # alias of the same spelling
    found = (await conn.execute(_RESOLVE, {"ref": ref})).mappings().all()
    row = next((r for r in found if r["name"] == ref), found[0] if found else None)
    if row is not None and cache is not None:
        cache.put(ref, generation, dict(row))
    if row is None:
        names, aliases = await list_images(conn)
        listing = ", ".join(names) or "none"
        alias_txt = ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items())) or "none"
        raise UnknownImage(
            f"unknown image {ref!r}; available images: {listing}; aliases: {alias_txt}",
            data={"image": ref, "available": names, "aliases": aliases},
        )
    return dict(row)
