"""The CLI against the recording fake manager: what it sends, what it prints, its exit codes."""

from __future__ import annotations

import json

import pytest

from test_cli_fake_manager import USER_AK, USER_SK, fake, invoke, make_session  # noqa: F401

from bai.common.status import LIST_DEAD, LIST_DEFAULT

# The official client's POST /session body for `run -t runcode01 IMAGE -c ...` (capture #039),
# with our image name.
OFFICIAL_RUN_BODY = {
    "tag": None, "name": "runcode01",
    "config": {"mounts": [], "environ": {}, "resources": {}, "resource_opts": {},
               "scalingGroup": None, "mount_map": {}, "preopen_ports": []},
    "dependencies": None, "callback_url": None, "architecture": "x86_64", "clusterSize": 1,
    "clusterMode": "single-node", "starts_at": None, "bootstrap_script": None,
    "owner_access_key": None, "domain": "default", "group": "default", "type": "interactive",
    "enqueueOnly": False, "maxWaitSeconds": 0, "reuseIfExists": True, "startupCommand": None,
    "image": "python:3.11-debian12",
}


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- ps ------------------------------------------------------------------------------------------


def test_ps_shows_the_first_10_newest_first_and_says_how_many_more(fake, capsys):
    r = invoke(capsys, "ps")
    assert r.code == 0, r.err
    rows = lines(r.out)
    assert rows[0].split("  ")[0] == "Name"
    assert "Owner Access Key" in rows[0] and "Status Info" in rows[0] and "Result" in rows[0]
    assert len(rows) == 2 + 10
    assert rows[2].startswith("sess-00") and rows[-1].startswith("sess-09")
    assert "5 more" in r.err and "--all" in r.err
    gql = fake.of("POST", "/admin/gql")
    assert "keypair" in gql[0].body["query"]
    assert gql[1].body["variables"]["status"] == ",".join(str(s) for s in LIST_DEFAULT)
    assert gql[1].body["variables"]["limit"] == 10
    assert all(r.signature_ok for r in fake.requests)


def test_ps_all_lists_every_session(fake, capsys, monkeypatch):
    from bai.client.cli import listing

    fake.sessions += [make_session(i) for i in range(15, 130)]
    r = invoke(capsys, "ps", "--all")
    assert r.code == 0
    assert len(lines(r.out)) == 2 + 130
    pages = [q.body["variables"] for q in fake.of("POST", "/admin/gql")[1:]]
    assert [(p["limit"], p["offset"]) for p in pages] == [(5000, 0)]  # one round trip
    assert "more" not in r.err
    # more than a page: the next ones follow until the total is reached
    monkeypatch.setattr(listing, "PAGE", 100)
    fake.requests.clear()
    r = invoke(capsys, "ps", "--all")
    assert r.code == 0 and len(lines(r.out)) == 2 + 130
    pages = [q.body["variables"] for q in fake.of("POST", "/admin/gql")[1:]]
    assert [(p["limit"], p["offset"]) for p in pages] == [(100, 0), (100, 100)]


def test_ps_format_shows_exactly_those_columns(fake, capsys):
    r = invoke(capsys, "admin", "session", "list", "--format", "id,status,occupying_slots")
    assert r.code == 0, r.err
    rows = lines(r.out)
    assert rows[0].split() == ["Session", "ID", "Status", "Occupying", "Slots"]
    assert rows[2].split("  ")[0] == fake.sessions[0]["id"]
    assert rows[2].endswith("cpu:1, mem:256m")
    q = fake.of("POST", "/admin/gql")
    assert len(q) == 1 and "items { id status occupying_slots }" in q[0].body["query"]


def test_ps_session_id_is_a_synonym_of_id(fake, capsys):
    r = invoke(capsys, "ps", "-f", "session_id,name")
    assert r.code == 0 and lines(r.out)[0].startswith("Session ID")


def test_ps_unknown_field_is_one_line_and_exit_2_before_any_request(fake, capsys):
    r = invoke(capsys, "ps", "-f", "name,bogus")
    assert r.code == 2
    assert lines(r.err) == [lines(r.err)[0]] and "'bogus'" in r.err
    assert fake.requests == []


