"""What an operator sees of a running stack: /metrics (parsed with prometheus_client's own
parser) on manager and agent, health probes, and who may read the metrics."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bai.common.auth import make_headers
from stacks import free_port, start_stack

Samples = dict[tuple[str, frozenset], float]


@pytest.fixture(scope="module")
def ops_stack():
    ports = {"manager": free_port(), "agent": free_port()}
    st = start_stack("cpu=4", "mem=4g", env={
        "BAI_MANAGER_OPS_PORT": str(ports["manager"]), "BAI_AGENT_OPS_PORT": str(ports["agent"]),
        "BAI_MANAGER_LOG_FORMAT": "json", "BAI_AGENT_LOG_FORMAT": "json",
    })
    st.ops = ports  # type: ignore[attr-defined]
    yield st
    st.stop()
    shutil.rmtree(st.home, ignore_errors=True)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(port: int) -> Samples:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(what: str, probe, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def signed_get(stack, path: str, who: str) -> tuple[int, str]:
    keys = stack.keys()[who]
    host = f"127.0.0.1:{stack.port}"
    headers = make_headers(keys["access_key"], keys["secret_key"], "GET", path, host, "text/plain")
    headers["Content-Type"] = "text/plain"
    return get(f"http://{host}{path}", headers)


def test_metrics_follow_a_session_from_start_to_end(ops_stack):
    st = ops_stack
    mport, aport = st.ops["manager"], st.ops["agent"]
    before = wait_for("the agent to be counted alive", lambda: (
        s := scrape(mport)) and value(s, "bai_manager_agents", status="ALIVE") == 1 and s)
    assert value(before, "bai_manager_database_up") == 1
    assert value(before, "bai_manager_agent_slots_capacity",
                 agent="local", resource_group="default", slot="cpu") == 4
    assert value(before, "bai_manager_sessions", status="RUNNING", resource_group="default") == 0
    placed0 = value(before, "bai_manager_scheduler_placements_total")

    st.cli("start", "-t", "ops1", "python", user=True)
    running = wait_for("the session to be counted RUNNING", lambda: (
        s := scrape(mport)) and value(s, "bai_manager_sessions", status="RUNNING",
                                      resource_group="default") == 1 and s)
    assert value(running, "bai_manager_agent_slots_used",
                 agent="local", resource_group="default", slot="cpu") > 0
    assert value(running, "bai_manager_scheduler_placements_total") >= placed0 + 1
    assert value(running, "bai_manager_scheduler_pass_duration_seconds_count") > 0
    # a create, a placement and a start are statements: the counter the benches divide by jobs
    assert value(running, "bai_manager_sql_statements_total") \
        >= value(before, "bai_manager_sql_statements_total") + 5
    assert total(running, "bai_manager_api_requests_total", method="POST", route="/session") >= 1
    assert total(running, "bai_manager_api_request_duration_seconds_count",
                 method="POST", route="/session") >= 1

    agent = wait_for("the kernel's memory on the agent", lambda: (
        s := scrape(aport)) and total(s, "bai_agent_kernel_memory_bytes") > 0 and s)
    assert value(agent, "bai_agent_kernels", status="RUNNING") == 1
    assert value(agent, "bai_agent_slots_capacity", slot="cpu") == 4
    assert value(agent, "bai_agent_slots_used", slot="cpu") > 0
    assert value(agent, "bai_agent_registered") == 1
    assert any(n == "bai_agent_kernel_cpu_seconds_total" for n, _ in agent)

    st.cli("rm", "ops1", user=True)
    ended = wait_for("the session to be counted TERMINATED", lambda: (
        s := scrape(mport)) and value(s, "bai_manager_sessions", status="RUNNING",
                                      resource_group="default") == 0
        and value(s, "bai_manager_sessions", status="TERMINATED", resource_group="default") >= 1
        and s)
    assert value(ended, "bai_manager_agent_slots_used",
                 agent="local", resource_group="default", slot="cpu") == 0
    agent = wait_for("the kernel to leave the agent's figures", lambda: (
        s := scrape(aport)) and total(s, "bai_agent_kernel_memory_bytes") == 0 and s)
    assert value(agent, "bai_agent_kernels", status="RUNNING") == 0
    assert value(agent, "bai_agent_slots_used", slot="cpu") == 0


def test_only_an_admin_keypair_reads_metrics_on_the_api(ops_stack):
    st = ops_stack
    status, text = signed_get(st, "/metrics", "admin")
    assert status == 200, text
    assert value(parse(text), "bai_manager_database_up") == 1
    status, text = signed_get(st, "/metrics", "user")  # the attack: a normal user's keypair
    assert status == 403, text
    assert "bai_manager" not in text and json.loads(text)["title"]
    status, text = get(f"{st.endpoint}/metrics")  # unsigned
    assert status == 401 and "bai_manager" not in text
    # the agent's API asks for the cluster token
    status, text = get(f"http://127.0.0.1:{st.agent_port}/metrics")
    assert status == 401 and "bai_agent" not in text


def test_health_probes_answer_unsigned(ops_stack):
    st = ops_stack
    for base in (st.endpoint, f"http://127.0.0.1:{st.ops['manager']}"):
        assert get(f"{base}/health/live")[0] == 200
        status, text = get(f"{base}/health/ready")
        assert status == 200, text
        assert json.loads(text) == {"ready": True, "checks": {
            "database": "ok", "event_bus": "ok", "scheduler": "ok"}}
    for base in (f"http://127.0.0.1:{st.agent_port}", f"http://127.0.0.1:{st.ops['agent']}"):
        assert get(f"{base}/health/live")[0] == 200
        status, text = wait_for("the agent to be ready", lambda: (
            r := get(f"{base}/health/ready")) and r[0] == 200 and r)
        assert json.loads(text) == {"ready": True, "checks": {"registered": "ok"}}


def json_lines(path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # every log line is one JSON object
    return out


def test_one_request_id_follows_a_session_from_the_api_to_the_agent(ops_stack):
    st = ops_stack
    st.cli("start", "-t", "ops-log", "python", user=True)
    try:
        def create_line():
            lines = json_lines(st.state / "manager.log")
            return next((x for x in lines if x["logger"] == "bai.access" and x.get("method") == "POST"
                         and x.get("route") == "/session" and x.get("status") == 201), None)

        access = wait_for("the create request's access log line", create_line)
        rid = access["request_id"]
        assert access["path"] == "/session" and access["duration_ms"] >= 0
        placed = wait_for("the scheduler's line under that id", lambda: [
            x for x in json_lines(st.state / "manager.log")
            if x.get("request_id") == rid and "placed on" in x["message"]])
        assert placed[0]["logger"] == "bai.manager.services.scheduling"
        created = wait_for("the agent's line under that id", lambda: [
            x for x in json_lines(st.state / "agent.log")
            if x.get("request_id") == rid and x["message"].startswith("creating kernel")])
        session_id = placed[0]["message"].split()[1]
        assert session_id in created[0]["message"]
    finally:
        st.cli("rm", "ops-log", user=True, check=False)


def test_a_clients_request_id_is_kept_and_answered(ops_stack):
    st = ops_stack
    keys = st.keys()["admin"]
    host = f"127.0.0.1:{st.port}"
    headers = make_headers(keys["access_key"], keys["secret_key"], "GET", "/metrics", host,
                           "text/plain")
    headers.update({"Content-Type": "text/plain", "X-Request-ID": "ops-trace-42"})
    req = urllib.request.Request(f"http://{host}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["X-Request-ID"] == "ops-trace-42"
    line = wait_for("the access log line", lambda: next((
        x for x in json_lines(st.state / "manager.log")
        if x.get("request_id") == "ops-trace-42" and x["logger"] == "bai.access"), None))
    assert line["route"] == "/metrics" and line["status"] == 200
    # an id that is not a plain short token is replaced, not logged
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{host}/health/live", headers={"X-Request-ID": "bad id\u00e9"}), timeout=30) as r:
        assert r.headers["X-Request-ID"] and r.headers["X-Request-ID"] != "bad id"
