"""Session names: the one rule the manager enforces and the CLI checks before any request."""

from __future__ import annotations

import re

#: 2-64 ASCII letters, digits, '_', '-' or '.', starting and ending with a letter, digit or '_'.
#: The reference manager asks for at least 4; short names such as ``nb`` are what people type
#: (the issue's own example), so bai takes 2 (the official client still checks 4 on its side).
SESSION_NAME_RE = re.compile(r"^(?=.{2,64}$)\w[\w.-]*\w$", re.ASCII)


def session_name_problem(name: object) -> str | None:
    """None for a good session name, else the message (a long name is shown shortened)."""
    if isinstance(name, str) and SESSION_NAME_RE.match(name):
        return None
    text = str(name)
    shown = repr(text) if len(text) <= 64 else f"{text[:24]!r}... ({len(text)} characters)"
    return (f"invalid session name {shown}: use 2-64 letters, digits, '_', '-' or '.', "
            "starting and ending with a letter, digit or '_'")
