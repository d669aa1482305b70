"""Attacks on the default keypair policy of a fresh install, as its normal user (``user``).

One embedded stack (process runtime) with the policy a fresh install gets: 8 concurrent
sessions, 1,024 pids per session, a 4 GiB work-dir quota, at least cpu 0.1 / mem 64m, and all
kernels of the host together under half of pid_max (docs/security.md, "Default limits").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from stacks import Stack, start_stack

SMALL = ["-r", "cpu=0.1", "-r", "mem=64m"]


#: the agent's own cgroup parent: made by this stack, so what it holds was written by it
PARENT = f"bai-sec-{os.getpid()}"


@pytest.fixture(scope="module")
def fresh():
    st = start_stack("cpu=4", "mem=4g", env={"BAI_MANAGER_DEFAULT_MAX_SESSIONS": "8",
                                            "BAI_AGENT_CGROUP_PARENT": PARENT})
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)
    for d in Path("/sys/fs/cgroup").glob(f"*/{PARENT}"):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        (Path("/sys/fs/cgroup") / PARENT).rmdir()


def jcli(st: Stack, *args: str, user: bool = False):
    return json.loads(st.cli("--output", "json", *args, user=user).stdout)


def default_policy(st: Stack) -> dict:
    return next(p for p in jcli(st, "admin", "policy", "list") if p["name"] == "default")


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def test_a_fresh_install_bounds_every_keypair(fresh):
    p = default_policy(fresh)
    assert p["max_concurrent_sessions"] == 8
    assert p["pids_limit"] == 1024
    assert p["disk_quota"] == 4 * 1024**3
    assert p["min_resource_slots"] == {"cpu": "0.1", "mem": str(64 * 1024**2)}


@pytest.mark.parametrize("ask", [["-r", "cpu=0.05", "-r", "mem=64m"],
                                 ["-r", "cpu=0.1", "-r", "mem=32m"]])
def test_a_session_below_the_policy_minimum_is_refused(fresh, ask):
    proc = fresh.cli("start", "--enqueue-only", *ask, "python", user=True, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "below the minimum" in lines[0]
    assert "keypair resource policy default" in lines[0]
    ps = jcli(fresh, "ps", "--all", user=True)["items"]
    assert ps == [] or all(i["status"] in ("TERMINATED", "CANCELLED") for i in ps)


FORK_BOMB = """
import errno, os
pids, err = [], None
try:
    while len(pids) < 700:
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/sleep", ["sleep", "60"])
            finally:
                os._exit(0)
        pids.append(pid)
except OSError as e:
    err = e.errno
for p in pids:
    os.kill(p, 9)
for p in pids:
    os.waitpid(p, 0)
