"""The admin dashboard's plots: cluster utilisation and queue length over the last hours.

Read back from the sessions table (no sampler to run, so the plots survive restarts and agree
across replicas): a session waited in the queue from ``created_at`` until it was scheduled or
ended (``scheduled_at`` / ``terminated_at``), and held its requested slots from ``scheduled_at``
until ``terminated_at``. Utilisation is what running sessions held over what alive agents offer
now (agents that came and went in the window count at today's capacity). ``series`` is pure:
rows and times in, points out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bai.common.resources import ResourceSlot
from bai.manager.store import tables as t
from bai.manager.store.engine import AsyncConnection

#: points per plot
BUCKETS = 48
MAX_HOURS = 72


def series(rows: Iterable[Mapping[str, Any]], capacity: Mapping[str, Decimal], start: datetime,
           end: datetime, buckets: int = BUCKETS) -> dict[str, Any]:
    """Queue length and per-slot utilisation (0..1) at ``buckets`` evenly spaced times."""
    step = (end - start) / buckets
    times = [start + step * (i + 1) for i in range(buckets)]
    queue = [0] * buckets
    used = {slot: [Decimal(0)] * buckets for slot in capacity}
    for row in rows:
        left_queue = row["scheduled_at"] or row["terminated_at"]  # None: waits still
        held_from = row["scheduled_at"]
        held_to = row["terminated_at"]  # None: holds still
        slots = ResourceSlot.from_json(row["requested_slots"] or {})
        for i, at in enumerate(times):
            if row["created_at"] <= at and (left_queue is None or at < left_queue):
                queue[i] += 1
            if held_from is not None and held_from <= at and (held_to is None or at < held_to):
                for slot in used:
                    used[slot][i] += slots.get(slot, Decimal(0))
    util = {slot: [float(min(v / capacity[slot], Decimal(1))) if capacity[slot] else 0.0
                   for v in vals] for slot, vals in used.items()}
    return {"times": [at.isoformat() for at in times], "queue": queue, "utilisation": util,
            "capacity": {k: str(v) for k, v in capacity.items()}}


async def history(conn: AsyncConnection, hours: float,
                  now: datetime | None = None) -> dict[str, Any]:
    end = now or datetime.now(timezone.utc)
    start = end - timedelta(hours=hours)
    s = t.sessions
    rows = (await conn.execute(
        sa.select(s.c.created_at, s.c.scheduled_at, s.c.terminated_at, s.c.requested_slots)
        .where(s.c.created_at <= end,
               sa.or_(s.c.terminated_at.is_(None), s.c.terminated_at >= start))
    )).mappings().all()
    capacity = ResourceSlot({})
    for (slots,) in (await conn.execute(
            sa.select(t.agents.c.available_slots).where(t.agents.c.status == "ALIVE"))).all():
        capacity = capacity + ResourceSlot.from_json(slots)
    shown = {k: v for k, v in capacity.items() if k in ("cpu", "mem") or "." in k}
    return {"hours": hours, **series(rows, shown, start, end)}
