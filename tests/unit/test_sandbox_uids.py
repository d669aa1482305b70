"""The kernel uid allocator: distinct, never a real account or the server, never twice while held."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bai.agent.sandbox_uids import SandboxUids, UidsExhausted

FIRST = 3_100_000


def test_uids_are_distinct_until_released(tmp_path: Path) -> None:
    uids = SandboxUids(FIRST, 3, tmp_path / "locks", proc=tmp_path / "noproc")
    got = [uids.take(f"k{i}") for i in range(3)]
    assert sorted(got) == [FIRST, FIRST + 1, FIRST + 2]
    with pytest.raises(UidsExhausted):
        uids.take("k3")
    uids.release(got[1])
    assert uids.take("k4") == got[1]
    assert uids.held()[got[1]] == "k4"


def test_two_agents_sharing_the_lock_dir_never_pick_the_same_uid(tmp_path: Path) -> None:
    a = SandboxUids(FIRST, 4, tmp_path / "locks", proc=tmp_path / "noproc")
    b = SandboxUids(FIRST, 4, tmp_path / "locks", proc=tmp_path / "noproc")
    mine = {a.take("a1"), a.take("a2")}
    theirs = {b.take("b1"), b.take("b2")}
    assert not mine & theirs
    with pytest.raises(UidsExhausted):
        b.adopt(next(iter(mine)), "b3")
    a.close()  # an agent that ended: its uids are free for the other
    assert b.take("b4") in mine


def test_a_uid_that_owns_a_process_is_skipped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a fake /proc entry another owner")
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    os.chown(proc / "4242", FIRST, FIRST)  # a kernel of an agent that died still runs as FIRST
    uids = SandboxUids(FIRST, 2, tmp_path / "locks", proc=proc)
    assert uids.take("k") == FIRST + 1


def test_real_accounts_and_the_server_uid_are_never_taken(tmp_path: Path) -> None:
    # uids 1..3 are daemon, bin and sys on Debian; the server's own uid is refused too
    server = os.getuid()
    first = server if server > 0 else 1
    uids = SandboxUids(first, 3, tmp_path / "locks", proc=tmp_path / "noproc")
    taken = []
    while True:
        try:
            taken.append(uids.take("k"))
        except UidsExhausted:
            break
    import pwd

    for uid in taken:
        assert uid != server
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)


def test_the_lock_dir_is_private(tmp_path: Path) -> None:
    uids = SandboxUids(FIRST, 1, tmp_path / "locks", proc=tmp_path / "noproc")
    uids.take("k")
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o700


def test_a_burst_of_takes_scans_proc_once(tmp_path: Path, monkeypatch) -> None:
    """/proc is read once for the takes of ``BUSY_TTL`` s (a burst of kernels starting), and
    again once that has passed."""
    from bai.agent import sandbox_uids

    scans = []
    real = sandbox_uids.uids_with_processes
    monkeypatch.setattr(sandbox_uids, "uids_with_processes",
                        lambda proc: scans.append(proc) or real(proc))
    clock = [1000.0]
    monkeypatch.setattr(sandbox_uids.time, "monotonic", lambda: clock[0])
    uids = SandboxUids(FIRST, 10, tmp_path / "locks", proc=tmp_path / "noproc")
    got = {uids.take(f"k{i}") for i in range(5)}
    assert len(got) == 5 and len(scans) == 1
    clock[0] += sandbox_uids.BUSY_TTL + 0.1
    uids.take("k5")
    assert len(scans) == 2
