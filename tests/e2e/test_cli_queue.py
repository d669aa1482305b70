"""Queueing as a user sees it: PENDING with a reason, --enqueue-only, --max-wait, events, rm of a
pending session, and the first-10 / --all listing. One small stack (an agent of 2 cpus)."""

from __future__ import annotations

import json
import shutil
import subprocess
import signal
import sys
import time

import pytest
from stacks import CLI, start_stack


@pytest.fixture(scope="module")
def small():
    st = start_stack("cpu=2", "mem=2g")
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


def rows(stack, *args: str, user: bool = False) -> dict:
    return json.loads(stack.cli("--output", "json", "ps", *args, user=user).stdout)


def row(stack, name: str) -> dict:
    items = rows(stack, "--all", "--all-statuses", "-f", "name,id,status,status_info")["items"]
    return next(i for i in items if i["name"] == name)


def test_queueing_enqueue_only_max_wait_and_cancel(small):
    small.cli("start", "-t", "big-1", "-r", "cpu=2", "python")
    try:
        proc = small.cli("start", "--enqueue-only", "-t", "big-2", "-r", "cpu=2", "python")
        assert "big-2" in proc.stdout and "PENDING" in proc.stdout
        waiting = row(small, "big-2")
        assert waiting["status"] == "PENDING" and "cpu" in (waiting["status_info"] or "")

        proc = small.cli("run", "--max-wait", "2", "-t", "big-3", "-r", "cpu=2", "python", "-c",
                         "print('must not run')")
        assert "must not run" not in proc.stdout and "PENDING" in proc.stdout
        assert "cpu" in proc.stdout

        # `events` follows big-2 until it ends; `rm` of a pending session cancels it.
        events = subprocess.Popen([CLI, "events", "big-2"], env=small.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        proc = small.cli("rm", "big-2", "big-3")
        assert "big-2 was cancelled" in proc.stdout and "big-3 was cancelled" in proc.stdout
        out, err = events.communicate(timeout=60)
        assert events.returncode == 0, err
        names = [ln.split(" ", 1)[0] for ln in out.splitlines()]
        assert names[-1] == "server_close" and "session_cancelled" in names
        dead = [i["name"] for i in rows(small, "--dead", "--all")["items"]]
        assert {"big-2", "big-3"} <= set(dead)
        assert row(small, "big-2")["status"] == "CANCELLED"
    finally:
        small.cli("rm", "big-1", check=False)


def test_first_10_then_all_and_format(small):
    names = [f"many-{i:02d}" for i in range(15)]
    small.cli("start", "-t", "blocker", "-r", "cpu=2", "python")  # the agent is full: all wait
    for n in names:
        small.cli("start", "--enqueue-only", "-t", n, "-r", "cpu=2", "python")
    try:
        proc = small.cli("ps")
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert len(lines) == 2 + 10
        assert lines[2].startswith("many-14")  # most recently changed first
        assert "6 more" in proc.stderr  # the 15 and the blocker
        listed = [i["name"] for i in rows(small, "--all")["items"]]
        assert len(listed) == 16 and set(names) <= set(listed)
        proc = small.cli("ps", "-f", "id,status,occupying_slots")
        header = proc.stdout.splitlines()[0]
        assert header.split() == ["Session", "ID", "Status", "Occupying", "Slots"]
        user = rows(small, "--all", user=True)
        assert not {i["name"] for i in user["items"]} & set(names)
    finally:
        small.cli("rm", "blocker", *names, check=False)


PS_ARGS = [(), ("--all",), ("--detail", "--limit", "3"), ("--name-only", "--offset", "2"),
           ("--output", "json", "--all-statuses", "-a"), ("-f", "id,status,dependencies,"
           "occupying_slots,created_at,mounts,service_ports"), ("--dead",),
           ("-s", "pending", "--order", "name"), ("--filter", 'name ilike "ps-%"'),
           ("-s", "NOPE"), ("--running", "--dead"), ("-f", "bogus"), ("--filter", "name ~~"),
           ("--limit", "0")]
#: what the express path leaves to click (click's own message for a bad --limit)
PS_TO_CLICK = {("--limit", "0")}
#: what the leanest path (the manager renders the table: ``ps_rendered``) hands to the express
#: path: JSON, an error answer (it says why), and what goes to click
PS_NOT_RENDERED = {("--output", "json", "--all-statuses", "-a"), ("--filter", "name ~~"),
                   *PS_TO_CLICK}


def _ps(stack, args, express: bool, user: bool):
    env = {**(stack.user_env if user else stack.env), "BAI_CLI_EXPRESS": "1" if express else "0"}
    # -X importtime: proof of the path taken (click imported or not), on stderr apart
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "from bai.client.cli.main import main; main()", "ps", *args],
                          env=env, capture_output=True, text=True, timeout=120)
    imports = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    err = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:"))
    names = {ln.split("|")[-1].strip() for ln in imports}
    return (proc.returncode, proc.stdout, err), "click" in names, \
        "bai.client.cli.express" not in names


