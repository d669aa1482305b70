"""Client configuration: which manager to talk to and with which keypair.

Sources, strongest first:

1. environment variables ``BACKEND_ENDPOINT`` (one URL or a comma-separated list, tried in
   order), ``BACKEND_ACCESS_KEY``, ``BACKEND_SECRET_KEY``, ``BACKEND_DOMAIN``, ``BACKEND_GROUP``
   (the official client's names, so one environment serves both clients);
2. a profile of the TOML file written by ``backend.ai server start``: ``$BAI_CONFIG``, else
   ``$XDG_CONFIG_HOME/bai/client.toml``, else ``~/.config/bai/client.toml``. Profiles are tables
   (``[default]`` = the admin keypair, ``[user]`` = a user keypair) with ``endpoint``,
   ``access_key``, ``secret_key`` and optionally ``domain`` and ``group``. The profile is chosen
   with ``--profile NAME`` or ``BAI_PROFILE`` (default ``default``);
3. built-in defaults (``http://127.0.0.1:8091``, domain and group ``default``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bai.common.errors import BaiError

DEFAULT_ENDPOINT = "http://127.0.0.1:8091"


class ConfigError(BaiError):
    code = "client-config-error"
    status = 400
    title = "Invalid client configuration."


def config_path(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("BAI_CONFIG"):
        return Path(env["BAI_CONFIG"]).expanduser()
    home = env.get("HOME") or os.path.expanduser("~")
    base = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return Path(base) / "bai" / "client.toml"


@dataclass(frozen=True)
class ClientConfig:
    """Everything the SDK needs to sign and send requests."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    access_key: str = ""
    secret_key: str = ""
    domain: str = "default"
    group: str = "default"
    profile: str = "default"
    source: str = "defaults"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @classmethod
    def load(cls, profile: str | None = None, env: dict[str, str] | None = None) -> ClientConfig:
        env = dict(os.environ if env is None else env)
        explicit = profile or env.get("BAI_PROFILE")
        profile = explicit or "default"
        values: dict[str, str] = {}
        source = "defaults"
        path = config_path(env)
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"cannot read the client configuration {path}: {e}") from None
            table = data.get(profile)
            if table is None and explicit:
                names = ", ".join(k for k, v in data.items() if isinstance(v, dict)) or "none"
                raise ConfigError(
                    f"no profile {profile!r} in {path} (profiles: {names})"
                )
            if isinstance(table, dict):
                values = {k: str(v) for k, v in table.items()}
                source = f"{path} [{profile}]"
        elif explicit:
            raise ConfigError(
                f"no client configuration at {path} for profile {profile!r}; "
                "run 'backend.ai server start' or set BACKEND_ENDPOINT and the keys"
            )
        for key in ("endpoint", "access_key", "secret_key", "domain", "group"):
            v = env.get(f"BACKEND_{key.upper()}")
            if v is not None and v != "":
                values[key] = v
                source = "environment" if source == "defaults" else source + " + environment"
        raw_endpoints = values.get("endpoint", DEFAULT_ENDPOINT)
        endpoints = tuple(e.strip().rstrip("/") for e in raw_endpoints.split(",") if e.strip())
        if not endpoints:
            raise ConfigError("BACKEND_ENDPOINT is empty")
        for e in endpoints:
            if not e.startswith(("http://", "https://")):
                raise ConfigError(f"endpoint {e!r} must start with http:// or https://")
        if not values.get("access_key") and "BACKEND_ACCESS_KEY" not in env:
            # BACKEND_ACCESS_KEY="" asks for anonymous requests on purpose; nothing at all is a
            # fresh machine, which deserves directions rather than a 401.
            raise ConfigError(
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
        )
