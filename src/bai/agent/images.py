"""Container images built from Debian packages, for the docker runtime (no public registry needed).

Usage (root; needs ``debootstrap`` and a ``docker`` CLI talking to the engine in ``$DOCKER_HOST``)::

    python -m bai.agent.images build            # build + import every recipe, print the names
    python -m bai.agent.images build --force    # ignore the cached root filesystem
    python -m bai.agent.images build --register # and register them (+ aliases) with the manager
    python -m bai.agent.images list             # recipes and whether the engine has them

``scripts/build-images.sh`` runs the same with the project's venv.

How: ``debootstrap --variant=minbase --include=python3,...,jupyter-notebook bookworm`` from the Debian mirror this
machine's apt uses (``/etc/apt/sources.list`` or ``sources.list.d``; override with
``BAI_DEBIAN_MIRROR``), apt caches removed, packed as a tarball cached under ``$BAI_IMAGE_CACHE``
(default ``~/.cache/bai/images``) with a ``.json`` describing it, so a second build is instant. The
tarball is imported with ``docker import`` under the name of what it contains
(``python:<major.minor>-debian<N>``, read from the root filesystem and checked by running the image),
with ``--change`` instructions for the labels (minimum resources as Backend.AI's
``ai.backend.resource.min.<slot>``), ``PATH``, ``LANG`` and ``CMD``. The kernel runner is NOT in the
image: the docker backend bind-mounts it at start.

Registering: the manager registers ``default_images()`` at bootstrap -- on a Debian 12 host that is
the same canonical name ``python:3.11-debian12`` with the alias ``python`` -- so an embedded platform
needs nothing more. ``--register`` registers each image (runtime ``docker``, labels, minimum slots)
and its aliases through the admin API (``POST /admin/images``, ``POST /admin/aliases``) of the
manager in the client configuration, signed with its admin keypair.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bai.common.services import DEFAULT_SERVICES

DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Recipe:
    """One image: a Debian suite plus packages; the name comes from what ends up inside."""

    key: str
    suite: str = "bookworm"
    #: python-is-python3: `python script.py` works, as users of the seeds' examples expect;
    #: jupyter-notebook: the `jupyter` app (issue 15). debootstrap resolves no virtual
    #: packages: python3-zmq needs python3-cffi-backend's, and a dependency
    #: libboost-regex1.74.0's, named here
    include: tuple[str, ...] = ("python3", "python-is-python3", "jupyter-notebook",
                                "python3-cffi-backend", "libboost-regex1.74.0")
    aliases: tuple[str, ...] = ("python",)
    #: minimum slots a session of this image needs (image labels ai.backend.resource.min.*)
    min_slots: dict[str, str] = field(default_factory=lambda: {"cpu": "0.1", "mem": "64m"})


    def digest(self) -> str:
        """Changes with what goes into the root filesystem (names the cached tarball)."""
        return hashlib.sha256(f"{self.suite} {sorted(self.include)}".encode()).hexdigest()[:10]


RECIPES = [Recipe(key="python3-bookworm")]


class BuildError(Exception):
    pass


def cache_dir() -> Path:
    env = os.environ.get("BAI_IMAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bai" / "images"


def debian_mirror(suite: str = "bookworm", etc: Path = Path("/etc/apt")) -> str:
    """The first Debian archive URI apt is configured with for ``suite`` (one-line or deb822)."""
    if os.environ.get("BAI_DEBIAN_MIRROR"):
        return os.environ["BAI_DEBIAN_MIRROR"]
    files = [etc / "sources.list"]
    d = etc / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    for uri in fields.get("uris", "").split():
                        if "security" not in uri:
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                # deb [option=value ...] URI SUITE COMPONENT...
                parts = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite \
                        and "security" not in parts[1]:
                    return parts[1].rstrip("/")
    return DEFAULT_MIRROR


def _rootfs_facts(root: Path) -> dict[str, str]:
    """Python major.minor and Debian major version, read from the root filesystem."""
    versions = sorted(
        (tuple(int(x) for x in m.groups()), m.group(0))
        for p in (root / "usr" / "bin").glob("python3.*")
        if (m := re.fullmatch(r"python(3)\.(\d+)", p.name))
    )
    if not versions:
        raise BuildError(f"no python3.X interpreter in {root}/usr/bin")
    py = "{}.{}".format(*versions[-1][0])
    try:
        debian = (root / "etc" / "debian_version").read_text().strip().split(".")[0]
    except OSError as e:
        raise BuildError(f"not a Debian root filesystem: {e}") from e
    if not debian.isdigit():
        raise BuildError(f"unexpected /etc/debian_version {debian!r} (testing/sid are not supported)")
    return {"python": py, "debian": debian}


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} is not installed") from e
    except subprocess.CalledProcessError as e:
        tail = "\n".join((e.stderr or e.stdout or "").strip().splitlines()[-15:])
        raise BuildError(f"{' '.join(cmd[:3])} ... failed with exit code {e.returncode}:\n{tail}") from e


def build_rootfs(recipe: Recipe, *, force: bool = False, log=print) -> tuple[Path, dict[str, Any]]:
    """The cached rootfs tarball of a recipe and its facts; debootstrap when absent or forced."""
    cdir = cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    arch = platform.machine() or "x86_64"
    tar_path = cdir / f"{recipe.key}-{arch}-{recipe.digest()}.tar"
    meta_path = tar_path.with_suffix(".json")
    with open(cdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds wait for each other
        if not force and tar_path.exists() and meta_path.exists():
            log(f"using cached root filesystem {tar_path}")
            return tar_path, json.loads(meta_path.read_text())
        if os.geteuid() != 0:
            raise BuildError("debootstrap needs root")
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is not installed (apt-get install -y debootstrap)")
        mirror = debian_mirror(recipe.suite)
        with tempfile.TemporaryDirectory(dir=cdir, prefix=".build-") as tmp:
            root = Path(tmp) / "root"
            log(f"debootstrap {recipe.suite} (minbase + {', '.join(recipe.include)}) from {mirror} ...")
            t0 = time.monotonic()
            _run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe.include),
                 recipe.suite, str(root), mirror]
            )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (root / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            facts = _rootfs_facts(root)
            part = Path(tmp) / "rootfs.tar"
            _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."])
            digest = hashlib.sha256()
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            meta = {
                **facts,
                "suite": recipe.suite,
                "include": list(recipe.include),
                "mirror": mirror,
                "architecture": arch,
                "sha256": digest.hexdigest(),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            os.replace(part, tar_path)
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
            log(f"built {tar_path} in {time.monotonic() - t0:.0f} s")
            return tar_path, meta


def image_name(meta: dict[str, Any]) -> str:
    return f"python:{meta['python']}-debian{meta['debian']}"


def image_labels(recipe: Recipe, meta: dict[str, Any]) -> dict[str, str]:
    labels = {f"ai.backend.resource.min.{k}": v for k, v in recipe.min_slots.items()}
    labels.update(
        {
            "ai.backend.runtime-type": "python",
            "ai.bai.rootfs.sha256": meta["sha256"],
            "ai.bai.debian.suite": meta["suite"],
            "ai.bai.python.version": meta["python"],
        }
    )
    return labels


def _docker() -> str:
    cli = os.environ.get("BAI_DOCKER_CLI") or shutil.which("docker") or shutil.which("podman")
    if not cli:
        raise BuildError("no docker (or podman) CLI found")
    return cli


def _image_labels_in_engine(name: str) -> dict[str, str] | None:
    proc = subprocess.run(
        [_docker(), "image", "inspect", "--format", "{{json .Config.Labels}}", name],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip() or "null") or {}


def import_image(recipe: Recipe, tar_path: Path, meta: dict[str, Any], *, force: bool = False,
                 verify: bool = True, log=print) -> str:
    """``docker import`` the tarball as its truthful name (skipped when already imported)."""
    name = image_name(meta)
    labels = image_labels(recipe, meta)
    present = _image_labels_in_engine(name)
    if not force and present is not None and present.get("ai.bai.rootfs.sha256") == meta["sha256"]:
        log(f"image {name} is already in the engine")
        return name
    changes = [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()] + [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        "WORKDIR /home/work",
        'CMD ["python3"]',
    ]
    cmd = [_docker(), "import"]
    for c in changes:
        cmd += ["--change", c]
    _run(cmd + [str(tar_path), name])
    if verify:
        got = _run(
            [_docker(), "run", "--rm", "--network", "none", name, "python3", "-c",
             "import sys; print('%d.%d' % sys.version_info[:2]); print(open('/etc/debian_version').read())"]
        ).stdout.split()
        if got[:1] != [meta["python"]] or not got[1:2] or got[1].split(".")[0] != meta["debian"]:
            _run([_docker(), "rmi", name])
            raise BuildError(f"image {name} contains python {got[:1]} on debian {got[1:2]}: name would lie")
    log(f"imported {name}")
    return name


def registration(recipe: Recipe, meta: dict[str, Any]) -> dict[str, Any]:
    """The manager's image record (same shape as ``default_images()`` entries)."""
    return {
        "name": image_name(meta),
        "registry": "local",
        "architecture": meta["architecture"],
        "runtimes": "docker",
        "labels": image_labels(recipe, meta),
        "min_slots": {k: str(_bytes(v)) if k == "mem" else v for k, v in recipe.min_slots.items()},
        "service_ports": [dict(p) for p in DEFAULT_SERVICES],
        "aliases": list(recipe.aliases),
    }