print(len(pids), errno.errorcode.get(err))
"""


def _cgroup_pids_max(parent: str = PARENT) -> Path:
    v1 = Path("/sys/fs/cgroup/pids") / parent / "pids.max"
    return v1 if v1.parent.is_dir() else Path("/sys/fs/cgroup") / parent / "pids.max"


def test_a_fork_bomb_stops_at_the_policy_pids_limit_and_the_next_session_runs(fresh):
    if not _cgroup_pids_max().exists():
        pytest.skip("no pids cgroup controller on this host")
    fresh.cli("admin", "policy", "update", "default", "--pids-limit", "200")
    try:
        proc = fresh.cli("run", "--rm", "-c", FORK_BOMB, "-r", "mem=1g", "python", user=True,
                         timeout=300)
        count, err = proc.stdout.split()
        # the runner and its worker count too: the bomb stops short of 200, refused by the kernel
        assert err == "EAGAIN" and 100 < int(count) < 200, proc.stdout
        after = fresh.cli("run", "--rm", "-c", "print('still here')", *SMALL, "python",
                          user=True)
        assert after.stdout == "still here\n"
    finally:
        fresh.cli("admin", "policy", "update", "default", "--pids-limit", "1024")


def test_all_kernels_together_stay_below_half_of_pid_max(fresh):
    path = _cgroup_pids_max()
    if not path.exists():
        pytest.skip("no pids cgroup controller on this host")
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert path.read_text().strip() == str(pid_max // 2)


def _status(st: Stack, name: str) -> dict:
    items = jcli(st, "ps", "--all", "-f", "name,status,status_data", user=True)["items"]
    return next(i for i in items if i["name"] == name)


def test_the_ninth_session_waits_until_the_admin_raises_the_limit(fresh):
    names = [f"conc-{i}" for i in range(9)]
    try:
        for n in names[:8]:
            fresh.cli("start", "-t", n, *SMALL, "python", user=True, timeout=180)
        proc = fresh.cli("start", "--enqueue-only", "-t", names[8], *SMALL, "python", user=True)
        assert "PENDING" in proc.stdout

        def reason():
            data = _status(fresh, names[8])
            sched = (data.get("status_data") or {}).get("scheduler") or {}
            return data["status"] == "PENDING" and sched.get("reason")

        assert wait_for(reason, 60, "the scheduler's reason") == "concurrency-limit"
        fresh.cli("admin", "policy", "update", "default", "--max-sessions", "9")
        wait_for(lambda: _status(fresh, names[8])["status"] == "RUNNING", 120,
                 "the ninth session to start")
    finally:
        fresh.cli("admin", "policy", "update", "default", "--max-sessions", "8")
        fresh.cli("rm", *names, user=True, check=False, timeout=180)


DISK_FILL = """
import errno, os
written, err = 0, None
try:
    with open('fill.bin', 'wb') as f:
        while written < 200 * 2**20:
            f.write(b'x' * 2**20)
            f.flush()
            os.fsync(f.fileno())
            written += 2**20
except OSError as e:
    err = e.errno
print(written // 2**20, errno.errorcode.get(err))
"""


def test_a_disk_fill_stops_at_the_quota_and_the_next_session_writes(fresh):
    isolation = json.loads(fresh.cli("--output", "json", "admin", "agent", "list").stdout)
    if not isolation[0].get("isolation", {}).get("disk_quota"):
        pytest.skip("this host cannot enforce work-dir quotas (no root or loop devices)")
    fresh.cli("admin", "policy", "update", "default", "--disk-quota", "64m")
    try:
        proc = fresh.cli("run", "--rm", "-c", DISK_FILL, *SMALL, "python", user=True,
                         timeout=300)
        mib, err = proc.stdout.split()
        assert err in ("ENOSPC", "EDQUOT") and 32 <= int(mib) <= 64, proc.stdout
        after = fresh.cli("run", "--rm", "-c", "open('x', 'w').write('y' * 2**20); print('ok')",
                          *SMALL, "python", user=True)
        assert after.stdout == "ok\n"
    finally:
        fresh.cli("admin", "policy", "update", "default", "--disk-quota", "4g")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                    reason="this host cannot make work-dir quotas (no root or loop devices)")
def test_a_quota_that_cannot_be_made_fails_the_session_with_its_reason(make_stack, tmp_path):
    """On a host that makes quotas, a work dir whose filesystem cannot be made (here: mkfs
    fails) never runs without its quota: the session ends with the reason, in one line."""
    bad = tmp_path / "bin"
    bad.mkdir()
    (bad / "mkfs.ext4").write_text("#!/bin/sh\necho 'mkfs: no space for inode tables' >&2\n"
                                   "exit 1\n")
    (bad / "mkfs.ext4").chmod(0o755)
    st = make_stack("cpu=2", "mem=2g", env={"PATH": f"{bad}:{os.environ['PATH']}"})
    proc = st.cli("run", "--rm", "-c", "print('RAN')", "python", user=True, check=False,
                  timeout=180)
    assert proc.returncode != 0 and "RAN" not in proc.stdout, proc
    assert "quota could not be made" in proc.stdout + proc.stderr, proc
    assert "no space for inode tables" in proc.stdout + proc.stderr, proc
