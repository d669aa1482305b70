# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""The official Backend.AI CLI 23.9.10 lists bai sessions: `ps`, `admin session list`, `info`.

Three sessions are made once for the module through the official client itself (`start`, `rm`):
an admin session that runs (with a tag and `-r` slots), an admin session that was removed, and a
user session that runs. Every listing test checks the rows the client prints for those sessions.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal

import pytest
from official import (
    DEAD_STATUSES,
    DEFAULT_STATUSES,
    RUNNING_STATUSES,
    parse_table,
    requires_official,
    row_named,
    unique_name,
)

pytestmark = [requires_official, pytest.mark.official_client]

DEFAULT_HEADERS = ["Name", "Owner Access Key", "Session ID", "Project/Group", "Main Kernel ID",
                   "Image", "Type", "Status", "Status Info", "Last Updated", "Result"]
USER_HEADERS = [h for h in DEFAULT_HEADERS if h != "Owner Access Key"]

#: Every `-f` field the seed documents list (002_*.txt), in their order.
SEED_FIELDS = [
    "id", "main_kernel_id", "tag", "name", "type", "image", "registry", "cluster_template",
    "cluster_mode", "cluster_size", "domain_name", "group_name", "group_id", "agent_ids",
    "user_email", "user_id", "access_key", "status", "status_info", "status_changed", "created_at",
    "terminated_at", "starts_at", "scheduled_at", "startup_command", "result", "resource_opts",
    "scaling_group", "service_ports", "mounts", "occupying_slots", "dependencies",
    "abusing_reports", "idle_checks",
]
SEED_HEADERS = [
    "Session ID", "Main Kernel ID", "Tag", "Name", "Type", "Image", "Registry", "Cluster Template",
    "Cluster Mode", "Cluster Size", "Domain Name", "Project/Group", "Group ID", "Agent Ids",
    "User Email", "User ID", "Owner Access Key", "Status", "Status Info", "Last Updated",
    "Created At", "Terminated At", "Starts At", "Scheduled At", "Startup Command", "Result",
    "Resource Opts", "Scaling Group", "Service Ports", "Mounts", "Occupying Slots", "Dependencies",
    "Abusing Reports", "Idle Checks",
]

_CREATED = re.compile(r"Session ID ([0-9a-f-]{36}) is created and ready")


def started_id(res) -> str:
    m = _CREATED.search(res.stderr)
    assert m, f"start did not report a ready session:\n{res}"
    return m.group(1)


def is_iso(value) -> bool:
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        return False
    return True


def is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def slots_of(console: str) -> dict[str, str]:
    """'cpu:2, mem:512.0M' -> {'cpu': '2', 'mem': '512.0M'}"""
    return dict(part.split(":", 1) for part in console.split(", ") if part)


@pytest.fixture(scope="module")
def sessions(admin, user):
    """key -> {name, id, ak} for: `run` (admin, RUNNING), `dead` (admin, TERMINATED), `usr`
    (user, RUNNING) and `udead` (user, TERMINATED)."""
    made = {
        "run": unique_name("ofl-run"),
        "dead": unique_name("ofl-dead"),
        "usr": unique_name("ofl-usr"),
        "udead": unique_name("ofl-udead"),
    }
    out = {}
    res = admin("start", "-t", made["run"], "--tag", "ofl-tag", "-r", "cpu=2", "-r", "mem=512m",
                "python")
    out["run"] = {"name": made["run"], "id": started_id(res), "ak": admin.access_key}
    res = admin("start", "-t", made["dead"], "python")
    out["dead"] = {"name": made["dead"], "id": started_id(res), "ak": admin.access_key}
    admin("rm", made["dead"])
    res = user("start", "-t", made["udead"], "python")
    out["udead"] = {"name": made["udead"], "id": started_id(res), "ak": user.access_key}
    user("rm", made["udead"])
    res = user("start", "-t", made["usr"], "python")
    out["usr"] = {"name": made["usr"], "id": started_id(res), "ak": user.access_key}
    admin.wait_status(made["dead"], "TERMINATED")
    yield out
    for key in ("run",):
        admin("rm", made[key], check=False)
    user("rm", made["usr"], check=False)


def test_ps_default_columns_and_values(admin, sessions):
    res = admin("ps")
    rows = parse_table(res.stdout)
    header = res.stdout.splitlines()[0].split()
    assert " ".join(header) == " ".join(DEFAULT_HEADERS)  # "Owner Access Key" etc. in order
    row = row_named(rows, sessions["run"]["name"])
    assert row["Owner Access Key"] == admin.access_key
    assert row["Session ID"] == sessions["run"]["id"]
    assert row["Project/Group"] == "default"
    assert is_uuid(row["Main Kernel ID"])
    assert "python" in row["Image"]
    assert row["Type"] == "INTERACTIVE"
    assert row["Status"] == "RUNNING"
    assert is_iso(row["Last Updated"])
    assert row["Result"] == "UNDEFINED"
    assert sessions["dead"]["name"] not in {r["Name"] for r in rows}
    assert {r["Status"] for r in rows} <= DEFAULT_STATUSES


