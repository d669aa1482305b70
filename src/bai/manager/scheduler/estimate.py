"""Estimated start times of waiting sessions. Pure.

The model: a session that waits for slots can start at the earliest time at which some agent
that can hold it has enough free slots *and keeps them*, given what is known about the future:

* the slots free now (after this pass's placements);
* **known releases**: the time each occupying session is expected to give its slots back. The
  loader (``services.scheduling``) knows three kinds: an interactive session with an idle
  timeout ends at ``last_activity_at + idle_timeout`` (plus the idle checker's interval) if it
  stays idle; a TERMINATING session releases at once; a session placed in this pass ends one
  idle timeout after it starts. Batch sessions (no time limit) and sessions without an idle
  timeout never release in the model, so what waits only for them has no estimate ("unknown");
* **the queue ahead**: waiting sessions are simulated in queue order, each occupying, from its
  own estimated start on, the agent where it starts earliest (the oldest blocked session on the
  agent the scheduler holds for it). Simulated sessions never release (conservative).

Why the oldest blocked session's estimate holds: the scheduler holds one agent for it and backfill
never places anything there, so that agent's free slots only grow; and the scheduler chooses the
held agent as the one with the earliest estimate. Its estimate can only move earlier, unless a
release comes later than known (someone used an idle session, an agent was lost).

Only the first ``LIMIT`` blocked sessions of a scaling group get an estimate; the rest say
"unknown" (a pass over thousands of waiting sessions stays cheap, and an estimate that deep in a
queue would mean little).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from bai.common.resources import ResourceSlot

ZERO = Decimal(0)
#: blocked sessions per scaling group that get an estimate
LIMIT = 100


class Timeline:
    """One agent's free slots from now on: free now, plus known releases, minus simulated
    starts. A step function kept as ``(time, delta)`` points sorted by time."""

    def __init__(self, now: datetime, free_now: ResourceSlot,
                 releases: Iterable[tuple[datetime, ResourceSlot]] = ()):
        self.now = now
        self.free_now = ResourceSlot(free_now)
        self.points: list[tuple[datetime, int, ResourceSlot]] = []
        self._seq = 0
        #: request shape -> answer (most waiting sessions share a few shapes)
        self._answers: dict[tuple, datetime | None] = {}
        for at, slots in releases:
            self._add(at, ResourceSlot(slots))

    def _add(self, at: datetime, delta: ResourceSlot) -> None:
        self._seq += 1  # ties keep insertion order; the delta is never compared
        self._answers.clear()
        insort(self.points, (max(at, self.now), self._seq, delta))

    def earliest(self, request: Mapping[str, Decimal]) -> datetime | None:
        """The first time from which the request fits for good, or None if it never does."""
        wanted = {k: v for k, v in request.items() if v > 0}
        return self._earliest_cached(tuple(sorted(wanted.items())), wanted)

    def _earliest_cached(self, key: tuple, wanted: Mapping[str, Decimal]) -> datetime | None:
        try:
            return self._answers[key]
        except KeyError:
            answer = self._answers[key] = self._earliest(wanted) if wanted else self.now
            return answer

    def _earliest(self, wanted: Mapping[str, Decimal]) -> datetime | None:        # free(t) at each breakpoint, then the latest breakpoint after which it never dips
        # below the request again (the suffix minimum).
        times = [self.now]
        levels = [{k: self.free_now.get(k, ZERO) for k in wanted}]
        for at, _, delta in self.points:
            cur = dict(levels[-1])
            for k in wanted:
                cur[k] += delta.get(k, ZERO)
            if at == times[-1]:
                levels[-1] = cur
            else:
                times.append(at)
                levels.append(cur)
        answer = None
        for t, level in zip(reversed(times), reversed(levels)):
            if all(level[k] >= v for k, v in wanted.items()):
                answer = t
            else:
                break
        return answer

    def occupy(self, at: datetime, request: ResourceSlot) -> None:
        """A simulated start: ``request`` is taken from ``at`` on, for good."""
        self._add(at, ResourceSlot({k: -v for k, v in request.items()}))


def earliest_on(timelines: Mapping[str, Timeline], agent_ids: Iterable[str],
                request: ResourceSlot) -> tuple[str, datetime] | None:
    """The agent (of ``agent_ids``) where the request can start first, and when."""
    best: tuple[str, datetime] | None = None
    wanted = {k: v for k, v in request.items() if v > 0}
    key = tuple(sorted(wanted.items()))
    for aid in agent_ids:
        t = timelines[aid]._earliest_cached(key, wanted)
        if t is not None and (best is None or (t, aid) < (best[1], best[0])):
            best = (aid, t)
    return best
