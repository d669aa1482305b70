"""The root command group of ``backend.ai`` (click): global options and lazily loaded
subcommands. ``bai.client.cli.main`` is the entry point and error boundary.

Subcommands live in one module per noun and are imported only when used (``LazyGroup``), so
``backend.ai --help`` does not pay for aiohttp or rich.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from bai.client.cli.context import OUTPUT_CHOICES, CLIContext


class LazyGroup(click.Group):
    """A group whose subcommands are ``"module:attr"`` strings, imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})  # name -> (import path, short help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.lazy:
            return None
        module, _, attr = self.lazy[name][0].partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit=formatter.width - 20)))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


M = "bai.client.cli."
ROOT_COMMANDS = {
    "ps": (M + "listing:ps", "List sessions (= admin session list)."),
    "run": (M + "run:run", "Start a session, run code or files in it, stream the output."),
    "start": (M + "run:start", "Start a session and leave it running."),
    "events": (M + "session:events", "Follow a session's lifecycle events until it ends."),
    "rm": (M + "session:rm", "Terminate (or cancel, if PENDING) sessions."),
    "kill": (M + "session:kill", "Same as rm."),
    "destroy": (M + "session:destroy", "Same as rm."),
    "info": (M + "session:info", "Show everything about one session."),
    "history": (M + "session:history", "Show every status change of a session, with reasons."),
    "logs": (M + "session:logs", "Show the console log of a session's main kernel."),
    "session": (M + "session:session", "Session commands (list, info, history, logs, ...)."),
    "app": (M + "apps:app", "Reach an app (jupyter, a terminal, your own port) of a session locally."),
    "apps": (M + "apps:apps", "List the apps a session offers."),
    "shell": (M + "apps:shell", "Open an interactive shell in a running session."),
    "admin": (M + "admin:admin", "Administration: sessions, images, users, keypairs, ..."),
    "vfolder": (M + "vfolder:vfolder", "Storage folders: create, upload, download, share, ..."),
    "server": (M + "server:server", "Start, stop or inspect the embedded bai daemons."),
    "config": (M + "session:config", "Show the client configuration in use."),
}


@click.group(
    cls=LazyGroup,
    lazy=ROOT_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  backend.ai server start
  backend.ai run --rm -c 'print("hello world")' python
  backend.ai ps --all
  backend.ai --output json ps""",
)
@click.option("--output", type=OUTPUT_CHOICES, default="table", show_default=True,
              help="Output format of lists and records (every command also takes --output).")
@click.option("--profile", default=None, envvar="BAI_PROFILE", metavar="NAME",
              help="Client configuration profile: 'default' (admin) or 'user' [env BAI_PROFILE].")
@click.version_option("0.1.0", prog_name="backend.ai (bai)")
@click.pass_context
def cli(ctx: click.Context, output: str, profile: str | None) -> None:
    """bai: run code in compute sessions on a shared cluster (Backend.AI compatible).

    The endpoint and keypair come from BACKEND_ENDPOINT, BACKEND_ACCESS_KEY and
    BACKEND_SECRET_KEY, or from the profile that 'backend.ai server start' writes.
    """
    obj = ctx.ensure_object(CLIContext)
    if obj.output_format == "table":  # a command's own --output (eager) wins
        obj.output_format = "json" if output.lower() == "json" else "table"
    obj.profile = profile
