"""The ``filter`` and ``order`` strings of ``compute_session_list`` (Backend.AI's query minilang).

Filter: ``field op value`` terms combined with ``&``, ``|`` and parentheses. Operators: ``==
!= > >= < <= contains in like ilike is isnot``; values are double- or single-quoted strings,
numbers, ``[a, b]`` arrays, ``null``, ``true`` and ``false``. Enum fields (status, type, result)
compare case-insensitively, as upstream does. Examples::

    status == "RUNNING"
    name ilike "%train%" & (type == "batch" | status in ["ERROR", "CANCELLED"])

Order: a comma list of fields, each optionally prefixed with ``+`` (ascending, the default) or
``-`` (descending): ``-created_at,+name``.

Both compile to SQLAlchemy expressions over the columns a caller passes in; anything outside the
grammar or the field list raises ``QueryFilterError`` (a 400 problem / GraphQL error) whose
message says what was wrong and what is allowed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from bai.common.errors import InvalidAPIParameters


class QueryFilterError(InvalidAPIParameters):
    title = "Invalid filter or order expression."


@dataclass(frozen=True)
class Field:
    """A filterable / sortable field: its SQL expression and how literals are converted."""

    column: Any
    kind: str = "str"  # str | enum | int | datetime | uuid


_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op>==|!=|>=|<=|>|<)
    | (?P<punct>[()\[\],&|])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_WORD_OPS = {"contains", "in", "like", "ilike", "is", "isnot"}
_CONSTANTS = {"null": None, "true": True, "false": False}


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise QueryFilterError(f"cannot parse the filter at position {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "string":
            body = raw[1:-1]
            tokens.append(("value", re.sub(r"\\(.)", r"\1", body)))
        elif kind == "number":
            tokens.append(("value", float(raw) if "." in raw else int(raw)))
        elif kind == "op":
            tokens.append(("op", raw))
        elif kind == "punct":
            tokens.append((raw, raw))
        elif raw.lower() in _WORD_OPS:
            tokens.append(("op", raw.lower()))
        elif raw.lower() in _CONSTANTS:
            tokens.append(("value", _CONSTANTS[raw.lower()]))
        else:
            tokens.append(("field", raw))
    return tokens


class _Parser:
    def __init__(self, text: str, fields: dict[str, Field]) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.fields = fields

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise QueryFilterError(f"the filter {self.text!r} ends too early")
        if kind is not None and tok[0] != kind:
            raise QueryFilterError(f"expected {kind} but found {tok[1]!r} in the filter {self.text!r}")
        self.pos += 1
        return tok

    def parse(self):
        expr = self.or_expr()
        if self.peek() is not None:
            raise QueryFilterError(f"unexpected {self.peek()[1]!r} in the filter {self.text!r}")
        return expr

    def or_expr(self):
        terms = [self.and_expr()]
        while self.peek() and self.peek()[0] == "|":
            self.take()
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else sa.or_(*terms)

    def and_expr(self):
        terms = [self.atom()]
        while self.peek() and self.peek()[0] == "&":
            self.take()
            terms.append(self.atom())
        return terms[0] if len(terms) == 1 else sa.and_(*terms)

    def atom(self):
        tok = self.peek()
        if tok and tok[0] == "(":
            self.take()
            expr = self.or_expr()
            self.take(")")
            return expr
        name = self.take("field")[1]
        field = self.fields.get(name)
        if field is None:
            raise QueryFilterError(
                f"unknown filter field {name!r}; filterable fields: {', '.join(sorted(self.fields))}"
            )
        op = self.take("op")[1]
        value = self.value()
        return _compare(name, field, op, value)

    def value(self):
        tok = self.peek()
        if tok and tok[0] == "[":
            self.take()
            items = []
            while self.peek() and self.peek()[0] != "]":
                items.append(self.take("value")[1])
                if self.peek() and self.peek()[0] == ",":
                    self.take()
            self.take("]")
            return items
        return self.take("value")[1]


def _convert(name: str, field: Field, value: Any) -> Any:
    if value is None:
        return None
    try:
        if field.kind == "enum":
            return str(value).upper()
        if field.kind == "int":
            return int(value)
        if field.kind == "uuid":
            return uuid.UUID(str(value))
        if field.kind == "datetime":
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise QueryFilterError(f"{value!r} is not a valid value for the field {name!r}") from None
    return str(value)


def _compare(name: str, field: Field, op: str, value: Any):
    col = field.column
    if op in ("is", "isnot"):
        if value not in (None, True, False):
            raise QueryFilterError(f"'{op}' takes null, true or false (field {name!r})")
        return col.is_(value) if op == "is" else col.is_not(value)
    if op == "in":
        if not isinstance(value, list):
            raise QueryFilterError(f"'in' takes an array, e.g. {name} in [\"a\", \"b\"]")
        return col.in_([_convert(name, field, v) for v in value])
    if isinstance(value, list):
        raise QueryFilterError(f"an array only goes with 'in' (field {name!r})")
    if op in ("contains", "like", "ilike"):
        if field.kind not in ("str", "enum"):
            raise QueryFilterError(f"'{op}' works on text fields only, not on {name!r}")
        text = str(value)
        if op == "contains":
            return col.contains(text, autoescape=True)
        return col.like(text) if op == "like" else col.ilike(text)
    converted = _convert(name, field, value)
    if op == "==":
        return col.is_(None) if converted is None else col == converted
    if op == "!=":
        return col.is_not(None) if converted is None else col != converted
    if converted is None:
        raise QueryFilterError(f"'{op}' cannot compare with null (field {name!r})")
    return {">": col > converted, ">=": col >= converted, "<": col < converted, "<=": col <= converted}[op]


def parse_filter(text: str, fields: dict[str, Field]):
    """Compile a filter expression to a SQLAlchemy boolean clause."""
    if not text or not text.strip():
        return sa.true()
    return _Parser(text, fields).parse()


def parse_order(text: str, fields: dict[str, Field]) -> list:
    """Compile an order expression (``-created_at,+name``) to ORDER BY clauses."""
    clauses = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        desc = part.startswith("-")
        name = part.lstrip("+-").strip()
        field = fields.get(name)
        if field is None:
            raise QueryFilterError(
                f"cannot order by {name!r}; sortable fields: {', '.join(sorted(fields))}"
            )
        clauses.append(field.column.desc() if desc else field.column.asc())
    if not clauses:
        raise QueryFilterError(f"the order expression {text!r} names no field")
    return clauses
