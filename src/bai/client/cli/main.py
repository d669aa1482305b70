"""Entry point of ``backend.ai`` / ``bai``: the root command group and the error boundary.

Subcommands live in one module per noun and are imported only when used (``LazyGroup``), so
``backend.ai --help`` does not pay for aiohttp or rich. Every failure ends here as one line on
stderr and a non-zero exit code: 2 for usage mistakes (found before any request), 1 for
everything else. ``BAI_DEBUG=1`` prints the traceback as well.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from bai.client.cli.context import OUTPUT_CHOICES, CLIContext

EXIT_USAGE = 2


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
    "admin": (M + "admin:admin", "Administration: sessions, images, users, keypairs, ..."),
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


def describe(err: BaseException) -> str:
    """One line for a failure."""
    from bai.common.errors import BaiError

    if isinstance(err, BaiError):
        text = str(err.msg or err.title)
        if err.msg and err.title and err.status in (401, 403) and err.title not in text:
            text = f"{err.title.rstrip('.')}: {text}"
        if err.status == 401 and "BACKEND_" not in text:
            text += " (check the access/secret key: BACKEND_ACCESS_KEY, BACKEND_SECRET_KEY)"
        data = err.data if isinstance(err.data, dict) else {}
        avail = data.get("available")
        if isinstance(avail, list) and "Available" not in text:
            text += f". Available: {', '.join(map(str, avail)) or 'none'}"
            aliases = data.get("aliases")
            if isinstance(aliases, (list, dict)):
                text += f"; aliases: {', '.join(map(str, aliases)) or 'none'}"
        return " ".join(text.split())
    return f"{type(err).__name__}: {err}"


def main(argv: list[str] | None = None) -> None:
    from bai.client.errors import UsageError
    from bai.common.errors import BaiError

    debug = os.environ.get("BAI_DEBUG", "") not in ("", "0")
    args = sys.argv[1:] if argv is None else argv
    code = 0
    try:
        rv = cli.main(args, prog_name="backend.ai", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # a bare group
            click.echo(e.ctx.get_help())
            sys.exit(EXIT_USAGE)
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"Error: {e.format_message()}{hint}", err=True)
        code = EXIT_USAGE
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}", err=True)
        code = e.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        code = 130
    except UsageError as e:
        if debug:
            raise
        click.echo(f"Error: {describe(e)}", err=True)
        code = EXIT_USAGE
    except BaiError as e:
        if debug:
            raise
        click.echo(f"Error: {describe(e)}", err=True)
        code = 1
    except BrokenPipeError:
        code = 1
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - the boundary: never a traceback for users
        if debug:
            raise
        click.echo(f"Error: unexpected {describe(e)} (BAI_DEBUG=1 shows details)", err=True)
        code = 1
    if argv is None:
        # The real program: once the output is flushed, skip the interpreter's teardown
        # (freeing every object and module costs tens of ms); nothing here needs atexit.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said there
                code = code or 1
        os._exit(code)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
