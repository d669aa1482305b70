"""A batch of agent events is applied in runs: one kind each, a kernel at most once, each
kernel's events in their order, as few runs as that allows (``lifecycle.runs``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bai.common.events import KernelEvent
from bai.manager.services.lifecycle import runs

NAMES = ("kernel_creating", "kernel_started", "kernel_terminated", "kernel_creation_failed")


def ev(name: str, kernel: str) -> KernelEvent:
    return KernelEvent(name, "agent-1", kernel, "s-" + kernel)


def shape(batch):
    return [(kind, [(e.name.removeprefix("kernel_"), e.kernel_id) for e in run])
            for kind, run in runs(batch)]


def test_interleaved_starts_and_ends_are_two_runs():
    batch = [ev("kernel_started", "a"), ev("kernel_terminated", "b"),
             ev("kernel_started", "c"), ev("kernel_terminated", "a"),
             ev("kernel_started", "d"), ev("kernel_terminated", "c")]
    assert shape(batch) == [
        ("progress", [("started", "a"), ("started", "c"), ("started", "d")]),
        ("terminated", [("terminated", "b"), ("terminated", "a"), ("terminated", "c")])]


def test_an_end_waits_for_its_kernels_start_and_other_events_keep_their_place():
    batch = [ev("kernel_terminated", "a"), ev("kernel_started", "a"),
             ev("kernel_creation_failed", "b"), ev("kernel_terminated", "b"),
             ev("kernel_terminated", "c")]
    assert shape(batch) == [
        ("terminated", [("terminated", "a"), ("terminated", "c")]),
        ("other", [("creation_failed", "b")]),
        ("progress", [("started", "a")]),
        ("terminated", [("terminated", "b")])]


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from("abcd")), max_size=30))
def test_runs_keep_each_kernels_order_and_mix_neither_kinds_nor_a_kernel(pairs):
    batch = [ev(name, kernel) for name, kernel in pairs]
    got = runs(batch)
    flat = [e for _, run in got for e in run]
    assert sorted(map(id, flat)) == sorted(map(id, batch))
    for kernel in "abcd":
        assert ([e for e in flat if e.kernel_id == kernel]
                == [e for e in batch if e.kernel_id == kernel])
    for kind, run in got:
        assert run and len({e.kernel_id for e in run}) == len(run)
        assert {e.name in ("kernel_creating", "kernel_started") for e in run} == {
            kind == "progress"}
        assert {e.name == "kernel_terminated" for e in run} == {kind == "terminated"}
    # none could go in an earlier run of its kind: its kernel's previous event is after it
    where = {id(e): p for p, (_, run) in enumerate(got) for e in run}
    for p, (kind, run) in enumerate(got):
        earlier = [q for q in range(p) if got[q][0] == kind]
        for e in run:
            at = next(i for i, f in enumerate(batch) if f is e)
            before = [f for f in batch[:at] if f.kernel_id == e.kernel_id]
            if earlier:
                assert before and where[id(before[-1])] >= earlier[-1]
