"""Entry point of ``backend.ai`` / ``bai`` and the error boundary.

``backend.ai run [--rm] -c CODE IMAGE``, ``backend.ai start --enqueue-only ...``,
``backend.ai ps ...`` and ``vfolder upload``/``download`` take the express path
(``bai.client.cli.express_run``, ``express``, ``express_ps``, ``vfolder_express``: no click, no
asyncio); every other command line goes through the click group of ``bai.client.cli.root``,
imported only then. Every failure ends here as one line on stderr and
a non-zero exit code: 2 for usage mistakes (found before any request), 1 for everything else.
``BAI_DEBUG=1`` prints the traceback as well.
"""

from __future__ import annotations

import os
import sys

EXIT_USAGE = 2

#: what the express ``run`` and ``start`` import in any case, each after what it imports
EXPRESS_MODULES = ("bai.client.jsonwire", "bai.client.http1", "bai.client.blocking",
                   "bai.client.cli.argv", "bai.common", "bai.common.signing",
                   "bai.common.unixsock", "bai.client.endpoint", "bai.client.cli.express",
                   "bai.client.config", "bai.common.names", "bai.client.bodies")
#: and besides, each its own
START_MODULES = ("bai.client.cli.progress",)
RUN_MODULES = ("bai.client.websocket", "bai.client.cli.progress", "bai.client.cli.express_run")


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
        if isinstance(avail, list) and "available" not in text.lower():
            text += f". Available: {', '.join(map(str, avail)) or 'none'}"
            aliases = data.get("aliases")
            if isinstance(aliases, (list, dict)):
                text += f"; aliases: {', '.join(map(str, aliases)) or 'none'}"
        return " ".join(text.split())
    return f"{type(err).__name__}: {err}"


def _echo_err(text: str) -> None:
    if "click" in sys.modules:
        import click

        click.echo(text, err=True)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _invoke(args: list[str]) -> int:
    if args[:1] == ["ps"]:
        from bai.client.cli import ps_rendered

        code = ps_rendered.main(args[1:])
        if code is not None:
            return code
        from bai.client.cli import express_ps

        code = express_ps.main(args[1:])
        if code is not None:
            return code
    elif args[:1] == ["start"]:
        from bai import lean_import

        lean_import(EXPRESS_MODULES + START_MODULES)
        from bai.client.cli import express

        plan = express.parse_start(args[1:])
        if plan is not None:
            return express.start(plan)
    elif args[:1] == ["run"]:
        from bai import lean_import

        lean_import(EXPRESS_MODULES + RUN_MODULES)
        from bai.client.cli import express_run

        plan = express_run.parse(args[1:])
        if plan is not None:
            return express_run.run(plan)
    if "vfolder" in args[:5]:
        from bai.client.cli import vfolder_express

        vplan = vfolder_express.parse(args)
        if vplan is not None:
            return vfolder_express.run(vplan)
    from bai.client.cli.root import cli

    rv = cli.main(args, prog_name="backend.ai", standalone_mode=False)
    return rv if isinstance(rv, int) else 0


def _failure(e: BaseException, debug: bool) -> int:
    """The exit code for what ended the command, after saying it in one line on stderr."""
    from bai.client.errors import UsageError
    from bai.common.errors import BaiError

    if "click" in sys.modules:
        import click

        if isinstance(e, click.UsageError):
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # a bare group
                click.echo(e.ctx.get_help())
                sys.exit(EXIT_USAGE)
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            return EXIT_USAGE
        if isinstance(e, click.ClickException):
            click.echo(f"Error: {e.format_message()}", err=True)
            return e.exit_code
        if isinstance(e, click.Abort):
            click.echo("Aborted.", err=True)
            return 130
    if isinstance(e, KeyboardInterrupt):
        _echo_err("Interrupted.")
        return 130
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e, BrokenPipeError):
        return 1
    if not isinstance(e, Exception):
        raise e
    if debug:
        raise e
    if isinstance(e, UsageError):
        _echo_err(f"Error: {describe(e)}")
        return EXIT_USAGE
    if isinstance(e, BaiError):
        _echo_err(f"Error: {describe(e)}")
        return 1
    # the boundary: never a traceback for users
    _echo_err(f"Error: unexpected {describe(e)} (BAI_DEBUG=1 shows details)")
    return 1


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("BAI_DEBUG", "") not in ("", "0")
    args = sys.argv[1:] if argv is None else argv
    try:
        code = _invoke(args)
    except BaseException as e:  # noqa: BLE001 - the error boundary
        code = _failure(e, debug)
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
