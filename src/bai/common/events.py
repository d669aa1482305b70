"""Events: what agents observe about kernels, and what clients see about sessions.

Agent -> manager (``KernelEvent``), past tense, one per observation::

    kernel_preparing   the agent accepted the create request
    kernel_pulling     the image is being fetched          (reason: image name)
    kernel_prepared    the image is present
    kernel_creating    the container / sandbox is being made
    kernel_started     the runner answers; code can run    (data: container_id, service_ports)
    kernel_creation_failed                                  (reason, data.error)
    kernel_terminated  the kernel is gone                  (reason, exit_code; reason
                       "oom-killed" when it ran out of memory, "self-terminated" when its main
                       process ended, "user-requested" after a destroy call)

Manager -> clients (``SessionEvent`` over SSE ``/events/session``), names as the upstream
manager emits them: session_enqueued, session_scheduled, session_preparing, kernel_preparing,
kernel_pulling, kernel_creating, kernel_started, session_started, session_terminating,
kernel_terminating, kernel_terminated, session_terminated, session_cancelled, session_success,
session_failure, session_error. The special ``server_close`` ends a client's stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

KERNEL_EVENT_NAMES = frozenset(
    {
        "kernel_preparing",
        "kernel_pulling",
        "kernel_prepared",
        "kernel_creating",
        "kernel_started",
        "kernel_creation_failed",
        "kernel_terminated",
    }
)

SESSION_EVENT_NAMES = frozenset(
    {
        "session_enqueued",
        "session_scheduled",
        "session_preparing",
        "session_pulling",
        "session_prepared",
        "session_creating",
        "session_started",
        "session_terminating",
        "session_terminated",
        "session_cancelled",
        "session_success",
        "session_failure",
        "session_error",
        "session_pending",
        "kernel_preparing",
        "kernel_pulling",
        "kernel_creating",
        "kernel_started",
        "kernel_terminating",
        "kernel_terminated",
        "kernel_cancelled",
    }
)

SERVER_CLOSE = "server_close"


@dataclass
class KernelEvent:
    """An observation an agent reports about one of its kernels."""

    name: str
    agent_id: str
    kernel_id: str
    session_id: str
    reason: str = ""
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies, ~10x the cost, and agents send thousands
        return {"name": self.name, "agent_id": self.agent_id, "kernel_id": self.kernel_id,
                "session_id": self.session_id, "reason": self.reason,
                "exit_code": self.exit_code, "data": dict(self.data), "ts": self.ts}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KernelEvent:
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)


@dataclass
class SessionEvent:
    """A lifecycle event a client sees; ``payload`` is what goes into the SSE data line."""

    name: str
    session_id: str
    session_name: str
    access_key: str
    reason: str = ""
    exit_code: int | None = None
    kernel_id: str | None = None
    status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "reason": self.reason,
            "sessionName": self.session_name,
            "ownerAccessKey": self.access_key,
            "sessionId": self.session_id,
            "exitCode": self.exit_code,
        }
        if self.kernel_id is not None:
            body.update({"kernelId": self.kernel_id, "clusterRole": "main", "clusterIdx": 0})
        if self.status is not None:
            body["status"] = self.status
        body.update(self.extra)
        return body

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "session_id": self.session_id,
                "session_name": self.session_name, "access_key": self.access_key,
                "reason": self.reason, "exit_code": self.exit_code, "kernel_id": self.kernel_id,
                "status": self.status, "extra": dict(self.extra), "ts": self.ts}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SessionEvent:
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)
