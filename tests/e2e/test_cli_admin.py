"""`backend.ai admin ...` against the real stack: users and keypairs, aliases, policies, agents,
and the refusal of every admin command for a user keypair."""

from __future__ import annotations

import json
import time
import uuid

import pytest


def jcli(stack, *args: str, user: bool = False):
    return json.loads(stack.cli("--output", "json", *args, user=user).stdout)


def env_with(stack, access_key: str, secret_key: str) -> dict[str, str]:
    env = dict(stack.env)
    env.update(BACKEND_ENDPOINT=stack.endpoint, BACKEND_ACCESS_KEY=access_key,
               BACKEND_SECRET_KEY=secret_key)
    return env


def run_as(env: dict[str, str], *args: str):
    import subprocess

    from stacks import CLI

    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ["admin", "image", "list"], ["admin", "alias", "set", "x", "python"],
    ["admin", "user", "list"], ["admin", "keypair", "create", "a@b.c"],
    ["admin", "policy", "list"], ["admin", "agent", "list"], ["admin", "agent", "drain", "x"],
])
def test_user_keypair_is_refused(stack, args):
    proc = stack.cli(*args, user=True, check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ")


def test_new_user_with_a_keypair_runs_and_the_admin_sees_it(stack):
    email = f"u{uuid.uuid4().hex[:6]}@example.com"
    stack.cli("admin", "user", "create", email)
    kp = jcli(stack, "admin", "keypair", "create", email)
    assert kp["secret_key"] and kp["access_key"]
    env = env_with(stack, kp["access_key"], kp["secret_key"])
    name = f"nu-{uuid.uuid4().hex[:6]}"
    proc = run_as(env, "run", "-t", name, "-c", 'print("hello world")', "python")
    assert proc.returncode == 0 and proc.stdout == "hello world\n", proc.stderr
    items = jcli(stack, "ps", "--access-key", kp["access_key"])["items"]
    assert name in [i["name"] for i in items]
    run_as(env, "rm", name)
    assert kp["access_key"] in stack.cli("admin", "keypair", "list", "--user", email).stdout
    # a deactivated keypair is refused
    stack.cli("admin", "keypair", "deactivate", kp["access_key"])
    proc = run_as(env, "ps")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ")


def test_alias_set_use_and_remove(stack):
    stack.cli("admin", "alias", "set", "py", "python")  # an alias of an alias: the image
    try:
        assert stack.cli("run", "--rm", "-c", "print(1)", "py").stdout == "1\n"
        assert "py" in stack.cli("admin", "alias", "list").stdout
    finally:
        stack.cli("admin", "alias", "remove", "py")
    proc = stack.cli("run", "--rm", "-c", "print(1)", "py", check=False)
    assert proc.returncode == 1 and "python" in proc.stderr  # names the aliases that exist


def test_policy_with_one_concurrent_session_queues_the_second(stack):
    pname = f"one-{uuid.uuid4().hex[:6]}"
    email = f"p{uuid.uuid4().hex[:6]}@example.com"
    stack.cli("admin", "policy", "create", pname, "--max-sessions", "1", "--idle-timeout", "600")
    stack.cli("admin", "user", "create", email)
    kp = jcli(stack, "admin", "keypair", "create", email)
    stack.cli("admin", "policy", "assign", pname, kp["access_key"])
    assert any(p["name"] == pname and p["max_concurrent_sessions"] == 1
               for p in jcli(stack, "admin", "policy", "list"))
    env = env_with(stack, kp["access_key"], kp["secret_key"])
    try:
        assert run_as(env, "start", "-t", "pol-1", "python").returncode == 0
        proc = run_as(env, "start", "--enqueue-only", "-t", "pol-2", "python")
        assert proc.returncode == 0 and "PENDING" in proc.stdout
        time.sleep(2.5)  # a scheduling pass records why it waits
        info = json.loads(run_as(env, "--output", "json", "ps", "-f", "name,status,status_info")
                          .stdout)["items"]
        waiting = next(i for i in info if i["name"] == "pol-2")
        assert waiting["status"] == "PENDING"
        assert "concurrent" in (waiting["status_info"] or "").lower()
    finally:
        run_as(env, "rm", "pol-1", "pol-2")


def test_drained_agent_gets_no_new_session(stack):
    agents = jcli(stack, "admin", "agent", "list")
    assert agents and all("available_slots" in a for a in agents)
    aid = agents[0]["id"]
    stack.cli("admin", "agent", "drain", aid)
    name = f"dr-{uuid.uuid4().hex[:6]}"
    try:
        proc = stack.cli("start", "--max-wait", "2", "-t", name, "python")
        assert "PENDING" in proc.stdout
    finally:
        stack.cli("admin", "agent", "undrain", aid)
    deadline = time.time() + 60
    status = None
    while time.time() < deadline:
        items = jcli(stack, "ps", "--all-statuses", "-f", "name,status")["items"]
        status = next(i["status"] for i in items if i["name"] == name)
        if status == "RUNNING":
            break
        time.sleep(1)
    stack.cli("rm", name)
    assert status == "RUNNING"
