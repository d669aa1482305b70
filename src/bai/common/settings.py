"""Daemon settings: a TOML file section, overridden by environment variables, overridden by
explicit values. Each daemon has one model (``ManagerSettings``, ``AgentSettings``) built on this."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic_settings import BaseSettings


class TomlSettings(BaseSettings):
    #: the TOML table this daemon reads ([manager], [agent]); a file without it is read whole
    toml_section: ClassVar[str] = ""

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """TOML file values, overridden by environment variables, overridden by ``overrides``."""
        file_values: dict[str, Any] = {}
        if path:
            with open(path, "rb") as f:
                data = tomllib.load(f)
            file_values = data.get(cls.toml_section, data)
        env = cls()  # environment only
        merged = {**file_values}
        for name in cls.model_fields:
            if name in env.model_fields_set:
                merged[name] = getattr(env, name)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(merged)


def settings_problem(e: Exception) -> str:
    """Why a daemon's settings could not be read, in one line: each invalid field and its
    problem (``port: Input should be a valid integer, ...; heartbeat_interval: ...``) for
    pydantic's report, which takes a title and two lines and a URL for each field; the
    message, on one line, for any other error (TOML syntax, an environment value that is no
    JSON)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                         for err in e.errors(include_url=False))
    else:
        text = str(e)
    return " ".join(text.split())
