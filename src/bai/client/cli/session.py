"""Commands on one session: ``rm``/``kill``/``destroy``, ``events``, ``info``, ``history``,
``logs``, ``download``, ``upload``; the ``session`` group that holds them (and ``list``, ``start``/``create``); ``config``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from bai.client.cli.context import get_ctx, output_option, owner_option
from bai.client.cli.output import stats_rows

RM_EPILOG = """\b
Examples:
  backend.ai rm mysess
  backend.ai rm 3f0c...-uuid other-session
  backend.ai rm -o AKIA... their-session      (admins)
"""


def _rm_command(name: str) -> click.Command:
    @click.command(name=name, epilog=RM_EPILOG)
    @click.argument("sessions", nargs=-1, required=True, metavar="SESSION...")
    @owner_option
    @click.option("-f", "--forced", is_flag=True,
                  help="Forget the session even if its agent does not answer.")
    @click.option("-r", "--recursive", is_flag=True,
                  help="Also terminate the sessions that depend on it.")
    @click.option("-s", "--stats", is_flag=True, help="Print the final statistics.")
    @output_option
    def rm(sessions: tuple[str, ...], owner: str | None, forced: bool, recursive: bool,
           stats: bool) -> None:
        """Terminate sessions by name or id; a PENDING session is cancelled instead.

        Several sessions go in one request: the queued ones among them are cancelled before
        the others end, so none of them is started in between.
        """
        cli = get_ctx()
        out = cli.output

        async def body(conn: Any) -> int:
            from bai.client.session import SessionAPI
            from bai.common.errors import BaiError

            api = SessionAPI(conn)
            failed = 0
            results = []
            if len(sessions) > 1:  # one request: none starts while the others end
                answers = await api.destroy_many(sessions, owner=owner, forced=forced,
                                                 recursive=recursive)
            else:
                answers = [await api.destroy_or_error(sessions[0], owner, forced, recursive)]
            for s, answer in zip(sessions, answers):
                if isinstance(answer, BaiError):
                    from bai.client.cli.main import describe

                    failed += 1
                    results.append({"session": s, "ok": False, "error": describe(answer)})
                    if not out.is_json:
                        hint = ""
                        if answer.status == 404 and not owner:
                            hint = " (admins: use -o/--owner for another user's session)"
                        click.echo(f"Error: {s}: {describe(answer)}{hint}", err=True)
                    continue
                status = await _final_status(api, s, answer, owner)
                results.append({"session": s, "ok": True, "status": status,
                                "stats": answer.get("stats")})
                if not out.is_json:
                    if status == "CANCELLED":
                        click.echo(f"Session {s} was cancelled (it had not started).")
                    elif status == "TERMINATED":
                        click.echo(f"Session {s} is terminated.")
                    else:
                        click.echo(f"Session {s} is terminating.")
                    if stats:
                        st = answer.get("stats")
                        if isinstance(st, dict) and st:
                            out.table(["Metric", "Value", "Unit"], stats_rows(st))
                        else:
                            click.echo("Statistics are not available.")
            if out.is_json:
                out.json(results)
            return 1 if failed else 0

        raise SystemExit(cli.run(body))

    return rm


async def _final_status(api: Any, name: str, answer: dict[str, Any], owner: str | None) -> str:
    stats = answer.get("stats") if isinstance(answer.get("stats"), dict) else {}
    for value in (answer.get("status"), stats.get("status")):
        if isinstance(value, str) and value.upper() in ("CANCELLED", "TERMINATED"):
            return value.upper()
    if answer.get("cancelled") is True:
        return "CANCELLED"
    try:
        found = await api.resolve(name, access_key=owner)
        return str(found.get("status") or "")
    except Exception:  # noqa: BLE001 - the destroy itself succeeded
        return ""


rm = _rm_command("rm")
kill = _rm_command("kill")
destroy = _rm_command("destroy")


@click.command(epilog="""\b
Examples:
  backend.ai events mysess
  backend.ai events --scope kernel 3f0c...-uuid""")
@click.argument("session")
@owner_option
@click.option("--scope", type=click.Choice(["*", "session", "kernel"]), default="*",
              show_default=True, help="Which events: all, session_* only or kernel_* only.")
@click.option("--max-reconnects", type=click.IntRange(0, None), default=5, show_default=True,
              help="Reconnect this many times if the stream drops before the session ends.")
@output_option
def events(session: str, owner: str | None, scope: str, max_reconnects: int) -> None:
    """Print a session's lifecycle events as they happen ('<event> <json>' lines).

    Ends (exit 0) when the manager closes the stream because the session ended.
    """
    cli = get_ctx()

    async def body(conn: Any) -> int:
        import asyncio

        from bai.client.session import SessionAPI
        from bai.common.events import SERVER_CLOSE

        api = SessionAPI(conn)
        attempts = 0
        while True:
            retry = 2
            async for msg in api.events(session, owner=owner, scope=scope):
                data = msg.json()
                click.echo(f"{msg.event} {json.dumps(data, ensure_ascii=False)}")
                sys.stdout.flush()
                if msg.retry:
                    retry = msg.retry
                if msg.event == SERVER_CLOSE:
                    return 0
                attempts = 0
            attempts += 1
            if attempts > max_reconnects:
                click.echo("Error: the event stream closed before the session ended", err=True)
                return 1
            await asyncio.sleep(min(retry, 10))

    raise SystemExit(cli.run(body))



@click.command(epilog="""\b
Examples:
  backend.ai info mysess
  backend.ai --output json info 3f0c...-uuid""")
@click.argument("session")
@owner_option
@output_option
def info(session: str, owner: str | None) -> None:
    """Show everything about one session (by name or id)."""
    from bai.common.sessionfields import FIELDS, Field, format_cell, item_to_json

    cli = get_ctx()
    out = cli.output

    async def body(conn: Any) -> dict[str, Any]:
        from bai.client.session import SessionAPI
        from bai.common.errors import SessionNotFound
        from bai.common.ids import parse_uuid

        api = SessionAPI(conn)
        sid = str(parse_uuid(session) or "")
        if not sid:
            sid = str((await api.resolve(session, access_key=owner))["id"])
        found = await api.detail(sid)
        if not found:
            raise SessionNotFound(f"no session {session!r}")
        return found

    item = cli.run(body)
    if out.is_json:
        data = item_to_json(item)
        for c in data.get("containers") or []:
            if isinstance(c, dict) and "id" in c:
                c["kernel_id"] = c.pop("id")
        out.json({"count": 1, "total_count": 1, "items": [data]})
        return
    pairs = []
    for key, value in item.items():
        if key == "containers":
            lines = []
            for c in value or []:
                lines.append(f"{c.get('id')} ({c.get('cluster_role')}, {c.get('status')})")
                for k in ("agent", "container_id", "status_info"):
                    if c.get(k):
                        lines.append(f"  {k}: {c.get(k)}")
                slots = format_cell(Field("occupied_slots", "", "slots"), c.get("occupied_slots"))
                lines.append(f"  occupied_slots: {slots}")
            pairs.append(("Containers", "\n".join(lines) or "-"))
            continue
        f = FIELDS.get(key)
        if f is None:
            pairs.append((key, str(value)))
        else:
            pairs.append((f.header, format_cell(f, value, multiline=True)))
    out.record(pairs)


@click.command(epilog="""\b
Examples:
  backend.ai history mysess
  backend.ai --output json history 3f0c...-uuid""")
@click.argument("session")
@owner_option
@output_option
def history(session: str, owner: str | None) -> None:
    """Show every status change of a session: time, from, to, reason and cause."""
    cli = get_ctx()
    out = cli.output

    async def body(conn: Any) -> list[Any]:
        from bai.client.session import SessionAPI

        return await SessionAPI(conn).history(session, owner=owner)

    entries = cli.run(body)
    if out.is_json:
        out.json([e.to_json() for e in entries])
        return
    out.table(
        ["Time", "From", "To", "Reason", "Cause"],
        [(e.at, e.from_status or "-", e.to_status, e.reason or "-", e.cause or "-")
         for e in entries],
    )


@click.command(epilog="""\b
Example:
  backend.ai logs mysess""")
@click.argument("session")
@owner_option
@output_option
def logs(session: str, owner: str | None) -> None:
    """Show the console log (stdout and stderr) of a session's main kernel."""
    cli = get_ctx()

    async def body(conn: Any) -> str:
        from bai.client.session import SessionAPI

        return await SessionAPI(conn).logs(session, owner=owner)

    text = cli.run(body)
    if cli.output.is_json:
        cli.output.json({"logs": text})
    else:
        click.echo(text, nl=not text.endswith("\n"))


