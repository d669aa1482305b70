"""Each benchmark script still runs, at a tiny size (no time is asserted: speed lives in bench/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

#: script -> tiny arguments, and a phrase its report must contain
CASES = {
    "cli_startup.py": (["--runs", "1"], "backend.ai --help"),
    "cli_call.py": (["--calls", "4", "--loops", "2", "--rounds", "1"],
                    "python3 -c pass / bai (rates)"),
    "client_transport.py": (["--runs", "1"], "httpx AsyncClient (click path)"),
    "hello_world.py": (["--runs", "1", "--warmup", "0", "--runtime", "process"], "create->RUNNING"),
    "scheduler_throughput.py": (["--sessions", "5", "--agents", "2", "--db", "sqlite"],
                                "sessions RUNNING after"),
    "scheduler_pass.py": (["20", "40", "--db", "sqlite", "--rounds", "1"], "growth 20 -> 40"),
    "listing.py": (["--sessions", "60", "--rounds", "1", "--cli-rounds", "1"],
                   "backend.ai ps --limit 100"),
    "events.py": (["--subscribers", "2", "--sessions", "1"], "status change -> SSE client"),
    "slurm_side_by_side.py": (["--no-slurm", "--allow-gaps", "--hello", "1", "--jobs", "2",
                                "--cpu-jobs", "2", "--submit", "2", "--queue", "4",
                                "--listing", "1", "--wait-seconds", "0.5",
                                "--settle-seconds", "0"],
                               "first page: ps vs squeue"),
    "vfolder.py": (["--size-mib", "4", "--files", "50", "--runs", "1"],
                   "vfolder ls first page (API"),
    "dashboard.py": (["--sessions", "60", "--loads", "1", "--changes", "1", "--dashboards", "2"],
                     "open dashboards"),
    "memory.py": (["--sessions", "40", "--kernels", "1", "--runtime", "dummy"],
                  "agent RSS with 1 running kernels"),
    "agent_jobs.py": (["--jobs", "2", "--rounds", "1", "--idle-seconds", "0.2"],
                      "machine CPU ms/job"),
    "session_create.py": (["--creates", "3", "--rounds", "1"], "manager CPU ms/create"),
    "apps_tunnel.py": (["--gib", "0.001", "--requests", "5", "--connections", "2", "--rounds", "1"],
                       "added latency (median)"),
    "mounts.py": (["--runs", "1", "--warmup", "0", "--folders", "2", "--no-pool-part"],
                  "PENDING->RUNNING, 2 folders"),
}


@pytest.fixture(scope="module")
def runs(request):
    """The selected scripts started at once (they use free ports and private folders), so the
    whole module takes about as long as the slowest script."""
    env = {k: v for k, v in os.environ.items() if k != "BAI_BENCH_PG_DSN"}
    chosen = {item.callspec.params["script"] for item in request.session.items
              if item.originalname == "test_bench_script_runs_tiny"}
    procs = {
        script: subprocess.Popen([sys.executable, str(BENCH / script), *args], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=BENCH.parent, preexec_fn=_hears_sigint)
        for script, (args, _phrase) in CASES.items() if script in chosen
    }
    yield procs
    for proc in procs.values():
        stop(proc)


def _hears_sigint() -> None:
    """In the script's process before it starts: SIGINT as Ctrl-C. A pytest started in the
    background by a shell without job control (CI) ignores SIGINT, its children inherit that,
    and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen) -> None:
    """End a script still running as Ctrl-C does, so that it stops the daemons it started
    (killed outright, it left its manager, agent and pooled runners running for good)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_runs_tiny(runs, script: str) -> None:
    _args, phrase = CASES[script]
    out, err = runs[script].communicate(timeout=240)
    assert runs[script].returncode == 0, out[-3000:] + err[-3000:]
    assert "machine:" in out and "commit:" in out  # the conditions block
    assert phrase in out, out[-3000:]
    assert "Traceback" not in err


def test_percentiles_are_nearest_rank() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from harness import figures, percentile
    finally:
        sys.path.remove(str(BENCH))
    samples = list(range(1, 101))
    assert percentile(samples, 90) == 90 and percentile(samples, 99) == 99
    assert percentile([5.0], 99) == 5.0
    f = figures([3, 1, 2, 4])
    assert f["median"] == 2.5 and f["min"] == 1 and f["max"] == 4 and f["n"] == 4


@pytest.mark.parametrize("args, name", [(["--hello", "0"], "--hello"),
                                        (["--submit", "0"], "--submit"),
                                        (["--jobs", "0,5"], "--jobs"),
                                        (["--listing", "many"], "--listing")])
def test_the_side_by_side_refuses_a_count_it_cannot_run(args: list[str], name: str) -> None:
    # --hello 0 ended in a KeyError and --submit 0 in a ZeroDivisionError, after the stacks started
    done = subprocess.run([sys.executable, str(BENCH / "slurm_side_by_side.py"), "--no-slurm",
                           *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"argument {name}:" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_a_script_stopped_by_the_module_leaves_no_daemon_behind(tmp_path: Path) -> None:
    # The module used to kill a script still running (one not selected, or one that hung): its
    # manager, agent and pooled runners went on for good, each holding a kernel's mounts.
    sys.path.insert(0, str(BENCH))
    try:
        from harness import pids_mentioning
    finally:
        sys.path.remove(str(BENCH))
    # the script's stack lives under tmp_path; its report goes to a file as it is printed
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("BAI_BENCH_PG_DSN", None)
    report = tmp_path / "report.txt"
    with open(report, "w") as out:
        proc = subprocess.Popen([sys.executable, str(BENCH / "hello_world.py"), "--runs",
                                 "100000", "--runtime", "process"], env=env, stdout=out,
                                stderr=subprocess.PIPE, text=True, cwd=BENCH.parent,
                                preexec_fn=_hears_sigint)
    try:
        # running: its stack started (the conditions are printed inside the stack's ``with``)
        deadline = time.monotonic() + 120
        while "machine:" not in report.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the script's stack did not start"
            time.sleep(0.2)
        assert any("bai.agent" in _cmdline(p) for p in pids_mentioning(str(tmp_path)))
    finally:
        stop(proc)
    deadline = time.monotonic() + 60
    while left := [_cmdline(p) for p in pids_mentioning(str(tmp_path))]:
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
