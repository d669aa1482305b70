"""Typed records the SDK hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bai.client.bodies import machine


@dataclass(frozen=True)
class CreatedSession:
    """The answer of ``POST /session``."""

    session_id: str
    name: str
    status: str
    created: bool = True
    service_ports: tuple[str, ...] = ()
    #: an array's elements: (session id, name, index) each
    elements: tuple[tuple[str, str, int], ...] = ()
    #: (statusInfo, statusData) where the answer says why the session waits (an enqueue-only
    #: create's, from a manager that sends them)
    waits_on: tuple[str | None, Any] | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any], name: str) -> CreatedSession:
        ports = tuple(
            str(p.get("name", p)) if isinstance(p, dict) else str(p)
            for p in body.get("servicePorts") or []
        )
        return cls(
            session_id=str(body.get("sessionId", "")),
            name=str(body.get("sessionName") or name),
            status=str(body.get("status", "RUNNING")),
            created=bool(body.get("created", True)),
            service_ports=ports,
            elements=tuple((str(e.get("sessionId")), str(e.get("sessionName")),
                            int(e.get("index", 0)))
                           for e in body.get("array") or [] if isinstance(e, dict)),
            waits_on=(body.get("statusInfo"), body.get("statusData"))
            if "statusInfo" in body else None,
        )


@dataclass
class CreateSpec:
    """What ``run`` and ``start`` ask for; ``to_body`` is the official client's JSON, key for key.

    ``run`` leaves ``dependencies`` as None and ``preopen_ports`` as ``[]``; ``start`` sends
    ``[]`` and None for them, as the official client does.
    """

    image: str
    name: str
    type: str = "interactive"
    tag: str | None = None
    environ: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    resource_opts: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    mount_map: dict[str, str] = field(default_factory=dict)
    scaling_group: str | None = None
    preopen_ports: list[str] | None = field(default_factory=list)
    dependencies: list[str] | None = None
    callback_url: str | None = None
    architecture: str = field(default_factory=machine)
    cluster_size: int = 1
    cluster_mode: str = "single-node"
    starts_at: str | None = None
    bootstrap_script: str | None = None
    owner_access_key: str | None = None
    domain: str = "default"
    group: str = "default"
    enqueue_only: bool = False
    max_wait: int = 0
    reuse: bool = True
    startup_command: str | None = None
    #: an array spec (``start --array``): bai's own key, sent only when set
    array: str | None = None
    #: the user's own services (``--service NAME:PORT``): bai's own key, sent only when set
    services: list[dict[str, Any]] | None = None

    def to_body(self) -> dict[str, Any]:
        from bai.client.bodies import create_session

        body = create_session(
            image=self.image, name=self.name, type=self.type, tag=self.tag,
            environ=self.environ, resources=self.resources, resource_opts=self.resource_opts,
            mounts=self.mounts, mount_map=self.mount_map, scaling_group=self.scaling_group,
            preopen_ports=self.preopen_ports, dependencies=self.dependencies,
            callback_url=self.callback_url, architecture=self.architecture,
            cluster_size=self.cluster_size, cluster_mode=self.cluster_mode,
            starts_at=self.starts_at, bootstrap_script=self.bootstrap_script,
            owner_access_key=self.owner_access_key, domain=self.domain, group=self.group,
            enqueue_only=self.enqueue_only, max_wait=self.max_wait, reuse=self.reuse,
            startup_command=self.startup_command,
        )
        if self.array is not None:
            body["array"] = self.array
        if self.services:
            body["config"]["service_ports"] = list(self.services)
        return body


@dataclass(frozen=True)
class ExecFrame:
    """One server message of the execute stream."""

    status: str
    console: list[tuple[str, Any]]
    exit_code: int | None
    options: dict[str, Any]
    files: list[dict[str, Any]]

    @classmethod
    def from_json(cls, msg: dict[str, Any]) -> ExecFrame:
        console = []
        for item in msg.get("console") or []:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                console.append((str(item[0]), item[1]))
        code = msg.get("exitCode")
        return cls(
            status=str(msg.get("status", "")),
            console=console,
            exit_code=code if isinstance(code, int) else None,
            options=msg.get("options") or {},
            files=msg.get("files") or [],
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One status transition of a session."""

    at: str
    from_status: str | None
    to_status: str
    reason: str
    cause: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HistoryEntry:
        return cls(
            at=str(d.get("at") or d.get("time") or d.get("timestamp") or ""),
            from_status=d.get("from_status", d.get("from")),
            to_status=str(d.get("to_status", d.get("to", d.get("status", "")))),
            reason=str(d.get("reason") or ""),
            cause=str(d.get("cause") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.from_status,
            "to": self.to_status,
            "reason": self.reason,
            "cause": self.cause,
        }
