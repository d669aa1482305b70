# ruff: noqa: F811  (pytest fixtures imported from official.py are redefined as arguments)
"""Our `backend.ai` CLI and the official one (23.9.10) agree: for the same sessions, both list the
same sessions with the same statuses and values (issue 3 §3).

Four sessions share a name prefix so both listings can be scoped with one filter: two of the
admin's (one RUNNING, one TERMINATED), one of the user's (RUNNING) and one made by OUR client.
Differences in option names are deliberate and documented: the official `--all` means "every
status" (ours: `--all-statuses`), ours `--all` means "every page".
"""

from __future__ import annotations

import json
import uuid

import pytest
from official import (
    parse_table,
    requires_official,
)

pytestmark = [requires_official, pytest.mark.official_client]

#: Every field both clients can list (seed fields + status_data + created_user_*).
COMPARED = (
    "id,main_kernel_id,tag,name,type,image,registry,cluster_template,cluster_mode,cluster_size,"
    "domain_name,group_name,group_id,agent_ids,user_email,user_id,access_key,created_user_email,"
    "created_user_id,status,status_info,status_data,status_changed,created_at,terminated_at,"
    "starts_at,scheduled_at,startup_command,result,resource_opts,scaling_group,service_ports,"
    "mounts,occupying_slots,dependencies,abusing_reports,idle_checks"
)


@pytest.fixture(scope="module")
def family(ostack, admin, user):
    prefix = f"ofc{uuid.uuid4().hex[:6]}"
    names = {k: f"{prefix}-{k}" for k in ("arun", "adead", "urun", "ours")}
    admin("start", "-t", names["arun"], "-r", "cpu=1", "-r", "mem=300m", "python")
    admin("start", "-t", names["adead"], "python")
    user("start", "-t", names["urun"], "python")
    ostack.cli("start", "-t", names["ours"], "python")
    admin("rm", names["adead"])
    admin.wait_status(names["adead"], "TERMINATED")
    yield prefix, names
    for key in ("arun", "ours"):
        admin("rm", names[key], check=False)
    user("rm", names["urun"], check=False)


#: Fields whose value moves with the clock between the two listings (seconds remaining).
TIME_DEPENDENT = ("idle_checks",)
#: How each client shows "no value" in a table cell.
NULL_CELLS = {"(null)", "-", ""}


def normalise(item: dict) -> dict:
    """JSON values as comparable data: JSON strings decoded; clock-dependent values reduced to
    their shape (keys)."""
    out = {}
    for k, v in item.items():
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        if k in TIME_DEPENDENT and isinstance(v, dict):
            v = sorted(v)
        out[k] = v
    return out


def cell(value: str) -> str | None:
    return None if value in NULL_CELLS else value


def by_id(doc: dict) -> dict[str, dict]:
    return {it["session_id"]: normalise(it) for it in doc["items"]}


def ours_json(stack, *args, user=False) -> dict:
    res = stack.cli("--output", "json", "ps", *args, user=user)
    return json.loads(res.stdout)


def test_same_sessions_same_values_json(ostack, admin, family):
    prefix, names = family
    flt = f'name like "{prefix}-%"'
    official = admin.list_json("ps", "--all", "--limit", "100", "-f", COMPARED, "--filter", flt)
    ours = ours_json(ostack, "--all-statuses", "--all", "-f", COMPARED, "--filter", flt)
    assert official["total_count"] == ours["total_count"] == 4
    theirs_items, our_items = by_id(official), by_id(ours)
    assert set(theirs_items) == set(our_items)
    assert {it["name"] for it in our_items.values()} == set(names.values())
    for sid, theirs in theirs_items.items():
        assert our_items[sid] == theirs, f"session {theirs['name']} differs"
    statuses = {it["name"]: it["status"] for it in our_items.values()}
    assert statuses == {names["arun"]: "RUNNING", names["adead"]: "TERMINATED",
                        names["urun"]: "RUNNING", names["ours"]: "RUNNING"}


@pytest.mark.parametrize("flags", [(), ("--running",), ("--dead",), ("--status", "RUNNING")])
def test_same_sessions_per_status_filter(ostack, admin, family, flags):
    prefix, _ = family
    flt = f'name like "{prefix}-%"'
    official = admin.list_json("ps", *flags, "--limit", "100", "--filter", flt)
    ours = ours_json(ostack, *flags, "--all", "--filter", flt)
    assert official["total_count"] == ours["total_count"]
    assert by_id(official) == by_id(ours)


def test_same_default_table(ostack, admin, family):
    prefix, names = family
    flt = f'name like "{prefix}-%"'
    official = parse_table(admin("ps", "--all", "--filter", flt).stdout)
    ours = parse_table(ostack.cli("ps", "--all-statuses", "--all", "--filter", flt).stdout)
    assert list(ours[0]) == list(official[0])  # same columns, same order
    key = "Session ID"
    assert ({r[key]: {k: cell(v) for k, v in r.items()} for r in ours}
            == {r[key]: {k: cell(v) for k, v in r.items()} for r in official})
    assert {r["Name"] for r in ours} == set(names.values())


def test_same_detail_table(ostack, admin, family):
    prefix, names = family
    flt = f'name like "{prefix}-%"'
    official = parse_table(admin("ps", "--detail", "--filter", flt).stdout)
    ours = parse_table(ostack.cli("ps", "--detail", "--all", "--filter", flt).stdout)
    assert list(ours[0]) == list(official[0])
    theirs = {r["Name"]: r for r in official}
    mine = {r["Name"]: r for r in ours}
    assert set(mine) == set(theirs) == {names["arun"], names["urun"], names["ours"]}
    for name in mine:
        for col in ("Session ID", "Status", "Tag", "Created At", "Main Kernel ID", "Image"):
            assert cell(mine[name][col]) == cell(theirs[name][col]), (name, col)


def test_user_sees_the_same_own_sessions(ostack, user, family):
    prefix, names = family
    flt = f'name like "{prefix}-%"'
    official = user.list_json("ps", "--all", "--limit", "100", "--filter", flt)
    ours = ours_json(ostack, "--all-statuses", "--all", "--filter", flt, user=True)
    assert by_id(official) == by_id(ours)
    assert {it["name"] for it in ours["items"]} == {names["urun"]}


def test_admin_access_key_same(ostack, admin, user, family):
    prefix, names = family
    flt = f'name like "{prefix}-%"'
    official = admin.list_json("ps", "--all", "--access-key", user.access_key, "--filter", flt)
    ours = ours_json(ostack, "--all-statuses", "--all", "--access-key", user.access_key,
                     "--filter", flt)
    assert by_id(official) == by_id(ours)
    assert {it["name"] for it in ours["items"]} == {names["urun"]}


def test_session_made_by_our_cli_runs_code_through_official(admin, family):
    _, names = family
    res = admin("run", "-t", names["ours"], "-c", "print(6 * 7)", "python")
    assert f"Reusing session {names['ours']}" in res.stderr
    assert res.stdout == "42\n"