def test_admin_session_list_is_ps(admin, sessions):
    ps_rows = parse_table(admin("ps").stdout)
    rows = parse_table(admin("admin", "session", "list").stdout)
    assert list(rows[0]) == DEFAULT_HEADERS
    row = row_named(rows, sessions["run"]["name"])
    assert row == row_named(ps_rows, sessions["run"]["name"])
    assert sessions["dead"]["name"] not in {r["Name"] for r in rows}


@pytest.mark.parametrize("cmd", [("ps",), ("admin", "session", "list")])
def test_running_filter(admin, sessions, cmd):
    rows = admin.table(*cmd, "--running")
    names = {r["Name"] for r in rows}
    assert sessions["run"]["name"] in names
    assert sessions["dead"]["name"] not in names
    assert {r["Status"] for r in rows} <= RUNNING_STATUSES


@pytest.mark.parametrize("cmd", [("ps",), ("admin", "session", "list")])
def test_dead_filter(admin, sessions, cmd):
    rows = admin.table(*cmd, "--dead")
    names = {r["Name"] for r in rows}
    assert sessions["run"]["name"] not in names
    row = row_named(rows, sessions["dead"]["name"])
    assert row["Status"] == "TERMINATED"
    assert row["Session ID"] == sessions["dead"]["id"]
    assert row["Status Info"] == "user-requested"
    assert {r["Status"] for r in rows} <= DEAD_STATUSES


def test_status_filter(admin, sessions):
    rows = admin.table("ps", "--status", "RUNNING")
    assert {r["Status"] for r in rows} == {"RUNNING"}
    assert sessions["run"]["name"] in {r["Name"] for r in rows}
    rows = admin.table("ps", "-s", "TERMINATED")
    assert {r["Status"] for r in rows} == {"TERMINATED"}
    assert sessions["dead"]["name"] in {r["Name"] for r in rows}
    assert sessions["run"]["name"] not in {r["Name"] for r in rows}


@pytest.mark.parametrize("flag", [("--all",), ("-a",), ("--status", "ALL")])
def test_all_statuses(admin, sessions, flag):
    rows = admin.table("admin", "session", "list", *flag)
    assert row_named(rows, sessions["run"]["name"])["Status"] == "RUNNING"
    assert row_named(rows, sessions["dead"]["name"])["Status"] == "TERMINATED"


def test_most_recently_changed_first(admin, sessions):
    rows = admin.table("ps", "--all", "-f", "name,status_changed")
    stamps = [datetime.fromisoformat(r["Last Updated"]) for r in rows]
    assert stamps == sorted(stamps, reverse=True)


def test_name_only(admin, sessions):
    rows = admin.table("ps", "--name-only")
    assert list(rows[0]) == ["Name", "Owner Access Key"]
    assert row_named(rows, sessions["run"]["name"])["Owner Access Key"] == admin.access_key
    rows = admin.table("admin", "session", "list", "--name-only", "--dead")
    assert sessions["dead"]["name"] in {r["Name"] for r in rows}


def test_detail(admin, sessions):
    rows = admin.table("ps", "--detail")
    assert list(rows[0]) == DEFAULT_HEADERS + ["Tag", "Created At", "Occupying Slots"]
    row = row_named(rows, sessions["run"]["name"])
    assert row["Session ID"] == sessions["run"]["id"]
    assert row["Tag"] == "ofl-tag"
    assert is_iso(row["Created At"])
    assert datetime.fromisoformat(row["Created At"]) <= datetime.fromisoformat(row["Last Updated"])
    slots = slots_of(row["Occupying Slots"])
    assert Decimal(slots["cpu"]) == 2
    assert slots["mem"] == "512.0M"


def test_format_seed_example(admin, sessions):
    # the seed's own example: `backend.ai admin session list --format id,status,occupying_slots`
    rows = admin.table("admin", "session", "list", "--format", "id,status,occupying_slots")
    assert list(rows[0]) == ["Session ID", "Status", "Occupying Slots"]
    row = row_named(rows, sessions["run"]["id"], key="Session ID")
    assert row["Status"] == "RUNNING"
    assert slots_of(row["Occupying Slots"])["mem"] == "512.0M"


