"""``backend.ai run`` and ``backend.ai start`` (alias ``create``).

``run``: ``POST /session`` (waits until RUNNING), upload FILES, execute over the WebSocket
``/stream/session/{uuid}/execute`` streaming stdout/stderr as they arrive, then with ``--rm``
``DELETE /session/{name}``. Its exit code is the executed code's exit code; a session that
ends in ERROR or CANCELLED exits 1; ``--enqueue-only`` and a ``--max-wait`` timeout print the
session and its status and exit 0 without executing (it stays queued), except that ``--rm``
cancels a session that did not start within ``--max-wait`` (exit 1).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bai.client.cli.context import get_ctx, output_option
from bai.client.cli.express import FAILED, NOT_STARTED, check_name, parse_pairs
from bai.client.cli.express_run import check_code, print_console
from bai.client.cli.output import Output, stats_rows
from bai.client.errors import UsageError


def parse_resources(values: tuple[str, ...]) -> dict[str, str]:
    """``-r cpu=2 -r mem=256`` -> ``{"cpu": "2", "mem": "256m"}``, validated before any request
    (amounts above zero; the manager checks the slot names against what its agents report).

    As the official client does, a ``mem`` without a unit means MiB.
    """
    from bai.common.errors import InvalidResourceSpec
    from bai.common.resources import check_session_request, parse_request

    res = parse_pairs(values, "-r/--resources")
    mem = res.get("mem")
    if mem is not None and mem.strip().replace(".", "", 1).isdigit():
        res["mem"] = mem.strip() + "m"
    try:
        check_session_request(parse_request(res), known=None)
    except InvalidResourceSpec as e:
        raise UsageError(str(e)) from None
    return res


def create_options(start: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options ``run`` and ``start`` share (the body keys of ``POST /session``)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option("-t", "--name", "--client-token", "name", default=None,
                         help="Session name: 2-64 letters, digits, '_', '-' or '.', starting and ending"
                                 " with a letter, digit or '_' (default pysdk-<random>)."),
            click.option("--type", "sess_type", type=click.Choice(["interactive", "batch"]),
                         default="interactive", show_default=True, help="Session type."),
            click.option("-e", "--env", multiple=True, metavar="KEY=VALUE",
                         help="Environment variable for the session (repeatable)."),
            click.option("-r", "--resources", multiple=True, metavar="SLOT=AMOUNT",
                         help="Resource request, e.g. -r cpu=2 -r mem=512m -r cuda.shares=0.5 "
                              "(repeatable; mem without a unit means MiB; amounts above zero;"
                              " slots: cpu, mem, cuda.device, cuda.shares and any other slot"
                              " the agents report)."),
            click.option("--resource-opts", multiple=True, metavar="KEY=VALUE",
                         help="Extra resource options, e.g. shmem=64m (repeatable)."),
            click.option("-m", "-v", "--mount", "--volume", "mounts", multiple=True,
                         metavar="NAME[:PATH][:ro]",
                         help="Mount a storage folder (repeatable): at /home/work/NAME, or at "
                              "PATH (relative: under /home/work); ':ro' read-only "
                              "(e.g. -m data, -m data:/data:ro, -m data:ro; NAME=PATH too)."),
            click.option("--service", "services", multiple=True, metavar="NAME:PORT",
                         help="A service your program will open on PORT inside the session, "
                              "reachable with 'backend.ai app SESSION NAME' (NAME:PROTOCOL:PORT "
                              "for tcp; repeatable)."),
            click.option("--preopen", "preopen", multiple=True, metavar="PORT",
                         help="A port to offer as the app named PORT (the official client's "
                              "--preopen; repeatable)."),
            click.option("--tag", default=None, help="A free-form tag for the session."),
            click.option("-g", "--group", default=None,
                         help="Project/group to run in [default: BACKEND_GROUP or 'default']."),
            click.option("-d", "--domain", default=None,
                         help="Domain to run in [default: BACKEND_DOMAIN or 'default']."),
            click.option("--scaling-group", "--sgroup", "scaling_group", default=None,
                         help="Resource group (scaling group) to schedule in."),
            click.option("--starts-at", default=None, metavar="WHEN",
                         help="Do not schedule before this time: an ISO datetime or a delay "
                              "such as 10m or 1h (start returns once the session is queued)."),
            click.option("--enqueue-only", is_flag=True,
                         help="Return right after the session is queued (nothing is executed)."),
            click.option("--max-wait", type=click.IntRange(0, None), default=0,
                         metavar="SECONDS",
                         help="Wait at most this long for the session to start (0 = no limit);"
                              " on timeout print its status and exit 0 (it stays queued), or"
                              " with run --rm cancel it and exit 1."),
            click.option("--no-reuse", is_flag=True,
                         help="Fail instead of reusing a running session of the same name."),
            click.option("--callback-url", default=None, help="URL the manager notifies."),
            click.option("--architecture", "--arch", "architecture", default=None,
                         help="CPU architecture of the image [default: this machine's]."),
            click.option("--cluster-size", type=click.IntRange(1, None), default=1,
                         help="Number of kernels."),
            click.option("--cluster-mode", type=click.Choice(["single-node", "multi-node"]),
                         default="single-node", help="Where the kernels of a cluster go."),
            click.option("--bootstrap-script", type=click.Path(exists=True, dir_okay=False),
                         default=None, help="Script run once when the session starts."),
            click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr."),
        ]
        if start:
            opts += [
                click.option("-c", "--startup-command", default=None,
                             help="Command the session runs at start (batch sessions)."),
                click.option("--depends", multiple=True, metavar="SESSION",
                             help="Start only after this session succeeded (repeatable)."),
                click.option("-o", "--owner", "--owner-access-key", "owner", default=None,
                             metavar="ACCESS_KEY", help="Admins: create it for this keypair."),
                click.option("--array", "array", default=None, metavar="SPEC",
                             help="An array of sessions NAME-INDEX, one per index of SPEC "
                                  "(1-N, A-B:STEP, comma lists; at most 10,000), each with its "
                                  "index in BAI_ARRAY_INDEX, queued in one request."),
            ]
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


def build_spec(image: str, kw: dict[str, Any], *, start: bool) -> Any:
    from bai.client.models import CreateSpec

    cfg = get_ctx().config()
    from bai.client.bodies import parse_mounts

    mounts, mount_map = parse_mounts(kw["mounts"])
    name = check_name(kw["name"] or f"pysdk-{secrets.token_hex(5)}")
    spec = CreateSpec(
        image=image,
        name=name,
        type=kw["sess_type"],
        tag=kw["tag"],
        environ=parse_pairs(kw["env"], "-e/--env"),
        resources=parse_resources(kw["resources"]),
        resource_opts=parse_pairs(kw["resource_opts"], "--resource-opts"),
        mounts=mounts,
        mount_map=mount_map,
        scaling_group=kw["scaling_group"],
        callback_url=kw["callback_url"],
        cluster_size=kw["cluster_size"],
        cluster_mode=kw["cluster_mode"],
        starts_at=kw["starts_at"],
        bootstrap_script=Path(kw["bootstrap_script"]).read_text() if kw["bootstrap_script"] else None,
        domain=kw["domain"] or cfg.domain,
        group=kw["group"] or cfg.group,
        enqueue_only=kw["enqueue_only"],
        max_wait=kw["max_wait"],
        reuse=not kw["no_reuse"],
    )
    if kw["architecture"]:
        spec.architecture = kw["architecture"]
    spec.services = _services(kw["services"])
    if start:
        # a session that may not start before a given time: return once it is queued
        spec.enqueue_only = spec.enqueue_only or bool(kw["starts_at"])
        spec.dependencies = list(kw["depends"])
        spec.preopen_ports = None
        spec.startup_command = kw["startup_command"]
        spec.owner_access_key = kw["owner"]
        if kw["array"] is not None:
            from bai.common.arrays import ArraySpecError, parse_array

            try:
                parse_array(kw["array"])
            except ArraySpecError as e:
                click.echo(f"Error: --array: {e}", err=True)
                raise SystemExit(2) from None
            spec.array = kw["array"].strip()
            spec.enqueue_only = True  # an array is queued, never waited for
    if kw["preopen"]:
        spec.preopen_ports = [str(p) for p in kw["preopen"]]
    return spec


def _services(specs: tuple[str, ...]) -> list[dict[str, Any]] | None:
    from bai.common.services import ServiceSpecError, parse_spec

    try:
        return [parse_spec(s) for s in specs] or None
    except ServiceSpecError as e:
        click.echo(f"Error: --service: {e}", err=True)
        raise SystemExit(2) from None


async def create_and_wait(api: Any, spec: Any, out: Output) -> Any:
    """``POST /session`` with a live status display while it blocks."""
    from bai.client.cli.watcher import StartupWatcher

    watcher = None
    if not spec.enqueue_only:
        owner = spec.owner_access_key or get_ctx().config().access_key or None
        watcher = StartupWatcher(api, spec.name, owner, out)
        watcher.start()
    try:
        return await api.create(spec)
    finally:
        if watcher is not None:
            await watcher.stop()


async def report_not_running(api: Any, created: Any, out: Output, max_wait: int,
                             remove: bool = False) -> int:
    """Print why the session is not running; the exit code (0 = queued, 1 = failed).

    A ``--max-wait`` timeout with ``remove`` (``--rm``) cancels the session (exit 1: nothing
    ran); without it the session stays queued and the message says how to cancel it.
    """
    from bai.client.cli.progress import describe_status

    status = created.status
    info, data = None, None
    if created.waits_on is not None and status == "PENDING":  # the create answer says why
        info, data = created.waits_on
    else:
        try:
            b = await api.brief(created.session_id)
            info, data = b.get("status_info"), b.get("status_data")
            if status == "TIMEOUT" or status not in FAILED:
                status = str(b.get("status") or status)
        except Exception:  # noqa: BLE001 - the create answer alone is enough to report
            pass
    text = describe_status(status, info, data)
    timed_out = created.status == "TIMEOUT"
    cancelled = False
    if timed_out and remove and status not in FAILED:
        await api.destroy(created.name)
        cancelled = True
    if out.is_json:
        out.json({"session_id": created.session_id, "name": created.name,
                  "status": "CANCELLED" if cancelled else status, "status_info": info,
                  "timeout": timed_out})
    if created.status in FAILED or status in FAILED:
        if not out.is_json:
            click.echo(f"Error: session {created.name} ({created.session_id}) did not start:"
                       f" {text}", err=True)
        return 1
    if cancelled:
        if not out.is_json:
            click.echo(f"Error: session {created.name} ({created.session_id}) did not start"
                       f" within {max_wait}s ({text}); cancelled it (--rm)", err=True)
        return 1
    if not out.is_json:
        what = f"is still waiting after {max_wait}s" if timed_out else "is enqueued"
        click.echo(f"Session {created.name} ({created.session_id}) {what}: {text}")
        out.note(f"It stays queued; cancel it with: backend.ai rm {created.name}")
    return 0


async def read_input(is_password: bool) -> str:
    import getpass

    loop = asyncio.get_running_loop()
    if is_password:
        return await loop.run_in_executor(None, lambda: getpass.getpass(""))
    line = await loop.run_in_executor(None, sys.stdin.readline)
    return line.rstrip("\n")


async def execute(api: Any, created: Any, code: str | None, opts: dict[str, Any],
                  out: Output) -> int:
    """Stream one execution; answer its exit code."""
    if code is not None:
        mode, options, code_text = "query", {}, code
    else:
        mode, code_text = "batch", ""
        options = {"clean": opts["clean"] or "*", "build": opts["build"] or "*",
                   "buildLog": False, "exec": opts["exec"] or "*"}
    exit_code: int | None = None
    step_failure = 0
    finished = False
    async for frame in api.execute(created.session_id, code=code_text, mode=mode,
                                   options=options, read_input=read_input):
        print_console(frame.console, frame.files)
        if frame.status in ("clean-finished", "build-finished"):
            what = "Clean" if frame.status.startswith("clean") else "Build"
            out.note(f"✓ {what} finished. (exit code = {frame.exit_code})")
            if frame.exit_code:
                step_failure = frame.exit_code
        elif frame.status == "finished":
            finished = True
            exit_code = frame.exit_code
    if not finished:
        b = {}
        try:
            b = await api.brief(created.session_id)
        except Exception:  # noqa: BLE001
            pass
        from bai.client.cli.progress import ended_early

        click.echo(ended_early(created.name, b), err=True)
        return 1
    if exit_code is None:
        exit_code = step_failure
    out.note(f"✓ Execution finished. (exit code = {exit_code})")
    return exit_code


async def destroy_after(api: Any, name: str, out: Output, stats: bool) -> None:
    out.note(f"⋯ Cleaning up the session {name}...")
    answer = await api.destroy(name)
    if stats:
        st = answer.get("stats") if isinstance(answer, dict) else None
        if isinstance(st, dict) and st:
            click.echo("Statistics:")
            out.table(["Metric", "Value", "Unit"], stats_rows(st))
        else:
            click.echo("Statistics: unavailable.")


RUN_EPILOG = """\b
Examples:
  backend.ai run --rm -c 'print("hello world")' python
  backend.ai run --rm --exec 'python myscript.py arg1 arg2' python ./myscript.py
  backend.ai run --rm -r cpu=2 -r mem=512m -c 'import os; print(os.cpu_count())' python
  backend.ai run --enqueue-only -t job1 python -c 'print(1)'
