"""Session names: the one rule the manager enforces and the CLI checks before any request."""

from __future__ import annotations

#: 2-64 ASCII letters, digits, '_', '-' or '.', starting and ending with a letter, digit or '_'.
#: The reference manager asks for at least 4; short names such as ``nb`` are what people type
#: (the issue's own example), so bai takes 2 (the official client still checks 4 on its side).
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_INNER = _WORD | {".", "-"}


def session_name_problem(name: object) -> str | None:
    """None for a good session name, else the message (a long name is shown shortened)."""
    # checked by hand, not with ``re`` (~5 ms to import for the CLI); the pattern this was,
    # ``^(?=.{2,64}$)\w[\w.-]*\w$``, let a name end in a newline (``$`` matches before one)
    if (isinstance(name, str) and 2 <= len(name) <= 64 and name[0] in _WORD
            and name[-1] in _WORD and all(c in _INNER for c in name)):
        return None
    text = str(name)
    shown = repr(text) if len(text) <= 64 else f"{text[:24]!r}... ({len(text)} characters)"
    return (f"invalid session name {shown}: use 2-64 letters, digits, '_', '-' or '.', "
            "starting and ending with a letter, digit or '_'")
