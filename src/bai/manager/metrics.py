"""The manager's Prometheus metrics and its readiness (docs/operations.md lists each metric).

Counters and histograms are updated where things happen (API requests by ``bai.ops.http``,
scheduling passes by ``SchedulerLoop``). Gauges of state (sessions by status, the queue, agents,
slots, event subscribers) are read when scraped: ``refresh()`` reads the database, then the
registry renders. Each manager has a registry of its own (several run in one test process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bai.common.resources import ResourceSlot
from bai.manager.store.tables import agents, sessions, utcnow
from bai.ops.http import HttpMetrics

if TYPE_CHECKING:
    from bai.manager.services.root import ManagerRoot

log = logging.getLogger(__name__)

PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: seconds a readiness check may take before it counts as failed
CHECK_TIMEOUT = 3.0


class _State:
    """The scrape-time gauges, from the last ``ManagerMetrics.refresh``."""

    def __init__(self, metrics: ManagerMetrics) -> None:
        self.m = metrics

    def describe(self):  # registered without describe-at-registration
        return []

    def collect(self):
        snap, m = self.m.snapshot, self.m
        up = GaugeMetricFamily("bai_manager_database_up",
                               "1 when the last scrape could read the database")
        up.add_metric([], 1 if snap is not None else 0)
        yield up
        subs = GaugeMetricFamily("bai_manager_event_subscribers",
                                 "Listeners of this manager's event bus (SSE streams, waiters)")
        fanout = getattr(m.root.bus, "fanout", None)
        subs.add_metric([], len(fanout) if fanout is not None else 0)
        yield subs
        sql = CounterMetricFamily("bai_manager_sql_statements",
                                  "SQL statements this manager sent to the database")
        sql.add_metric([], getattr(m.root.store, "statements", 0))
        yield sql
        if snap is None:
            return
        g = GaugeMetricFamily("bai_manager_sessions", "Sessions by status and resource group",
                              labels=["status", "resource_group"])
        for (status, group), n in snap["sessions"].items():
            g.add_metric([status, group], n)
        yield g
        depth = GaugeMetricFamily("bai_manager_pending_sessions",
                                  "Sessions waiting in the queue (PENDING)",
                                  labels=["resource_group"])
        oldest = GaugeMetricFamily("bai_manager_pending_oldest_wait_seconds",
                                   "How long the oldest PENDING session has waited",
                                   labels=["resource_group"])
        for group, (n, wait) in snap["pending"].items():
            depth.add_metric([group], n)
            oldest.add_metric([group], wait)
        yield depth
        yield oldest
        a = GaugeMetricFamily("bai_manager_agents", "Agents by status", labels=["status"])
        for status, n in snap["agents"].items():
            a.add_metric([status], n)
        yield a
        cap = GaugeMetricFamily("bai_manager_agent_slots_capacity",
                                "What an alive agent offers, per slot type (mem in bytes)",
                                labels=["agent", "resource_group", "slot"])
        used = GaugeMetricFamily("bai_manager_agent_slots_used",
                                 "What sessions hold on an alive agent, per slot type",
                                 labels=["agent", "resource_group", "slot"])
        for agent, group, capacity, occupied in snap["slots"]:
            for slot in sorted(set(capacity) | set(occupied)):
                cap.add_metric([agent, group, slot], float(capacity.get(slot, 0)))
                used.add_metric([agent, group, slot], float(occupied.get(slot, 0)))
        yield cap
        yield used


class ManagerMetrics:
    def __init__(self, root: ManagerRoot) -> None:
        self.root = root
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = HttpMetrics(self.registry, "bai_manager")
        self.pass_seconds = Histogram(
            "bai_manager_scheduler_pass_duration_seconds",
            "Time of one scheduling pass (read, decide, write)", buckets=PASS_BUCKETS,
            registry=self.registry)
        self.placements = Counter(
            "bai_manager_scheduler_placements", "Sessions the scheduler placed on an agent",
            registry=self.registry)
        self.registry.register(_State(self))
        self.snapshot: dict[str, Any] | None = None
        self._refresh_lock = asyncio.Lock()

    def pass_done(self, seconds: float, placed: int) -> None:
        self.pass_seconds.observe(seconds)
        if placed:
            self.placements.inc(placed)

    async def refresh(self) -> None:
        """Read the state gauges; on a database error they are left out and
        ``bai_manager_database_up`` is 0."""
        async with self._refresh_lock:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT * 2):
                    self.snapshot = await self._read()
            except Exception as e:  # the scrape still answers, without the database's part
                log.warning("metrics: reading the database failed: %s", e)
                self.snapshot = None

    async def _read(self) -> dict[str, Any]:
        now = utcnow()
        async with self.root.store.connect() as conn:
            by_status = (await conn.execute(
                sa.select(sessions.c.status, sessions.c.scaling_group, sa.func.count())
                .group_by(sessions.c.status, sessions.c.scaling_group))).all()
            pending = (await conn.execute(
                sa.select(sessions.c.scaling_group, sa.func.count(), sa.func.min(sessions.c.created_at))
                .where(sessions.c.status == "PENDING").group_by(sessions.c.scaling_group))).all()
            agent_status = (await conn.execute(
                sa.select(agents.c.status, sa.func.count()).group_by(agents.c.status))).all()
            alive = (await conn.execute(
                sa.select(agents.c.id, agents.c.scaling_group, agents.c.available_slots,
                          agents.c.occupied_slots).where(agents.c.status == "ALIVE"))).all()
        waits = {}
        for group, n, first in pending:
            first = _aware(first)
            waits[group] = (n, max((now - first).total_seconds(), 0.0) if first else 0.0)
        return {
            "sessions": {(s, g): n for s, g, n in by_status},
            "pending": waits,
            "agents": {s: n for s, n in agent_status},
            "slots": [(aid, g, ResourceSlot.from_json(cap or {}), ResourceSlot.from_json(occ or {}))
                      for aid, g, cap, occ in alive],
        }

    # -- readiness ----------------------------------------------------------------------------

    async def checks(self) -> dict[str, str]:
        """``ok`` or what is wrong, per dependency: database, event bus, scheduler loop."""
        out: dict[str, str] = {}
        out["database"] = await _check(self._database)
        out["event_bus"] = await _check(self._bus)
        out["scheduler"] = self._scheduler()
        return out

    async def _database(self) -> None:
        async with self.root.store.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def _bus(self) -> None:
        ping = getattr(self.root.bus, "ping", None)
        if ping is not None:
            await ping()

    def _scheduler(self) -> str:
        sched = self.root.scheduler
        task = getattr(self.root, "scheduler_task", None)
        if task is None or task.done():
            return "not running"
        # the loop waits for a kick or its timer, or runs a pass; allow for long passes (and a
        # late timer) under load
        limit = max(10 * self.root.settings.schedule_interval, 60.0)
        now = time.monotonic()
        waits = sched.sleeping_until
        if (now - sched.last_tick > limit) if waits is None else (now - waits > limit):
            return f"no pass began for more than {limit:.0f} s"
        return "ok"


async def _check(probe) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe()
    except TimeoutError:
        return "timed out"
    except Exception as e:
        log.warning("readiness check %s failed: %s", probe.__name__, e)
        return "unreachable"
    return "ok"


def _aware(value: Any) -> Any:
    """SQLite answers min() of a timestamp column as text: a datetime with its zone."""
    if isinstance(value, str):
        from datetime import datetime, timezone

        value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
    return value
