"""The one output handler of the CLI: tables, records and JSON, on stdout; notes on stderr.

``--output table`` (default) prints rich tables when stdout is a terminal and plain aligned text
(header, dashes, rows; no colours) otherwise, so pipes and tests see stable text.
``--output json`` prints one JSON document. Progress and notes always go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from bai.common.texttable import plain_table as _plain_table
from bai.client.units import humanize_bytes  # noqa: F401 - re-exported


class Output:
    """Where and how a command prints. One per invocation (``ctx.obj.output``)."""

    def __init__(self, fmt: str = "table", quiet: bool = False):
        self.format = fmt
        self.quiet = quiet

    @property
    def is_json(self) -> bool:
        return self.format == "json"

    @staticmethod
    def stdout_is_tty() -> bool:
        return sys.stdout.isatty()

    @staticmethod
    def stderr_is_tty() -> bool:
        return sys.stderr.isatty()

    def json(self, obj: Any) -> None:
        click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        srows = [["" if c is None else str(c) for c in r] for r in rows]
        if self.stdout_is_tty():
            from rich.console import Console
            from rich.table import Table

            t = Table(show_edge=False, box=None, header_style="bold", pad_edge=False)
            for h in headers:
                t.add_column(h, no_wrap=True)
            for r in srows:
                t.add_row(*r)
            # never fold ids and times: let a wide table be wider than the terminal
            need = sum(
                max(len(line) for row in [list(headers), *srows] for line in row[i].split("\n"))
                for i in range(len(headers))
            ) + 2 * len(headers)
            console = Console()
            console.width = max(console.width, need)
            console.print(t)
        else:
            click.echo(_plain_table(headers, srows))

    def record(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """A Field/Value table for one object."""
        self.table(["Field", "Value"], [(k, v) for k, v in pairs])

    def note(self, text: str) -> None:
        """A progress or informational line on stderr (suppressed by --quiet)."""
        if not self.quiet:
            click.echo(text, err=True)

    def warn(self, text: str) -> None:
        click.echo(text, err=True)


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for a session's final statistics (both of the manager's stat formats)."""
    stats = dict(stats)
    stats.pop("status", None)
    version = stats.pop("version", 1)
    rows: list[tuple[str, str, str]] = []
    for key, value in stats.items():
        if value is None:
            continue
        if version == 2 and isinstance(value, dict):
            unit = str(value.get("unit_hint", ""))
            if unit == "bytes":
                raw = value.get("stats.max", value.get("current", 0))
                rows.append((key, humanize_bytes(float(raw or 0)), ""))
            elif unit == "msec":
                rows.append((key, f"{int(float(value.get('current') or 0)):,}", "msec"))
            elif unit == "percent":
                rows.append((key, str(value.get("pct", value.get("current", ""))), "%"))
            else:
                rows.append((key, str(value.get("current", "")), unit))
        elif isinstance(value, (int, float)) and (key.endswith("_bytes") or key.endswith("_size")):
            rows.append((key, humanize_bytes(float(value)), ""))
        else:
            rows.append((key, str(value), ""))
    return rows
