"""Password login for the dashboard: browser sessions held in a cookie, with a CSRF token.

``login`` checks an email and password (scrypt, ``passwords.py``) and makes a ``web_sessions``
row: the cookie gets a random token, the table its SHA-256 (a leaked table logs nobody in), plus
a CSRF token the page sends back in ``X-BAI-CSRF`` on every request that may change state. The
browser acts as one of the user's keypairs (the admin keypair for an admin, else the oldest
active one), so a cookie request reaches exactly what that keypair's signed request would.
``authenticate`` resolves a cookie to that ``Caller`` (refusing expired sessions, deactivated
users and keypairs); ``logout`` deletes the row. Every refusal of a login is the same answer
(unknown email, wrong password, no password set, deactivated user) so that nobody learns who
has an account.

``throttled_login`` bounds guessing: at most ``LIMIT`` failed logins per email in ``WINDOW``,
counted in ``login_failures``, so every manager replica sees the same count. An attempt is
written (and committed) before its password is checked and deleted again when it succeeds, so
attempts running at once on several replicas count against each other too: no replica can let
more than the limit through.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from bai.common.errors import AuthFailed, BaiError, Forbidden, InvalidAPIParameters, NotFound
from bai.manager.context import Caller
from bai.manager.services import passwords
from bai.manager.services.auth import load_keypair
from bai.manager.store import tables as t
from bai.manager.store.engine import AsyncConnection, Store

COOKIE = "bai_session"
CSRF_HEADER = "X-BAI-CSRF"
#: a browser session lasts this long after login (then the page asks to log in again)
LIFETIME = timedelta(hours=12)
#: at most LIMIT failed logins per email in WINDOW (the scrypt cost slows each guess, this
#: bounds how many an attacker gets), counted across every manager replica
LIMIT, WINDOW = 10, timedelta(minutes=5)


class TooManyLogins(BaiError):
    code = "too-many-requests"
    status = 429
    title = "Too many failed logins."


@dataclass(frozen=True)
class WebSession:
    token: str  # only in the cookie
    csrf: str
    caller: Caller
    expires_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login_refused() -> AuthFailed:
    return AuthFailed("The email or password is wrong.", title="Login failed.",
                      data={"field": "password"})


async def _keypair_for(conn: AsyncConnection, user_id: uuid.UUID) -> str | None:
    k = t.keypairs
    row = (await conn.execute(
        sa.select(k.c.access_key).where(k.c.user_id == user_id, k.c.is_active == sa.true())
        .order_by(k.c.is_admin.desc(), k.c.created_at, k.c.access_key).limit(1))).first()
    return row.access_key if row is not None else None


async def login(conn: AsyncConnection, email: str, password: str,
                now: datetime | None = None) -> WebSession:
    now = now or datetime.now(timezone.utc)
    row = (await conn.execute(sa.select(t.users.c.id, t.users.c.password_hash, t.users.c.is_active)
                              .where(t.users.c.email == email))).first()
    ok = await passwords.verify_async(password, row.password_hash if row is not None else None)
    if row is None or not ok or not row.is_active:
        raise login_refused()
    access_key = await _keypair_for(conn, row.id)
    if access_key is None:
        raise AuthFailed(f"The user {email} has no active keypair; ask an admin for one.",
                         title="No active keypair.")
    record = await load_keypair(conn, access_key)
    assert record is not None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + LIFETIME
    await conn.execute(t.web_sessions.delete().where(t.web_sessions.c.expires_at < now))
    await conn.execute(t.web_sessions.insert().values(
        token_hash=token_hash(token), user_id=row.id, access_key=access_key, csrf_token=csrf,
        created_at=now, expires_at=expires))
    return WebSession(token, csrf, record.caller(), expires)


async def throttled_login(store: Store, email: str, password: str,
                          now: datetime | None = None) -> WebSession:
    """``login`` behind the limiter (see the module text)."""
    now = now or datetime.now(timezone.utc)
    key, f = email.lower(), t.login_failures
    async with store.begin() as conn:
        await conn.execute(f.delete().where(f.c.failed_at < now - WINDOW))
        attempt = (await conn.execute(f.insert().values(email=key, failed_at=now))
                   ).inserted_primary_key[0]
    failed = False  # only a refused password leaves its row behind
    try:
        async with store.connect() as conn:
            count, oldest = (await conn.execute(
                sa.select(sa.func.count(), sa.func.min(f.c.failed_at))
                .where(f.c.email == key, f.c.failed_at >= now - WINDOW))).one()
        if count > LIMIT:
            wait = int(((oldest or now) + WINDOW - now).total_seconds()) + 1
            raise TooManyLogins(f"Wait {max(wait, 1)} s before trying again, or ask an admin "
                                "to reset the password.", data={"field": "password"})
        try:
            async with store.begin() as conn:
                return await login(conn, email, password, now)
        except BaiError as e:
            failed = e.status < 500
            raise
    finally:
        if not failed:
            async with store.begin() as conn:
                await conn.execute(f.delete().where(f.c.id == attempt))


async def authenticate(conn: AsyncConnection, token: str,
                       now: datetime | None = None) -> tuple[Caller, str]:
    """The caller and CSRF token of a cookie's session, or a 401 (expired, logged out,
    deactivated user or keypair)."""
    now = now or datetime.now(timezone.utc)
    w = t.web_sessions
    row = (await conn.execute(sa.select(w.c.access_key, w.c.csrf_token, w.c.expires_at)
                              .where(w.c.token_hash == token_hash(token)))).first()
    if row is None or row.expires_at <= now:
        raise AuthFailed("Log in again: this browser session has ended.",
                         title="Login session expired.")
    record = await load_keypair(conn, row.access_key)
    if record is None or not record.is_active or not record.user_active:
        raise AuthFailed("The user or keypair of this login is deactivated.",
                         title="Inactive user.")
    return record.caller(), row.csrf_token


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


async def logout(conn: AsyncConnection, token: str) -> None:
    w = t.web_sessions
    await conn.execute(w.delete().where(w.c.token_hash == token_hash(token)))


async def _set_hash(conn: AsyncConnection, user_id: uuid.UUID, password: str,
                    keep_token: str | None) -> None:
    """Store a new hash and end the user's other browser sessions (a reset locks out whoever
    knew the old password)."""
    digest = await passwords.hash_async(password)
    await conn.execute(t.users.update().where(t.users.c.id == user_id).values(password_hash=digest))
    ends = t.web_sessions.delete().where(t.web_sessions.c.user_id == user_id)
    if keep_token is not None:
        ends = ends.where(t.web_sessions.c.token_hash != token_hash(keep_token))
    await conn.execute(ends)


async def change_own(conn: AsyncConnection, caller: Caller, current: object, new: object,
                     keep_token: str | None) -> None:
    """A user changes their own password; they must give the current one (when one is set)."""
    new = passwords.check_new(new, field="new_password")
    row = (await conn.execute(sa.select(t.users.c.password_hash)
                              .where(t.users.c.id == caller.user_id))).first()
    if row is None:
        raise NotFound("the caller's user is gone", title="Unknown user.")
    if row.password_hash is not None:
        ok = isinstance(current, str) and await passwords.verify_async(current, row.password_hash)
        if not ok:
            raise Forbidden("The current password is wrong.", title="Wrong password.",
                            data={"field": "current_password"})
    await _set_hash(conn, caller.user_id, new, keep_token)


async def set_for(conn: AsyncConnection, email: str, new: object) -> None:
    """An admin sets or resets a user's password (``backend.ai admin user set-password``)."""
    new = passwords.check_new(new)
    uid = (await conn.execute(sa.select(t.users.c.id).where(t.users.c.email == email))).scalar()
    if uid is None:
        raise NotFound(f"no user with the email {email!r}", title="Unknown user.")
    await _set_hash(conn, uid, new, None)


def parse_credentials(body: object) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise InvalidAPIParameters("give {\"email\": ..., \"password\": ...}")
    email, password = body.get("email") or body.get("username"), body.get("password")
    if not isinstance(email, str) or not email.strip():
        raise InvalidAPIParameters("give your email", title="Email missing.",
                                   data={"field": "email"})
    if not isinstance(password, str) or not password:
        raise InvalidAPIParameters("give your password", title="Password missing.",
                                   data={"field": "password"})
    return email.strip()[:128], password[:passwords.MAX_LENGTH + 1]
