"""The client's side of HMAC-SHA256 request signing (``bai.common.auth`` describes the scheme),
cheap to import: every ``backend.ai`` command that talks to the manager signs its requests.

It imports no ``hashlib``, ``hmac`` or ``datetime``: ``hmac`` loads OpenSSL's ``_hashlib``
(~2.5 ms of a command's ~20 ms of CPU, even with a builtin digest passed), ``datetime`` ~1 ms.
The digest is the interpreter's builtin SHA-256 (``_sha256``; ``_sha2`` from 3.12) under the
ten lines of RFC 2104, ~1 µs slower per HMAC than OpenSSL's. ``bai.common.auth`` (the
manager's verification) signs through the same functions; tests hold them equal to
``hmac.new(..., hashlib.sha256)`` and to the official client's captured signature.

Where the process has loaded OpenSSL's hashes anyway (``_hashlib``: the SDK's transport imports
it with httpx and ssl), the HMACs and the body's hash are OpenSSL's, which use the CPU's SHA
instructions: the builtin SHA-256 was an eighth of the SDK's CPU per ``POST /session``. The
signing key (two HMACs) is kept per secret, UTC day and host.
"""

from __future__ import annotations

import sys
import time

# ``typing`` costs ~3 ms to import; annotations are never evaluated here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime

try:
    from _sha256 import sha256  # Python 3.11
except ImportError:  # pragma: no cover - 3.12+ names it _sha2; a build without it: OpenSSL's
    try:
        sha256 = __import__("_sha2").sha256
    except ImportError:
        from hashlib import sha256

API_VERSION = "v7.20230615"
#: ``sha256(b"").hexdigest()``
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: the header that carries the body's SHA-256 (hex) in requests our client signs with it
BODY_HASH_HEADER = "X-BAI-Content-SHA256"

# RFC 2104's pads as 512-bit numbers: a key XORs with them in one operation (translation
# tables, bytes(x ^ 0x36 for x in range(256)), cost a 512-step loop on every import)
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def _openssl():
    """OpenSSL's ``_hashlib`` where something imported it already, else None (importing it
    here would cost the express path what it saves)."""
    mod = sys.modules.get("_hashlib")
    return mod if mod is not None and hasattr(mod, "hmac_digest") else None


def sha256_hex(body: bytes) -> str:
    """``hashlib.sha256(body).hexdigest()``."""
    ossl = _openssl()
    return (ossl.openssl_sha256 if ossl is not None else sha256)(body).hexdigest()


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 HMAC-SHA256 (``hmac.new(key, msg, hashlib.sha256).digest()``)."""
    ossl = _openssl()
    if ossl is not None:
        return ossl.hmac_digest(key, msg, "sha256")
    if len(key) > 64:
        key = sha256(key).digest()
    padded = int.from_bytes(key.ljust(64, b"\0"), "big")
    inner = sha256((padded ^ _IPAD).to_bytes(64, "big"))
    inner.update(msg)
    outer = sha256((padded ^ _OPAD).to_bytes(64, "big"))
    outer.update(inner.digest())
    return outer.digest()


#: (second, its ``YYYY-MM-DDTHH:MM:SS``) of the last ``now_iso``
_last_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """``datetime.now(timezone.utc).isoformat()`` without ``datetime`` (the same floor to the
    microsecond, and no fraction when it is 0)."""
    global _last_second
    secs, frac = divmod(time.time_ns() // 1000, 1_000_000)
    last = _last_second
    if last[0] != secs:
        t = time.gmtime(secs)
        _last_second = last = (secs, f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                                     f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")
    return last[1] + (f".{frac:06d}" if frac else "") + "+00:00"


def parse_date(value: str) -> datetime | None:
    """A ``Date`` header as an aware datetime (UTC when it names no offset); None if invalid."""
    # (imported here, for the CLI's sake; ``from datetime import ...`` would cost each call a
    # failed ``__path__`` look-up on the module, its AttributeError formatted and dropped)
    import datetime

    try:
        dt = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt


def string_to_sign(
    method: str, path_qs: str, date: str, host: str, content_type: str, version: str,
    body_sha256: str = EMPTY_SHA256,
) -> str:
    return "\n".join(
        [
            method.upper(),
            path_qs,
            date,
            f"host:{host}",
            f"content-type:{content_type.lower()}",
            f"x-backendai-version:{version}",
            body_sha256,
        ]
    )


#: ``k2`` of the scheme by (secret key, UTC day, host): a client signs a day's requests to
#: one manager with one key, and the manager checks each keypair's with its own
_signing_keys: dict[tuple[str, str, str], bytes] = {}


def signing_key(secret_key: str, day: str, host: str) -> bytes:
    """``k2`` of the scheme (two HMACs), kept per (secret key, UTC day, host), at most 1,024."""
    k2 = _signing_keys.get((secret_key, day, host))
    if k2 is None:
        k1 = hmac_sha256(secret_key.encode(), day.encode())
        k2 = hmac_sha256(k1, host.encode())
        if len(_signing_keys) >= 1024:
            _signing_keys.clear()
        _signing_keys[secret_key, day, host] = k2
    return k2


def sign_day(secret_key: str, day: str, method: str, path_qs: str, date: str, host: str,
             content_type: str, version: str = API_VERSION,
             body_sha256: str = EMPTY_SHA256) -> str:
    """The signature for a ``Date`` whose UTC day is ``day`` (``YYYYMMDD``)."""
    k2 = signing_key(secret_key, day, host)
    msg = string_to_sign(method, path_qs, date, host, content_type, version, body_sha256)
    return hmac_sha256(k2, msg.encode()).hex()


def utc_day(date: str) -> str:
    """``YYYYMMDD`` of a ``Date`` header in UTC; ValueError if it is no date."""
    dt = parse_date(date)
    if dt is None:
        raise ValueError(f"invalid Date header: {date!r}")
    from datetime import timezone

    return dt.astimezone(timezone.utc).strftime("%Y%m%d")


def make_headers(
    access_key: str,
    secret_key: str,
    method: str,
    path_qs: str,
    host: str,
    content_type: str,
    version: str = API_VERSION,
    now: datetime | None = None,
    body: bytes | None = None,
) -> dict[str, str]:
    """Headers our own client sends on a signed request; with ``body`` (b"" for none) the
    signature covers its hash too (``BODY_HASH_HEADER``). Streamed bodies pass None."""
    if now is None:
        date = now_iso()
        day = date[0:4] + date[5:7] + date[8:10]  # now_iso's date is UTC
    else:
        date = now.isoformat()
        day = utc_day(date)
    digest = EMPTY_SHA256 if body is None else sha256_hex(body)
    sig = sign_day(secret_key, day, method, path_qs, date, host, content_type, version, digest)
    headers = {
        "Date": date,
        "X-BackendAI-Version": version,
        "Authorization": f"BackendAI signMethod=HMAC-SHA256, credential={access_key}:{sig}",
    }
    if body is not None:
        headers[BODY_HASH_HEADER] = digest
    return headers
