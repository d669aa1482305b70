"""The session fields ``ps -f`` accepts: GraphQL name, column header, how to show it.

Names, headers and JSON keys are those of the official client (client-protocol §3.4), so the
same ``-f`` values and the same ``--output json`` keys work with both clients. Shared by the CLI
and the manager, which renders ``ps``'s plain table itself (``GET /session/_/list?render=table``)
with the same ``table_of`` and ``bai.common.texttable.plain_table``: the same bytes either way.
"""

from __future__ import annotations

# ``typing``, ``dataclasses``, ``decimal`` and ``json`` (``re``) cost ~10 ms to import and ``ps``
# imports this module: annotations are never evaluated, ``decimal`` only for slot amounts,
# ``json`` only for JSON-text values.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Field:
    __slots__ = ("header", "json_key", "kind", "name")

    def __init__(self, name: str, header: str, kind: str = "default",
                 json_key: str | None = None) -> None:
        self.name = name
        self.header = header
        self.kind = kind  # default | nested | slots | deps
        self.json_key = json_key

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.header!r}, {self.kind!r}, {self.json_key!r})"

    @property
    def key(self) -> str:
        return self.json_key or self.name


FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        Field("id", "Session ID", json_key="session_id"),
        Field("main_kernel_id", "Main Kernel ID"),
        Field("tag", "Tag"),
        Field("name", "Name"),
        Field("type", "Type"),
        Field("image", "Image"),
        Field("registry", "Registry"),
        Field("cluster_template", "Cluster Template"),
        Field("cluster_mode", "Cluster Mode"),
        Field("cluster_size", "Cluster Size"),
        Field("domain_name", "Domain Name"),
        Field("group_name", "Project/Group"),
        Field("group_id", "Group ID"),
        Field("agent_ids", "Agent Ids"),
        Field("user_email", "User Email"),
        Field("user_id", "User ID"),
        Field("access_key", "Owner Access Key"),
        Field("created_user_email", "Created User Email"),
        Field("created_user_id", "Created User Id"),
        Field("status", "Status"),
        Field("status_info", "Status Info"),
        Field("status_data", "Status Data", "nested"),
        Field("status_changed", "Last Updated"),
        Field("created_at", "Created At"),
        Field("terminated_at", "Terminated At"),
        Field("starts_at", "Starts At"),
        Field("scheduled_at", "Scheduled At"),
        Field("startup_command", "Startup Command"),
        Field("result", "Result"),
        Field("resource_opts", "Resource Opts", "nested"),
        Field("scaling_group", "Scaling Group"),
        Field("service_ports", "Service Ports", "nested"),
        Field("mounts", "Mounts"),
        Field("occupying_slots", "Occupying Slots", "slots"),
        Field("dependencies", "Dependencies", "deps"),
        Field("abusing_reports", "Abusing Reports"),
        Field("idle_checks", "Idle Checks"),
    ]
}
ALIASES = {"session_id": "id"}

DEFAULT_FIELDS = (
    "name", "id", "group_name", "main_kernel_id", "image", "type", "status", "status_info",
    "status_changed", "result",
)
DETAIL_EXTRA = ("tag", "created_at", "occupying_slots")


def parse_format(spec: str) -> list[str]:
    """``"id,status"`` -> GraphQL names; raises ValueError naming the unknown field."""
    names = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        name = ALIASES.get(name, name)
        if name not in FIELDS:
            raise ValueError(name)
        if name not in names:
            names.append(name)
    return names


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        import json

        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _fmt_amount(slot: str, v: Any) -> str:
    from decimal import Decimal, InvalidOperation

    from bai.common.resources import format_size

    try:
        d = Decimal(str(v))
    except (InvalidOperation, ValueError):
        return str(v)
    if slot == "mem" or slot.endswith(".mem"):
        return format_size(d)
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def format_slots(value: Any) -> str:
    """``{"cpu": "1", "mem": "268435456"}`` -> ``cpu:1, mem:256m``."""
    slots = _decode(value)
    if not slots:
        return "-"
    if not isinstance(slots, dict):
        return str(slots)
    return ", ".join(f"{k}:{_fmt_amount(k, v)}" for k, v in sorted(slots.items()))


def _flat(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        if not value:
            return "-"
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "-"
        return ", ".join(_flat(v) for v in value)
    return str(value)


def _nested_lines(value: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.extend(_nested_lines(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {_flat(v)}")
        return lines
    if isinstance(value, list):
        return [f"{pad}- {_flat(v)}" for v in value]
    return [f"{pad}{_flat(value)}"]


def format_cell(field: Field, value: Any, multiline: bool = False) -> str:
    """How one value shows in a table (``multiline`` for the info record)."""
    if field.kind == "slots":
        return format_slots(value)
    if field.kind == "nested":
        decoded = _decode(value)
        if multiline and isinstance(decoded, (dict, list)) and decoded:
            return "\n".join(_nested_lines(decoded))
        return _flat(decoded)
    if field.kind == "deps":
        if not value:
            return "-"
        return ", ".join(
            f"{d.get('name')} ({d.get('id')})" if isinstance(d, dict) else str(d) for d in value
        )
    if field.name == "idle_checks":
        decoded = _decode(value)
        if multiline and isinstance(decoded, dict) and decoded:
            return "\n".join(_nested_lines(decoded))
        return _flat(decoded)
    return _flat(value)


def json_value(field: Field, value: Any) -> Any:
    if field.kind in ("slots", "nested"):
        return _decode(value)
    return value


def item_to_json(item: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in item.items():
        f = FIELDS.get(name)
        out[f.key if f else name] = json_value(f, value) if f else value
    return out


def table_of(fields: list[str], items: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of cells) of ``ps``'s table."""
    specs = [FIELDS[f] for f in fields]
    # a plain text value shows as it is (format_cell's answer for it): 5,000 rows of 11
    # columns without 55,000 calls
    plain = [s.kind == "default" and s.name != "idle_checks" for s in specs]
    rows = []
    for it in items:
        row = []
        for s, is_plain in zip(specs, plain, strict=True):
            v = it.get(s.name)
            row.append(v if is_plain and type(v) is str else format_cell(s, v))
        rows.append(row)
    return [s.header for s in specs], rows
