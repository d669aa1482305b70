"""The hand-made option parsing of the express paths (``run``, ``start``, ``ps``): cheap to
import, so that ``ps`` parses its command line before anything else is loaded."""

from __future__ import annotations

import os

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the options that may be given more than once
REPEATED = ("env", "mounts")


def express_off() -> bool:
    """``BAI_CLI_EXPRESS=0``: every command goes through click."""
    return os.environ.get("BAI_CLI_EXPRESS", "1") in ("0", "no", "false")


def parse_options(args: list[str], flags: dict[str, str], values: dict[str, str],
                  plan: dict[str, Any], image: bool = True) -> dict[str, Any] | None:
    """``plan`` filled from ``args`` (``flags`` set True, ``values`` take one argument, the
    ``REPEATED`` ones collect), with its one IMAGE (none unless ``image``); None for anything
    else (click's business)."""
    positional = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        opt, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if opt in flags and not eq:
            plan[flags[opt]] = True
        elif opt in values:
            if not eq:
                if i >= len(args):
                    return None  # click says what is missing
                value = args[i]
                i += 1
            if values[opt] in REPEATED:
                plan[values[opt]].append(value)
            else:
                plan[values[opt]] = value
        else:
            return None
    if len(positional) != int(image):
        return None
    if image:
        plan["image"] = positional[0]
    return plan
