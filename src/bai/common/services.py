"""Service ports ("apps"): what a session offers to be reached through the tunnel.

A service port is ``{"name", "protocol", "ports"}``:

* ``protocol`` ``http`` or ``tcp``: a program inside the session listens on ``ports[0]`` on the
  session's own loopback; ``preopen``: the same, declared by the user at create (the official
  client's ``--preopen PORT``, named after the port);
* ``pty``: no port; each connection is a fresh shell on a pseudo-terminal inside the session.

Images declare theirs (``admin image register/update --service NAME:PROTOCOL:PORT``); a user adds
their own at create (``--service NAME:PORT``, or ``--preopen PORT``). ``jupyter`` is started by
bai on first use with a token of bai's (``service_token``). Pure functions only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

PROTOCOLS = ("http", "tcp", "pty", "preopen")
#: names bai knows how to start inside the session (others must be started by the user)
STARTED_BY_BAI = ("jupyter",)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MAX_SERVICES = 32

#: what the default images offer
DEFAULT_SERVICES: list[dict[str, Any]] = [
    {"name": "jupyter", "protocol": "http", "ports": [8081]},
    {"name": "terminal", "protocol": "pty", "ports": []},
]


class ServiceSpecError(ValueError):
    """A service declaration that cannot be used; the message is for users."""


def _port(value: Any, where: str) -> int:
    try:
        port = int(str(value).strip())
    except (TypeError, ValueError):
        raise ServiceSpecError(f"{where}: port {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ServiceSpecError(f"{where}: port {port} is outside 1-65535")
    return port


def normalize(entry: Any) -> dict[str, Any]:
    """One declaration as ``{"name", "protocol", "ports"}`` (``container_ports`` is accepted
    for ``ports``, as the reference manager names it); ServiceSpecError otherwise."""
    if not isinstance(entry, Mapping):
        raise ServiceSpecError("a service port must be an object {name, protocol, ports}")
    name = str(entry.get("name") or "")
    if not NAME_RE.match(name):
        raise ServiceSpecError(
            f"service name {name!r}: use 1-32 letters, digits, '.', '_' or '-'")
    protocol = str(entry.get("protocol") or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise ServiceSpecError(
            f"service {name}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    raw = entry.get("ports", entry.get("container_ports")) or []
    if isinstance(raw, (int, str)):
        raw = [raw]
    ports = [_port(p, f"service {name}") for p in raw]
    if protocol == "pty":
        ports = []
    elif len(ports) != 1:
        raise ServiceSpecError(f"service {name}: give exactly one port")
    return {"name": name, "protocol": protocol, "ports": ports}


def normalize_all(entries: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries or []:
        item = normalize(entry)
        if any(o["name"] == item["name"] for o in out):
            raise ServiceSpecError(f"service {item['name']} is declared twice")
        out.append(item)
    if len(out) > MAX_SERVICES:
        raise ServiceSpecError(f"at most {MAX_SERVICES} services")
    return out


def parse_spec(spec: str, default_protocol: str = "http") -> dict[str, Any]:
    """``NAME:PORT``, ``NAME:PROTOCOL:PORT`` or ``NAME:pty`` (CLI options) as a declaration."""
    parts = [p.strip() for p in str(spec).split(":")]
    if len(parts) == 2 and parts[1].lower() == "pty":
        return normalize({"name": parts[0], "protocol": "pty"})
    if len(parts) == 2:
        return normalize({"name": parts[0], "protocol": default_protocol, "ports": [parts[1]]})
    if len(parts) == 3:
        return normalize({"name": parts[0], "protocol": parts[1], "ports": [parts[2]]})
    raise ServiceSpecError(f"{spec!r}: write NAME:PORT or NAME:PROTOCOL:PORT (e.g. web:http:8000)")


def session_services(image_ports: Iterable[Any], own: Iterable[Any],
                     preopen: Iterable[Any]) -> list[dict[str, Any]]:
    """A new session's services: the image's, then the user's own (``--service``), then the
    ``preopen`` ports (named after the port, as the official client expects). A name or a port
    used twice is refused."""
    out = normalize_all(list(image_ports or []))
    for entry in normalize_all(list(own or [])) + [
            normalize({"name": str(_port(p, "preopen")), "protocol": "preopen", "ports": [p]})
            for p in preopen or []]:
        if any(o["name"] == entry["name"] for o in out):
            raise ServiceSpecError(f"service {entry['name']} is already offered by the image")
        if entry["ports"] and any(o["ports"] == entry["ports"] for o in out):
            raise ServiceSpecError(
                f"port {entry['ports'][0]} is already the port of another service")
        out.append(entry)
    if len(out) > MAX_SERVICES:
        raise ServiceSpecError(f"at most {MAX_SERVICES} services")
    return out


def find(ports: Iterable[Any], name: str) -> dict[str, Any] | None:
    for entry in ports or []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return dict(entry)
    return None


def service_token(secret: str, kernel_id: str, name: str) -> str:
    """The token bai gives a service it starts (jupyter): derived from a secret only the
    manager and agents hold, so it needs no storage and differs per kernel."""
    msg = f"bai-service:{kernel_id}:{name}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:48]


def app_path(session_id: Any, name: str) -> str:
    """Where a service bai starts answers inside the session and on the app proxy
    (``kernel/services.py`` gives jupyter this ``base_url``)."""
    return f"/app/{session_id}/{name}/"


def app_info(entry: Mapping[str, Any], token: str | None = None,
             session_id: Any = None) -> dict[str, Any]:
    """One item of ``GET /stream/session/{x}/apps`` (the official client reads ``name`` and
    ``url_template``)."""
    out: dict[str, Any] = {"name": entry["name"], "protocol": entry["protocol"],
                           "ports": list(entry.get("ports") or [])}
    if entry["name"] in STARTED_BY_BAI and token:
        base = app_path(session_id, entry["name"]) if session_id else "/"
        out["url_template"] = "http://{host}:{port}" + base + "tree?token=" + token
    elif entry["protocol"] in ("http", "preopen"):
        out["url_template"] = "http://{host}:{port}/"
    return out