def test_format_every_seed_field_console(admin, sessions):
    """Every -f field renders (the console formatters json-decode several of them)."""
    fields = ["name"] + [f for f in SEED_FIELDS if f != "name"]
    rows = admin.table("ps", "--all", "-f", ",".join(fields), "--filter",
                       f'name == "{sessions["run"]["name"]}"')
    assert list(rows[0]) == ["Name"] + [h for h in SEED_HEADERS if h != "Name"]
    row = row_named(rows, sessions["run"]["name"])
    assert row["Session ID"] == sessions["run"]["id"]
    assert row["Tag"] == "ofl-tag"
    assert row["Owner Access Key"] == admin.access_key
    assert row["Status"] == "RUNNING"
    assert row["Cluster Mode"] == "single-node"
    assert row["Cluster Size"] == "1"
    assert row["Domain Name"] == "default"
    assert row["Project/Group"] == "default"
    assert row["Terminated At"] == "(null)"
    assert row["Result"] == "UNDEFINED"
    assert Decimal(slots_of(row["Occupying Slots"])["cpu"]) == 2
    assert row["Dependencies"] == "(no dependency tasks)"


def test_format_every_seed_field_values(admin, sessions):
    """The same fields as JSON: each holds the right session's real value."""
    run = admin.session_json(sessions["run"]["name"], fields="name," + ",".join(
        f for f in SEED_FIELDS if f != "name"))
    dead = admin.session_json(sessions["dead"]["name"], fields=",".join(SEED_FIELDS))
    info = admin.list_json("info", sessions["run"]["id"])["items"][0]
    assert run["session_id"] == sessions["run"]["id"]
    assert run["main_kernel_id"] == info["main_kernel_id"] and is_uuid(run["main_kernel_id"])
    assert run["tag"] == "ofl-tag" and dead["tag"] is None
    assert run["type"] == "INTERACTIVE"
    assert "python" in run["image"]
    assert run["registry"] is None or isinstance(run["registry"], str)
    assert run["cluster_mode"] == "single-node" and run["cluster_size"] == 1
    assert run["domain_name"] == "default" and run["group_name"] == "default"
    assert is_uuid(run["group_id"]) and run["group_id"] == dead["group_id"]
    assert isinstance(run["agent_ids"], list) and len(run["agent_ids"]) == 1
    assert "@" in run["user_email"]
    assert is_uuid(run["user_id"]) and run["user_id"] == dead["user_id"]
    assert run["access_key"] == admin.access_key
    assert run["status"] == "RUNNING" and dead["status"] == "TERMINATED"
    assert dead["status_info"] == "user-requested"
    created = datetime.fromisoformat(run["created_at"])
    assert datetime.fromisoformat(run["scheduled_at"]) >= created
    assert datetime.fromisoformat(run["status_changed"]) >= created
    assert run["terminated_at"] is None
    assert datetime.fromisoformat(dead["terminated_at"]) >= datetime.fromisoformat(
        dead["created_at"])
    assert run["starts_at"] is None
    assert run["startup_command"] is None
    assert run["result"] == "UNDEFINED"
    assert isinstance(run["resource_opts"], dict)
    assert isinstance(run["scaling_group"], str) and run["scaling_group"]
    assert isinstance(run["service_ports"], dict)
    assert run["mounts"] == []
    assert {k: Decimal(str(v)) for k, v in run["occupying_slots"].items()
            if k in ("cpu", "mem")} == {"cpu": 2, "mem": 512 * 2**20}
    assert run["dependencies"] == []
    assert run["abusing_reports"] in (None, [])
    assert "idle_checks" in run


def test_admin_access_key_sees_another_users_sessions(admin, user, sessions):
    rows = admin.table("ps", "--access-key", user.access_key)
    row = row_named(rows, sessions["usr"]["name"])
    assert row["Session ID"] == sessions["usr"]["id"]
    assert row["Owner Access Key"] == user.access_key
    assert row["Status"] == "RUNNING"
    assert {r["Owner Access Key"] for r in rows} == {user.access_key}
    rows = admin.table("admin", "session", "list", "--all", "--access-key", admin.access_key,
                       "-f", "name,access_key")
    assert sessions["usr"]["name"] not in {r["Name"] for r in rows}
    assert {r["Owner Access Key"] for r in rows} == {admin.access_key}


def test_user_never_sees_other_users_sessions(user, sessions):
    res = user("ps")
    rows = parse_table(res.stdout)
    assert list(rows[0]) == USER_HEADERS  # not an admin: no owner column
    row = row_named(rows, sessions["usr"]["name"])
    assert row["Session ID"] == sessions["usr"]["id"]
    for args in (("ps", "--all"), ("admin", "session", "list", "--dead"), ("ps", "--running")):
        rows = user.table(*args, "-f", "name,access_key,id")
        assert {r["Owner Access Key"] for r in rows} <= {user.access_key}, args
        names = {r["Name"] for r in rows}
        assert sessions["run"]["name"] not in names and sessions["dead"]["name"] not in names
        assert names & {sessions["usr"]["name"], sessions["udead"]["name"]}, args
    doc = user.list_json("ps", "--all", "--limit", "100", "-f", "name,access_key")
    assert {it["access_key"] for it in doc["items"]} == {user.access_key}


