"""Every command explains itself (--help with an example), and --help stays light."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from bai.client.cli.root import ROOT_COMMANDS, cli

OURS = [n for n in ROOT_COMMANDS if n != "server"]  # `server` is the embedded daemons' group


def walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from walk(cmd.get_command(ctx, name), [*path, name])


def all_commands():
    ctx = click.Context(cli)
    out = []
    for name in OURS:
        out.extend(walk(cli.get_command(ctx, name), [name]))
    return out


@pytest.mark.parametrize("path, cmd", all_commands(), ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_every_command_has_help_with_an_example(path, cmd):
    from click.testing import CliRunner

    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: " in res.output
    if not isinstance(cmd, click.Group) or path[-1] == "admin":
        assert "Example" in res.output, " ".join(path)
    if not isinstance(cmd, click.Group):
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{' '.join(path)} {param.opts} has no help"


def test_root_help_imports_neither_aiohttp_nor_rich():
    code = (
        "import sys\n"
        "from bai.client.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('aiohttp', 'rich', 'bai.client.session') if m in sys.modules]\n"
        "print('HEAVY', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out
    assert "run" in out and "ps" in out


def test_aliases_are_the_same_commands():
    ctx = click.Context(cli)
    admin = cli.get_command(ctx, "admin")
    session = cli.get_command(ctx, "session")
    ps = cli.get_command(ctx, "ps")
    assert admin.get_command(ctx, "sessions") is ps
    assert admin.get_command(ctx, "session").get_command(ctx, "list") is ps
    assert session.get_command(ctx, "list") is ps
