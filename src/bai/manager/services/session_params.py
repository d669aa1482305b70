"""Parsing the body of ``POST /session`` (client-protocol.md §5.1) into a ``CreateRequest``.

Pure: no database. Aliases accepted as the upstream manager does (``name``/``session_name``/
``clientSessionToken``, ``image``/``lang``, ``type``/``sessionType``, ...).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bai.common.arrays import ArraySpecError, parse_array
from bai.common.errors import InvalidAPIParameters
from bai.common.mounts import MountRequest, parse_mounts
from bai.common.names import session_name_problem
from bai.common.resources import ResourceSlot, parse_request
from bai.common.status import SessionType
from bai.manager.services.callbacks import check_url

_REL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|w)?\s*$", re.IGNORECASE)
_REL_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600,
             "d": 86400, "w": 604800}
#: how far ahead ``starts_at`` may be
MAX_STARTS_AHEAD = timedelta(days=3660)


def check_name(name: str) -> str:
    problem = session_name_problem(name)
    if problem:
        raise InvalidAPIParameters(problem, data={"name": str(name)[:64]})
    return name


def parse_starts_at(value: Any, now: datetime) -> datetime | None:
    """ISO-8601 (naive means local time) or a delay such as ``10m``, ``1h``, ``30s``."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        m = _REL_RE.match(text)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            when = now + timedelta(seconds=float(m.group(1)) * _REL_UNIT[unit])
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.astimezone()
            when = when.astimezone(UTC)
        if when - now > MAX_STARTS_AHEAD:  # the scheduler adds to it: keep far from year 9999
            raise ValueError(text)
        return when
    except (ValueError, OverflowError):  # not a time, or one past year 9999
        raise InvalidAPIParameters(
            f"invalid starts_at {text!r}: use an ISO-8601 time within 10 years or a delay such as 10m or 1h",
            data={"field": "starts_at", "starts_at": text},
        ) from None


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _first(params: dict, *names: str, default: Any = None) -> Any:
    for n in names:
        if params.get(n) is not None:
            return params[n]
    return default


@dataclass
class CreateRequest:
    name: str
    image: str
    type: SessionType
    resources: ResourceSlot
    environ: dict[str, str] = field(default_factory=dict)
    resource_opts: dict[str, Any] = field(default_factory=dict)
    scaling_group: str | None = None
    enqueue_only: bool = False
    max_wait: float = 0.0
    reuse: bool = True
    startup_command: str | None = None
    bootstrap_script: str | None = None
    starts_at: datetime | None = None
    dependencies: list[str] = field(default_factory=list)
    owner_access_key: str | None = None
    domain: str | None = None
    group: str = "default"
    tag: str | None = None
    callback_url: str | None = None
    mounts: list[MountRequest] = field(default_factory=list)
    #: the user's own services (config.service_ports) and the official client's preopen ports
    services: list[Any] = field(default_factory=list)
    preopen_ports: list[Any] = field(default_factory=list)
    #: bai's ``array`` field: the indices of an array of sessions NAME-INDEX, or None
    array: list[int] | None = None


def parse_create(params: Any, now: datetime) -> CreateRequest:
    if not isinstance(params, dict):
        raise InvalidAPIParameters("the request body must be a JSON object")
    name = _first(params, "name", "session_name", "clientSessionToken")
    name = check_name(name) if name is not None else f"pysdk-{secrets.token_hex(5)}"
    image = _first(params, "image", "lang")
    if not image or not isinstance(image, str):
        raise InvalidAPIParameters("missing image: give an image name or alias (e.g. python)")
    raw_type = str(_first(params, "type", "sessionType", default="interactive")).strip().upper()
    try:
        stype = SessionType(raw_type)
    except ValueError:
        raise InvalidAPIParameters(
            f"invalid session type {raw_type.lower()!r}: use interactive or batch"
        ) from None
    config = params.get("config") or {}
    if not isinstance(config, dict):
        raise InvalidAPIParameters("config must be a JSON object")
    resources = parse_request(config.get("resources") or {})
    environ = config.get("environ") or {}
    if not isinstance(environ, dict):
        raise InvalidAPIParameters("config.environ must map names to values")
    cluster_size = int(_first(params, "clusterSize", "cluster_size", default=1) or 1)
    if cluster_size != 1:
        raise InvalidAPIParameters("only clusterSize 1 is supported (one kernel per session)")
    startup = _first(params, "startupCommand", "startup_command")
    if stype is SessionType.BATCH and not (startup and str(startup).strip()):
        raise InvalidAPIParameters("a batch session needs a startup command (--exec / -c)")
    try:
        max_wait = float(_first(params, "maxWaitSeconds", "max_wait_seconds", default=0) or 0)
    except (TypeError, ValueError):
        raise InvalidAPIParameters("maxWaitSeconds must be a number") from None
    deps = _first(params, "dependencies", default=[]) or []
    if isinstance(deps, str):
        deps = [deps]
    tag = params.get("tag")
    if tag is not None and len(str(tag)) > 64:
        raise InvalidAPIParameters("tag is longer than 64 characters")
    return CreateRequest(
        name=name,
        image=image.strip(),
        type=stype,
        resources=resources,
        environ={str(k): str(v) for k, v in environ.items()},
        resource_opts=dict(config.get("resource_opts") or {}),
        scaling_group=_first(config, "scalingGroup", "scaling_group")
        or _first(params, "scalingGroup", "scaling_group"),
        enqueue_only=_bool(params.get("enqueueOnly"), False),
        max_wait=max(0.0, max_wait),
        reuse=_bool(params.get("reuseIfExists"), True),
        startup_command=str(startup) if startup else None,
        bootstrap_script=params.get("bootstrap_script") or None,
        starts_at=parse_starts_at(_first(params, "starts_at", "startsAt"), now),
        dependencies=[str(d) for d in deps],
        owner_access_key=params.get("owner_access_key") or None,
        domain=_first(params, "domain", "domainName"),
        group=str(_first(params, "group", "groupName", default="default")),
        tag=str(tag) if tag is not None else None,
        callback_url=check_url(params["callback_url"]) if params.get("callback_url") else None,
        mounts=parse_mounts(config.get("mounts"), config.get("mount_map"),
                            config.get("mount_options")),
        array=_array(params.get("array")),
        services=list(config.get("service_ports") or []),
        preopen_ports=list(config.get("preopen_ports") or []),
    )


def _array(spec: Any) -> list[int] | None:
    if spec is None:
        return None
    try:
        return parse_array(str(spec))
    except ArraySpecError as e:
        raise InvalidAPIParameters(str(e), data={"field": "array"}) from None
