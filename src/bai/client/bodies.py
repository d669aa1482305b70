"""JSON bodies of API requests, key for key as the official client sends them (stdlib only).

Shared by ``CreateSpec.to_body`` (the SDK) and the express path of ``backend.ai run``.
"""

from __future__ import annotations

import os

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


#: a session's name, status and why (``SessionAPI.brief``, the express ``start``)
BRIEF_QUERY = (
    "query($id: UUID!) {  compute_session(id: $id) {    name id status status_info status_data"
    "  }}"
)


_machine: str | None = None


def machine() -> str:
    """This machine's architecture as ``platform.machine()`` names it, without ``platform``
    (asked of the system once: ``CreateSpec`` asks on every instance)."""
    global _machine
    if _machine is None:
        _machine = os.uname().machine if hasattr(os, "uname") else ""
    return _machine


def parse_mounts(values: tuple[str, ...] | list[str]) -> tuple[list[str], dict[str, str]]:
    """``-m`` values as the official client sends them: ``NAME``, ``NAME=PATH`` or
    ``NAME:PATH`` (``PATH`` may end in ``:ro``/``:rw``, or be just ``ro``/``rw``) ->
    (``config.mounts``, ``config.mount_map``); the manager reads the path and mode."""
    names: list[str] = []
    mapping: dict[str, str] = {}
    for v in values:
        sep = "=" if "=" in v else ":"
        name, _, path = v.partition(sep)
        if name not in names:
            names.append(name)
        if path:
            mapping[name] = path
    return names, mapping


def create_session(
    *, image: str, name: str, type: str = "interactive", tag: str | None = None,
    environ: dict[str, str] | None = None, resources: dict[str, str] | None = None,
    resource_opts: dict[str, str] | None = None, mounts: list[str] | None = None,
    mount_map: dict[str, str] | None = None, scaling_group: str | None = None,
    preopen_ports: list[str] | tuple[str, ...] | None = (), dependencies: list[str] | None = None,
    callback_url: str | None = None, architecture: str | None = None, cluster_size: int = 1,
    cluster_mode: str = "single-node", starts_at: str | None = None,
    bootstrap_script: str | None = None, owner_access_key: str | None = None,
    domain: str = "default", group: str = "default", enqueue_only: bool = False,
    max_wait: int = 0, reuse: bool = True, startup_command: str | None = None,
) -> dict[str, Any]:
    """``POST /session``. The defaults are ``run``'s; ``start`` sends ``dependencies=[]`` and
    ``preopen_ports=None`` (as the official client does)."""
    return {
        "tag": tag,
        "name": name,
        "config": {
            "mounts": list(mounts or []),
            "environ": dict(environ or {}),
            "resources": dict(resources or {}),
            "resource_opts": dict(resource_opts or {}),
            "scalingGroup": scaling_group,
            "mount_map": dict(mount_map or {}),
            "preopen_ports": list(preopen_ports) if preopen_ports is not None else None,
        },
        "dependencies": dependencies,
        "callback_url": callback_url,
        "architecture": architecture if architecture is not None else machine(),
        "clusterSize": cluster_size,
        "clusterMode": cluster_mode,
        "starts_at": starts_at,
        "bootstrap_script": bootstrap_script,
        "owner_access_key": owner_access_key,
        "domain": domain,
        "group": group,
        "type": type,
        "enqueueOnly": enqueue_only,
        "maxWaitSeconds": max_wait,
        "reuseIfExists": reuse,
        "startupCommand": startup_command,
        "image": image,
    }
