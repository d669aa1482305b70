"""Live status on stderr while ``run``/``start`` wait for a session to start.

``POST /session`` blocks until the session runs; meanwhile a watcher polls the session list
(GraphQL, the same query ``ps`` sends) and shows the status and its reason
(``bai.client.cli.progress.describe_status``). On a terminal it is one rich status line that
updates in place; otherwise one line per change.
"""

from __future__ import annotations

from bai.client.cli.progress import FIRST_POLL_SECONDS, POLL_SECONDS, describe_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    from bai.client.cli.output import Output


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
