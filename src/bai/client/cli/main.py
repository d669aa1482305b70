"""Entry point of ``backend.ai`` / ``bai`` and the error boundary.

``backend.ai run [--rm] -c CODE IMAGE``, ``backend.ai start --enqueue-only ...``,
``backend.ai ps ...`` and ``vfolder upload``/``download`` take the express path
(``bai.client.cli.express``, ``express_ps``, ``vfolder_express``: no click, no asyncio); every
other command line goes through the click group of
``bai.client.cli.root``, imported only then. Every failure ends here as one line on stderr and
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
                   "bai.client.endpoint", "bai.client.cli.express", "bai.client.config",
                   "bai.common.names", "bai.client.bodies")
#: the modules ``lean_import`` loaded itself (the others went through ``importlib``)
LEAN_LOADED: list[str] = []


def lean_import(names: tuple[str, ...]) -> None:
    """Import ``names`` (submodules of packages already imported, each after the modules it
    imports) as ``importlib`` would, without its search: a module's byte code is read from
    the ``__pycache__`` file next to its source when that file is the source's (the
    timestamp and size it records), which is what ``importlib`` checks too.

    ``importlib`` costs ~190,000 instructions a module above loading its byte code (a search
    through ``sys.meta_path`` and the parent's path, locks, specs, half a dozen ``stat``), the
    ``backend.ai start`` call's ~13 modules as many as compiling a 40-line script. Anything
    else (no byte code yet or a stale one, a hash-based one, a package not on plain files, a
    module already imported) takes the ordinary import, which also writes the byte code.
    Import hooks on ``sys.meta_path`` are not asked about these modules."""
    import _imp
    import marshal
    from _frozen_importlib import ModuleSpec
    from _frozen_importlib_external import MAGIC_NUMBER, SourceFileLoader, cache_from_source
    from _io import FileIO

    modules = sys.modules
    tag = sys.implementation.cache_tag
    # importlib's cache_from_source in the usual case (~15,000 instructions a call)
    plain = tag is not None and sys.pycache_prefix is None and not sys.flags.optimize
    for name in names:
        if name in modules:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = modules.get(parent_name)
        spec = getattr(parent, "__spec__", None)
        if parent is None or type(getattr(spec, "loader", None)) is not SourceFileLoader \
                or len(parent.__path__) != 1:
            __import__(name)
            continue
        folder = f"{parent.__path__[0]}/{leaf}"
        # a package first, as importlib (asked with access: a missing file raises nothing)
        if os.access(folder + "/__init__.py", os.F_OK):
            path, package, base = folder + "/__init__.py", [folder], folder + "/__init__"
        else:
            path, package, base = folder + ".py", None, folder
        try:
            st = os.stat(path)
            if plain:
                head, _, stem = base.rpartition("/")
                cached = f"{head}/__pycache__/{stem}.{tag}.pyc"
            else:
                cached = cache_from_source(path)
            with FileIO(cached) as f:
                data = f.readall()
        except (OSError, ValueError, NotImplementedError):
            data = b""
        # importlib's check of a timestamp-based file (a hash-based one holds its source's
        # hash where the time would be: importlib then reads it)
        if (data[:4] != MAGIC_NUMBER
                or data[8:12] != (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                or data[12:16] != (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")):
            __import__(name)
            continue
        code = marshal.loads(memoryview(data)[16:])
        _imp._fix_co_filename(code, path)
        loader = SourceFileLoader(name, path)
        spec = ModuleSpec(name, loader, origin=path, is_package=package is not None)
        spec.has_location = True
        spec.cached = cached
        module = type(sys)(name)
        module.__spec__, module.__loader__, module.__file__, module.__cached__ = \
            spec, loader, path, cached
        module.__package__ = name if package is not None else parent_name
        if package is not None:
            module.__path__ = spec.submodule_search_locations = package
        modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            modules.pop(name, None)
            raise
        setattr(parent, leaf, module)
        LEAN_LOADED.append(name)


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
    elif args[:1] in (["run"], ["start"]):
        lean_import(EXPRESS_MODULES + (("bai.client.cli.progress",) if args[0] == "start" else ()))
        from bai.client.cli import express

        plan = (express.parse if args[0] == "run" else express.parse_start)(args[1:])
        if plan is not None:
            return express.run(plan, "run" if args[0] == "run" else "start")
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
