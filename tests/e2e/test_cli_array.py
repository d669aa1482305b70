"""``backend.ai start --array``: one request queues NAME-INDEX sessions, each with its index in
``BAI_ARRAY_INDEX`` (the process runtime really runs their startup commands)."""

from __future__ import annotations

import json

import pytest
from scheduling_support import session, stack, wait_for  # noqa: F401 - stack: the fixture


def test_three_elements_run_and_each_prints_its_index(stack):
    # each element prints its index, then stays RUNNING so that its log can be read
    proc = stack.cli("start", "--array", "1-3", "-t", "arr-job", "--type", "batch", "-r",
                     "cpu=0.5", "-c", 'echo "index=$BAI_ARRAY_INDEX"; sleep 600', "python",
                     user=True)
    assert "3 sessions queued: arr-job-1, arr-job-2, arr-job-3." in proc.stdout, proc.stdout
    try:
        for i in (1, 2, 3):
            name = f"arr-job-{i}"
            wait_for(lambda n=name: session(stack, n)["status"] == "RUNNING", 180,
                     f"{name} runs")
            logs = wait_for(lambda n=name: stack.cli("logs", n, user=True).stdout.strip(), 60,
                            f"{name} prints")
            assert logs.split() == [f"index={i}"], logs
    finally:
        stack.cli("rm", "arr-job-1", "arr-job-2", "arr-job-3", user=True, check=False)


def test_json_output_lists_the_elements(stack):
    proc = stack.cli("--output", "json", "start", "--array", "0-10:5", "-t", "arr-json",
                     "--starts-at", "1h", "--type", "batch", "-c", "true", "python", user=True)
    elements = json.loads(proc.stdout)["array"]
    assert [(e["name"], e["index"]) for e in elements] == [
        ("arr-json-0", 0), ("arr-json-5", 5), ("arr-json-10", 10)]
    stack.cli("rm", "arr-json-0", "arr-json-5", "arr-json-10", user=True)


@pytest.mark.parametrize("spec", ["3-1", "1-20000", "a,b"])
def test_a_bad_spec_is_one_line_and_exit_2(stack, spec):
    proc = stack.cli("start", "--array", spec, "-t", "arr-bad", "--type", "batch", "-c", "true",
                     "python", user=True, check=False)
    assert proc.returncode == 2, proc
    assert len(proc.stderr.strip().splitlines()) == 1 and "--array" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
