"""The scheduler's decision: pending sessions + agents -> placements and reasons. Pure.

For each scaling group, pending sessions are taken in policy order (``fifo`` oldest first,
``lifo`` newest first, ``drf`` the user with the smallest dominant share first). Each one is
checked in turn:

1. predicates: ``starts_at`` in the future (``starts-at``), dependencies not finished
   (``dependencies``; a failed or cancelled dependency *cancels* the dependent instead), the
   keypair policy's ``max_concurrent_sessions`` (``concurrency-limit``) and
   ``total_resource_slots`` (``keypair-resource-limit``), group and domain totals;
2. placement: an ALIVE, schedulable agent of the group whose free slots cover the request in
   every slot, chosen by the group's strategy (``concentrated``: least free left;
   ``dispersed``: most free left). No agent fits -> ``insufficient-resources``, naming the slot,
   the amount requested and the most that is free.

No starvation: the first session in policy order that passes its predicates but does not fit
*reserves* the agent that could hold it soonest (the earliest estimated start, see
``estimate.py``; without known releases, the one with the most free already). Later, smaller
sessions may backfill only on other agents, so they never delay it. Every pending session gets a
reason code, a human message, its position in the queue and an estimated start time (or
"unknown"); ``Wait.info`` is the one-line ``status_info``.
"""

from __future__ import annotations

import heapq
import uuid
from bisect import insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any

from bai.common.resources import ResourceSlot, format_size
from bai.manager.scheduler.estimate import LIMIT as ESTIMATE_LIMIT
from bai.manager.scheduler.estimate import Timeline, earliest_on

ZERO = Decimal(0)
#: "nothing extra yet" (shared: never changed in place)
_NONE_EXTRA: tuple[int, ResourceSlot] = (0, ResourceSlot())


@dataclass(slots=True)
class PendingSession:
    """A waiting session as the scheduler sees it. Never changed once made (the queue cache
    shares them between passes; ``dataclasses.replace`` makes a changed copy); not frozen only
    because a frozen dataclass takes ~4x as long to make, 10,000 at a time. Slotted: the
    queue cache keeps one per waiting session, ~50 bytes less each than with a ``__dict__``."""

    id: uuid.UUID
    name: str
    access_key: str
    user_id: uuid.UUID | None
    created_at: datetime
    requested: ResourceSlot
    scaling_group: str = "default"
    group_id: uuid.UUID | None = None
    domain_name: str = "default"
    starts_at: datetime | None = None
    dependencies: tuple[uuid.UUID, ...] = ()
    #: SessionType value and idle timeout (seconds, 0 = none): when it would end once started
    kind: str = "INTERACTIVE"
    idle_timeout: float = 0


@dataclass
class AgentView:
    id: str
    capacity: ResourceSlot
    occupied: ResourceSlot
    scaling_group: str = "default"
    alive: bool = True
    schedulable: bool = True
    address: str = ""

    @property
    def free(self) -> ResourceSlot:
        return self.capacity - self.occupied


@dataclass(frozen=True)
class DependencyView:
    id: uuid.UUID
    name: str
    status: str
    result: str = "UNDEFINED"
    kind: str = "INTERACTIVE"


@dataclass
class KeypairLimits:
    """A keypair's policy and what its live sessions use now."""

    max_concurrent_sessions: int = 0  # 0 = unlimited
    total_resource_slots: ResourceSlot = field(default_factory=ResourceSlot)  # {} = unlimited
    policy_name: str = "default"
    concurrent: int = 0
    occupied: ResourceSlot = field(default_factory=ResourceSlot)


@dataclass
class SchedulingInput:
    pending: Sequence[PendingSession]
    agents: Sequence[AgentView]
    now: datetime
    #: scaling group -> "fifo" | "lifo" | "drf"
    policies: Mapping[str, str] = field(default_factory=dict)
    #: scaling group -> "concentrated" | "dispersed"
    strategies: Mapping[str, str] = field(default_factory=dict)
    keypairs: Mapping[str, KeypairLimits] = field(default_factory=dict)
    dependencies: Mapping[uuid.UUID, DependencyView] = field(default_factory=dict)
    #: group id / domain name -> (limit, occupied now); absent = unlimited
    group_limits: Mapping[Any, tuple[ResourceSlot, ResourceSlot]] = field(default_factory=dict)
    domain_limits: Mapping[str, tuple[ResourceSlot, ResourceSlot]] = field(default_factory=dict)
    #: access key -> slots its sessions occupy now (DRF's dominant share)
    usage_by_key: Mapping[str, ResourceSlot] = field(default_factory=dict)
    #: session id -> its status_info now (lets the writer skip rows that do not change)
    current_info: Mapping[uuid.UUID, str | None] = field(default_factory=dict)
    #: agent id -> [(when, slots)]: known future releases of what occupies it (``estimate.py``)
    releases: Mapping[str, Sequence[tuple[datetime, ResourceSlot]]] = field(default_factory=dict)
    #: seconds the idle checker may take to notice an expired idle timeout
    idle_slack: float = 0


