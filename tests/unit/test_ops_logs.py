"""The daemons' log set-up: JSON lines, levels per component, the request id on each line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bai.ops.logs import (
    REQUEST_ID, TEXT_FORMAT, RequestIds, TextFormatter, configure, new_request_id, parse_levels,
)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    touched = ["bai.one", "bai.two", "bai.two.child"]
    knobs = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    kept = {k: getattr(logging, k) for k in knobs}
    yield
    for k, v in kept.items():
        setattr(logging, k, v)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name in touched:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_json_lines_with_levels_per_component(restore_logging):
    out = io.StringIO()
    configure("WARNING", "json", "bai.one=DEBUG, bai.two=ERROR", stream=out)
    logging.getLogger("bai.one").debug("shown %d", 1, extra={"session_id": "s-1"})
    logging.getLogger("bai.two.child").warning("hidden: bai.two is at ERROR")
    logging.getLogger("bai.three").info("hidden: the root is at WARNING")
    token = REQUEST_ID.set("req-7")
    try:
        logging.getLogger("bai.three").error("shown too")
    finally:
        REQUEST_ID.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bai.two").exception("failed")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["shown 1", "shown too", "failed"]
    first, second, third = lines
    assert first["level"] == "DEBUG" and first["logger"] == "bai.one"
    assert first["session_id"] == "s-1" and "request_id" not in first
    assert second["request_id"] == "req-7"
    assert "ValueError: boom" in third["exc_info"]


def test_text_lines_carry_the_request_id(restore_logging):
    out = io.StringIO()
    configure("INFO", "text", "", stream=out)
    token = REQUEST_ID.set("req-8")
    try:
        logging.getLogger("bai.one").info("hello")
    finally:
        REQUEST_ID.reset(token)
    assert out.getvalue().rstrip().endswith("bai.one: hello [request_id=req-8]")


@pytest.mark.parametrize("bad", ["bai.one", "bai.one=LOUD", "=DEBUG"])
def test_bad_level_settings_are_refused(bad):
    with pytest.raises(ValueError, match="LOGGER=LEVEL"):
        parse_levels(bad)


def test_bad_format_and_level_are_refused(restore_logging):
    with pytest.raises(ValueError, match="log_format"):
        configure("INFO", "xml")
    with pytest.raises(ValueError, match="log_level"):
        configure("CHATTY", "text")


def test_request_ids_offered_and_made():
    assert new_request_id("abc-1.2:3_4") == "abc-1.2:3_4"
    for bad in (None, "", "x" * 65, "has space", "quote\"", "new\nline"):
        made = new_request_id(bad)
        assert made != bad and len(made) == 16
    made = [new_request_id() for _ in range(1000)]
    assert len(set(made)) == 1000  # each request its own id
    assert all(len(x) == 16 and int(x, 16) >= 0 for x in made)


def test_text_lines_show_their_own_time(restore_logging):
    """A line's time is written once a second and reused: each line still shows its own
    second and milliseconds, as the stock formatter writes them."""
    ours, stock = TextFormatter(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    base = 1_700_000_000
    for created in (base + 0.25, base + 0.75, base + 1.5, base + 1.999, base + 0.5, base + 60):
        record = logging.LogRecord("bai.one", logging.INFO, "", 0, "at %s", (created,), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == stock.format(record)
    dated = TextFormatter(TEXT_FORMAT, datefmt="%H:%M")
    record = logging.LogRecord("bai.one", logging.INFO, "", 0, "x", (), None)
    assert dated.formatTime(record, "%H:%M") == logging.Formatter().formatTime(record, "%H:%M")


def test_request_ids_remember_a_session_until_placed():
    ids = RequestIds(limit=2)
    ids.note("s0")  # outside a request: nothing to remember
    token = REQUEST_ID.set("r1")
    try:
        for sid in ("s1", "s2", "s3"):
            ids.note(sid)
    finally:
        REQUEST_ID.reset(token)
    assert ids.pop("s1") is None  # the oldest went first
    assert ids.pop("s3") == "r1" and ids.pop("s3") is None


def test_request_ids_take_a_session_id_as_uuid_or_text():
    import uuid

    ids = RequestIds(limit=1000)
    sids = [uuid.uuid4() for _ in range(1001)]
    token = REQUEST_ID.set("r1")
    try:
        for sid in sids:
            ids.note(sid)  # the create notes the row's UUID
    finally:
        REQUEST_ID.reset(token)
    # the scheduler pops the kernel spec's text; past the limit a tenth of the oldest went
    assert ids.pop(str(sids[0])) is None and ids.pop(str(sids[99])) is None
    assert ids.pop(str(sids[100])) == "r1" and ids.pop(sids[-1]) == "r1"
    assert ids.pop(str(sids[-1])) is None


def test_request_ids_keep_a_waiting_session_in_under_100_bytes():
    # one entry per waiting session, for as long as it waits (5,000 waiting: ~0.4 MB)
    import tracemalloc
    import uuid

    texts = [str(uuid.uuid4()) for _ in range(5000)]
    rid = "r" * 16
    token = REQUEST_ID.set(rid)
    tracemalloc.start()
    try:
        ids = RequestIds()
        for text in texts:
            ids.note(uuid.UUID(text))  # the row's UUID, gone once the create answered
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        REQUEST_ID.reset(token)
    assert size / len(texts) < 100, size / len(texts)
