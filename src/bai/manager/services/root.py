"""ManagerRoot: the manager's services, built once from settings (see ``bai.manager.app``).

``start()`` migrates the database to head, bootstraps nothing (``bai-manager init`` does that),
and starts the background loops: the scheduler, the deadline checker, the idle checker and the
agent-liveness checker. ``stop()`` ends them and closes the store, the bus and the RPC client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bai.manager.eventbus import EventBus, make_bus
from bai.manager.metrics import ManagerMetrics
from bai.manager.services.agents import AgentRegistry
from bai.manager.services.auth import keypair_cache
from bai.manager.services.sessions import SessionService
from bai.manager.settings import ManagerSettings
from bai.manager.store.engine import Store
from bai.ops.logs import RequestIds

log = logging.getLogger(__name__)


class ManagerRoot:
    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self.bus: EventBus = make_bus(settings)
        self.agents = AgentRegistry(self)
        self.sessions = SessionService(self)
        from bai.manager.services.folders import FolderService

        self.folders = FolderService(self)
        from bai.manager.services.scheduling import SchedulerLoop
        from bai.manager.services.watchdogs import Watchdogs

        self.scheduler = SchedulerLoop(self)
        self.watchdogs = Watchdogs(self)
        self.metrics = ManagerMetrics(self)
        #: the create request of each session still waiting to be placed (logs follow it)
        self.request_ids = RequestIds()
        #: keypairs authentication read (SQLite: valid until a write to keypairs or users)
        self.keypairs = keypair_cache()
        self.scheduler_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False

    async def start(self) -> None:
        await self.store.migrate()
        await self.folders.start()
        if hasattr(self.bus, "set_kernel_handler"):
            # Cluster bus: agent events are queued once and applied by exactly one replica.
            self.bus.set_kernel_handler(self.sessions.lifecycle.apply_kernel_event)
        await self.bus.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.watchdogs.run(), name="watchdogs"),
            asyncio.create_task(self.folders.sweep_loop(), name="upload-part-sweeper"),
        ]
        self.scheduler_task = self._tasks[0]
        self._started = True
        self.scheduler.kick()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.scheduler.close()
        await self.sessions.close()
        await self.agents.close()
        await self.bus.close()
        await self.store.close()
        self._started = False