def test_ps_dead_and_status_filters(fake, capsys):
    invoke(capsys, "ps", "--dead")
    assert fake.of("POST", "/admin/gql")[-1].body["variables"]["status"] == ",".join(
        str(s) for s in LIST_DEAD)
    invoke(capsys, "ps", "--status", "pending,error")
    assert fake.of("POST", "/admin/gql")[-1].body["variables"]["status"] == "PENDING,ERROR"
    r = invoke(capsys, "ps", "--status", "NOPE")
    assert r.code == 2 and "NOPE" in r.err


@pytest.mark.parametrize("args", [("--running", "--dead"), ("--dead", "-s", "RUNNING"),
                                  ("--running", "--all-statuses"), ("-f", ""), ("-s", "")])
def test_ps_contradicting_or_empty_options_are_usage_errors(fake, capsys, args):
    r = invoke(capsys, "ps", *args)
    assert r.code == 2 and len(lines(r.err)) == 1 and r.err.startswith("Error: ")
    assert not fake.requests


def test_ps_json_global_and_per_command(fake, capsys):
    for args in (["--output", "json", "ps"], ["ps", "--output", "json"]):
        r = invoke(capsys, *args)
        doc = json.loads(r.out)
        assert doc["count"] == 10 and doc["total_count"] == 15
        first = doc["items"][0]
        assert first["session_id"] == fake.sessions[0]["id"] and "id" not in first
    r = invoke(capsys, "--output", "json", "ps", "--detail")
    assert json.loads(r.out)["items"][0]["occupying_slots"] == {"cpu": "1", "mem": "268435456"}


def test_ps_for_a_user_has_no_owner_column(fake, capsys, monkeypatch):
    fake.knobs["is_admin"] = False
    r = invoke(capsys, "ps", "--name-only")
    assert lines(r.out)[0] == "Name"


def test_ps_access_key_goes_to_the_query(fake, capsys):
    invoke(capsys, "ps", "--access-key", USER_AK)
    assert fake.of("POST", "/admin/gql")[-1].body["variables"]["access_key"] == USER_AK


# -- run / start --------------------------------------------------------------------------------


def test_run_code_sends_the_official_body_and_streams_output(fake, capsys):
    r = invoke(capsys, "run", "-t", "runcode01", "python:3.11-debian12", "-c", "print(1)")
    assert r.code == 0, r.err
    assert r.out == "hello world\n"
    assert "warn\n" in r.err
    body = fake.of("POST", "/session")[0].body
    body["architecture"] = "x86_64"
    assert body == OFFICIAL_RUN_BODY
    assert list(body) == list(OFFICIAL_RUN_BODY)  # key order too
    ws = fake.of("GET", "/stream/session/")[0]
    assert json.loads(ws.ws_in[0]) == {"code": "print(1)", "mode": "query", "options": {}}
    assert "Content-Type" not in ws.headers and ws.signature_ok
    assert not fake.of("DELETE")


def test_run_exit_code_is_the_code_s_exit_code(fake, capsys):
    fake.knobs["ws_frames"] = [{"status": "finished", "console": [["stderr", "Traceback\n"]],
                                "exitCode": 3}]
    r = invoke(capsys, "run", "--rm", "python", "-c", "raise SystemExit(3)")
    assert r.code == 3
    assert len(fake.of("DELETE", "/session/pysdk-")) == 1


