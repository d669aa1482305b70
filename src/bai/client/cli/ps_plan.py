"""What ``backend.ai ps`` asks for and how it shows the answer, without click: shared by the
click command (``bai.client.cli.listing``) and the express path (``bai.client.cli.express_ps``).
"""

from __future__ import annotations

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FIRST_PAGE = 10
#: rows per request of ``--all`` (the manager answers up to 10,000): one round trip for most
#: listings (each request pays the query, the count and the client's signing again)
PAGE = 5000


def status_set(running: bool, dead: bool, status: str | None, all_statuses: bool) -> list[str]:
    from bai.client.errors import UsageError
    from bai.common.status import LIST_ALL, LIST_DEAD, LIST_DEFAULT, LIST_RUNNING, parse_statuses

    given = [opt for opt, on in (("--running", running), ("--dead", dead),
                                 ("--status", status is not None),
                                 ("--all-statuses", all_statuses)) if on]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other: give one of them")
    if status is not None and not status.strip():
        raise UsageError("--status needs a status name (or ALL)")
    if all_statuses or (status and status.strip().upper() == "ALL"):
        return [str(s) for s in LIST_ALL]
    if dead:
        return [str(s) for s in LIST_DEAD]
    if running:
        return [str(s) for s in LIST_RUNNING]
    if status:
        known, unknown = parse_statuses(status)
        if unknown or not known:
            names = ", ".join(str(s) for s in LIST_ALL)
            bad = ", ".join(unknown) or repr(status)
            raise UsageError(f"unknown status {bad} for --status (known: {names}, ALL)")
        return [str(s) for s in known]
    return [str(s) for s in LIST_DEFAULT]


def choose_fields(fmt: str | None, name_only: bool, detail: bool, is_admin: bool) -> list[str]:
    from bai.common.sessionfields import DEFAULT_FIELDS, DETAIL_EXTRA, parse_format

    if fmt is not None:
        from bai.client.errors import UsageError

        try:
            fields = parse_format(fmt)
        except ValueError as e:
            raise UsageError(
                f"unknown field {e.args[0]!r} for --format (see 'backend.ai ps --help' for the list)"
            ) from None
        if not fields:
            raise UsageError("--format needs at least one field name")
        return fields
    owner = ["access_key"] if is_admin else []
    if name_only:
        return ["name", *owner]
    fields = ["name", *owner, *DEFAULT_FIELDS[1:]]
    if detail:
        fields += list(DETAIL_EXTRA)
    return fields


def json_document(items: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """``--output json``: the official client's keys."""
    from bai.common.sessionfields import item_to_json

    return {"count": len(items), "total_count": total,
            "items": [item_to_json(it) for it in items]}


def rest_note(total: int, offset: int, shown: int) -> str | None:
    """The line on stderr when more sessions match than were shown."""
    rest = total - offset - shown
    return f"({shown} of {total} shown; {rest} more: use --all to list them)" if rest > 0 else None
