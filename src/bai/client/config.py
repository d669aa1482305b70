"""Client configuration: which manager to talk to and with which keypair.

Sources, strongest first:

1. environment variables ``BACKEND_ENDPOINT`` (one URL or a comma-separated list, tried in
   order), ``BACKEND_ACCESS_KEY``, ``BACKEND_SECRET_KEY``, ``BACKEND_DOMAIN``, ``BACKEND_GROUP``
   (the official client's names, so one environment serves both clients);
2. a profile of the TOML file written by ``backend.ai server start``: ``$BAI_CONFIG``, else
   ``$XDG_CONFIG_HOME/bai/client.toml``, else ``~/.config/bai/client.toml``. Profiles are tables
   (``[default]`` = the admin keypair, ``[user]`` = a user keypair) with ``endpoint``,
   ``access_key``, ``secret_key`` and optionally ``domain``, ``group`` and ``api_socket`` (the
   unix socket where the manager of the first endpoint serves its API on this machine, which
   the express paths reach it at; unused when ``BACKEND_ENDPOINT`` names the endpoints). The
   profile is chosen with ``--profile NAME`` or ``BAI_PROFILE`` (default ``default``);
3. built-in defaults (``http://127.0.0.1:8091``, domain and group ``default``).
"""

from __future__ import annotations

import os

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:8091"
_FIELDS = ("endpoints", "access_key", "secret_key", "domain", "group", "profile", "source",
           "extra", "api_socket")


def _error(msg: str) -> Exception:
    # imported when raised: bai.common.errors is not free to import, and ``backend.ai run``
    # reads its configuration on every start
    from bai.client.errors import ConfigError

    return ConfigError(msg)


def config_file(env: dict[str, str] | os._Environ | None = None) -> str:
    """The client configuration file's path (it need not exist)."""
    env = os.environ if env is None else env
    if env.get("BAI_CONFIG"):
        return os.path.expanduser(env["BAI_CONFIG"])
    home = env.get("HOME") or os.path.expanduser("~")
    base = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(base, "bai", "client.toml")


def plain_toml(text: str) -> dict[str, Any] | None:
    """The tables of a TOML file that holds only ``[table]`` headers and ``key = "string"``
    lines without escapes (what ``backend.ai server start`` writes), or None for anything
    else, which ``tomllib`` then reads: it costs ~8 ms to import on every command."""
    data: dict[str, Any] = {}
    table: dict[str, Any] = data
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]") and not line.startswith("[["):
            name = line[1:-1].strip()
            if not name or not _bare(name) or name in data:
                return None
            table = data[name] = {}
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        inner = value[1:-1]
        if (not eq or not _bare(key) or key in table or len(value) < 2 or value[0] != '"'
                or value[-1] != '"' or '"' in inner or "\\" in inner or "#" in inner):
            return None
        table[key] = inner
    return data


#: what a bare TOML key is made of
_BARE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _bare(key: str) -> bool:
    # every character one of _BARE (strip, not a loop in Python: ~100,000 instructions less
    # on a command's configuration)
    return not key.strip(_BARE)


class ClientConfig:
    """Everything the SDK needs to sign and send requests (immutable; a plain class rather
    than a dataclass, whose import costs more than the rest of the express path's start)."""

    __slots__ = _FIELDS

    def __init__(self, endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,), access_key: str = "",
                 secret_key: str = "", domain: str = "default", group: str = "default",
                 profile: str = "default", source: str = "defaults",
                 extra: dict[str, str] | None = None, api_socket: str = "") -> None:
        values = (tuple(endpoints), access_key, secret_key, domain, group, profile, source,
                  dict(extra or {}), api_socket)
        for name, value in zip(_FIELDS, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ClientConfig is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientConfig):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in _FIELDS if f != "extra"))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS if f != "secret_key")
        return f"ClientConfig({shown})"

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @classmethod
    def load(cls, profile: str | None = None, env: dict[str, str] | None = None) -> ClientConfig:
        env = os.environ if env is None else env  # (read only: no copy of every variable)
        explicit = profile or env.get("BAI_PROFILE")
        profile = explicit or "default"
        values: dict[str, str] = {}
        source = "defaults"
        path = config_file(env)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                data = plain_toml(raw.decode("utf-8", "replace"))
                if data is None:
                    import tomllib

                    data = tomllib.loads(raw.decode("utf-8"))
            except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError too
                raise _error(f"cannot read the client configuration {path}: {e}") from None
            table = data.get(profile)
            if table is None and explicit:
                names = ", ".join(k for k, v in data.items() if isinstance(v, dict)) or "none"
                raise _error(
                    f"no profile {profile!r} in {path} (profiles: {names})"
                )
            if isinstance(table, dict):
                values = {k: str(v) for k, v in table.items()}
                source = f"{path} [{profile}]"
        elif explicit:
            raise _error(
                f"no client configuration at {path} for profile {profile!r}; "
                "run 'backend.ai server start' or set BACKEND_ENDPOINT and the keys"
            )
        for key in ("endpoint", "access_key", "secret_key", "domain", "group"):
            v = env.get(f"BACKEND_{key.upper()}")
            if v is not None and v != "":
                values[key] = v
                source = "environment" if source == "defaults" else source + " + environment"
                if key == "endpoint":  # the file's socket is its endpoint's manager's
                    values.pop("api_socket", None)
        raw_endpoints = values.get("endpoint", DEFAULT_ENDPOINT)
        endpoints = tuple(e.strip().rstrip("/") for e in raw_endpoints.split(",") if e.strip())
        if not endpoints:
            raise _error("BACKEND_ENDPOINT is empty")
        for e in endpoints:
            if not e.startswith(("http://", "https://")):
                raise _error(f"endpoint {e!r} must start with http:// or https://")
        if not values.get("access_key") and "BACKEND_ACCESS_KEY" not in env:
            # BACKEND_ACCESS_KEY="" asks for anonymous requests on purpose; nothing at all is a
            # fresh machine, which deserves directions rather than a 401.
            raise _error(
                f"no keypair configured: no client configuration at {path} and "
                "BACKEND_ACCESS_KEY is not set; run 'backend.ai server start' first, or set "
                "BACKEND_ENDPOINT, BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY"
            )
        return cls(
            endpoints=endpoints,
            access_key=values.get("access_key", ""),
            secret_key=values.get("secret_key", ""),
            domain=values.get("domain", "default"),
            group=values.get("group", "default"),
            profile=profile,
            source=source,
            api_socket=values.get("api_socket", ""),
        )
