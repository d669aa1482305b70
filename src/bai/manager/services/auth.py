"""Keypair authentication: who is calling, from the HMAC-signed request headers.

``authenticate`` checks a request's ``Authorization`` / ``Date`` / ``X-BackendAI-Version`` headers
against the keypair table (client-protocol section 2.1) and returns the ``Caller``; every refusal
is an ``AuthFailed`` (401) whose title says what was wrong (a malformed header, a stale clock, a
deactivated keypair), except that an unknown access key and a wrong signature get the same
answer, so that nobody learns which access keys exist. With ``X-BAI-Content-SHA256`` (our own
client) the signature covers that body hash, and the middleware checks the body against it.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

import sqlalchemy as sa

from bai.common import auth as hmac_auth
from bai.common.errors import AuthFailed
from bai.manager.context import Caller
from bai.manager.store import tables as t
from bai.manager.store.cached import Cached
from bai.manager.store.engine import AsyncConnection

if TYPE_CHECKING:
    from bai.manager.store.engine import Store


@dataclass(frozen=True)
class KeypairRecord:
    """A keypair joined with its user: everything authentication needs in one row."""

    access_key: str
    secret_key: str
    is_active: bool
    is_admin: bool
    resource_policy: str
    user_id: uuid.UUID
    user_email: str
    user_active: bool
    domain_name: str
    role: str

    def caller(self) -> Caller:
        """The caller of this keypair: made once per record (both are frozen), since a kept
        record answers every request of its keypair."""
        kept = self.__dict__.get("_caller")
        if kept is None:
            kept = Caller(
                access_key=self.access_key,
                user_id=self.user_id,
                user_email=self.user_email,
                domain_name=self.domain_name,
                is_admin=self.is_admin,
                role=self.role,
                resource_policy=self.resource_policy,
            )
            object.__setattr__(self, "_caller", kept)
        return kept


#: the keypair with its user (built once: every request runs it)
_KEYPAIR = (
    sa.select(
        t.keypairs.c.access_key,
        t.keypairs.c.secret_key,
        t.keypairs.c.is_active,
        t.keypairs.c.is_admin,
        t.keypairs.c.resource_policy,
        t.users.c.id.label("user_id"),
        t.users.c.email,
        t.users.c.is_active.label("user_active"),
        t.users.c.domain_name,
        t.users.c.role,
    )
    .select_from(t.keypairs.join(t.users, t.users.c.id == t.keypairs.c.user_id))
    .where(t.keypairs.c.access_key == sa.bindparam("ak"))
)


async def load_keypair(conn: AsyncConnection, access_key: str) -> KeypairRecord | None:
    """The keypair with its user, or None when the access key is unknown."""
    row = (await conn.execute(_KEYPAIR, {"ak": access_key})).first()
    if row is None:
        return None
    return KeypairRecord(
        access_key=row.access_key,
        secret_key=row.secret_key,
        is_active=bool(row.is_active),
        is_admin=bool(row.is_admin),
        resource_policy=row.resource_policy,
        user_id=row.user_id,
        user_email=row.email,
        user_active=bool(row.user_active),
        domain_name=row.domain_name,
        role=row.role,
    )


_NO_SECRET = secrets.token_urlsafe(30)


class SignedRequest(NamedTuple):
    """The parts of an HTTP request that the signature covers (no web framework types).
    (A named tuple: one is made per request, in a fifth of a frozen dataclass's time.)"""

    method: str
    path_qs: str  # raw path and query, exactly as sent
    host: str  # the Host header as sent
    content_type: str  # mime type without parameters; application/octet-stream when absent
    authorization: str | None
    date: str | None
    version: str | None
    #: the X-BAI-Content-SHA256 header: the body hash the signature covers (None: b"")
    body_sha256: str | None = None


def check_headers(req: SignedRequest) -> hmac_auth.AuthHeader:
    """Parse the Authorization header or refuse (before any database work)."""
    if not req.authorization:
        raise AuthFailed(
            "Send 'Authorization: BackendAI signMethod=HMAC-SHA256, credential=AK:SIGNATURE'.",
            title="Authorization header missing.",
        )
    header = hmac_auth.parse_authorization(req.authorization)
    if header is None:
        raise AuthFailed(
            "Expected 'BackendAI signMethod=HMAC-SHA256, credential=<access key>:<hex signature>'.",
            title="Malformed Authorization header.",
        )
    if header.hash_type != "sha256":
        raise AuthFailed(
            f"signMethod HMAC-{header.hash_type.upper()} is not supported; use HMAC-SHA256.",
            title="Unsupported signature method.",
        )
    if req.body_sha256 is not None and not _SHA256_RE.match(req.body_sha256):
        raise AuthFailed(f"{hmac_auth.BODY_HASH_HEADER} must be 64 hex digits.",
                         title="Malformed body hash header.")
    return header


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def mismatch() -> AuthFailed:
    """The one refusal for an unknown access key, a wrong signature and a body that is not the
    one signed."""
    return AuthFailed(
        "The access key and signature do not match a keypair: check the access key, the "
        "secret key and the endpoint URL.",
        title="Credential/signature mismatch.",
    )


def check_date(date: str | None, now: datetime, skew_seconds: float) -> datetime:
    """The ``Date`` header's time, or a refusal when it is missing, malformed or too far from
    ``now``."""
    if not date:
        raise AuthFailed("The request carries no Date header.", title="Date header missing.")
    when = hmac_auth.parse_date(date)
    if when is None:
        raise AuthFailed(f"Date header {date!r} is not an ISO-8601 time.", title="Malformed Date header.")
    if abs(now - when) > timedelta(seconds=skew_seconds):  # late and early (a future date) alike
        raise AuthFailed(
            f"Date {date} is more than {int(skew_seconds)} s away from the server time "
            f"{now.isoformat()}; check the client's clock.",
            title="Request date outside the allowed window.",
        )
    return when


def verify(record: KeypairRecord | None, header: hmac_auth.AuthHeader, req: SignedRequest,
           day: str | None = None) -> Caller:
    """Check a loaded keypair against the signed request; return the caller or refuse
    (``day``: the UTC ``YYYYMMDD`` of its Date, where ``check_date`` has read it)."""
    ok = hmac_auth.verify(  # for an unknown key too, so that both take the same time
        record.secret_key if record is not None else _NO_SECRET,
        header.signature,
        req.method,
        req.path_qs,
        req.date or "",
        req.host,
        req.content_type,
        req.version or "",
        req.body_sha256 or hmac_auth.EMPTY_SHA256,
        day,
    )
    if record is None or not ok:
        raise mismatch()
    if not record.is_active:
        raise AuthFailed(f"The keypair {record.access_key} is deactivated.", title="Inactive keypair.")
    if not record.user_active:
        raise AuthFailed(f"The user {record.user_email} is deactivated.", title="Inactive user.")
    return record.caller()


def keypair_cache() -> Cached:
    """The keypairs ``authenticate`` read (``store/cached.py``): valid until a write to
    ``keypairs`` or ``users`` (a deactivated keypair or user, a new secret key, a changed
    role). Unknown access keys are not kept (anyone can send those). A kept key answers
    without a read, an unknown one after it: the time can tell that a key someone already
    holds is in use, never its secret."""
    return Cached("keypairs", 4096)


async def authenticate(
    store: Store, req: SignedRequest, *, skew_seconds: float, now: datetime | None = None,
    cache: Cached | None = None,
) -> Caller:
    """Authenticate one signed request (client-protocol section 2.1); with ``cache``
    (``keypair_cache``), a keypair read since the last write to ``keypairs`` or ``users`` is
    not read again (the signature and the flags are checked on every request all the same)."""
    header = check_headers(req)
    when = check_date(req.date, now or datetime.now(timezone.utc), skew_seconds)
    generation = cache.generation(store) if cache is not None else None
    record = cache.get(header.access_key, generation) if cache is not None else None
    if record is None:
        async with store.connect() as conn:
            record = await load_keypair(conn, header.access_key)
        if cache is not None and record is not None:
            cache.put(header.access_key, generation, record)
    day = when.astimezone(timezone.utc)
    return verify(record, header, req, f"{day.year:04d}{day.month:02d}{day.day:02d}")