def _bytes(value: str) -> int:
    from bai.common.resources import parse_size

    return int(parse_size(value))


def register(record: dict[str, Any], *, log=print) -> None:
    """Register the image and its aliases with the manager of the client configuration
    (``~/.config/backend.ai``, as ``backend.ai server start`` writes it; needs an admin keypair).
    An image of that name that is already registered (the manager's bootstrap registers the host's
    ``python:3.11-debian12`` for every runtime) is kept as it is."""
    import asyncio

    from bai.client.admin import AdminAPI
    from bai.client.config import ClientConfig
    from bai.client.connection import Connection
    from bai.common.errors import BaiError

    async def go() -> None:
        async with Connection(ClientConfig.load()) as conn:
            api = AdminAPI(conn)
            known = {i["name"]: i for i in await api.images()}
            name = record["name"]
            if name in known:
                runtimes = known[name].get("runtimes")
                log(f"{name} is already registered (runtimes: {runtimes})")
            else:
                await api.register_image({k: v for k, v in record.items() if k != "aliases"})
                log(f"registered {name} with {conn.endpoint}")
            for alias in record["aliases"]:
                await api.set_alias(alias, name)
                log(f"alias {alias} -> {name}")

    try:
        asyncio.run(go())
    except (BaiError, OSError) as e:
        raise BuildError(f"registering {record['name']} failed: {e}") from e


