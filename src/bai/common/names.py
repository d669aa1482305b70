"""Session names: the one rule the manager enforces and the CLI checks before any request."""

from __future__ import annotations

import re

#: 4-64 ASCII letters, digits, '_', '-' or '.', starting and ending with a letter, digit or '_'.
SESSION_NAME_RE = re.compile(r"^(?=.{4,64}$)\w[\w.-]*\w$", re.ASCII)


def session_name_problem(name: object) -> str | None:
    """None for a good session name, else the message (a long name is shown shortened)."""
    if isinstance(name, str) and SESSION_NAME_RE.match(name):
        return None
    text = str(name)
    shown = repr(text) if len(text) <= 64 else f"{text[:24]!r}... ({len(text)} characters)"
    return (f"invalid session name {shown}: use 4-64 letters, digits, '_', '-' or '.', "
            "starting and ending with a letter, digit or '_'")
