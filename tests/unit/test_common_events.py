"""Events' wire form: written by hand for speed, so it must keep every field."""

from __future__ import annotations

import dataclasses
import json

from bai.common.events import KernelEvent, SessionEvent


def test_kernel_event_wire_form_has_every_field_and_round_trips():
    ev = KernelEvent("kernel_started", "a-1", "k-1", "s-1", reason="r", exit_code=3,
                     data={"service_ports": [{"name": "jupyter"}], "container_id": "c"})
    wire = ev.to_json()
    assert wire == dataclasses.asdict(ev)
    assert KernelEvent.from_json(json.loads(json.dumps(wire))) == ev
    wire["data"]["container_id"] = "changed"  # a copy: the event itself is untouched
    assert ev.data["container_id"] == "c"


def test_session_event_wire_form_has_every_field_and_round_trips():
    ev = SessionEvent("session_started", "s-1", "name", "AK", reason="started", exit_code=None,
                      kernel_id="k-1", status="RUNNING", extra={"queuePosition": 2})
    wire = ev.to_json()
    assert wire == dataclasses.asdict(ev)
    assert SessionEvent.from_json(json.loads(json.dumps(wire))) == ev