def build_all(*, force: bool = False, verify: bool = True, register_images: bool = False,
              log=print) -> list[str]:
    names = []
    for recipe in RECIPES:
        tar_path, meta = build_rootfs(recipe, force=force, log=log)
        names.append(import_image(recipe, tar_path, meta, force=force, verify=verify, log=log))
        if register_images:
            register(registration(recipe, meta), log=log)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bai.agent.images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) and import the default images")
    b.add_argument("--force", action="store_true", help="rebuild the root filesystem and re-import")
    b.add_argument("--no-verify", action="store_true", help="do not run the image to check its name")
    b.add_argument("--register", action="store_true",
                   help="register the images and aliases with the manager of the client config")
    sub.add_parser("list", help="recipes, cached tarballs and images in the engine")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.cmd == "build":
            for name in build_all(force=args.force, verify=not args.no_verify,
                                  register_images=args.register, log=log):
                print(name)
        else:
            for recipe in RECIPES:
                arch = platform.machine() or "x86_64"
                meta_path = cache_dir() / f"{recipe.key}-{arch}-{recipe.digest()}.json"
                with contextlib.suppress(OSError, ValueError):
                    meta = json.loads(meta_path.read_text())
                    name = image_name(meta)
                    there = _image_labels_in_engine(name) is not None
                    print(f"{recipe.key}\t{name}\t{'imported' if there else 'cached only'}")
                    continue
                print(f"{recipe.key}\t-\tnot built")
    except BuildError as e:
        print(f"build-images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
