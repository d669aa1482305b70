"""The daemons' plain ``serve`` (what ``backend.ai server start`` runs) is read without click,
and says and does what click's ``serve`` does."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from bai.agent import __main__ as agent_main
from bai.manager import __main__ as manager_main
from bai.ops.argv import CLICK, plain_serve


def test_only_the_plain_serve_skips_click(tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text("[manager]\n")
    assert plain_serve(["serve"]) is None
    assert plain_serve(["serve", "--config", str(toml)]) == str(toml)
    for args in (["serve", "--config", str(tmp_path)],  # a folder: click's error
                 ["serve", "--config", str(tmp_path / "missing.toml")],
                 ["serve", "--config"], ["serve", "--port", "1"], ["serve", "--help"],
                 ["--help"], [], ["init", "--config", str(toml)],
                 ["serve", "--config", str(toml), "--port", "1"]):
        assert plain_serve(args) is CLICK, args


def _serve(module: str, config: str, stub: str = "") -> subprocess.CompletedProcess:
    code = (f"import sys\n{stub}\nsys.argv = ['x', 'serve', '--config', {config!r}]\n"
            f"from {module}.__main__ import run\n"
            "try:\n    status = run()\nfinally:\n"
            "    print('click' in sys.modules, 'sqlalchemy' in sys.modules,"
            " any(m.startswith('bai.manager') for m in sys.modules))\n"
            "sys.exit(status)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_the_manager_serves_without_click(tmp_path, monkeypatch):
    # the whole serve up to the listeners: settings, logging, create_app (every route module)
    monkeypatch.setenv("BAI_MANAGER_STATE_DIR", str(tmp_path))
    toml = tmp_path / "manager.toml"
    toml.write_text(f'[manager]\ndb_url = "sqlite+aiosqlite:///{tmp_path}/m.db"\n')
    done = _serve("bai.manager", str(toml),
                  "from aiohttp import web\nweb.run_app = lambda app, **kw: kw['loop'].close()")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "True"], done.stderr[-3000:]


@pytest.mark.parametrize("daemon", ["manager", "agent"])
def test_a_bad_settings_file_reads_as_through_click(tmp_path, monkeypatch, daemon):
    monkeypatch.setenv("BAI_MANAGER_STATE_DIR", str(tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{daemon}]\nport = 'not a port'\n")
    plain = _serve(f"bai.{daemon}", str(bad))
    main = (manager_main if daemon == "manager" else agent_main).main
    clicked = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert plain.returncode == clicked.exit_code == (1 if daemon == "manager" else 2)
    assert plain.stderr == clicked.stderr
    assert "invalid" in plain.stderr and "settings" in plain.stderr
    assert plain.stdout.split()[0] == "False"  # click never loaded


def test_the_agent_loads_neither_click_nor_the_managers_modules():
    code = ("import sys\nimport bai.agent.__main__, bai.agent.daemon, bai.agent.server\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('click', 'sqlalchemy', 'alembic', 'graphql')"
            " or m.startswith('bai.manager')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]



_NOT_INT = "port: Input should be a valid integer"
_NOT_FLOAT = "heartbeat_interval: Input should be a valid number"


@pytest.mark.parametrize("daemon, args, toml, env, problem", [
    # the plain serve (no click), then click's (--config=FILE, another option)
    ("manager", ["--config", "{f}"], "port = 'x'", {}, _NOT_INT),
    ("manager", ["--config={f}"], "port = 'x'", {}, _NOT_INT),
    ("manager", [], "", {"BAI_MANAGER_PORT": "x"}, _NOT_INT),
    ("agent", ["--config", "{f}"], "port = 'x'\nheartbeat_interval = 'soon'", {},
     f"{_NOT_INT}, unable to parse string as an integer; {_NOT_FLOAT}"),
    ("agent", ["--config={f}"], "port = 'x'", {}, _NOT_INT),
    ("agent", [], "", {"BAI_AGENT_PORT": "x"}, _NOT_INT),
    ("agent", ["--port", "1"], "", {"BAI_AGENT_HEARTBEAT_INTERVAL": "soon"}, _NOT_FLOAT),
    # a port no socket has (was a traceback from bind once the daemon started)
    ("manager", [], "", {"BAI_MANAGER_PORT": "-5"}, "port: Input should be greater than"),
    ("manager", ["--config", "{f}"], "app_proxy_port = 70000", {},
     "app_proxy_port: Input should be less than"),
    ("agent", [], "", {"BAI_AGENT_PORT": "70000"}, "port: Input should be less than"),
    ("agent", ["--port", "-1"], "", {}, "port: Input should be greater than"),
    ("agent", [], "", {"BAI_AGENT_OPS_PORT": "-1"}, "ops_port: Input should be greater than"),
])
def test_invalid_settings_end_with_one_line_naming_each_field(tmp_path, daemon, args, toml,
                                                              env, problem):
    # not pydantic's report (a title, then two lines and a URL for each field): one line with
    # each field and its problem; click's serve's exit status
    import os

    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{daemon}]\n{toml}\n")
    done = subprocess.run(
        [sys.executable, "-m", f"bai.{daemon}", "serve", *(a.format(f=bad) for a in args)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,  # where a daemon that
        # took the settings would put its database
        env={**os.environ, "BAI_MANAGER_STATE_DIR": str(tmp_path),
             "BAI_MANAGER_DB_URL": f"sqlite+aiosqlite:///{tmp_path}/m.db", **env})
    assert done.returncode == (1 if daemon == "manager" else 2), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    prefix = ("Error: invalid manager settings: " if daemon == "manager"
              else "bai-agent: invalid settings: ")
    assert done.stderr.startswith(prefix + problem), done.stderr


@pytest.mark.parametrize("args", [["--port", "70000"], ["--agent-port", "-1"], ["--port", "0"],
                                  ["--port", "x"]])
def test_server_start_refuses_a_port_no_socket_has_in_one_line(tmp_path, args):
    # was 'unexpected OverflowError: bind(): ...' (exit 1) from holding the port; 0 would start
    # the daemons with an endpoint no client reaches (port 0)
    import os

    done = subprocess.run([sys.executable, "-c", "import bai; bai.cli()", "server", "start",
                           *args, "--timeout", "1"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path),
                               "BAI_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"Error: Invalid value for '{args[0]}'"), done.stderr
    assert not (tmp_path / "state" / "manager.pid").exists()
