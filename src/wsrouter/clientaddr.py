"""
The real client address of a connection that came through proxies.

Two ways a proxy can say who its client is: a PROXY protocol header
(L{wsrouter.proxyproto}, read before HTTP, so the connection's peer is
already the client here) and the C{X-Forwarded-For} / C{Forwarded} request
headers.  Headers are believed only from the configured trusted proxies
(C{trusted_proxies}), and only as far as the chain of trusted hops goes:
the address taken is the rightmost one that is not itself a trusted proxy,
since anything left of it was written by the client and may be forged.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """C{cidrs} (already checked by the configuration) as networks; a bare address is one host."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    C{host} as an IP address, without its IPv6 zone (C{%eth0}), an
    IPv4-mapped IPv6 address as the IPv4 one (a dual-stack listener's view
    of an IPv4 client); C{None} if it is not an address (C{"unix"}, a name).
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(host: str, cidrs: tuple[str, ...]) -> bool:
    """Whether C{host} (an IP address; anything else never is) lies in one of C{cidrs}."""
    address = parse_host(host) if cidrs else None
    return address is not None and any(address in network for network in networks(cidrs))


_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def forwarded_hops(headers: Iterable[tuple[str, str]]) -> list[tuple[str, int]]:
    """
    The client addresses the request's proxies recorded, nearest last: from
    C{Forwarded} (RFC 7239) if present, else C{X-Forwarded-For}.  A hop
    that is not an IP address (C{unknown}, an obfuscated name) is kept as
    C{("", 0)}, which no trusted proxy matches, so it stops the walk.
    """
    headers = list(headers)
    forwarded = [value for name, value in headers if name.lower() == "forwarded"]
    if forwarded:
        return [_forwarded_for(element) for value in forwarded for element in value.split(",")]
    hops = [hop.strip() for name, value in headers if name.lower() == "x-forwarded-for" for hop in value.split(",")]
    return [_host_port(hop) for hop in hops if hop]


def _forwarded_for(element: str) -> tuple[str, int]:
    match = _FOR.search(element)
    if not match:
        return "", 0
    return _host_port(match.group(1).strip('"'))


def _host_port(text: str) -> tuple[str, int]:
    """C{1.2.3.4}, C{1.2.3.4:5}, C{[::1]}, C{[::1]:5} or C{::1} as (address, port); C{("", 0)} if none."""
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "", 0
    return str(address), int(port) if port.isdigit() and int(port) <= 65535 else 0


def real_client(peer: tuple[str, int], headers: Sequence[tuple[str, str]],
                trusted: tuple[str, ...]) -> tuple[str, int]:
    """
    The client's address and port: C{peer} itself unless it is a trusted
    proxy, else the rightmost forwarded hop that is not (port 0 when the
    header gives none).  If every hop is trusted, the leftmost one.
    """
    if not is_trusted(peer[0], trusted):
        return peer
    current = peer
    for hop in reversed(forwarded_hops(headers)):
        current = hop
        if not is_trusted(hop[0], trusted):
            break
    return current if current[0] else peer