def test_ps_on_the_express_path_prints_what_the_click_path_prints(small):
    """``ps`` without click (the pre-serialised listing route) and through click (GraphQL):
    byte for byte the same output, notes and exit code, for an admin and for a user (not
    ``idle_checks``: its seconds left move between the two calls)."""
    small.cli("start", "-t", "ps-blocker", "-r", "cpu=2", "python")
    names = [f"ps-{i}" for i in range(4)]
    for n in names:
        small.cli("start", "--enqueue-only", "-t", n, "-r", "cpu=2", "python")
    small.cli("start", "--enqueue-only", "-t", "ps-mine", "-r", "cpu=2", "python", user=True)
    try:
        for user in (False, True):
            for args in PS_ARGS:
                for _ in range(10):  # a scheduling pass may change a line between the two
                    fast, fast_click, rendered = _ps(small, args, True, user)
                    slow, slow_click, _ = _ps(small, args, False, user)
                    if fast == slow:
                        break
                    time.sleep(1)
                assert fast == slow, (args, user)
                assert slow_click and fast_click == (args in PS_TO_CLICK), (args, user)
                assert rendered == (args not in PS_NOT_RENDERED), (args, user)
        code, out, _ = _ps(small, ("--all", "--name-only"), True, True)[0]
        assert code == 0 and "ps-mine" in out and "ps-0" not in out  # a user's own only
    finally:
        small.cli("rm", "ps-blocker", *names, check=False)
        small.cli("rm", "ps-mine", check=False, user=True)


def wait_for(what, predicate, timeout: float = 180.0):
    """Poll ``predicate()`` until it answers something true (generous: CI machines are busy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def status_of(stack, name: str) -> str | None:
    items = rows(stack, "--all", "--all-statuses", "-f", "name,status")["items"]
    return next((i["status"] for i in items if i["name"] == name), None)


@pytest.mark.parametrize("path", ["express", "click"])
def test_ctrl_c_on_run_rm_while_queued_cancels_it(small, path):
    blocker, queued = f"hold-{path}", f"ctrlc-{path}"
    small.cli("start", "-t", blocker, "-r", "cpu=2", "python")
    env = {**small.env, "BAI_CLI_EXPRESS": "1" if path == "express" else "0"}
    # A terminal's Ctrl-C reaches a CLI whose SIGINT is not ignored; a test run started in the
    # background (CI's shell without job control) ignores SIGINT, and the child would inherit that.
    proc = subprocess.Popen([CLI, "run", "--rm", "-t", queued, "-c", "print('ran')", "python"],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(f"{queued} to be PENDING", lambda: status_of(small, queued) == "PENDING")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 130, err
        # the CLI removed it before exiting: no waiting for the scheduler here
        assert status_of(small, queued) == "CANCELLED", err
        assert "ran" not in out and f"removing the session {queued}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        small.cli("rm", blocker, queued, check=False)


@pytest.mark.parametrize("order", ["running-first", "queued-first"])
def test_rm_of_a_running_and_the_one_waiting_for_it_cancels_the_waiting_one(small, order):
    running, waiting = f"rma-{order[:3]}", f"rmb-{order[:3]}"
    small.cli("start", "-t", running, "-r", "cpu=2", "python")
    small.cli("start", "--enqueue-only", "-t", waiting, "-r", "cpu=2", "python")
    try:
        assert status_of(small, waiting) == "PENDING"
        names = [running, waiting] if order == "running-first" else [waiting, running]
        proc = small.cli("rm", *names)
        assert f"Session {waiting} was cancelled" in proc.stdout, proc.stdout
        assert status_of(small, waiting) == "CANCELLED"
        history = small.cli("history", waiting).stdout
        assert "SCHEDULED" not in history and "RUNNING" not in history, history
        assert status_of(small, running) == "TERMINATED"
    finally:
        small.cli("rm", running, waiting, check=False)


def test_start_at_a_later_time_returns_once_queued(small):
    proc = small.cli("start", "--starts-at", "10m", "-t", "later-1", "python", timeout=300)
    try:
        assert "later-1" in proc.stdout and "PENDING" in proc.stdout
        assert status_of(small, "later-1") == "PENDING"
    finally:
        small.cli("rm", "later-1", check=False)
