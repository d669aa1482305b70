"""Container images of the manager and the agent, built from Debian packages (no registry).

Usage (needs a ``docker`` CLI talking to the engine in ``$DOCKER_HOST``)::

    python -m bai.ops.service_images build     # bai-manager:<version>, bai-agent:<version>

``scripts/build-service-images.sh`` runs the same with the project's venv.

How: the base is the kernel image that ``scripts/build-images.sh`` makes from Debian packages
(``debootstrap``: Debian's python3 and nothing else; built first when the engine lacks it). This
checkout is installed with its ``server`` extra into a folder by the host's pip (the host is the
same Debian release, so binary wheels match the image's Python), which a two-line build copies to
``/opt/bai``, with ``bai-manager`` and ``bai-agent`` on ``PATH``. The manager image serves on
``0.0.0.0:8091`` after migrating ``BAI_MANAGER_DB_URL`` (default: SQLite under ``/var/lib/bai``),
as the unprivileged uid ``MANAGER_UID`` (10001), which owns ``/var/lib/bai``;
both read their settings from ``BAI_MANAGER_*`` / ``BAI_AGENT_*`` variables or a mounted
``--config`` file (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bai

ROOT = Path(__file__).resolve().parents[3]
VERSION = bai.__version__

DOCKERFILE = """\
FROM {base}
COPY site /opt/bai/site
COPY bin /usr/local/bin
{user}ENV PYTHONPATH=/opt/bai/site PYTHONUNBUFFERED=1 BAI_MANAGER_STATE_DIR=/var/lib/bai \\
    BAI_MANAGER_DB_URL=sqlite+aiosqlite:////var/lib/bai/bai.db
LABEL org.opencontainers.image.title="{name}" org.opencontainers.image.version="{version}"
WORKDIR /var/lib/bai
CMD {cmd}
"""
#: the uid and gid the manager's image runs as (no passwd entry: nothing in it needs one)
MANAGER_UID = 10001
#: the manager needs no privilege: it runs as MANAGER_UID, owning its state folder (made by the
#: COPY, which needs no RUN step and so no container during the build). The agent stays root:
#: its runtimes start kernels (sandboxes, mounts, the docker socket).
USERS = {
    "bai-manager": (f"COPY --chown={MANAGER_UID}:{MANAGER_UID} state /var/lib/bai\n"
                    f"USER {MANAGER_UID}:{MANAGER_UID}\n"
                    "ENV HOME=/var/lib/bai USER=bai LOGNAME=bai\n"),
    "bai-agent": "",
}
#: what each image runs unless told otherwise
COMMANDS = {
    "bai-manager": '["sh", "-c", "bai-manager migrate && exec bai-manager serve"]',
    "bai-agent": '["bai-agent", "serve"]',
}
WRAPPER = '#!/bin/sh\nexec python3 -m {module} "$@"\n'


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def base_image() -> str:
    """The Debian python image of the kernels, built (from Debian packages) when missing."""
    from bai.agent import images

    recipe = images.RECIPES[0]
    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    tar_path, meta = images.build_rootfs(recipe, log=log)
    return images.import_image(recipe, tar_path, meta, log=log)


def build(*, log=print) -> list[str]:
    base = base_image()
    with tempfile.TemporaryDirectory(prefix="bai-service-image-") as tmp:
        ctx = Path(tmp)
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--target", str(ctx / "site"), f"{ROOT}[server]"])
        (ctx / "bin").mkdir()
        for script, module in (("bai-manager", "bai.manager"), ("bai-agent", "bai.agent")):
            path = ctx / "bin" / script
            path.write_text(WRAPPER.format(module=module))
            path.chmod(0o755)
        shutil.rmtree(ctx / "site" / "bin", ignore_errors=True)
        (ctx / "state").mkdir()
        names = []
        for name, cmd in COMMANDS.items():
            tag = f"{name}:{VERSION}"
            (ctx / "Dockerfile").write_text(
                DOCKERFILE.format(base=base, name=name, version=VERSION, cmd=cmd,
                                  user=USERS[name]))
            _run(["docker", "build", "-q", "-t", tag, str(ctx)],
                 env={**_environ(), "DOCKER_BUILDKIT": "0"}, stdout=subprocess.DEVNULL)
            log(tag)
            names.append(tag)
    return names


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bai.ops.service_images")
    parser.add_argument("command", choices=["build"])
    parser.parse_args(argv)
    try:
        build()
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"building the service images failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
