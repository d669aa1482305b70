"""How the client reaches a manager: TLS trust and proxies, the same for both transports
(``bai.client.connection`` on httpx and websockets, and ``bai.client.blocking``, the express
path).

* ``https://`` endpoints are verified against the system's CA store, or against the bundle in
  ``BAI_CA_BUNDLE`` (a PEM file; OpenSSL's own ``SSL_CERT_FILE``/``SSL_CERT_DIR`` work too);
* ``BACKEND_SKIP_SSLCERT_VALIDATION`` (the official client's variable: ``1``/``true``/``yes``)
  turns verification off;
* ``HTTPS_PROXY``/``HTTP_PROXY`` (either case; ``ALL_PROXY`` too) send the connection through
  an HTTP proxy by ``CONNECT`` (so WebSockets pass too), unless ``NO_PROXY`` names the host.

Cheap to import: ``ssl`` and ``urllib.request`` are loaded only when needed.
"""

from __future__ import annotations

import base64
import os

from bai.client.http1 import PROXY_VARIABLES

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

_contexts: dict[tuple[str | None, bool], Any] = {}


def skip_verify(env: Any = None) -> bool:
    env = os.environ if env is None else env
    return (env.get("BACKEND_SKIP_SSLCERT_VALIDATION") or "").strip().lower() in (
        "1", "true", "yes", "on")


def ssl_context(env: Any = None) -> ssl.SSLContext:
    """The TLS context for ``https`` endpoints (one per CA bundle and verify choice)."""
    env = os.environ if env is None else env
    cafile = env.get("BAI_CA_BUNDLE") or None
    key = (cafile, skip_verify(env))
    ctx = _contexts.get(key)
    if ctx is None:
        import ssl

        ctx = ssl.create_default_context(cafile=cafile)
        if key[1]:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[key] = ctx
    return ctx


def proxy_url(scheme: str, host: str, env: Any = None) -> str | None:
    """The ``http://`` URL of the proxy for a connection to ``host`` over ``scheme`` (user
    info kept), or None to connect directly; ``ConnectFailed`` for a proxy of another kind."""
    env = os.environ if env is None else env
    if not any(map(env.get, PROXY_VARIABLES)):
        return None
    url = (env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
           or env.get("all_proxy") or env.get("ALL_PROXY"))
    if not url or _bypassed(host, env):
        return None
    url = url if "://" in url else f"http://{url}"
    if not url.lower().startswith("http://"):
        from bai.client.http1 import ConnectFailed

        raise ConnectFailed(f"only http:// proxies are supported, not {url}")
    return url


def proxy_for(scheme: str, host: str, env: Any = None) -> tuple[str, int, str | None] | None:
    """(proxy host, port, ``Proxy-Authorization`` value or None) for a connection to ``host``
    over ``scheme``, or None to connect directly."""
    url = proxy_url(scheme, host, env)
    if url is None:
        return None
    from urllib.parse import unquote, urlsplit

    p = urlsplit(url)
    auth = None
    if p.username is not None:
        raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode("ascii")
    return p.hostname or "", p.port or 80, auth


def _bypassed(host: str, env: Any) -> bool:
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.split(":", 1)[0] if entry.count(":") == 1 else entry  # host:port
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def connect_request(host: str, port: int, auth: str | None) -> bytes:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth:
        head += f"Proxy-Authorization: {auth}\r\n"
    return (head + "\r\n").encode("ascii")


def connect_status(head: bytes, proxy: tuple[str, int, str | None], host: str,
                   port: int) -> None:
    """Raise ``ConnectFailed`` unless the proxy's answer head says 2xx."""
    from bai.client.http1 import ConnectFailed

    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1][:1] == "2":
        raise ConnectFailed(f"the proxy {proxy[0]}:{proxy[1]} refused to connect to "
                            f"{host}:{port}: {line.strip() or 'no answer'}")
