"""The systemd units in packaging/systemd run commands that exist, as the docs say."""

from __future__ import annotations

import configparser
import shlex
import tomllib
from pathlib import Path

import pytest

from bai.agent.__main__ import main as agent_main
from bai.manager.__main__ import main as manager_main

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
COMMANDS = {"bai-manager": manager_main, "bai-agent": agent_main}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["bai-manager.service", "bai-agent.service"])
def test_units_run_our_commands(name):
    u = unit(name)
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    service = u["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        if key not in service:
            continue
        argv = shlex.split(service[key])
        program = Path(argv[0]).name
        assert program in scripts, f"{name}: {program} is not a console script"
        group = COMMANDS[program]
        assert argv[1] in group.commands, f"{name}: {program} has no command {argv[1]}"
        params = {o for p in group.commands[argv[1]].params for o in p.opts}
        assert all(a in params for a in argv[2:] if a.startswith("--")), argv
    assert service["Restart"] == "on-failure"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_the_agent_unit_leaves_kernels_running_on_stop():
    assert unit("bai-agent.service")["Service"]["KillMode"] == "process"