@click.command(epilog="""\b
Examples:
  backend.ai session download mysess results/out.csv
  backend.ai session download mysess data --dest ./from-session""")
@click.argument("session")
@click.argument("files", nargs=-1, required=True, metavar="PATH...")
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to put the files in.")
@owner_option
def download(session: str, files: tuple[str, ...], dest: str, owner: str | None) -> None:
    """Download files or folders (paths in the session's work dir) into --dest."""
    cli = get_ctx()

    async def body(conn: Any) -> list[str]:
        from bai.client.session import SessionAPI

        return await SessionAPI(conn).download(session, files, dest, owner=owner)

    names = cli.run(body)
    click.echo(f"Downloaded {len(names)} item(s) into {dest}.", err=True)


@click.command(epilog="""\b
Example:
  backend.ai session upload mysess data/input.csv main.py""")
@click.argument("session")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--basedir", default=None, type=click.Path(file_okay=False),
              help="Files are named by their path relative to this folder [default: .].")
def upload(session: str, files: tuple[str, ...], basedir: str | None) -> None:
    """Upload files into the session's work dir (all or nothing)."""
    cli = get_ctx()

    async def body(conn: Any) -> list[str]:
        from bai.client.session import SessionAPI

        return await SessionAPI(conn).upload(session, files, basedir)

    names = cli.run(body)
    click.echo(f"Uploaded {len(names)} file(s).", err=True)


@click.command(epilog="""\b
Examples:
  backend.ai config
  backend.ai --profile user config""")
@output_option
def config() -> None:
    """Show the client configuration in use (endpoint, access key, profile, source)."""
    cli = get_ctx()
    cfg = cli.config()
    data = {
        "endpoints": list(cfg.endpoints),
        "access_key": cfg.access_key,
        "secret_key": "(set)" if cfg.secret_key else "(not set)",
        "domain": cfg.domain,
        "group": cfg.group,
        "profile": cfg.profile,
        "source": cfg.source,
    }
    if cli.output.is_json:
        cli.output.json(data)
    else:
        cli.output.record([(k, ", ".join(v) if isinstance(v, list) else v)
                           for k, v in data.items()])


@click.group()
def session() -> None:
    """Session commands (the same as the top-level ps, start, events, rm, info, ...)."""


def _register_session_group() -> None:
    from bai.client.cli.listing import ps
    from bai.client.cli.run import run, start

    session.add_command(ps, "list")
    session.add_command(start, "start")
    session.add_command(start, "create")
    session.add_command(run, "run")
    for name, cmd in (("info", info), ("history", history), ("status-history", history),
                      ("logs", logs), ("events", events), ("rm", rm), ("destroy", destroy),
                      ("kill", kill), ("download", download), ("upload", upload)):
        session.add_command(cmd, name)


_register_session_group()
