"""The agent's Prometheus metrics and its readiness (docs/operations.md lists each metric).

Kernels by status, slot capacity and use, and each running kernel's CPU time and memory are
read when scraped (``refresh()`` asks the backend for every running kernel's stats at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bai.ops.http import HttpMetrics

if TYPE_CHECKING:
    from bai.agent.server import Agent

log = logging.getLogger(__name__)

STATS_TIMEOUT = 5.0


class _State:
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        agent = self.m.agent
        registry = agent.registry
        k = GaugeMetricFamily("bai_agent_kernels", "Kernels on this agent by status",
                              labels=["status"])
        counts: dict[str, int] = {}
        for rec in list(registry.records.values()):
            counts[rec.status] = counts.get(rec.status, 0) + 1
        for status, n in sorted(counts.items()):
            k.add_metric([status], n)
        yield k
        cap = GaugeMetricFamily("bai_agent_slots_capacity",
                                "What this agent offers, per slot type (mem in bytes)",
                                labels=["slot"])
        used = GaugeMetricFamily("bai_agent_slots_used",
                                 "What its kernels hold, per slot type", labels=["slot"])
        occupied = registry.occupied()
        for slot in sorted(set(agent.capacity) | set(occupied)):
            cap.add_metric([slot], float(agent.capacity.get(slot, 0)))
            used.add_metric([slot], float(occupied.get(slot, 0)))
        yield cap
        yield used
        cpu = CounterMetricFamily("bai_agent_kernel_cpu_seconds",
                                  "CPU time a running kernel has used",
                                  labels=["kernel_id", "session_id"])
        mem = GaugeMetricFamily("bai_agent_kernel_memory_bytes",
                                "Memory a running kernel uses now",
                                labels=["kernel_id", "session_id"])
        for kid, sid, stats in self.m.kernel_stats:
            if "cpu_used" in stats:
                cpu.add_metric([kid, sid], float(stats["cpu_used"]) / 1000)
            if "mem_cur_bytes" in stats:
                mem.add_metric([kid, sid], float(stats["mem_cur_bytes"]))
        yield cpu
        yield mem
        reg = GaugeMetricFamily("bai_agent_registered",
                                "1 when a manager answered the last heartbeat")
        reg.add_metric([], 1 if self.m.registered() else 0)
        yield reg


class AgentMetrics:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = HttpMetrics(self.registry, "bai_agent")
        self.registry.register(_State(self))
        self.kernel_stats: list[tuple[str, str, dict[str, Any]]] = []
        #: time.monotonic() of the last heartbeat a manager accepted
        self.last_heartbeat_ok: float | None = None

    def heartbeat_answered(self, answer: dict[str, Any] | None) -> None:
        if answer is not None and "rejected" not in answer:
            self.last_heartbeat_ok = time.monotonic()

    def registered(self) -> bool:
        if self.last_heartbeat_ok is None:
            return False
        limit = max(3 * self.agent.beat_every, 10.0)
        return time.monotonic() - self.last_heartbeat_ok <= limit

    async def refresh(self) -> None:
        running = [r for r in list(self.agent.registry.records.values())
                   if r.status == "RUNNING" and r.instance is not None]

        async def one(rec) -> tuple[str, str, dict[str, Any]] | None:
            try:
                async with asyncio.timeout(STATS_TIMEOUT):
                    stats = await self.agent.backend.stats(rec.kernel_id)
            except Exception as e:  # gone meanwhile, or the backend is slow: leave it out
                log.debug("metrics: stats of kernel %s: %s", rec.kernel_id, e)
                return None
            return rec.kernel_id, rec.spec.session_id, stats

        found = await asyncio.gather(*(one(r) for r in running))
        self.kernel_stats = [x for x in found if x is not None]

    def checks(self) -> dict[str, str]:
        return {"registered": "ok" if self.registered() else "no manager answered recently"}
