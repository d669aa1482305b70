"""The express path of ``backend.ai ps``: every option of the click command (``bai.client.cli.
listing``), without click, asyncio, httpx or rich, through the manager's pre-serialised listing
(``GET /session/_/list``: rows already made, one statement) instead of GraphQL.

Same output as the click path, byte for byte: the plain table (stdout not a terminal; rich's
table on a terminal, imported only then), ``--output json`` the same document, the same notes
on stderr, the same one-line errors. One round trip: the route says whether the caller is an
admin, so the owner column is asked for and dropped for users instead of asking first.

Anything it does not take (``--help``, bundled or attached short options, a bad ``--limit``,
values click would reject) answers None from ``parse`` and the command goes through click; so
does a manager without the route (404/405: an older bai or another manager), where the click
path lists through GraphQL. ``BAI_CLI_EXPRESS=0`` turns the path off. The plain table to a
pipe or a file is first tried leaner still (``bai.client.cli.ps_rendered``: the manager renders
it); what that path cannot do alone comes here.
"""

from __future__ import annotations

import sys

from bai.client.cli.express import Express
from bai.client.cli.ps_rendered import ROUTE, parse
from bai.client.cli.ps_plan import FIRST_PAGE, choose_fields, json_document, rest_note, \
    status_set
from bai.common.sessionfields import table_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: rows per request (the most the manager gives): rows come made, so one request is cheapest
EXPRESS_PAGE = 10_000


class NoRoute(Exception):
    """The manager does not serve ``GET /session/_/list``."""


def fetch(express: Express, plan: dict[str, Any], statuses: list[str]
          ) -> tuple[list[str], list[dict[str, Any]], int]:
    """(fields, items as GraphQL would give them, total) in as few pages as ``ps`` needs."""
    fmt = plan["fmt"]
    # the owner column is for admins: ask for it, drop it if the answer says "not an admin"
    fields = choose_fields(fmt, plan["name_only"], plan["detail"], fmt is None)
    want = None if plan["show_all"] else (plan["limit"] or FIRST_PAGE)
    items: list[dict[str, Any]] = []
    pos, total = plan["offset"], 0
    while True:
        page = EXPRESS_PAGE if want is None else min(EXPRESS_PAGE, want - len(items))
        params = {"fields": ",".join(fields), "status": ",".join(statuses), "limit": page,
                  "offset": pos, "access_key": plan["access_key"], "filter": plan["filter"],
                  "order": plan["order"]}
        try:
            answer = express.request("GET", ROUTE, params=params)
        except Exception as e:
            if getattr(e, "status", None) in (404, 405) and not items:
                raise NoRoute from None
            raise
        got = [dict(zip(fields, row, strict=True)) for row in answer["items"]]
        total = int(answer["total_count"])
        items.extend(got)
        pos += len(got)
        if not got or pos >= total or (want is not None and len(items) >= want):
            break
    if fmt is None and not answer.get("is_admin"):
        fields.remove("access_key")
        for it in items:
            del it["access_key"]
    return fields, items, total


def show(plan: dict[str, Any], fields: list[str], items: list[dict[str, Any]],
         total: int) -> None:
    out = sys.stdout
    if plan["output"] == "json":
        import json

        out.write(json.dumps(json_document(items, total), indent=2, ensure_ascii=False,
                             default=str) + "\n")
        return
    if not items:
        sys.stderr.write("No matching sessions.\n")
        return
    headers, rows = table_of(fields, items)
    if out.isatty():  # rich's table, as the click path draws it
        from bai.client.cli.output import Output

        Output("table").table(headers, rows)
    else:
        from bai.common.texttable import plain_table

        out.write(plain_table(headers, rows) + "\n")
    note = rest_note(total, plan["offset"], len(items))
    if note:
        out.flush()
        sys.stderr.write(note + "\n")


def main(args: list[str]) -> int | None:
    """``ps ARGS``' exit code, or None when the click path is to run it."""
    plan = parse(args)
    if plan is None:
        return None
    statuses = status_set(plan["running"], plan["dead"], plan["status"], plan["all_statuses"])
    if plan["fmt"] is not None:  # validate before any request
        choose_fields(plan["fmt"], plan["name_only"], plan["detail"], False)
    express = Express({"quiet": True})
    try:
        fields, items, total = fetch(express, plan, statuses)
    except NoRoute:
        return None
    finally:
        express.http.close()
    show(plan, fields, items, total)
    return 0
