"""Who is calling: resolved once per request by the auth middleware, passed to services."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    access_key: str
    user_id: uuid.UUID
    user_email: str
    domain_name: str
    is_admin: bool
    role: str
    resource_policy: str

    def can_touch(self, owner_access_key: str) -> bool:
        return self.is_admin or owner_access_key == self.access_key
