"""Logging of the daemons: text or JSON lines, levels per component, and a request id.

``REQUEST_ID`` holds the id of the request being served (taken from the client's
``X-Request-ID`` or made up). Tasks started while serving it inherit it (asyncio copies the
context), and every log record gets it as ``request_id``: the manager passes it on to the
scheduler (``RequestIds``) and from there to the agent in the kernel spec, so one id follows a
session from its create request to its kernel. Stdlib only.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: record attributes every LogRecord has: what is left of a record's attributes came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


#: made ids: this process's random half, then a count (no getrandom call per request)
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNT = itertools.count(1)


def new_request_id(offered: str | None = None) -> str:
    """The client's id when it is a short plain token, else a new one: 16 hex digits, 8 of
    them random per process (replicas apart) and 8 counting this process's requests."""
    if offered and _SANE_ID.match(offered):
        return offered
    return f"{_ID_PREFIX}{next(_ID_COUNT) & 0xFFFFFFFF:08x}"


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id`` (None outside a request) unless it has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        # (not hasattr: a missing attribute formats an AttributeError for every record)
        if "request_id" not in record.__dict__:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, the record's
    ``extra=`` fields, and the traceback as ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    #: (second, its local time as text): a line's time is made once a second, not per line
    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        kept, text = self._second
        if second != kept:
            text = time.strftime(self.default_time_format, time.localtime(second))
            self._second = (second, text)
        return self.default_msec_format % (text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request_id={rid}]" if rid else line


def parse_levels(spec: str) -> dict[str, int]:
    """``"bai.manager.services.scheduling=DEBUG,bai.access=WARNING"`` -> {logger: level}."""
    out: dict[str, int] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, level = item.partition("=")
        value = logging.getLevelName(level.strip().upper())
        if not eq or not name.strip() or not isinstance(value, int):
            raise ValueError(f"log_levels: {item!r} is not LOGGER=LEVEL (DEBUG, INFO, WARNING, "
                             "ERROR)")
        out[name.strip()] = value
    return out


def configure(level: str = "INFO", fmt: str = "text", levels: str = "",
              stream=None) -> None:
    """Set up the root logger once for a daemon: one handler on ``stream`` (stderr)."""
    root_level = logging.getLevelName(level.upper())
    if not isinstance(root_level, int):
        raise ValueError(f"log_level: unknown level {level!r}")
    per_logger = parse_levels(levels)
    if fmt not in ("text", "json"):
        raise ValueError(f"log_format: {fmt!r} is neither 'text' nor 'json'")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    # no format of ours shows a record's caller, thread or process: not collected (the logging
    # HOWTO's "Optimization"; ~7 us of the ~33 us of each access-log line)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    for name, value in per_logger.items():
        logging.getLogger(name).setLevel(value)


class RequestIds:
    """Session id -> the id of the request that created it, until the scheduler places the
    session (bounded: the oldest are forgotten first, a tenth of ``limit`` at a time). In-process:
    with several manager replicas, a session placed by another replica than the one that took
    its create request is logged with its session id only.

    One entry is kept per waiting session: a plain dict keyed by the id's 128-bit int takes
    ~74 bytes an entry where an ``OrderedDict`` keyed by its text took ~151 (a waiting
    session's, 5,000 of them: 0.4 MB less)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: dict[object, str] = {}
        self.limit = limit

    def note(self, session_id: object) -> None:
        rid = REQUEST_ID.get()
        if rid is None:
            return
        ids = self._ids
        ids[_id_key(session_id)] = rid
        if len(ids) > self.limit:  # in insertion order: the oldest first
            for key in list(itertools.islice(ids, max(1, self.limit // 10))):
                del ids[key]

    def pop(self, session_id: object) -> str | None:
        return self._ids.pop(_id_key(session_id), None)


def _id_key(session_id: object) -> object:
    """A session id as ``RequestIds`` keeps it: a UUID's int, given as a UUID or as its text
    (any other text as itself)."""
    if isinstance(session_id, uuid.UUID):
        return session_id.int
    try:
        return uuid.UUID(str(session_id)).int
    except ValueError:
        return str(session_id)
