"""Estimated start times: the timeline model and the estimates ``decide`` gives waiting sessions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bai.common.resources import ResourceSlot
from bai.manager.scheduler.decision import (
    AgentView,
    PendingSession,
    SchedulingInput,
    decide,
)
from bai.manager.scheduler.estimate import Timeline

NOW = datetime(2024, 1, 1, 12, tzinfo=UTC)


def slots(**kw) -> ResourceSlot:
    return ResourceSlot({k: Decimal(str(v)) for k, v in kw.items()})


def at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


def sess(n: int, cpu: float = 1, **kw) -> PendingSession:
    return PendingSession(id=uuid.UUID(int=n), name=f"s{n}", access_key="AK", user_id=None,
                          created_at=NOW - timedelta(hours=1) + timedelta(seconds=n),
                          requested=slots(cpu=cpu), **kw)


def full_agent(aid: str, cpu: float = 2) -> AgentView:
    return AgentView(aid, slots(cpu=cpu), slots(cpu=cpu), address=f"http://{aid}")


def run(pending, agents, releases, **kw):
    return decide(SchedulingInput(pending=pending, agents=agents, now=NOW, releases=releases, **kw))


def test_timeline_fits_from_the_release_that_makes_room():
    tl = Timeline(NOW, slots(cpu=0), [(at(10), slots(cpu=1)), (at(5), slots(cpu=1))])
    assert tl.earliest(slots(cpu=1)) == at(5)
    assert tl.earliest(slots(cpu=2)) == at(10)
    assert tl.earliest(slots(cpu=3)) is None
    assert tl.earliest(slots()) == NOW


def test_timeline_a_simulated_start_holds_its_slots_for_good():
    tl = Timeline(NOW, slots(cpu=1), [(at(5), slots(cpu=1))])
    tl.occupy(at(5), slots(cpu=2))
    # it fits now, but would no longer fit once the simulated session starts at 5 min
    assert tl.earliest(slots(cpu=1)) is None


def test_timeline_releases_in_the_past_count_as_now():
    tl = Timeline(NOW, slots(cpu=0), [(NOW - timedelta(minutes=1), slots(cpu=1))])
    assert tl.earliest(slots(cpu=1)) == NOW


def test_large_session_is_estimated_on_the_agent_that_frees_first_and_holds_it():
    agents = [full_agent("a1"), full_agent("a2")]
    releases = {"a1": [(at(10), slots(cpu=1)), (at(30), slots(cpu=1))],
                "a2": [(at(20), slots(cpu=1)), (at(25), slots(cpu=1))]}
    d = run([sess(1, cpu=2)], agents, releases)
    w = d.waits[uuid.UUID(int=1)]
    assert w.code == "insufficient-resources"
    assert w.estimated_start == at(25)
    assert w.details["reserved_agent"] == "a2"
    assert w.status_data()["scheduler"]["estimated_start"] == at(25).isoformat(timespec="seconds")
    assert w.info.endswith(f"(position 1 in queue, estimated start {at(25).isoformat(timespec='seconds')})")


def test_sessions_behind_are_estimated_after_the_ones_ahead():
    agents = [full_agent("a1")]
    releases = {"a1": [(at(10), slots(cpu=1)), (at(20), slots(cpu=1))]}
    d = run([sess(1, cpu=2), sess(2, cpu=1), sess(3, cpu=1)], agents, releases)
    est = {w.session_id.int: w.estimated_start for w in d.waits.values()}
    # s1 takes both cpus at 20 min and never gives them back in the model: nothing after it
    assert est == {1: at(20), 2: None, 3: None}


def test_small_ones_behind_backfill_elsewhere_and_their_estimates_do_not_touch_the_head():
    # a1 frees its two cpus at 15 min; a2 frees one at 5 min and one at 40 min
    agents = [full_agent("a1"), full_agent("a2")]
    releases = {"a1": [(at(15), slots(cpu=2))],
                "a2": [(at(5), slots(cpu=1)), (at(40), slots(cpu=1))]}
    d = run([sess(1, cpu=2), sess(2, cpu=1), sess(3, cpu=1)], agents, releases)
    est = {w.session_id.int: w.estimated_start for w in d.waits.values()}
    assert est[1] == at(15)
    assert d.waits[uuid.UUID(int=1)].details["reserved_agent"] == "a1"
    assert est[2] == at(5)  # on a2, before the head: backfill that does not delay it
    assert est[3] == at(40)  # a1 is full for good once the head starts there


def test_sessions_placed_in_the_pass_release_after_their_idle_timeout():
    agents = [AgentView("a1", slots(cpu=2), slots(cpu=1), address="x")]
    d = run([sess(1, cpu=1, idle_timeout=600), sess(2, cpu=2)], agents, {}, idle_slack=10)
    assert [a.session_id.int for a in d.assignments] == [1]
    # s2 needs the cpu s1 just took: s1 ends after 600 s idle (+10 s for the idle checker);
    # the cpu occupied before the pass has no known end
    assert d.waits[uuid.UUID(int=2)].estimated_start is None
    agents = [AgentView("a1", slots(cpu=2), slots(cpu=0), address="x")]
    d = run([sess(1, cpu=1, idle_timeout=600), sess(2, cpu=2)], agents, {}, idle_slack=10)
    assert d.waits[uuid.UUID(int=2)].estimated_start == NOW + timedelta(seconds=610)
    d = run([sess(1, cpu=1, kind="BATCH", idle_timeout=600), sess(2, cpu=2)], agents, {})
    assert d.waits[uuid.UUID(int=2)].estimated_start is None  # batch: no known end


def test_unknown_when_the_blocking_sessions_have_no_known_end():
    d = run([sess(1, cpu=2)], [full_agent("a1")], {})
    w = d.waits[uuid.UUID(int=1)]
    assert w.estimated_start is None
    assert w.info.endswith("(position 1 in queue, estimated start unknown)")


def test_starts_at_is_the_estimate_of_a_deferred_session():
    d = run([sess(1, starts_at=at(60))], [AgentView("a1", slots(cpu=2), slots(), address="x")], {})
    w = d.waits[uuid.UUID(int=1)]
    assert (w.code, w.estimated_start) == ("starts-at", at(60))
