"""HMAC-SHA256 request signing, exactly as the Backend.AI client 23.09 does it.

String to sign (seven lines joined by ``\\n``)::

    METHOD
    /path?query            (raw, as sent, including any endpoint prefix)
    <Date header verbatim>
    host:<netloc of the configured endpoint>
    content-type:<mime type without parameters, lower case; application/octet-stream if none>
    x-backendai-version:<version header>
    <sha256 hex of the body>

Key: ``k1 = HMAC(secret, YYYYMMDD of Date)``, ``k2 = HMAC(k1, host)``, signature
``hex(HMAC(k2, string_to_sign))``. The official client always puts the hash of b"" in the last
line, so its signature does not cover the body. Our own client puts the hash of the real body
there and sends it as ``X-BAI-Content-SHA256``; a manager that sees that header signs with it
and refuses a body whose hash differs, so a captured signature cannot carry another body.
"""

from __future__ import annotations

import hmac
import re
from collections import namedtuple
from functools import lru_cache
from datetime import datetime, timedelta, timezone

# The client's side (the Date, the keys, the signature, the headers) lives in
# ``bai.common.signing``, which the CLI imports without hashlib, hmac or datetime.
from bai.common.signing import (  # noqa: F401 - this module's names since the start
    API_VERSION,
    BODY_HASH_HEADER,
    EMPTY_SHA256,
    make_headers,
    parse_date,
    sign_day,
    signing_key,
    string_to_sign,
    utc_day,
)

#: Allowed distance between the Date header and the server clock (the official client re-sends
#: the same Date on SSE reconnects, so this must be generous).
DEFAULT_CLOCK_SKEW = timedelta(minutes=15)

_AUTH_RE = re.compile(
    r"^BackendAI\s+signMethod=HMAC-(?P<hash>SHA256|SHA1|MD5),\s*credential=(?P<ak>[^:]+):(?P<sig>[0-9a-fA-F]+)\s*$"
)


#: The parsed ``Authorization`` header.
AuthHeader = namedtuple("AuthHeader", ["access_key", "signature", "hash_type"])


def parse_authorization(value: str) -> AuthHeader | None:
    m = _AUTH_RE.match(value.strip())
    if not m:
        return None
    return AuthHeader(m.group("ak"), m.group("sig").lower(), m.group("hash").lower())


def sign(
    secret_key: str,
    method: str,
    path_qs: str,
    date: str,
    host: str,
    content_type: str,
    version: str = API_VERSION,
    body_sha256: str = EMPTY_SHA256,
) -> str:
    """The signature of a request (ValueError for a ``date`` that is no date)."""
    return sign_day(secret_key, utc_day(date), method, path_qs, date, host, content_type,
                    version, body_sha256)


@lru_cache(maxsize=1024)
def _keyed_mac(secret_key: str, day: str, host: str) -> hmac.HMAC:
    """An HMAC keyed with ``signing_key``, copied for each request (a copy costs less than
    keying one again)."""
    return hmac.new(signing_key(secret_key, day, host), digestmod="sha256")


def verify(
    secret_key: str,
    signature: str,
    method: str,
    path_qs: str,
    date: str,
    host: str,
    content_type: str,
    version: str,
    body_sha256: str = EMPTY_SHA256,
    day: str | None = None,
) -> bool:
    """Whether ``signature`` is the request's; ``day`` is ``utc_day(date)`` where the caller
    has it already."""
    try:
        mac = _keyed_mac(secret_key, day or utc_day(date), host).copy()
    except ValueError:
        return False
    mac.update(string_to_sign(method, path_qs, date, host, content_type, version,
                              body_sha256).encode())
    return hmac.compare_digest(mac.hexdigest(), signature.lower())


def date_within_skew(
    date: str, now: datetime | None = None, skew: timedelta = DEFAULT_CLOCK_SKEW
) -> bool:
    dt = parse_date(date)
    if dt is None:
        return False
    now = now or datetime.now(timezone.utc)
    return abs(now - dt) <= skew


def generate_keypair(admin: bool = False) -> tuple[str, str]:
    """A fresh (access_key, secret_key) pair in Backend.AI's shapes (AKIA... / 40 chars)."""
    import secrets
    import string

    alphabet = string.ascii_uppercase + string.digits
    ak = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    sk = secrets.token_urlsafe(30)[:40]
    return ak, sk


def cluster_token_ok(expected: str, presented: str | None) -> bool:
    """Constant-time check of the cluster's shared secret (manager <-> agent)."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
