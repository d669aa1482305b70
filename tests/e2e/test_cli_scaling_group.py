"""`backend.ai admin scaling-group`: the queueing policy and placement of a resource group."""

import json


def test_update_policy_and_placement(stack):
    groups = json.loads(stack.cli("admin", "scaling-group", "list", "--output", "json").stdout)
    default = next(g for g in groups if g["name"] == "default")
    assert default["alive_agents"] >= 1

    stack.cli("admin", "scaling-group", "update", "default", "--scheduler", "drf",
              "--agent-selection", "dispersed")
    groups = json.loads(stack.cli("admin", "scaling-group", "list", "--output", "json").stdout)
    default = next(g for g in groups if g["name"] == "default")
    assert (default["scheduler"], default["agent_selection"]) == ("drf", "dispersed")

    # sessions are still scheduled under the new policy
    out = stack.cli("run", "--rm", "-c", "print(6*7)", "python")
    assert "42" in out.stdout
    stack.cli("admin", "scaling-group", "update", "default", "--scheduler", "fifo",
              "--agent-selection", "concentrated")


def test_create_and_refusals(stack):
    made = json.loads(stack.cli("admin", "scaling-group", "create", "sg-gpu", "--scheduler",
                                "lifo", "--output", "json").stdout)
    assert made["name"] == "sg-gpu" and made["scheduler"] == "lifo"
    assert made["agent_selection"] == "concentrated" and made["alive_agents"] == 0

    dup = stack.cli("admin", "scaling-group", "create", "sg-gpu", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr

    bad = stack.cli("admin", "scaling-group", "update", "default", "--scheduler", "random",
                    check=False)
    assert bad.returncode == 2 and "random" in bad.stderr

    missing = stack.cli("admin", "scaling-group", "update", "nope", "--scheduler", "lifo",
                        check=False)
    assert missing.returncode == 1 and "no resource group 'nope'" in missing.stderr

    refused = stack.cli("admin", "scaling-group", "update", "default", "--scheduler", "lifo",
                        user=True, check=False)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