@dataclass(frozen=True)
class Assignment:
    session_id: uuid.UUID
    agent_id: str
    address: str


class _kept:
    """A read-only attribute made on its first read and then kept in the instance's
    ``__dict__``, where later reads find it without a call (``functools.cached_property``
    without the lock it takes on every first read in Python 3.11)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass
class Wait:
    """Why a session waits, where and until when. Never changed once made (not frozen: a
    pass makes one per waiting session, and a frozen dataclass takes ~4x as long to make)."""

    session_id: uuid.UUID
    code: str
    msg: str
    position: int
    details: Mapping[str, Any] = field(default_factory=dict)
    estimated_start: datetime | None = None

    @_kept
    def info(self) -> str:
        """The ``status_info`` line:
        ``code: message (position N in queue, estimated start <iso>|unknown)``.
        Made once per ``Wait`` (the writer compares it with the stored line, then writes it)."""
        return (f"{self.code}: {self.msg} (position {self.position} in queue, "
                f"estimated start {self.estimated_start_text})")

    @property
    def estimated_start_text(self) -> str:
        est = self.estimated_start
        return est.isoformat(timespec="seconds") if est is not None else "unknown"

    def status_data(self) -> dict[str, Any]:
        est = self.estimated_start
        return {
            "scheduler": {
                "reason": self.code,
                "msg": self.msg,
                "position": self.position,
                "estimated_start": est.isoformat(timespec="seconds") if est else None,
                **self.details,
            }
        }


@dataclass
class Decision:
    assignments: list[Assignment] = field(default_factory=list)
    waits: dict[uuid.UUID, Wait] = field(default_factory=dict)
    #: (session id, reason) for sessions that can never start (a dependency failed)
    cancels: list[tuple[uuid.UUID, str]] = field(default_factory=list)


def fmt_amount(slot: str, value: Decimal) -> str:
    if slot == "mem" or slot.endswith(".mem"):
        return format_size(value) if value > 0 else "0"
    return format(value.normalize(), "f")


# -- ordering --------------------------------------------------------------------------------


def _fifo_key(p: PendingSession) -> tuple:
    return (p.created_at, str(p.id))


#: the same order for UUID ids (a UUID's canonical text orders as its integer does), made in C
_fifo_key_uuid = attrgetter("created_at", "id.int")


def _order(pending: Sequence[PendingSession], policy: str, inp: SchedulingInput,
           capacity: ResourceSlot) -> list[PendingSession]:
    try:
        fifo = sorted(pending, key=_fifo_key_uuid)
    except AttributeError:  # ids that are not UUIDs
        fifo = sorted(pending, key=_fifo_key)
    if policy == "lifo":
        return fifo[::-1]
    if policy != "drf":
        return fifo
    # DRF: repeatedly take the oldest session of the key with the smallest dominant share,
    # counting what that key already occupies plus what it is about to get in this order.
    by_key: dict[str, list[PendingSession]] = {}
    for p in fifo:
        by_key.setdefault(p.access_key, []).append(p)
    usage = {k: ResourceSlot(inp.usage_by_key.get(k, ResourceSlot())) for k in by_key}

    def share(key: str) -> Decimal:
        best = ZERO
        for slot, used in usage[key].items():
            cap = capacity.get(slot, ZERO)
            if cap > 0:
                best = max(best, used / cap)
        return best

    # Only the key just taken changes its share and head: a heap of (share, head's creation,
    # key) picks the same key as scanning every key each time (keys are unique: no ties).
    out: list[PendingSession] = []
    heap = [(share(k), queue[0].created_at, k) for k, queue in by_key.items()]
    heapq.heapify(heap)
    heads = dict.fromkeys(by_key, 0)
    while heap:
        _, _, key = heapq.heappop(heap)
        queue = by_key[key]
        p = queue[heads[key]]
        out.append(p)
        usage[key] = usage[key] + p.requested
        heads[key] += 1
        if heads[key] < len(queue):
            heapq.heappush(heap, (share(key), queue[heads[key]].created_at, key))
    return out


# -- predicates ------------------------------------------------------------------------------


def _over_limit(limit: Mapping[str, Decimal], occupied: Mapping[str, Decimal],
                request: Mapping[str, Decimal]) -> tuple[str, Decimal, Decimal] | None:
    for slot, cap in limit.items():
        want = request.get(slot, ZERO)
        if want <= 0:
            continue
        used = occupied.get(slot, ZERO)
        if used + want > cap:
            return slot, want, max(cap - used, ZERO)
    return None


def starts_at_verdict(starts_at: datetime) -> tuple[str, str, dict]:
    """The verdict on a session whose ``starts_at`` is ahead: (code, msg, details)."""
    text = starts_at.isoformat()
    return "starts-at", f"scheduled to start at {text}", {"starts_at": text}


def starts_at_wait(session_id: uuid.UUID, starts_at: datetime, position: int) -> Wait:
    """The ``Wait`` a pass makes for a session at ``position`` whose ``starts_at`` is ahead
    (what the create of such a session writes as its first line, see ``first_lines``)."""
    code, msg, details = starts_at_verdict(starts_at)
    return Wait(session_id, code, msg, position, details, starts_at)


def _check_predicates(p: PendingSession, inp: SchedulingInput,
                      kp_extra: dict[str, tuple[int, ResourceSlot]],
                      extra_group: dict[Any, ResourceSlot], extra_domain: dict[str, ResourceSlot],
                      ) -> tuple[str, str, dict] | tuple[str, str, None] | None:
    """None when every predicate passes; else (code, msg, details); code "cancel" cancels."""
    if p.starts_at is not None and p.starts_at > inp.now:
        return starts_at_verdict(p.starts_at)
    waiting = []
    for dep_id in p.dependencies:
        dep = inp.dependencies.get(dep_id)
        if dep is None:
            continue  # a deleted dependency cannot hold anyone back
        # a batch dependency must succeed; one that ended otherwise (failed, cancelled, errored,
        # or destroyed before its task finished) can never satisfy the dependent
        ended_badly = (dep.status in ("CANCELLED", "ERROR") or dep.result == "FAILURE"
                       or (dep.kind == "BATCH" and dep.status == "TERMINATED"
                           and dep.result != "SUCCESS"))
        if ended_badly:
            what = {"CANCELLED": "was cancelled", "ERROR": "ended in ERROR"}.get(
                dep.status, "failed" if dep.result == "FAILURE" else "ended without success")
            return "cancel", f"dependency-failed: dependency {dep.name} ({dep.id}) {what}", None
        if dep.status != "TERMINATED":
            waiting.append(dep)
    if waiting:
        names = ", ".join(f"{d.name} ({d.status})" for d in waiting)
        return "dependencies", f"waiting for dependencies to finish: {names}", {
            "waiting_for": [str(d.id) for d in waiting]}
    kp = inp.keypairs.get(p.access_key)
    if kp is not None:
        n_extra, slots_extra = kp_extra.get(p.access_key, _NONE_EXTRA)
        if kp.max_concurrent_sessions > 0 and kp.concurrent + n_extra >= kp.max_concurrent_sessions:
            return "concurrency-limit", (
                f"keypair policy {kp.policy_name} allows {kp.max_concurrent_sessions} concurrent "
                f"session(s); {kp.concurrent + n_extra} running"), {"policy": kp.policy_name}
        over = (_over_limit(kp.total_resource_slots, kp.occupied + slots_extra, p.requested)
                if kp.total_resource_slots else None)
        if over:
            slot, want, left = over
            return "keypair-resource-limit", (
                f"keypair policy {kp.policy_name} limits {slot}: requested "
                f"{fmt_amount(slot, want)}, {fmt_amount(slot, left)} left under the limit"), {
                "policy": kp.policy_name, "slot": slot}
    for key, limits, extra, what in (
        (p.group_id, inp.group_limits, extra_group, "group"),
        (p.domain_name, inp.domain_limits, extra_domain, "domain"),
    ):
        if key in limits:
            limit, used = limits[key]
            over = _over_limit(limit, used + extra.get(key, _NONE_EXTRA[1]), p.requested)
            if over:
                slot, want, left = over
                return f"{what}-resource-limit", (
                    f"{what} limit on {slot}: requested {fmt_amount(slot, want)}, "
                    f"{fmt_amount(slot, left)} left under the limit"), {"slot": slot}
    return None


# -- placement -------------------------------------------------------------------------------


def _fits(request: Mapping[str, Decimal], free: Mapping[str, Decimal]) -> bool:
    for k, v in request.items():
        if v > 0 and v > free.get(k, ZERO):
            return False
    return True


def _score(free_after: Mapping[str, Decimal], request: Mapping[str, Decimal]) -> tuple:
    # Prefer agents without slots the session does not use (keep GPUs for GPU work), then by
    # what is left in the requested slots.
    extras = sum(1 for k, v in free_after.items() if v > 0 and request.get(k, ZERO) <= 0 and "." in k)
    return (extras, tuple(free_after.get(k, ZERO) for k in sorted(request)))


def _shortfall_msg(request: ResourceSlot, agents: Sequence[AgentView],
                   free: dict[str, ResourceSlot]) -> tuple[str, dict]:
    """Name the slot that blocks, against the agent that comes closest."""
    best = None
    for a in agents:
        short = {k: (v, free[a.id].get(k, ZERO)) for k, v in request.items()
                 if v > 0 and v > free[a.id].get(k, ZERO)}
        key = (len(short), sum((v - f) / v for v, f in short.values()))
        if best is None or key < best[0]:
            best = (key, a, short)
    if best is None:
        return "no schedulable agent in this scaling group", {}
    _, agent, short = best
    parts = [f"{slot} requested {fmt_amount(slot, want)}, free {fmt_amount(slot, have)}"
             for slot, (want, have) in sorted(short.items())]
    return "; ".join(parts) + f" on {agent.id}", {
        "agent": agent.id,
        "shortfall": {s: {"requested": str(w), "free": str(h)} for s, (w, h) in short.items()},
    }


def _canon(free: Mapping[str, Decimal]) -> tuple:
    """Free slots as a hashable value: equal for amounts that compare equal (absent = 0)."""
    return tuple(sorted((k, v) for k, v in free.items() if v != 0))


class _Pool:
    """A scaling group's agents bucketed by their free slots.

    Agents with equal free slots score alike (``_score``), so the first of them (in the
    group's order) stands for the rest: a pick scores each distinct free amount once instead
    of every agent. A fleet of many agents of a few shapes (the usual one) then places a
    session in a few steps, however many agents it has. ``free`` (shared with ``decide``)
    keeps every agent's own value.
    """

    def __init__(self, agents: Sequence[AgentView], free: dict[str, ResourceSlot]) -> None:
        self.agents = agents
        self.free = free
        self.index = {a.id: i for i, a in enumerate(agents)}
        #: free slots -> indexes of the agents with them, ascending
        self.buckets: dict[tuple, list[int]] = {}
        for i, a in enumerate(agents):
            self.buckets.setdefault(_canon(free[a.id]), []).append(i)
        self._max: ResourceSlot | None = None

    def pick(self, request: ResourceSlot, strategy: str, exclude: str | None) -> AgentView | None:
        """The agent to place ``request`` on, of all but ``exclude``: the first (in the group's
        order) of those with the best score (``concentrated``: least left in the requested
        slots; ``dispersed``: most), or None when none has room."""
        skip = self.index.get(exclude, -1) if exclude is not None else -1
        best: tuple | None = None
        for members in self.buckets.values():
            i = members[0]
            if i == skip:
                if len(members) == 1:
                    continue
                i = members[1]
            f = self.free[self.agents[i].id]
            if not _fits(request, f):
                continue
            extras, left = _score(f - request, request)
            key = (extras, left) if strategy != "dispersed" else (extras, tuple(-x for x in left))
            if best is None or (key, i) < best:
                best = (key, i)
        return None if best is None else self.agents[best[1]]

    def take(self, agent_id: str, request: ResourceSlot) -> None:
        """A placement: ``request`` leaves the agent's free slots."""
        i = self.index[agent_id]
        old = _canon(self.free[agent_id])
        members = self.buckets[old]
        members.remove(i)
        if not members:
            del self.buckets[old]
        self.free[agent_id] = self.free[agent_id] - request
        insort(self.buckets.setdefault(_canon(self.free[agent_id]), []), i)
        self._max = None

    def max_free(self) -> ResourceSlot:
        """The most any agent has free, per slot (``_max_free`` of the group)."""
        if self._max is None:
            self._max = _max_free(
                [self.agents[members[0]] for members in self.buckets.values()], self.free)
        return self._max


# -- the decision ----------------------------------------------------------------------------


def decide(inp: SchedulingInput) -> Decision:
    """Place what fits, explain the rest. Deterministic for equal input."""
    out = Decision()
    by_group: dict[str, list[PendingSession]] = {}
    for p in inp.pending:
        by_group.setdefault(p.scaling_group, []).append(p)
    free: dict[str, ResourceSlot] = {a.id: a.free for a in inp.agents}
    kp_extra: dict[str, tuple[int, ResourceSlot]] = {}
    extra_group: dict[Any, ResourceSlot] = {}
    extra_domain: dict[str, ResourceSlot] = {}
    #: starts_at -> its verdict (``starts_at_verdict``)
    later: dict[datetime, tuple[str, str, dict]] = {}

    for sgroup in sorted(by_group):
        group_agents = [a for a in inp.agents
                        if a.scaling_group == sgroup and a.alive and a.schedulable]
        capacity = ResourceSlot.total(a.capacity for a in group_agents)
        order = _order(by_group[sgroup], inp.policies.get(sgroup, "fifo"), inp, capacity)
        strategy = inp.strategies.get(sgroup, "concentrated")
        # The agents by free slots; its max_free() is the cheap rejection: the most free any
        # agent has, per slot.
        pool = _Pool(group_agents, free)
        reserved: str | None = None  # agent held for the oldest blocked session
        head: uuid.UUID | None = None  # that session
        placed: list[tuple[PendingSession, str]] = []
        blocked: list[PendingSession] = []  # waiting for slots, in queue order
        # Until something is placed, sessions with the same request get the same verdict, and
        # the predicates give the same answer for the same keypair, group, domain and request:
        # this keeps a pass over thousands of waiting sessions linear and cheap.
        verdicts: dict[tuple, tuple[str, str, dict]] = {}
        checked: dict[tuple, Any] = {}
        # id(requested) -> its sorted items (the request objects live as long as ``inp``);
        # sessions of one parsed shape share the object, and the key is built once
        shapes: dict[int, tuple] = {}
        now = inp.now
        position = 0
        for p in order:
            position += 1
            req = p.requested
            req_key = shapes.get(id(req))
            if req_key is None:
                req_key = shapes[id(req)] = tuple(sorted(req.items()))
            if p.starts_at is not None and p.starts_at > now:
                # the first predicate, and the same verdict for the same time (a queue of
                # thousands waiting for later shares a few): two isoformats a session were a
                # third of a pass over 5,000 of them
                verdict = later.get(p.starts_at)
                if verdict is None:
                    verdict = later[p.starts_at] = starts_at_verdict(p.starts_at)
            elif p.dependencies:
                verdict = _check_predicates(p, inp, kp_extra, extra_group, extra_domain)
            else:
                ck = (p.access_key, p.group_id, p.domain_name, id(req_key))
                verdict = checked.get(ck, checked)
                if verdict is checked:
                    verdict = checked[ck] = _check_predicates(
                        p, inp, kp_extra, extra_group, extra_domain)
            if verdict is not None:
                code, msg, details = verdict
                if code == "cancel":
                    out.cancels.append((p.id, msg.split(":", 1)[0]))
                    out.waits[p.id] = Wait(p.id, "dependency-failed", msg.split(": ", 1)[1],
                                           position)
                    position -= 1
                    continue
                est = p.starts_at if code == "starts-at" else None
                out.waits[p.id] = Wait(p.id, code, msg, position, details or {}, est)
                continue
            cached = verdicts.get(req_key)
            if cached is not None:
                code, msg, details = cached
                out.waits[p.id] = Wait(p.id, code, msg, position, details)
                blocked.append(p)
                continue
            agent = None
            if _fits(req, pool.max_free()):
                agent = pool.pick(req, strategy, reserved)
            if agent is not None:
                out.assignments.append(Assignment(p.id, agent.id, agent.address))
                placed.append((p, agent.id))
                pool.take(agent.id, req)
                verdicts.clear()
                checked.clear()
                # what this pass adds, counted only where a limit reads it
                kp = inp.keypairs.get(p.access_key)
                if kp is not None:
                    n, slots = kp_extra.get(p.access_key, _NONE_EXTRA)
                    kp_extra[p.access_key] = (
                        n + 1, slots + req if kp.total_resource_slots else slots)
                if p.group_id in inp.group_limits:
                    extra_group[p.group_id] = extra_group.get(p.group_id, ResourceSlot()) + req
                if p.domain_name in inp.domain_limits:
                    extra_domain[p.domain_name] = (
                        extra_domain.get(p.domain_name, ResourceSlot()) + req)
                position -= 1  # it leaves the queue
                continue
            if not group_agents:
                out.waits[p.id] = Wait(p.id, "no-agents",
                                       f"no alive agent in scaling group {sgroup}", position)
                continue
            blocked.append(p)
            if reserved is None:
                holder = _holder(req, group_agents, free,
                                 _timelines(inp, group_agents, free, placed))
                if holder is not None:
                    reserved, head = holder.id, p.id
                    msg, details = _shortfall_msg(req, [holder], free)
                    out.waits[p.id] = Wait(p.id, "insufficient-resources", msg, position,
                                           {**details, "reserved_agent": holder.id})
                    continue
            elif reserved is not None and _fits(req, free[reserved]):
                verdicts[req_key] = ("waiting-for-earlier-session",
                                     f"{reserved} is held for an earlier session that needs it",
                                     {"reserved_agent": reserved})
                out.waits[p.id] = Wait(p.id, *verdicts[req_key][:2], position, verdicts[req_key][2])
                continue
            msg, details = _shortfall_msg(req, group_agents, free)
            verdicts[req_key] = ("insufficient-resources", msg, details)
            out.waits[p.id] = Wait(p.id, "insufficient-resources", msg, position, details)
        if blocked and group_agents:
            _estimate(out, inp, blocked, group_agents, free, placed, head, reserved)
    return out


def _timelines(inp: SchedulingInput, agents: Sequence[AgentView], free: Mapping[str, ResourceSlot],
               placed: Sequence[tuple[PendingSession, str]]) -> dict[str, Timeline]:
    """Each agent's free slots over time: now, known releases, and when the sessions placed in
    this pass would end if left idle."""
    extra: dict[str, list[tuple[datetime, ResourceSlot]]] = {}
    for p, aid in placed:
        if p.kind == "INTERACTIVE" and p.idle_timeout > 0:
            at = inp.now + timedelta(seconds=p.idle_timeout + inp.idle_slack)
            extra.setdefault(aid, []).append((at, p.requested))
    return {a.id: Timeline(inp.now, free[a.id], [*inp.releases.get(a.id, ()), *extra.get(a.id, ())])
            for a in agents}


def _estimate(out: Decision, inp: SchedulingInput, blocked: Sequence[PendingSession],
              agents: Sequence[AgentView], free: Mapping[str, ResourceSlot],
              placed: Sequence[tuple[PendingSession, str]], head: uuid.UUID | None,
              reserved: str | None) -> None:
    """Estimated starts of the sessions waiting for slots, simulated in queue order."""
    timelines = _timelines(inp, agents, free, placed)
    ids = [a.id for a in agents]
    for p in blocked[:ESTIMATE_LIMIT]:
        best = earliest_on(timelines, [reserved] if p.id == head else ids, p.requested)
        if best is None:
            continue  # waits for something with no known end: "unknown"
        aid, at = best
        timelines[aid].occupy(at, p.requested)
        out.waits[p.id] = replace(out.waits[p.id], estimated_start=at)


def _max_free(agents: Sequence[AgentView], free: Mapping[str, ResourceSlot]) -> ResourceSlot:
    acc = ResourceSlot()
    for a in agents:
        for k, v in free[a.id].items():
            if v > acc.get(k, ZERO):
                acc[k] = v
    return acc


def _holder(request: ResourceSlot, agents: Sequence[AgentView],
            free: Mapping[str, ResourceSlot], timelines: Mapping[str, Timeline]) -> AgentView | None:
    """The agent to hold for a blocked session: where it can start soonest by the known
    releases; without any, one that can hold it at all and is closest now."""
    soonest = earliest_on(timelines, [a.id for a in agents], request)
    if soonest is not None:
        return next(a for a in agents if a.id == soonest[0])
    best, best_key = None, None
    for a in agents:
        if not _fits(request, a.capacity):
            continue
        missing = sum(
            (max(v - free[a.id].get(k, ZERO), ZERO) / v) for k, v in request.items() if v > 0
        )
        key = (missing, a.id)
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best
