"""``backend.ai ps`` (= ``admin session list`` = ``admin sessions`` = ``session list``).

Lists through ``POST /admin/gql`` exactly as the official client does: first the ``keypair``
query (an admin gets the Owner Access Key column), then ``compute_session_list`` pages.
"""

from __future__ import annotations

from typing import Any

import click

from bai.client.cli.context import get_ctx, output_option
from bai.client.cli.ps_plan import FIRST_PAGE, PAGE, choose_fields, json_document, rest_note, \
    status_set
from bai.common.sessionfields import table_of

EPILOG = """\b
Status filters (newest status change first):
  (none)      PENDING, SCHEDULED, PREPARING, PULLING, PREPARED, CREATING, RUNNING,
              RESTARTING, TERMINATING, RESIZING, SUSPENDED, ERROR
  --running   PREPARING, PULLING, PREPARED, CREATING, RUNNING
  --dead      CANCELLED, TERMINATED
  --status    any comma list, or ALL (same as --all-statuses)

\b
-f/--format fields: id (session_id), main_kernel_id, tag, name, type, image, registry,
  cluster_template, cluster_mode, cluster_size, domain_name, group_name, group_id, agent_ids,
  user_email, user_id, access_key, status, status_info, status_changed, created_at,
  terminated_at, starts_at, scheduled_at, startup_command, result, resource_opts,
  scaling_group, service_ports, mounts, occupying_slots, dependencies, abusing_reports,
  idle_checks

\b
Examples:
  backend.ai ps
  backend.ai ps --all --dead
  backend.ai admin session list --format id,status,occupying_slots
  backend.ai --output json ps --access-key AKIA...   (admins: another user's sessions)
"""


@click.command(epilog=EPILOG)
@click.option("--running", is_flag=True, help="Only sessions starting up or running.")
@click.option("--dead", is_flag=True, help="Only CANCELLED and TERMINATED sessions.")
@click.option("-s", "--status", default=None, metavar="X[,Y]",
              help="Only sessions in these statuses (comma list, or ALL).")
@click.option("--all-statuses", is_flag=True, help="Sessions in every status.")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Show every matching session, not only the first 10 (fetched 5,000 at a time).")
@click.option("--name-only", is_flag=True, help="Show only the names (and owners, for admins).")
@click.option("--detail", is_flag=True, help="Add Tag, Created At and Occupying Slots.")
@click.option("-f", "--format", "fmt", default=None, metavar="FIELD,...",
              help="Show exactly these fields, in this order (list below).")
@click.option("--access-key", default=None, metavar="AK",
              help="Admins: list the sessions of the keypair AK.")
@click.option("--limit", type=click.IntRange(1, None), default=None,
              help="Show at most this many sessions (default 10; --all shows all).")
@click.option("--offset", type=click.IntRange(0, None), default=0, help="Skip this many first.")
@click.option("--filter", "filter_", default=None, help="Server-side filter expression.")
@click.option("--order", default=None, help="Server-side order, e.g. -created_at.")
@output_option
def ps(running, dead, status, all_statuses, show_all, name_only, detail, fmt, access_key,
       limit, offset, filter_, order) -> None:
    """List compute sessions, most recently changed first (the first 10 unless --all).

    --running, --dead, --status and --all-statuses exclude each other.
    """
    cli = get_ctx()
    out = cli.output
    statuses = status_set(running, dead, status, all_statuses)
    if fmt is not None:  # validate before any request
        choose_fields(fmt, name_only, detail, False)

    async def body(conn: Any) -> tuple[list[str], list[dict[str, Any]], int]:
        from bai.client.session import SessionAPI

        api = SessionAPI(conn)
        is_admin = False
        if not fmt:
            is_admin = bool((await api.whoami()).get("is_admin"))
        fields = choose_fields(fmt, name_only, detail, is_admin)
        want = None if show_all else (limit or FIRST_PAGE)
        items: list[dict[str, Any]] = []
        pos, total = offset, 0
        while True:
            page = PAGE if want is None else min(PAGE, want - len(items))
            got, total = await api.list_page(
                fields, statuses=statuses, limit=page, offset=pos, access_key=access_key,
                filter=filter_, order=order,
            )
            items.extend(got)
            pos += len(got)
            if not got or pos >= total or (want is not None and len(items) >= want):
                break
        return fields, items, total

    fields, items, total = cli.run(body)
    if out.is_json:
        out.json(json_document(items, total))
        return
    if not items:
        out.warn("No matching sessions.")
        return
    out.table(*table_of(fields, items))
    note = rest_note(total, offset, len(items))
    if note:
        out.warn(note)
