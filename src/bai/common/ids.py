"""Typed ids: each entity has its own type so that signatures say what they take."""

from __future__ import annotations

import uuid
from typing import NewType

SessionId = NewType("SessionId", uuid.UUID)
KernelId = NewType("KernelId", uuid.UUID)
UserId = NewType("UserId", uuid.UUID)
GroupId = NewType("GroupId", uuid.UUID)
AgentId = NewType("AgentId", str)
AccessKey = NewType("AccessKey", str)


def new_session_id() -> SessionId:
    return SessionId(uuid.uuid4())


def new_kernel_id() -> KernelId:
    return KernelId(uuid.uuid4())


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except (ValueError, AttributeError, TypeError):
        return None