def test_run_files_are_uploaded_by_relative_path_and_run_in_batch_mode(fake, capsys, tmp_path):
    (tmp_path / "main.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("some input\n")
    r = invoke(capsys, "run", "-t", "files01", "--exec", "python main.py", "python",
               "main.py", "data/input.txt")
    assert r.code == 0, r.err
    up = fake.of("POST", "/session/files01/upload")[0]
    assert [p["name"] for p in up.parts] == ["src", "src"]
    assert [p["filename"] for p in up.parts] == ["main.py", "data/input.txt"]
    assert up.parts[1]["raw_filename"] == "data%2Finput.txt"
    assert up.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    first = json.loads(fake.of("GET", "/stream/session/")[0].ws_in[0])
    assert first == {"code": "", "mode": "batch", "options": {
        "clean": "*", "build": "*", "buildLog": False, "exec": "python main.py"}}


@pytest.mark.parametrize("express", ["1", "0"])
@pytest.mark.parametrize("code", ["", "  \n"])
def test_run_empty_code_is_refused_before_any_request(fake, capsys, monkeypatch, express, code):
    monkeypatch.setenv("BAI_CLI_EXPRESS", express)
    r = invoke(capsys, "run", "--rm", "-c", code, "python")
    assert r.code == 2 and lines(r.err) == ["Error: -c/--code is empty: give the code to run"]
    assert not fake.requests


def test_run_files_without_exec_need_a_py_file_before_any_request(fake, capsys, tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    (tmp_path / "notes.txt").write_text("x\n")
    r = invoke(capsys, "run", "--rm", "python", "data.csv", "notes.txt")
    assert r.code == 2 and "--exec" in r.err and len(lines(r.err)) == 1
    assert not fake.requests
    (tmp_path / "job.py").write_text("print(1)\n")
    r = invoke(capsys, "run", "--rm", "python", "data.csv", "job.py")
    assert r.code == 0, r.err
    assert fake.of("POST", "/session")


def test_run_basedir_strips_the_prefix(fake, capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("x")
    r = invoke(capsys, "run", "--basedir", "data", "--exec", "cat input.txt", "python",
               "data/input.txt")
    assert r.code == 0, r.err
    assert fake.of("POST", "/session/")[0].parts[0]["filename"] == "input.txt"


def test_run_rm_stats(fake, capsys):
    fake.knobs["destroy_answer"] = {"stats": {"version": 2, "status": "terminated", "cpu_used": {
        "current": "1520", "unit_hint": "msec"}, "mem": {"current": "209715200",
                                                         "unit_hint": "bytes"}}}
    r = invoke(capsys, "run", "--rm", "-s", "python", "-c", "1")
    assert r.code == 0
    assert "cpu_used" in r.out and "1,520" in r.out and "200.0 MiB" in r.out
    d = fake.of("DELETE")[0]
    assert d.headers["Content-Type"] == "text/plain" and d.signature_ok


def test_run_enqueue_only_prints_the_session_and_does_not_execute(fake, capsys):
    fake.knobs["create_status"] = "PENDING"
    r = invoke(capsys, "run", "--enqueue-only", "--rm", "-t", "queued1", "python", "-c", "1")
    assert r.code == 0
    assert "queued1" in r.out and "PENDING" in r.out and fake.sessions[0]["id"] in r.out
    assert "insufficient-resources" in r.out and "queue position 1" in r.out
    assert fake.of("POST", "/session")[0].body["enqueueOnly"] is True
    assert not fake.of("GET", "/stream/") and not fake.of("DELETE")


@pytest.mark.parametrize("express", ["1", "0"])
def test_run_max_wait_timeout_keeps_it_queued_and_says_how_to_cancel(fake, capsys, monkeypatch,
                                                                     express):
    monkeypatch.setenv("BAI_CLI_EXPRESS", express)
    fake.knobs["create_status"] = "TIMEOUT"
    r = invoke(capsys, "run", "--max-wait", "2", "-t", "waits1", "python", "-c", "1")
    assert r.code == 0
    assert "still waiting after 2s" in r.out and "PENDING" in r.out
    assert "backend.ai rm waits1" in r.err
    assert fake.of("POST", "/session")[0].body["maxWaitSeconds"] == 2
    assert not fake.of("GET", "/stream/") and not fake.of("DELETE")


@pytest.mark.parametrize("express", ["1", "0"])
def test_run_rm_max_wait_timeout_cancels_the_session(fake, capsys, monkeypatch, express):
    monkeypatch.setenv("BAI_CLI_EXPRESS", express)
    fake.knobs["create_status"] = "TIMEOUT"
    r = invoke(capsys, "run", "--rm", "--max-wait", "2", "-t", "waits1", "python", "-c", "1")
    assert r.code == 1
    assert [d.raw_path for d in fake.of("DELETE")] == ["/session/waits1"]
    assert lines(r.err)[-1].startswith("Error: session waits1") and "cancelled" in r.err
    assert not fake.of("GET", "/stream/")


def test_run_error_status_exits_1_with_the_reason(fake, capsys):
    fake.knobs["create_status"] = "ERROR"
    r = invoke(capsys, "run", "-t", "broken1", "python", "-c", "1")
    assert r.code == 1
    assert lines(r.err)[-1].startswith("Error: session broken1") and "oom-killed" in r.err


def test_run_bad_resources_fail_before_any_request(fake, capsys):
    for bad in ("cpu=abc", "mem=1z", "cpu"):
        r = invoke(capsys, "run", "-r", bad, "python", "-c", "1")
        assert r.code == 2, bad
        assert len(lines(r.err)) == 1 and r.err.startswith("Error: ")
    assert fake.requests == []


def test_run_mem_without_unit_means_mib_like_the_official_client(fake, capsys):
    invoke(capsys, "run", "-r", "cpu=2", "-r", "mem=256", "-e", "B=two=2", "python", "-c", "1")
    body = fake.of("POST", "/session")[0].body
    assert body["config"]["resources"] == {"cpu": "2", "mem": "256m"}
    assert body["config"]["environ"] == {"B": "two=2"}


def test_run_answers_input_requests_from_stdin(fake, capsys):
    fake.knobs["ws_frames"] = [
        {"status": "waiting-input", "console": [["stdout", "name? "]],
         "options": {"is_password": False}},
        {"status": "finished", "console": [["stdout", "hi\n"]], "exitCode": 0},
    ]
    r = invoke(capsys, "run", "python", "-c", "input()", stdin="Alice\n")
    assert r.code == 0 and r.out == "name? hi\n"
    assert fake.of("GET", "/stream/")[0].ws_in[1] == "Alice"


def test_run_stream_closed_early_is_an_error(fake, capsys):
    fake.knobs["ws_frames"] = [{"status": "continued", "console": [["stdout", "x"]]}, "CLOSE"]
    r = invoke(capsys, "run", "python", "-c", "1")
    assert r.code == 1 and "ended before it finished" in r.err


def test_unknown_image_is_one_line_naming_what_exists(fake, capsys):
    fake.knobs["create_status"] = "unknown-image"
    r = invoke(capsys, "run", "nosuch", "-c", "1")
    assert r.code == 1
    assert lines(r.err) == [lines(r.err)[0]]
    assert r.err.startswith("Error: unknown image 'nosuch'") and "python:3.11-debian12" in r.err


def test_start_sends_start_defaults_and_prints_the_session(fake, capsys):
    r = invoke(capsys, "start", "-t", "mysess", "--depends", "a1b2", "-o", USER_AK, "python")
    assert r.code == 0, r.err
    body = fake.of("POST", "/session")[0].body
    assert body["dependencies"] == ["a1b2"] and body["config"]["preopen_ports"] is None
    assert body["owner_access_key"] == USER_AK
    assert "mysess" in r.out and fake.sessions[0]["id"] in r.out and "ready" in r.out


def test_start_at_a_later_time_returns_once_queued(fake, capsys):
    fake.knobs["create_status"] = "PENDING"
    r = invoke(capsys, "start", "--starts-at", "10m", "-t", "later01", "python")
    assert r.code == 0 and "later01" in r.out and "PENDING" in r.out
    sent = fake.of("POST", "/session")[0].body
    assert sent["starts_at"] == "10m" and sent["enqueueOnly"] is True


def test_start_json(fake, capsys):
    r = invoke(capsys, "start", "--output", "json", "-t", "jsess", "python")
    doc = json.loads(r.out)
    assert doc["name"] == "jsess" and doc["status"] == "RUNNING"


def test_session_name_length_is_checked_locally(fake, capsys):
    r = invoke(capsys, "start", "-t", "a", "python")
    assert r.code == 2 and fake.requests == []
    r = invoke(capsys, "start", "--output", "json", "-t", "nb", "python")  # short names are fine
    assert r.code == 0 and json.loads(r.out)["name"] == "nb"


# -- events, rm, history, info, logs ------------------------------------------------------------


def test_events_print_each_event_and_end_at_server_close(fake, capsys):
    r = invoke(capsys, "events", "sess-01")
    assert r.code == 0
    assert lines(r.out) == ['session_enqueued {"sessionName": "s1"}',
                            'session_started {"sessionName": "s1"}', "server_close {}"]
    req = fake.of("GET", "/events/")[0]
    assert req.raw_path == "/events/session?sessionName=sess-01&scope=*" and req.signature_ok
    invoke(capsys, "events", "--scope", "kernel", "-o", USER_AK, "00000000-0000-0000-0000-000000000002")
    assert fake.of("GET", "/events/")[1].raw_path == (
        "/events/session?sessionId=00000000-0000-0000-0000-000000000002&scope=kernel")


def test_rm_of_several_sessions_is_one_request(fake, capsys):
    fake.knobs["destroy_answer"] = {"stats": {"status": "cancelled"}}
    r = invoke(capsys, "rm", "-f", "sess-01", "missing", "sess-02")
    assert r.code == 1
    assert "sess-01 was cancelled" in r.out and "sess-02 was cancelled" in r.out
    assert lines(r.err) == ["Error: missing: no such session: missing"
                            " (admins: use -o/--owner for another user's session)"]
    assert not fake.of("DELETE")
    (sent,) = fake.of("POST", "/session/_/destroy")
    assert sent.body == {"names": ["sess-01", "missing", "sess-02"], "forced": True,
                         "recursive": False, "owner_access_key": None}


def test_rm_reports_each_session_and_fails_if_any_failed(fake, capsys):
    fake.knobs["destroy_answer"] = {"stats": {"status": "cancelled"}}
    fake.knobs["bulk_destroy"] = False  # an upstream manager: one DELETE each
    r = invoke(capsys, "rm", "sess-01", "missing")
    assert r.code == 1
    assert "sess-01 was cancelled" in r.out
    assert "Error: missing: no such session: missing" in r.err
    assert [d.raw_path for d in fake.of("DELETE")] == ["/session/sess-01", "/session/missing"]


def test_rm_flags_go_to_the_query_in_the_official_order(fake, capsys):
    r = invoke(capsys, "kill", "-f", "-r", "-o", USER_AK, "sess-02")
    assert r.code == 0 and "terminated" in r.out
    assert fake.of("DELETE")[0].raw_path == (
        f"/session/sess-02?owner_access_key={USER_AK}&forced=true&recursive=true")


def test_history_lists_every_transition(fake, capsys):
    r = invoke(capsys, "history", "sess-01")
    rows = lines(r.out)
    assert rows[0].split() == ["Time", "From", "To", "Reason", "Cause"]
    assert rows[2].split() == ["2026-01-01T00:00:00+00:00", "-", "PENDING", "enqueued", "user:AK"]
    assert len(rows) == 4
    doc = json.loads(invoke(capsys, "--output", "json", "history", "sess-01").out)
    assert doc[1]["to"] == "SCHEDULED" and doc[1]["cause"] == "scheduler"


def test_info_by_name_resolves_through_the_listing(fake, capsys):
    r = invoke(capsys, "info", "sess-03")
    assert r.code == 0, r.err
    out = r.out
    assert "Session ID" in out and fake.sessions[3]["id"] in out and "cpu:1, mem:256m" in out
    r = invoke(capsys, "info", "no-such-session")
    assert r.code == 1 and "no such session" in r.err


def test_logs(fake, capsys):
    assert invoke(capsys, "logs", "sess-01").out == "line1\nline2\n"


# -- admin ----------------------------------------------------------------------------------------


def test_admin_refused_for_a_user_is_one_line(fake, capsys):
    fake.knobs["forbid_admin"] = True
    for args in (["admin", "image", "list"], ["admin", "agent", "drain", "a1"],
                 ["admin", "keypair", "create", "x@y.z"]):
        r = invoke(capsys, *args)
        assert r.code == 1
        assert len(lines(r.err)) == 1 and "Admin privilege required" in r.err


def test_admin_commands_send_the_admin_api(fake, capsys):
    r = invoke(capsys, "admin", "keypair", "create", "a@b.c")
    assert "SECRET" in r.out and "not shown again" in r.err
    assert fake.of("POST", "/admin/keypairs")[0].body == {"user": "a@b.c", "is_admin": False}
    invoke(capsys, "admin", "alias", "set", "py", "python:3.11-debian12")
    assert fake.of("POST", "/admin/aliases")[0].body == {"alias": "py",
                                                         "target": "python:3.11-debian12"}
    invoke(capsys, "admin", "agent", "drain", "agent-1")
    assert fake.of("PATCH", "/admin/agents/agent-1")[0].body == {"schedulable": False}
    r = invoke(capsys, "admin", "image", "list")
    assert "python:3.11-debian12" in r.out and "cpu:1" in r.out
    r = invoke(capsys, "admin", "policy", "create", "p1", "--slots", "cpu=x")
    assert r.code == 2


# -- transport ------------------------------------------------------------------------------------


RUN = ("run", "--rm", "-c", "1", "python")
WITHIN = "did not answer within 0.5 s"


@pytest.mark.timeout(60)  # without a read timeout (or stream keep-alives) it never returns
@pytest.mark.parametrize("args, express, knob, path, says", [
    (("ps",), "0", "stall", "/admin/gql", WITHIN),
    (("rm", "sess-01"), "0", "stall", "/session/sess-01", WITHIN),
    (RUN, "1", "stall", "/stream/", WITHIN),
    (RUN, "0", "stall", "/stream/", WITHIN),
    (("events", "sess-01"), "0", "stall", "/events/", WITHIN),
    # streams whose head came, then silence (no keep-alive, no pong): a stalled manager
    (RUN, "1", "mute", "/stream/", WITHIN),
    (RUN, "0", "mute", "/stream/", "no answer to keep-alive pings within 0.5 s"),
    (("events", "sess-01"), "0", "mute", "/events/", WITHIN),
    (("session", "download", "sess-01", "out.txt"), "0", "mute", "/session/sess-01/download",
     WITHIN),
])
def test_a_silent_manager_is_one_clear_line_after_the_read_timeout(fake, capsys, monkeypatch,
                                                                   args, express, knob, path,
                                                                   says):
    monkeypatch.setenv("BAI_CLI_EXPRESS", express)
    monkeypatch.setenv("BAI_READ_TIMEOUT", "0.5")
    fake.knobs[knob] = (path,)
    r = invoke(capsys, *args)
    assert r.code == 1
    last = lines(r.err)[-1]
    assert last.startswith("Error: ") and says in last, r.err
    assert "Traceback" not in r.err


def test_the_read_timeout_is_a_number(fake, capsys, monkeypatch):
    monkeypatch.setenv("BAI_READ_TIMEOUT", "soon")
    r = invoke(capsys, "ps")
    assert r.code == 1 and "BAI_READ_TIMEOUT" in r.err and len(lines(r.err)) == 1


def test_unreachable_manager_is_one_clear_line(fake, capsys, monkeypatch):
    monkeypatch.setenv("BACKEND_ENDPOINT", "http://127.0.0.1:9")
    r = invoke(capsys, "ps")
    assert r.code == 1
    assert r.err == ("Error: cannot reach the manager at http://127.0.0.1:9: is it running?"
                     " (backend.ai server start)\n")


def test_a_dead_endpoint_is_skipped(fake, capsys, monkeypatch):
    monkeypatch.setenv("BACKEND_ENDPOINT", f"http://127.0.0.1:9,{fake.endpoint}")
    r = invoke(capsys, "ps")
    assert r.code == 0 and len(lines(r.out)) == 12


def test_user_profile_keys_are_used(fake, capsys, monkeypatch, tmp_path):
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[default]\nendpoint = "{fake.endpoint}"\naccess_key = "X"\nsecret_key = "Y"\n'
                   f'[user]\nendpoint = "{fake.endpoint}"\naccess_key = "{USER_AK}"\n'
                   f'secret_key = "{USER_SK}"\n')
    monkeypatch.setenv("BAI_CONFIG", str(cfg))
    for k in ("BACKEND_ENDPOINT", "BACKEND_ACCESS_KEY", "BACKEND_SECRET_KEY"):
        monkeypatch.delenv(k)
    r = invoke(capsys, "--profile", "user", "ps")
    assert r.code == 0, r.err
    assert f"credential={USER_AK}:" in fake.requests[0].headers["Authorization"]
    r = invoke(capsys, "--profile", "nope", "ps")
    assert r.code == 1 and "no profile 'nope'" in r.err
