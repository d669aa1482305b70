"""What the manager's background loops (scheduler, watchdogs, sweeper) share."""

from __future__ import annotations

import asyncio


def stopping() -> bool:
    """Whether the running task is being cancelled. A driver can turn the cancel into another
    error (an asyncpg commit cut short came out as MissingGreenlet): a loop that logs failures
    and goes on must end instead, or ``ManagerRoot.stop`` waits for it for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
