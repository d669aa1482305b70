"""The pure scheduling decision: ordering, fit, reasons, reservations, predicates, speed shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bai.common.resources import ResourceSlot
from bai.manager.scheduler.decision import (
    AgentView,
    DependencyView,
    KeypairLimits,
    PendingSession,
    SchedulingInput,
    decide,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
GIB = 2**30


def slots(**kw) -> ResourceSlot:
    return ResourceSlot({k.replace("_", "."): Decimal(str(v)) for k, v in kw.items()})


def sess(n: int, ak="AK1", **req) -> PendingSession:
    return PendingSession(
        id=uuid.UUID(int=n), name=f"s{n}", access_key=ak, user_id=None,
        created_at=T0 + timedelta(seconds=n), requested=slots(**(req or {"cpu": 1})),
    )


def agent(aid: str, occupied=None, **cap) -> AgentView:
    return AgentView(aid, slots(**cap), slots(**(occupied or {})), address=f"http://{aid}")


def run(pending, agents, **kw):
    return decide(SchedulingInput(pending=pending, agents=agents, now=T0 + timedelta(hours=1), **kw))


def test_fifo_places_in_order_until_full_and_explains_the_rest():
    d = run([sess(1), sess(2), sess(3)], [agent("a1", cpu=2, mem=GIB)])
    assert [a.session_id.int for a in d.assignments] == [1, 2]
    w = d.waits[uuid.UUID(int=3)]
    assert w.code == "insufficient-resources"
    assert w.info == ("insufficient-resources: cpu requested 1, free 0 on a1 "
                      "(position 1 in queue, estimated start unknown)")
    assert w.status_data()["scheduler"]["estimated_start"] is None
    assert w.details["shortfall"]["cpu"] == {"requested": "1", "free": "0"}


def test_lifo_takes_newest_first():
    d = run([sess(1), sess(2), sess(3)], [agent("a1", cpu=1)], policies={"default": "lifo"})
    assert [a.session_id.int for a in d.assignments] == [3]


def test_mem_message_uses_sizes():
    d = run([sess(1, cpu=1, mem=4 * GIB)], [agent("a1", cpu=4, mem=2 * GIB, occupied={"mem": GIB})])
    assert "mem requested 4g, free 1g on a1" in d.waits[uuid.UUID(int=1)].msg


def test_accelerator_slots_queue():
    d = run([sess(1, cuda_shares=1.5), sess(2, cuda_shares=1)], [agent("a1", cpu=8, cuda_shares=2)])
    assert [a.session_id.int for a in d.assignments] == [1]
    assert "cuda.shares requested 1, free 0.5" in d.waits[uuid.UUID(int=2)].msg


def test_concentrated_and_dispersed():
    agents = [agent("a1", cpu=4, occupied={"cpu": 2}), agent("a2", cpu=4)]
    assert run([sess(1)], agents).assignments[0].agent_id == "a1"
    agents = [agent("a1", cpu=4, occupied={"cpu": 2}), agent("a2", cpu=4)]
    d = run([sess(1)], agents, strategies={"default": "dispersed"})
    assert d.assignments[0].agent_id == "a2"


def test_large_waiting_session_reserves_and_small_ones_backfill_elsewhere():
    # a1 has 1 free of 2; a2 has 1 free of 1. The large (cpu 2) one waits for a1; the small one
    # behind it must not take a1's last cpu, but may use a2.
    agents = [agent("a1", cpu=2, occupied={"cpu": 1}), agent("a2", cpu=1)]
    d = run([sess(1, cpu=2), sess(2, cpu=1), sess(3, cpu=1)], agents)
    assert [(a.session_id.int, a.agent_id) for a in d.assignments] == [(2, "a2")]
    assert d.waits[uuid.UUID(int=1)].details["reserved_agent"] == "a1"
    assert d.waits[uuid.UUID(int=1)].position == 1
    assert d.waits[uuid.UUID(int=3)].code == "waiting-for-earlier-session"


def test_predicates_starts_at_and_dependencies():
    later = PendingSession(uuid.UUID(int=1), "s1", "AK1", None, T0, slots(cpu=1),
                           starts_at=T0 + timedelta(days=1))
    dep_ok = uuid.UUID(int=10)
    dep_run = uuid.UUID(int=11)
    dep_bad = uuid.UUID(int=12)
    waits = PendingSession(uuid.UUID(int=2), "s2", "AK1", None, T0, slots(cpu=1),
                           dependencies=(dep_ok, dep_run))
    doomed = PendingSession(uuid.UUID(int=3), "s3", "AK1", None, T0, slots(cpu=1),
                            dependencies=(dep_bad,))
    deps = {
        dep_ok: DependencyView(dep_ok, "ok", "TERMINATED", "SUCCESS"),
        dep_run: DependencyView(dep_run, "running", "RUNNING"),
        dep_bad: DependencyView(dep_bad, "bad", "TERMINATED", "FAILURE"),
    }
    d = run([later, waits, doomed], [agent("a1", cpu=8)], dependencies=deps)
    assert d.assignments == []
    assert d.waits[later.id].code == "starts-at" and d.waits[later.id].estimated_start
    assert d.waits[waits.id].code == "dependencies" and "running (RUNNING)" in d.waits[waits.id].msg
    assert d.cancels == [(doomed.id, "dependency-failed")]
    assert "bad" in d.waits[doomed.id].msg


def test_keypair_policy_limits_name_the_policy():
    kp = {"AK1": KeypairLimits(max_concurrent_sessions=1, policy_name="tiny", concurrent=0),
          "AK2": KeypairLimits(total_resource_slots=slots(cpu=2), policy_name="small",
                               occupied=slots(cpu=1))}
    d = run([sess(1), sess(2), sess(3, ak="AK2", cpu=2)], [agent("a1", cpu=8)], keypairs=kp)
    assert [a.session_id.int for a in d.assignments] == [1]
    assert d.waits[uuid.UUID(int=2)].code == "concurrency-limit"
    assert "tiny" in d.waits[uuid.UUID(int=2)].msg
    w = d.waits[uuid.UUID(int=3)]
    assert w.code == "keypair-resource-limit" and "small" in w.msg and "cpu" in w.msg


def test_drf_prefers_the_user_with_the_smaller_dominant_share():
    pending = [sess(1, ak="HEAVY"), sess(2, ak="HEAVY"), sess(3, ak="LIGHT")]
    d = run(pending, [agent("a1", cpu=4, occupied={"cpu": 2})], policies={"default": "drf"},
            usage_by_key={"HEAVY": slots(cpu=2)})
    assert [a.session_id.int for a in d.assignments] == [3, 1]


def test_no_agents_and_lost_agents():
    lost = agent("a1", cpu=8)
    lost.alive = False
    d = run([sess(1)], [lost])
    assert d.waits[uuid.UUID(int=1)].code == "no-agents"


def test_many_pending_sessions_in_one_pass():
    pending = [sess(i, cpu=1) for i in range(1, 5001)]
    d = run(pending, [agent(f"a{i}", cpu=4) for i in range(10)])
    assert len(d.assignments) == 40
    assert len(d.waits) == 5000 - 40
    assert max(w.position for w in d.waits.values()) == 5000 - 40


def test_a_batch_dependency_must_succeed_an_interactive_one_only_end():
    ids = {name: uuid.UUID(int=20 + i) for i, name in enumerate(
        ["destroyed", "interactive", "cancelled", "error", "ok"])}
    deps = {
        ids["destroyed"]: DependencyView(ids["destroyed"], "destroyed", "TERMINATED", kind="BATCH"),
        ids["interactive"]: DependencyView(ids["interactive"], "interactive", "TERMINATED"),
        ids["cancelled"]: DependencyView(ids["cancelled"], "cancelled", "CANCELLED", kind="BATCH"),
        ids["error"]: DependencyView(ids["error"], "error", "ERROR", kind="BATCH"),
        ids["ok"]: DependencyView(ids["ok"], "ok", "TERMINATED", "SUCCESS", kind="BATCH"),
    }
    pending = [PendingSession(uuid.UUID(int=i + 1), f"s{i}", "AK1", None, T0 + timedelta(seconds=i),
                              slots(cpu=1), dependencies=(dep,))
               for i, dep in enumerate(ids.values())]
    d = run(pending, [agent("a1", cpu=8)], dependencies=deps)
    assert sorted(a.session_id.int for a in d.assignments) == [2, 5]
    msgs = {sid.int: d.waits[sid].msg for sid, _ in d.cancels}
    assert msgs == {
        1: f"dependency destroyed ({ids['destroyed']}) ended without success",
        3: f"dependency cancelled ({ids['cancelled']}) was cancelled",
        4: f"dependency error ({ids['error']}) ended in ERROR",
    }
