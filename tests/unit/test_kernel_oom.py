"""bai.kernel.oom: the runner finds its memory cgroup's OOM kill count as a container or a
sandbox shows it (cgroup v1 or v2, host view or the cgroup's own folder at the top)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bai.kernel import oom


def layout(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    (tmp_path / "self-cgroup").write_text(proc_cgroup)
    return str(root), str(tmp_path / "self-cgroup")


V2_EVENTS = "low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\noom_group_kill 0\n"
V1_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"


@pytest.mark.parametrize("proc_cgroup, files, count", [
    # v2, the container's own cgroup namespace
    ("0::/\n", {"memory.events": V2_EVENTS}, 2),
    # v2, the host's view: the cgroup's path under the mount
    ("0::/bai/k1\n", {"memory.events.local": "oom_kill 7\n", "bai/k1/memory.events": V2_EVENTS},
     2),
    # v1 (Docker): /proc names the host path, the container's folder is bound at the top
    ("9:name=systemd:/docker/c1\n4:memory:/docker/c1\n0::/\n",
     {"memory/memory.oom_control": V1_CONTROL}, 4),
    # v1, the host's view; the top's count is the root cgroup's, not this one's
    ("5:cpu,cpuacct:/k\n4:memory:/bai/k1\n",
     {"memory/memory.oom_control": "oom_kill 5\n", "memory/bai/k1/memory.oom_control": V1_CONTROL},
     4),
])
def test_the_count_of_the_runners_own_cgroup(tmp_path, proc_cgroup, files, count) -> None:
    path = oom.kill_file(*layout(tmp_path, proc_cgroup, files))
    assert oom.kills(path) == count


def test_no_cgroup_files_visible_counts_nothing(tmp_path) -> None:
    # a bubblewrap sandbox has no /sys; v2 keeps no memory.events at its root
    root, proc_cgroup = layout(tmp_path, "0::/\n", {"cgroup.procs": "1\n"})
    assert oom.kill_file(root, proc_cgroup) is None and oom.kills(None) == 0


def test_a_count_rises_only_past_the_start_or_in_another_cgroup(tmp_path, monkeypatch) -> None:
    events = tmp_path / "memory.events"
    events.write_text("oom_kill 1\n")  # an earlier kill (another kernel's runner in this cgroup)
    monkeypatch.setattr(oom, "kill_file", lambda: str(events))
    counter = oom.OomCounter()
    assert not counter.rose()
    events.write_text("oom_kill 2\n")
    assert counter.rose()
    moved = tmp_path / "kernel.events"  # a pooled runner moved to its kernel's cgroup
    moved.write_text("oom_kill 1\n")
    monkeypatch.setattr(oom, "kill_file", lambda: str(moved))
    assert counter.rose()
