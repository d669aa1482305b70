"""Password hashes for the dashboard's login: scrypt from the standard library (hashlib), a
memory-hard KDF, so no extra dependency. Stored as ``scrypt$N$r$p$salt$hash`` (base64), so
the cost can be raised later and old hashes still verify.

Hashing costs ~50 ms and 16 MiB: the manager runs it off the event loop, in ONE thread of its
own (``verify_async`` / ``hash_async``): glibc keeps a freed 16 MiB block in the arena of the
thread that used it, so scrypt on the default pool's many threads grew the manager by ~16 MiB
per thread (bench/dashboard.py: +48 MB after 3 logins); one thread bounds that to one block,
and queues logins (a brake on guessing too).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

from bai.common.errors import InvalidAPIParameters

N, R, P = 2**14, 8, 1
MIN_LENGTH = 8
MAX_LENGTH = 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _kdf(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024**2,
                          dklen=32)


def check_new(password: object, *, field: str = "password") -> str:
    """A new password, or a 400 that says what is wrong with it."""
    if not isinstance(password, str) or not password:
        raise InvalidAPIParameters(f"give {field} as a non-empty string",
                                   title="Password missing.")
    if len(password) < MIN_LENGTH:
        raise InvalidAPIParameters(f"{field} must have at least {MIN_LENGTH} characters",
                                   title="Password too short.")
    if len(password) > MAX_LENGTH:
        raise InvalidAPIParameters(f"{field} must have at most {MAX_LENGTH} characters",
                                   title="Password too long.")
    return password


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_kdf(password, salt, N, R, P))}"


#: verified when a user has no hash, so that "no such user" and "wrong password" take equal time
_DUMMY = hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; False for no hash or a malformed one."""
    if not stored or len(password) > MAX_LENGTH:
        _verify(password[:MAX_LENGTH], _DUMMY)
        return False
    return _verify(password, stored)


def _verify(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = _kdf(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(got, base64.b64decode(want))
    except (ValueError, TypeError):
        return False


def generate() -> str:
    """A password for a fresh install's users (``backend.ai server start`` shows where)."""
    return secrets.token_urlsafe(12)


_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrypt")


async def verify_async(password: str, stored: str | None) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_POOL, verify_password, password,
                                                            stored)


async def hash_async(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_POOL, hash_password, password)
