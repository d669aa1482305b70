"""The fast ``decide`` decides exactly like the straightforward reference (``scheduler_reference``)
on random inputs: the same placements in the same order, the same cancels, and the same
``Wait`` for every waiting session (code, message, position, details, estimate).

The inputs mix everything a pass can see: several scaling groups with FIFO/LIFO/DRF and
concentrated/dispersed, agents dead or unschedulable, decimal and device slots, equal creation
times (ties), future ``starts_at``, dependencies in every state, keypair, group and domain
limits, and known releases (estimates)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_reference import decide as reference_decide

from bai.common.resources import ResourceSlot
from bai.manager.scheduler.decision import (
    AgentView,
    DependencyView,
    KeypairLimits,
    PendingSession,
    SchedulingInput,
    decide,
)

NOW = datetime(2024, 1, 1, 12, tzinfo=UTC)
GIB = 2**30
GROUPS = ("default", "gpu")
KEYS = ("AK1", "AK2", "AK3")
USER_GROUPS = (uuid.UUID(int=1001), uuid.UUID(int=1002))
DOMAINS = ("default", "other")
DEPS = tuple(uuid.UUID(int=5000 + i) for i in range(5))

amount = st.sampled_from(["0", "0.5", "1", "1.5", "2", "3", "4", "8"])
shares = st.sampled_from(["0.1", "0.2", "0.3", "0.5", "1"])
mem = st.sampled_from([0, GIB // 2, GIB, 2 * GIB, 3 * GIB, 8 * GIB])


@st.composite
def slot_sets(draw, big: bool = False) -> ResourceSlot:
    out = ResourceSlot()
    if draw(st.booleans()) or big:
        out["cpu"] = Decimal(draw(amount)) * (4 if big else 1)
    if draw(st.booleans()):
        out["mem"] = Decimal(draw(mem) * (4 if big else 1))
    if draw(st.integers(0, 4)) == 0:
        out["cuda.shares"] = Decimal(draw(shares)) * (4 if big else 1)
    return out


@st.composite
def agents(draw) -> list[AgentView]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        cap = draw(slot_sets(big=True))
        occ = ResourceSlot({k: v * Decimal(draw(st.sampled_from(["0", "0.25", "0.5", "1"])))
                            for k, v in cap.items()})
        out.append(AgentView(
            f"a{i}", cap, occ, scaling_group=draw(st.sampled_from(GROUPS)),
            alive=draw(st.integers(0, 5)) > 0, schedulable=draw(st.integers(0, 5)) > 0,
            address=f"http://a{i}",
        ))
    return out


@st.composite
def sessions(draw) -> list[PendingSession]:
    out = []
    for i in range(draw(st.integers(0, 30))):
        starts_at = None
        if draw(st.integers(0, 6)) == 0:
            starts_at = NOW + timedelta(minutes=draw(st.integers(-5, 5)))
        deps = ()
        if draw(st.integers(0, 6)) == 0:
            deps = tuple(draw(st.lists(st.sampled_from(DEPS), min_size=1, max_size=2,
                                       unique=True)))
        out.append(PendingSession(
            # random ids: FIFO's tie-break on the id is exercised
            id=uuid.UUID(int=draw(st.integers(1, 2**128 - 1))), name=f"s{i}",
            access_key=draw(st.sampled_from(KEYS)), user_id=None,
            created_at=NOW - timedelta(seconds=draw(st.integers(0, 8))),
            requested=draw(slot_sets()), scaling_group=draw(st.sampled_from(GROUPS)),
            group_id=draw(st.sampled_from(USER_GROUPS)),
            domain_name=draw(st.sampled_from(DOMAINS)), starts_at=starts_at, dependencies=deps,
            kind=draw(st.sampled_from(["INTERACTIVE", "BATCH"])),
            idle_timeout=draw(st.sampled_from([0, 60, 3600])),
        ))
    return out


@st.composite
def inputs(draw) -> SchedulingInput:
    pending = draw(sessions())
    ags = draw(agents())
    maybe_slots = st.one_of(st.just(ResourceSlot()), slot_sets(), slot_sets(big=True))
    limits = st.one_of(slot_sets(), slot_sets(big=True))
    maybe_used = st.one_of(st.just(ResourceSlot()), slot_sets())
    keypairs = {
        k: KeypairLimits(
            max_concurrent_sessions=draw(st.sampled_from([0, 0, 1, 3, 10])),
            total_resource_slots=draw(maybe_slots), policy_name=f"p-{k}",
            concurrent=draw(st.integers(0, 3)), occupied=draw(slot_sets()),
        )
        for k in KEYS if draw(st.booleans())
    }
    deps = {
        d: DependencyView(d, f"dep{i}", draw(st.sampled_from(
            ["PENDING", "RUNNING", "TERMINATED", "CANCELLED", "ERROR"])),
            draw(st.sampled_from(["UNDEFINED", "SUCCESS", "FAILURE"])),
            draw(st.sampled_from(["INTERACTIVE", "BATCH"])))
        for i, d in enumerate(DEPS) if draw(st.integers(0, 4)) > 0
    }
    releases = {
        a.id: [(NOW + timedelta(seconds=draw(st.integers(-30, 600))), draw(slot_sets()))
               for _ in range(draw(st.integers(0, 3)))]
        for a in ags if draw(st.booleans())
    }
    return SchedulingInput(
        pending=pending, agents=ags, now=NOW,
        policies={g: draw(st.sampled_from(["fifo", "lifo", "drf"])) for g in GROUPS},
        strategies={g: draw(st.sampled_from(["concentrated", "dispersed"])) for g in GROUPS},
        keypairs=keypairs, dependencies=deps,
        # limits small enough to bind within one pass, or big
        group_limits={g: (draw(limits), draw(maybe_used))
                      for g in USER_GROUPS if draw(st.integers(0, 2)) == 0},
        domain_limits={d: (draw(limits), draw(maybe_used))
                       for d in DOMAINS if draw(st.integers(0, 2)) == 0},
        usage_by_key={k: draw(slot_sets()) for k in KEYS if draw(st.booleans())},
        releases=releases, idle_slack=draw(st.sampled_from([0, 35])),
    )


def assert_same(inp: SchedulingInput) -> None:
    got, want = decide(inp), reference_decide(inp)
    assert got.assignments == want.assignments
    assert got.cancels == want.cancels
    assert list(got.waits) == list(want.waits)
    for sid, w in want.waits.items():
        assert got.waits[sid] == w, (got.waits[sid], w)
        assert got.waits[sid].info == w.info
        assert got.waits[sid].status_data() == w.status_data()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs())
def test_decides_like_the_reference(inp: SchedulingInput) -> None:
    assert_same(inp)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(50, 300), st.sampled_from(["fifo", "lifo", "drf"]),
       st.sampled_from(["concentrated", "dispersed"]), st.integers(1, 12))
def test_long_queues_of_few_shapes_decide_like_the_reference(n, policy, strategy, n_agents):
    """Many sessions sharing a few request shapes (where the fast paths cache verdicts), with
    placements interleaved (each one must invalidate what was cached)."""
    shapes = [ResourceSlot({"cpu": Decimal(c), "mem": Decimal(m * GIB)})
              for c, m in (("1", 1), ("2", 4), ("0.5", 1))]
    pending = [
        PendingSession(uuid.UUID(int=i + 1), f"s{i}", KEYS[i % 3], None,
                       NOW - timedelta(seconds=(i * 7) % 50), shapes[(i * 5) % 3],
                       group_id=USER_GROUPS[(i // 2) % 2], domain_name=DOMAINS[(i // 3) % 2])
        for i in range(n)
    ]
    ags = [AgentView(f"a{i}", ResourceSlot({"cpu": Decimal(4 + i % 3), "mem": Decimal(16 * GIB)}),
                     ResourceSlot({"cpu": Decimal(i % 2)}), address=f"http://a{i}")
           for i in range(n_agents)]
    inp = SchedulingInput(
        pending=pending, agents=ags, now=NOW, policies={"default": policy},
        strategies={"default": strategy},
        keypairs={"AK1": KeypairLimits(max_concurrent_sessions=7, policy_name="p1"),
                  "AK2": KeypairLimits(total_resource_slots=ResourceSlot({"cpu": Decimal(5)}),
                                       policy_name="p2")},
        usage_by_key={"AK3": ResourceSlot({"cpu": Decimal(3)})},
        group_limits={USER_GROUPS[0]: (ResourceSlot({"cpu": Decimal(6)}), ResourceSlot())},
        domain_limits={DOMAINS[1]: (ResourceSlot({"mem": Decimal(9 * GIB)}),
                                    ResourceSlot({"mem": Decimal(GIB)}))},
        releases={"a0": [(NOW + timedelta(minutes=5), ResourceSlot({"cpu": Decimal(2)}))]},
    )
    assert_same(inp)
