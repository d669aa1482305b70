"""The manager applies a batch of agent events with each run of progress events reduced to its last."""

from __future__ import annotations

from bai.common.events import KernelEvent
from bai.manager.services.agents import coalesce_progress


def ev(name: str, kernel: str = "k1") -> KernelEvent:
    return KernelEvent(name, "agent-1", kernel, "s-" + kernel)


def names(events):
    return [(e.name, e.kernel_id) for e in coalesce_progress(events)]


def test_a_start_reported_at_once_is_one_event():
    batch = [ev("kernel_preparing"), ev("kernel_prepared"), ev("kernel_creating"),
             ev("kernel_started")]
    assert names(batch) == [("kernel_started", "k1")]


def test_pulling_is_kept_and_kernels_do_not_mix():
    batch = [ev("kernel_preparing"), ev("kernel_pulling"), ev("kernel_prepared"),
             ev("kernel_preparing", "k2"), ev("kernel_creating"), ev("kernel_started")]
    assert names(batch) == [("kernel_pulling", "k1"), ("kernel_preparing", "k2"),
                            ("kernel_started", "k1")]


def test_other_events_and_steps_back_end_a_run():
    batch = [ev("kernel_preparing"), ev("kernel_terminated"), ev("kernel_started")]
    assert names(batch) == [("kernel_preparing", "k1"), ("kernel_terminated", "k1"),
                            ("kernel_started", "k1")]
    batch = [ev("kernel_creating"), ev("kernel_preparing")]
    assert names(batch) == [("kernel_creating", "k1"), ("kernel_preparing", "k1")]
