"""The scheduler's decision as it was before the fast paths (commit b3a46f2): the reference
that ``test_scheduler_equivalence.py`` compares ``bai.manager.scheduler.decide`` with.

Straightforward on purpose: every predicate checked for every session (every limit summed),
every agent scored for every placement, DRF's next key found by recomputing every share. Do
not optimise it. The helpers the fast paths left alone are imported from the real module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from bai.common.resources import ResourceSlot
from bai.manager.scheduler.decision import (  # helpers the fast paths did not change
    AgentView,
    Assignment,
    Decision,
    PendingSession,
    SchedulingInput,
    Wait,
    _estimate,
    _fits,
    _holder,
    _max_free,
    _over_limit,
    _score,
    _shortfall_msg,
    _timelines,
    fmt_amount,
)

ZERO = Decimal(0)


# -- ordering --------------------------------------------------------------------------------


def _order(pending: Sequence[PendingSession], policy: str, inp: SchedulingInput,
           capacity: ResourceSlot) -> list[PendingSession]:
    fifo = sorted(pending, key=lambda p: (p.created_at, str(p.id)))
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

    out: list[PendingSession] = []
    heads = {k: 0 for k in by_key}
    while heads:
        key = min(heads, key=lambda k: (share(k), by_key[k][heads[k]].created_at, k))
        p = by_key[key][heads[key]]
        out.append(p)
        usage[key] = usage[key] + p.requested
        heads[key] += 1
        if heads[key] >= len(by_key[key]):
            del heads[key]
    return out


# -- predicates ------------------------------------------------------------------------------


def _check_predicates(p: PendingSession, inp: SchedulingInput,
                      kp_extra: dict[str, tuple[int, ResourceSlot]],
                      extra_group: dict[Any, ResourceSlot], extra_domain: dict[str, ResourceSlot],
                      ) -> tuple[str, str, dict] | tuple[str, str, None] | None:
    """None when every predicate passes; else (code, msg, details); code "cancel" cancels."""
    if p.starts_at is not None and p.starts_at > inp.now:
        return "starts-at", f"scheduled to start at {p.starts_at.isoformat()}", {
            "starts_at": p.starts_at.isoformat()}
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
        n_extra, slots_extra = kp_extra.get(p.access_key, (0, ResourceSlot()))
        if kp.max_concurrent_sessions > 0 and kp.concurrent + n_extra >= kp.max_concurrent_sessions:
            return "concurrency-limit", (
                f"keypair policy {kp.policy_name} allows {kp.max_concurrent_sessions} concurrent "
                f"session(s); {kp.concurrent + n_extra} running"), {"policy": kp.policy_name}
        over = _over_limit(kp.total_resource_slots, kp.occupied + slots_extra, p.requested)
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
            over = _over_limit(limit, used + extra.get(key, ResourceSlot()), p.requested)
            if over:
                slot, want, left = over
                return f"{what}-resource-limit", (
                    f"{what} limit on {slot}: requested {fmt_amount(slot, want)}, "
                    f"{fmt_amount(slot, left)} left under the limit"), {"slot": slot}
    return None


# -- placement -------------------------------------------------------------------------------


def _pick_agent(request: ResourceSlot, agents: Iterable[AgentView], strategy: str,
                free: dict[str, ResourceSlot]) -> AgentView | None:
    best, best_key = None, None
    for a in agents:
        f = free[a.id]
        if not _fits(request, f):
            continue
        extras, left = _score(f - request, request)
        key = (extras, left) if strategy != "dispersed" else (extras, tuple(-x for x in left))
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best


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

    for sgroup in sorted(by_group):
        group_agents = [a for a in inp.agents
                        if a.scaling_group == sgroup and a.alive and a.schedulable]
        capacity = ResourceSlot.total(a.capacity for a in group_agents)
        order = _order(by_group[sgroup], inp.policies.get(sgroup, "fifo"), inp, capacity)
        strategy = inp.strategies.get(sgroup, "concentrated")
        # Cheap rejection: the most free any agent has, per slot (recomputed after placements).
        max_free = _max_free(group_agents, free)
        reserved: str | None = None  # agent held for the oldest blocked session
        head: uuid.UUID | None = None  # that session
        placed: list[tuple[PendingSession, str]] = []
        blocked: list[PendingSession] = []  # waiting for slots, in queue order
        # Sessions with the same request get the same verdict until something is placed:
        # this keeps a pass over thousands of waiting sessions linear and cheap.
        verdicts: dict[tuple, tuple[str, str, dict]] = {}
        position = 0
        for p in order:
            position += 1
            verdict = _check_predicates(p, inp, kp_extra, extra_group, extra_domain)
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
            req_key = tuple(sorted(p.requested.items()))
            cached = verdicts.get(req_key)
            if cached is not None:
                code, msg, details = cached
                out.waits[p.id] = Wait(p.id, code, msg, position, details)
                blocked.append(p)
                continue
            candidates = [a for a in group_agents if a.id != reserved]
            agent = None
            if _fits(p.requested, max_free):
                agent = _pick_agent(p.requested, candidates, strategy, free)
            if agent is not None:
                out.assignments.append(Assignment(p.id, agent.id, agent.address))
                placed.append((p, agent.id))
                free[agent.id] = free[agent.id] - p.requested
                max_free = _max_free(group_agents, free)
                verdicts.clear()
                n, slots = kp_extra.get(p.access_key, (0, ResourceSlot()))
                kp_extra[p.access_key] = (n + 1, slots + p.requested)
                extra_group[p.group_id] = extra_group.get(p.group_id, ResourceSlot()) + p.requested
                extra_domain[p.domain_name] = (
                    extra_domain.get(p.domain_name, ResourceSlot()) + p.requested)
                position -= 1  # it leaves the queue
                continue
            if not group_agents:
                out.waits[p.id] = Wait(p.id, "no-agents",
                                       f"no alive agent in scaling group {sgroup}", position)
                continue
            blocked.append(p)
            if reserved is None:
                holder = _holder(p.requested, group_agents, free,
                                 _timelines(inp, group_agents, free, placed))
                if holder is not None:
                    reserved, head = holder.id, p.id
                    msg, details = _shortfall_msg(p.requested, [holder], free)
                    out.waits[p.id] = Wait(p.id, "insufficient-resources", msg, position,
                                           {**details, "reserved_agent": holder.id})
                    continue
            elif reserved is not None and _fits(p.requested, free[reserved]):
                verdicts[req_key] = ("waiting-for-earlier-session",
                                     f"{reserved} is held for an earlier session that needs it",
                                     {"reserved_agent": reserved})
                out.waits[p.id] = Wait(p.id, *verdicts[req_key][:2], position, verdicts[req_key][2])
                continue
            msg, details = _shortfall_msg(p.requested, group_agents, free)
            verdicts[req_key] = ("insufficient-resources", msg, details)
            out.waits[p.id] = Wait(p.id, "insufficient-resources", msg, position, details)
        if blocked and group_agents:
            _estimate(out, inp, blocked, group_agents, free, placed, head, reserved)
    return out
