"""The listing's filter/order minilang and the pure parts of the GraphQL values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from bai.manager.api.events import in_scope, parse_scope
from bai.manager.api.stream import client_frame, safe_relpath, work_relative
from bai.manager.services.listing import FILTER_FIELDS, ORDER_FIELDS, idle_checks, service_ports_mapping, status_clause
from bai.manager.services.queryfilter import QueryFilterError, parse_filter, parse_order

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def sql(clause) -> str:
    return str(clause.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("text,expected", [
    ('status == "running"', "sessions.status = 'RUNNING'"),
    ('name == "x"', "sessions.name = 'x'"),
    ("name ilike '%Tr%'", "lower(sessions.name) LIKE lower('%Tr%')"),
    ('type != "batch"', "sessions.type != 'BATCH'"),
    ("cluster_size >= 2", "sessions.cluster_size >= 2"),
    ('status in ["error", "cancelled"]', "sessions.status IN ('ERROR', 'CANCELLED')"),
    ("tag is null", "sessions.tag IS NULL"),
    ('group_name == "default"', "groups.name = 'default'"),
])
def test_filter_terms(text, expected):
    assert sql(parse_filter(text, FILTER_FIELDS)) == expected


def test_filter_combinations_and_escapes():
    out = sql(parse_filter('name == "a\\"b" & (status == "RUNNING" | result == "failure")', FILTER_FIELDS))
    assert out == "sessions.name = 'a\"b' AND (sessions.status = 'RUNNING' OR sessions.result = 'FAILURE')"
    assert "created_at >" in sql(parse_filter('created_at > "2026-01-01T00:00:00"', FILTER_FIELDS))


@pytest.mark.parametrize("text,fragment", [
    ("password == 1", "unknown filter field 'password'"),
    ('name = "x"', "cannot parse"),
    ('name == "x" &', "ends too early"),
    ('name == "x")', "unexpected"),
    ("cluster_size == \"many\"", "not a valid value"),
    ('cluster_size like "1%"', "text fields only"),
    ('name in "x"', "takes an array"),
    ('created_at > "yesterday"', "not a valid value"),
])
def test_filter_errors_say_what_is_wrong(text, fragment):
    with pytest.raises(QueryFilterError, match=fragment):
        parse_filter(text, FILTER_FIELDS)


def test_order():
    assert [sql(c) for c in parse_order("-created_at,+name, status", ORDER_FIELDS)] == [
        "sessions.created_at DESC", "sessions.name ASC", "sessions.status ASC"]
    with pytest.raises(QueryFilterError, match="cannot order by 'startup_command'"):
        parse_order("startup_command", ORDER_FIELDS)
    with pytest.raises(QueryFilterError, match="names no field"):
        parse_order(" , ", ORDER_FIELDS)


def test_status_clause_ignores_names_we_do_not_have():
    assert sql(status_clause("RUNNING,RUNNING_DEGRADED,ERROR")) == "sessions.status IN ('ERROR', 'RUNNING')"
    assert sql(status_clause("RUNNING_DEGRADED")) in ("0", "false")  # matches nothing, not everything
    assert sql(status_clause(None)) in ("1", "true")


def test_service_ports_become_a_mapping():
    ports = [{"name": "jupyter", "protocol": "http", "ports": [8081]}, {"name": "ttyd", "protocol": "http",
                                                                        "ports": [7681]}]
    assert service_ports_mapping(ports) == {"jupyter": {"protocol": "http", "ports": [8081]},
                                            "ttyd": {"protocol": "http", "ports": [7681]}}
    assert service_ports_mapping([]) == {}


def row(**kw):
    base = {"idle_timeout": 600, "type": "INTERACTIVE", "status": "RUNNING",
            "last_activity_at": NOW - timedelta(seconds=100)}
    base.update(kw)
    return base


def test_idle_checks():
    assert idle_checks(row(), NOW) == {"network_timeout": {
        "remaining": 500.0, "remaining_time_type": "expire_after", "extra": None}}
    assert idle_checks(row(last_activity_at=NOW - timedelta(hours=1)), NOW)["network_timeout"]["remaining"] == -1
    assert idle_checks(row(status="PENDING"), NOW)["network_timeout"]["remaining"] is None
    assert idle_checks(row(idle_timeout=0), NOW) == {}
    assert idle_checks(row(type="BATCH"), NOW) == {}


def test_sse_scopes():
    assert parse_scope("*") == parse_scope(None) == {"session", "kernel"}
    assert parse_scope("kernel") == {"kernel"}
    assert in_scope("kernel_started", {"kernel"}) and not in_scope("session_started", {"kernel"})
    with pytest.raises(Exception, match="scope"):
        parse_scope("everything")


@pytest.mark.parametrize("raw,clean", [
    ("main.py", "main.py"), ("data%2Finput.txt", "data/input.txt"), ("./a//b.txt", "a/b.txt"),
    ("my%20file.txt", "my file.txt"),
])
def test_upload_paths(raw, clean):
    assert safe_relpath(raw) == clean


@pytest.mark.parametrize("raw", ["..%2Fx", "/etc/passwd", "%2Fetc%2Fpasswd", "a/../../b", "C:%5Cwin", "", "."])
def test_upload_paths_refused(raw):
    with pytest.raises(Exception) as err:
        safe_relpath(raw)
    assert getattr(err.value, "status", None) == 400


def test_agent_frames_always_have_status_and_a_console_list():
    import json

    assert json.loads(client_frame('{"status": "finished", "console": null, "exitCode": 0}')) == {
        "status": "finished", "console": [], "exitCode": 0, "options": None, "files": None}
    assert json.loads(client_frame("plain text"))["console"] == [["stdout", "plain text"]]


def test_paths_under_the_upstream_mount_point_are_work_relative():
    assert [work_relative(p) for p in ("/home/work", "/home/work/", "/home/work/data/x", "data", "", "/etc")] == [
        ".", ".", "data/x", "data", ".", "/etc"]
