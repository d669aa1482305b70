"""What ``run``/``start`` say of a session that is not running (yet): its status and why,
e.g. ``PENDING - insufficient-resources: cpu requested 2, free 0``, and the lines of an
interrupted or cut-short run. The live status line while a create waits is
``bai.client.cli.watcher``'s; this module is the part the express ``start`` loads.
"""

from __future__ import annotations

from bai.client import jsonwire

# ``typing`` costs ~3 ms to import (the express ``start`` uses this module); annotations are
# never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

POLL_SECONDS = 1.0
FIRST_POLL_SECONDS = 0.7


def ended_early(name: str, brief: dict[str, Any]) -> str:
    """The error line for an execution whose stream ended before it finished, with what the
    session's ``brief`` (empty if it could not be read) says of it."""
    st = describe_status(str(brief.get("status", "UNKNOWN")), brief.get("status_info"))
    return f"Error: the execution ended before it finished (session {name}: {st})"


def cancel_note(name: str) -> str:
    return f"⋯ Interrupted: removing the session {name}..."


def cancel_failed(name: str, err: BaseException) -> str:
    """The line when the removal after Ctrl-C did not go through (or took too long)."""
    from bai.client.cli.main import describe

    why = "no answer in time" if isinstance(err, TimeoutError) else describe(err)
    return (f"Error: could not remove the session {name} ({why});"
            f" remove it with: backend.ai rm {name}")


def describe_status(status: str, info: str | None, data: Any = None) -> str:
    """``PENDING - insufficient-resources: ... (queue position 2, estimated start ...)``."""
    text = status
    if info:
        text += f" - {info}"
    extra = []
    if isinstance(data, str):
        try:
            data = jsonwire.loads(data)
        except ValueError:
            data = None
    sched = data.get("scheduler") if isinstance(data, dict) else None
    if isinstance(sched, dict):
        msg = sched.get("msg") or sched.get("message")
        if msg and (not info or str(msg) not in info):
            extra.append(str(msg))
        pos = sched.get("position", sched.get("queue_position"))
        if pos is not None and "position" not in (info or ""):
            extra.append(f"queue position {pos}")
        eta = sched.get("estimated_start", sched.get("eta"))
        if eta and "estimated" not in (info or ""):
            extra.append(f"estimated start {eta}")
    if extra:
        text += " (" + "; ".join(extra) + ")"
    return text
