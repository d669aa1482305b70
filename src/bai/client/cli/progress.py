"""Live status on stderr while ``run``/``start`` wait for a session to start.

``POST /session`` blocks until the session runs; meanwhile a watcher polls the session list
(GraphQL, the same query ``ps`` sends) and shows the status and its reason, e.g.
``PENDING - insufficient-resources: cpu requested 2, free 0``. On a terminal it is one rich
status line that updates in place; otherwise one line per change.
"""

from __future__ import annotations

from bai.client import jsonwire

# ``typing`` costs ~3 ms to import (the express ``start`` uses this module); annotations are
# never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from bai.client.cli.output import Output

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


class StartupWatcher:
    """Polls a session's status by name until stopped, showing each change on stderr."""

    def __init__(self, api: Any, name: str, access_key: str | None, out: Output):
        self.api = api
        self.name = name
        self.access_key = access_key
        self.out = out
        self.last: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._status: Any = None

    def start(self, first_delay: float = FIRST_POLL_SECONDS) -> None:
        import asyncio

        if not self.out.quiet:
            self._task = asyncio.create_task(self._loop(first_delay))

    async def stop(self) -> None:
        import asyncio

        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - display only
                pass
        if self._status is not None:
            self._status.stop()
            self._status = None

    async def _loop(self, first_delay: float) -> None:
        import asyncio

        from bai.common.status import LIST_ALL

        await asyncio.sleep(first_delay)
        fields = ["name", "id", "status", "status_info", "status_data"]
        while True:
            try:
                items, _ = await self.api.list_page(
                    fields, statuses=[str(s) for s in LIST_ALL], limit=50, offset=0,
                    access_key=self.access_key,
                )
            except Exception:  # noqa: BLE001 - the display must never break the command
                items = []
            for it in items:
                if it.get("name") == self.name:
                    self.show(describe_status(
                        str(it.get("status")), it.get("status_info"), it.get("status_data")
                    ))
                    break
            await asyncio.sleep(POLL_SECONDS)

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.out.stderr_is_tty():
            if self._status is None:
                from rich.console import Console

                self._status = Console(stderr=True).status(f"{self.name}: {text}")
                self._status.start()
            else:
                self._status.update(f"{self.name}: {text}")
        else:
            self.out.note(f"∙ {self.name}: {text}")
