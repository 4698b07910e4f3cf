"""A URL a visitor typed may reach only the public internet (in public mode).

Otherwise a visitor could point the server at itself or its neighbours: loopback, a private
network, the cloud's metadata service (169.254.169.254), unique-local IPv6 or the unspecified
address. The check happens after DNS resolution (a hostname such as ``localhost`` or one that
resolves to 10.0.0.5 is refused as well), once before the request and again in the connection's
own resolver, so an answer that changes between the two cannot slip through; redirects are not
followed. ``PLAYGROUND_ALLOW_PRIVATE_URLS=1`` lifts this for a private deployment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from playground import settings
from playground.errors import BackendError, ErrorKind



def private_allowed() -> bool:
    return settings.allow_private_urls()


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64, IPv4-compatible)."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if any(ip in net for net in NAT64) or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(host: str, address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%")[0])
    inner = _embedded_v4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if ip.is_global and not ip.is_multicast and (inner is None or (inner.is_global and not inner.is_multicast)):
        return None
    return (f"{host} resolves to {address}, a private, loopback or link-local address: a URL you type "
            "must reach the public internet (PLAYGROUND_ALLOW_PRIVATE_URLS=1 lifts this on a private deployment)")


async def check_public(url: str) -> None:
    """Raise a BackendError unless every address of ``url``'s host is public."""
    if private_allowed():
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(ErrorKind.BAD_REQUEST, f"{url!r} is not an http(s) URL")
    host = parts.hostname
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BackendError(ErrorKind.CONNECTION, f"cannot resolve {host}: {exc.strerror or exc}") from None
    for info in infos:
        if (why := refusal(host, str(info[4][0]))) is not None:
            raise BackendError(ErrorKind.BAD_REQUEST, why)


class PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver, refusing any answer that is not a public address."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        if not private_allowed():
            for entry in found:
                if (why := refusal(host, str(entry["host"]))) is not None:
                    raise OSError(why)
        return found

    async def close(self) -> None:
        await self._inner.close()
