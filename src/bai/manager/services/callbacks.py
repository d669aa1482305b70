"""Where a session's ``callback_url`` may be delivered (no blind SSRF through the manager).

A callback goes out only to a destination the admin allows:

* the URL is ``http``/``https`` with a host (checked when the session is created);
* every address its host resolves to is checked, and the connection goes to exactly the checked
  addresses (our resolver answers aiohttp's connector, so a name cannot resolve to a public
  address for the check and to loopback for the connection: no DNS rebinding);
* refused by default: loopback, link-local (cloud metadata), private ranges (RFC 1918, ULA,
  CGNAT), unspecified, multicast and reserved addresses, unless the setting ``callback_allow``
  names a network that holds the address; the address of any agent is refused always;
* no redirects are followed, and the whole delivery has a short timeout (``TIMEOUT``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from bai.common.errors import InvalidAPIParameters

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: seconds for one callback (connect, send, answer)
TIMEOUT = aiohttp.ClientTimeout(total=5, connect=3)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; a 400 problem naming callback_url otherwise."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise InvalidAPIParameters(
            f"callback_url {url!r} must be an http:// or https:// URL with a host",
            data={"field": "callback_url"})
    return url


def parse_networks(text: str) -> list[IPNetwork]:
    """The networks of the ``callback_allow`` setting (comma-separated CIDRs or addresses)."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()]


def refused_by_default(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified
            or ip.is_multicast or ip.is_reserved or ip in _CGNAT)


def why_refused(ip: IPAddress, allow: Iterable[IPNetwork], agents: set[IPAddress]) -> str | None:
    """None when a callback may connect to ``ip``; otherwise why not (pure)."""
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if plain in agents or ip in agents:
        return f"{ip} is an agent's address"
    if refused_by_default(ip) and not any(plain in net for net in allow):
        return f"{ip} is in a range callbacks may not reach (loopback, link-local, private, ...)"
    return None


def agent_ips(addresses: Iterable[str]) -> set[IPAddress]:
    """The IP addresses in agents' ``address`` URLs (host names resolved by the caller)."""
    out: set[IPAddress] = set()
    for addr in addresses:
        try:
            host = urlsplit(addr).hostname or ""
            out.add(ipaddress.ip_address(host))
        except ValueError:
            continue
    return out


class CallbackRefused(OSError):
    """The callback's host resolves to an address it may not reach."""


class CheckedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses the whole name if any address is not allowed."""

    def __init__(self, allow: list[IPNetwork], agents: set[IPAddress]) -> None:
        self.inner = DefaultResolver()
        self.allow, self.agents = allow, agents

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            reason = why_refused(ipaddress.ip_address(info["host"]), self.allow, self.agents)
            if reason is not None:
                raise CallbackRefused(f"callback to {host} refused: {reason}")
        return infos

    async def close(self) -> None:
        await self.inner.close()


def session(allow: list[IPNetwork], agents: set[IPAddress]) -> aiohttp.ClientSession:
    """An HTTP client whose every connection goes through ``CheckedResolver``."""
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(allow, agents), use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, timeout=TIMEOUT)


async def post(http: aiohttp.ClientSession, url: str, body: dict, allow: list[IPNetwork],
               agents: set[IPAddress]) -> int:
    """POST ``body`` to ``url`` through ``http`` (made by ``session``); the answer's status.
    Raises ``CallbackRefused`` for a destination that is not allowed."""
    host = urlsplit(url).hostname or ""
    try:
        ip: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None  # a name: CheckedResolver checks what it resolves to
    if ip is not None and (reason := why_refused(ip, allow, agents)) is not None:
        raise CallbackRefused(f"callback to {host} refused: {reason}")  # aiohttp skips resolvers for IPs
    async with http.post(url, json=body, allow_redirects=False) as resp:
        return resp.status