def test_user_cannot_list_another_access_key(user, admin, sessions):
    res = user("ps", "--all", "--access-key", admin.access_key, check=False)
    assert res.returncode == 1
    assert "BackendAPIError" in res.stderr  # refused, printed as an error
    assert sessions["run"]["name"] not in res.stdout
    assert sessions["dead"]["name"] not in res.stdout


def test_output_json_listing(admin, sessions):
    doc = admin.list_json("ps")
    assert set(doc) == {"count", "total_count", "items"}
    assert doc["count"] == len(doc["items"]) <= 20
    assert doc["total_count"] >= doc["count"]
    for it in doc["items"]:
        assert list(it) == ["name", "access_key", "session_id", "group_name", "main_kernel_id",
                            "image", "type", "status", "status_info", "status_changed", "result"]
    doc = admin.list_json("ps", "--filter", f'name == "{sessions["run"]["name"]}"')
    assert doc["count"] == doc["total_count"] == 1
    item = doc["items"][0]
    assert item["session_id"] == sessions["run"]["id"]
    assert item["access_key"] == admin.access_key
    assert item["status"] == "RUNNING"
    doc = admin.list_json("ps", "--detail", "--dead", "--limit", "100")
    item = next(it for it in doc["items"] if it["name"] == sessions["dead"]["name"])
    assert item["status"] == "TERMINATED"
    assert isinstance(item["occupying_slots"], dict)


def test_output_json_paging(admin, sessions):
    # only this module's sessions: their statuses stay put between the two calls
    ours = " | ".join(f'name == "{s["name"]}"' for s in sessions.values())
    first = admin.list_json("ps", "--all", "--limit", "1", "--filter", ours)
    second = admin.list_json("ps", "--all", "--limit", "1", "--offset", "1", "--filter", ours)
    assert first["count"] == second["count"] == 1
    assert first["total_count"] == second["total_count"] == len(sessions)
    assert first["items"][0]["session_id"] != second["items"][0]["session_id"]
    rest = admin.list_json("ps", "--all", "--limit", "10", "--offset", "1", "--filter", ours)
    assert rest["items"][0] == second["items"][0]
    assert [first["items"][0]] + rest["items"] == admin.list_json(
        "ps", "--all", "--filter", ours)["items"]


def test_info_uuid(admin, sessions):
    res = admin("info", sessions["run"]["id"])
    rows = parse_table(res.stdout)
    fields = {r["Field"]: r["Value"] for r in rows}
    assert fields["Name"] == sessions["run"]["name"]
    assert fields["Session ID"] == sessions["run"]["id"]
    assert fields["Status"] == "RUNNING"
    assert fields["Tag"] == "ofl-tag"
    assert fields["Terminated At"] == "(null)"
    assert slots_of(fields["Occupying Slots"])["mem"] == "512.0M"
    main_kernel = fields["Main Kernel ID"]
    assert is_uuid(main_kernel)
    assert fields["Containers"].startswith(f"+ {main_kernel}")
    assert "- Cluster Role: main" in fields["Containers"]
    assert f"- Session ID: {sessions['run']['id']}" in fields["Containers"]
    assert "- Status: RUNNING" in fields["Containers"]
    assert fields["Dependencies"] == "(no dependency tasks)"

    doc = admin.list_json("info", sessions["dead"]["id"])
    assert doc["count"] == 1
    item = doc["items"][0]
    assert item["session_id"] == sessions["dead"]["id"]
    assert item["name"] == sessions["dead"]["name"]
    assert item["status"] == "TERMINATED"
    assert item["terminated_at"] is not None
    assert [c["kernel_id"] for c in item["containers"]] == [item["main_kernel_id"]]

    for cmd in (("session", "info"), ("admin", "session", "info")):
        rows = parse_table(admin(*cmd, sessions["run"]["id"]).stdout)
        assert {r["Field"]: r["Value"] for r in rows}["Name"] == sessions["run"]["name"]


def test_info_unknown_and_foreign(admin, user, sessions):
    res = admin("info", str(uuid.uuid4()), check=False)
    assert res.returncode == 1
    assert "There is no such compute session." in res.stderr
    rows = parse_table(admin("info", sessions["usr"]["id"]).stdout)  # admins see anyone's
    assert {r["Field"]: r["Value"] for r in rows}["Name"] == sessions["usr"]["name"]
    res = user("info", sessions["run"]["id"], check=False)  # an admin's session
    assert res.returncode == 1
    assert sessions["run"]["name"] not in res.stdout
