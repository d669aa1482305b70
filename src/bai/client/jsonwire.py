"""``json.dumps`` and ``json.loads`` for the client's requests and answers, on the standard
library's C accelerator ``_json`` directly.

The ``json`` package imports ``re`` at start (and with it ``enum``, ``functools`` and
``collections``): ~5 ms of the ~20 ms of CPU a ``backend.ai start --enqueue-only`` spends. The
functions below call the very encoder and scanner ``json`` calls with its defaults, so the
bytes and values are the same (tests hold them equal); anything they do not cover (no
``_json``, bytes, a document that does not parse) goes to ``json`` itself, which then raises
its own ``JSONDecodeError``.
"""

from __future__ import annotations

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # pragma: no cover - an interpreter without the accelerator
    make_encoder = make_scanner = None

_SPACE = " \t\n\r"  # json.decoder.WHITESPACE


def _default(o: Any) -> Any:
    # json.JSONEncoder.default
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class _Decoder:
    """What ``_json.make_scanner`` reads of ``json.JSONDecoder()`` (``json.loads``' defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


_scan = make_scanner(_Decoder()) if make_scanner is not None else None


def dumps(obj: Any) -> str:
    """``json.dumps(obj)``."""
    if make_encoder is None:
        import json

        return json.dumps(obj)
    if isinstance(obj, str):
        return encode_basestring_ascii(obj)
    # json.JSONEncoder.iterencode(o, _one_shot=True) with the defaults: check_circular (a
    # fresh markers dict), ensure_ascii, allow_nan, separators (", ", ": ")
    return "".join(make_encoder({}, _default, encode_basestring_ascii, None, ": ", ", ",
                                False, False, True)(obj, 0))


def loads(text: Any) -> Any:
    """``json.loads(text)``."""
    if _scan is not None and isinstance(text, str) and not text.startswith("\ufeff"):
        start = len(text) - len(text.lstrip(_SPACE))
        try:
            obj, end = _scan(text, start)
        except (StopIteration, ValueError):
            pass  # json says why
        else:
            if not text[end:].strip(_SPACE):
                return obj
    import json

    return json.loads(text)