"""


@click.command(epilog=RUN_EPILOG)
@click.argument("image")
@click.argument("files", nargs=-1, type=click.Path())
@click.option("-c", "--code", default=None, help="Code to execute (query mode).")
@click.option("--exec", "exec_", default=None, metavar="COMMAND",
              help="Shell command that runs the uploaded FILES (batch mode); without it the"
                   " first FILE ending in .py runs with python.")
@click.option("--build", default=None, metavar="COMMAND", help="Build command before --exec.")
@click.option("--clean", default=None, metavar="COMMAND", help="Clean command before --build.")
@click.option("--basedir", type=click.Path(file_okay=False), default=None,
              help="FILES are uploaded by their path relative to this folder [default: .].")
@click.option("--rm", "remove", is_flag=True, help="Terminate the session after execution; Ctrl-C cancels it while it is "
                   "queued (or terminates it once started).")
@click.option("-s", "--stats", is_flag=True, help="With --rm: print the session's statistics.")
@create_options(start=False)
@output_option
def run(image, files, code, exec_, build, clean, basedir, remove, stats, **kw) -> None:
    """Start a session of IMAGE, execute code (-c) or FILES in it, stream the output.

    IMAGE is a full image name or an alias the admin defined (e.g. python).
    FILES are uploaded to the session's work folder; --exec says how to run them, and without
    it the first of them ending in .py runs with python. The exit code is the executed
    code's exit code.
    """
    if code is not None and files:
        raise UsageError("give either -c/--code or FILES, not both")
    if code is None and not files and not exec_ and not kw["enqueue_only"]:
        raise UsageError("nothing to run: give -c CODE, or FILES (with --exec COMMAND)")
    check_code(code)
    for f in files:
        if not Path(f).is_file():
            raise UsageError(f"no such file: {f}")
    if files and not exec_ and not any(f.endswith(".py") for f in files):
        raise UsageError("none of FILES ends in .py: give --exec COMMAND to say how to run them")
    cli = get_ctx()
    out = cli.output
    out.quiet = kw["quiet"]
    spec = build_spec(image, kw, start=False)
    state: dict[str, Any] = {"name": spec.name}

    async def body(conn: Any) -> int:
        import asyncio

        from bai.client.session import SessionAPI

        api = SessionAPI(conn)
        try:
            created = await create_and_wait(api, spec, out)
        except asyncio.CancelledError:  # Ctrl-C while queued: cancel it (or end it if started)
            if remove:
                state["removed"] = True
                await cancel_after_interrupt(api, spec.name, out)
            raise
        state["name"] = created.name
        if created.status in NOT_STARTED or created.status in FAILED:
            code_ = await report_not_running(api, created, out, spec.max_wait, remove)
            if remove and created.status in FAILED:
                await destroy_quietly(api, created.name)
            return code_
        verb = "is ready" if created.created else "is reused (already running)"
        out.note(f"✓ Session {created.name} {verb} ({created.session_id}).")
        try:
            if files:
                out.note(f"⋯ Uploading {len(files)} file(s)...")
                await api.upload(created.name, files, basedir)
            return await execute(api, created, code,
                                 {"exec": exec_, "build": build, "clean": clean}, out)
        except asyncio.CancelledError:
            if remove:
                state["removed"] = True
                await cancel_after_interrupt(api, created.name, out)
            raise
        finally:
            if remove and not state.get("removed"):
                state["removed"] = True
                await destroy_after(api, created.name, out, stats)

    try:
        rc = cli.run(body)
    except KeyboardInterrupt:
        if remove and not state.get("removed"):  # interrupted outside the event loop
            cli.run(lambda conn: _cancel(conn, state["name"], out))
        raise
    raise SystemExit(rc)


# After Ctrl-C the removal of a ``--rm`` session waits at most this long for the manager.
CANCEL_SECONDS = 15.0


async def _cancel(conn: Any, name: str, out: Output) -> None:
    from bai.client.session import SessionAPI

    await cancel_after_interrupt(SessionAPI(conn), name, out)


async def cancel_after_interrupt(api: Any, name: str, out: Output) -> None:
    """Ctrl-C with ``--rm``: cancel the session if it is queued, terminate it if it started;
    at most CANCEL_SECONDS, so the exit never hangs on a slow manager."""
    import asyncio

    from bai.client.cli.progress import cancel_failed, cancel_note

    out.note(cancel_note(name))
    try:
        await asyncio.wait_for(api.destroy(name), CANCEL_SECONDS)
    except Exception as e:  # noqa: BLE001 - say it and leave: the user asked to stop
        click.echo(cancel_failed(name, e), err=True)


async def destroy_quietly(api: Any, name: str) -> None:
    try:
        await api.destroy(name)
    except Exception:  # noqa: BLE001 - best effort cleanup
        pass


def report_array(created: Any, out: Output) -> int:
    """What ``start --array`` prints: the elements queued."""
    elements = created.elements
    if out.is_json:
        out.json({"array": [{"session_id": sid, "name": name, "index": index}
                            for sid, name, index in elements]})
        return 0
    names = [name for _sid, name, _index in elements]
    shown = ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]}"
    click.echo(f"{len(names)} sessions queued: {shown}.")
    return 0


START_EPILOG = """\b
Examples:
  backend.ai start -t mysess python
  backend.ai start -r cpu=2 --enqueue-only python
  backend.ai start --type batch -c 'python job.py' --depends prep1 python
  backend.ai start --type batch -t job --array 1-100 -c 'python job.py $BAI_ARRAY_INDEX' python
"""


@click.command(epilog=START_EPILOG)
@click.argument("image")
@create_options(start=True)
@output_option
def start(image, **kw) -> None:
    """Start a session of IMAGE and leave it running (until rm or the idle timeout)."""
    cli = get_ctx()
    out = cli.output
    out.quiet = kw["quiet"]
    spec = build_spec(image, kw, start=True)

    async def body(conn: Any) -> int:
        from bai.client.session import SessionAPI

        api = SessionAPI(conn)
        created = await create_and_wait(api, spec, out)
        if spec.array is not None:
            return report_array(created, out)
        if created.status != "RUNNING":
            return await report_not_running(api, created, out, spec.max_wait)
        if out.is_json:
            out.json({"session_id": created.session_id, "name": created.name,
                      "status": created.status, "created": created.created,
                      "service_ports": list(created.service_ports)})
            return 0
        verb = "is created and ready" if created.created else "is already running and ready"
        click.echo(f"Session {created.name} ({created.session_id}) {verb}.")
        if created.service_ports:
            out.note("This session provides the following app services: "
                     + ", ".join(created.service_ports))
        return 0

    raise SystemExit(cli.run(body))
