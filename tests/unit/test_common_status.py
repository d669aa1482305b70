"""The transition table and status sets of bai.common.status."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bai.common.errors import InvalidTransition
from bai.common.status import (
    FINAL, LIST_DEAD, LIST_DEFAULT, LIST_RUNNING, OCCUPYING, TERMINAL, TRANSITIONS,
    SessionStatus, check_transition, parse_statuses,
)

SEED_STATUSES = {
    "PENDING", "SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING", "RUNNING",
    "RESTARTING", "RESIZING", "SUSPENDED", "TERMINATING", "TERMINATED", "ERROR", "CANCELLED",
}


def test_statuses_are_exactly_the_seeds():
    assert {s.value for s in SessionStatus} == SEED_STATUSES
    assert set(TRANSITIONS) == set(SessionStatus)


def test_final_statuses_have_no_way_out():
    for s in FINAL:
        assert TRANSITIONS[s] == frozenset()


def test_every_status_can_reach_a_terminal_one():
    for start in SessionStatus:
        seen, frontier = {start}, [start]
        while frontier:
            cur = frontier.pop()
            for nxt in TRANSITIONS[cur]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & TERMINAL, start


def test_pending_is_cancelled_not_terminated():
    check_transition("s", SessionStatus.PENDING, SessionStatus.CANCELLED)
    with pytest.raises(InvalidTransition) as e:
        check_transition("s1", SessionStatus.PENDING, SessionStatus.TERMINATED, ["PENDING"])
    assert e.value.data["from"] == "PENDING" and e.value.data["to"] == "TERMINATED"
    assert "s1" in str(e.value)


def test_list_filters_follow_the_guide():
    assert set(LIST_DEAD) == {SessionStatus.CANCELLED, SessionStatus.TERMINATED}
    assert not set(LIST_DEFAULT) & set(LIST_DEAD)
    for name in ("PENDING", "PREPARING", "PREPARED", "CREATING", "RUNNING", "RESTARTING",
                 "TERMINATING", "RESIZING", "SUSPENDED", "ERROR"):
        assert SessionStatus(name) in LIST_DEFAULT
    for name in ("CREATING", "PULLING", "RUNNING"):
        assert SessionStatus(name) in LIST_RUNNING
    assert not OCCUPYING & {SessionStatus.PENDING, SessionStatus.TERMINATED, SessionStatus.CANCELLED}


def test_parse_statuses_splits_unknown_names():
    known, unknown = parse_statuses("PENDING, running,RUNNING_DEGRADED,,")
    assert known == [SessionStatus.PENDING, SessionStatus.RUNNING]
    assert unknown == ["RUNNING_DEGRADED"]


@given(st.lists(st.sampled_from(list(SessionStatus)), min_size=2, max_size=12))
def test_check_transition_agrees_with_table(path):
    for a, b in zip(path, path[1:]):
        if b in TRANSITIONS[a]:
            check_transition("x", a, b)
        else:
            with pytest.raises(InvalidTransition):
                check_transition("x", a, b)
