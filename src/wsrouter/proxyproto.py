"""
The PROXY protocol (HAProxy's, versions 1 and 2): read from a load balancer
in front, written to targets behind.

A load balancer that forwards TCP starts each connection with a header
naming the client it accepted; the router reads it (L{ProxyHeaderFactory})
and from then on the connection's C{getPeer()} is that client, for logs,
limits, CGI variables and recordings alike.  Towards a target, the router
writes such a header itself (L{build_header}) so an unmodified backend that
understands the protocol sees the real client too.

Twisted ships a reader (C{twisted.protocols.haproxy}), but its one public
name is C{proxyEndpoint}, which cannot wrap the sockets worker processes
adopt, believes a header from any peer, drops a connection whose first read
is shorter than 16 bytes, and drops bad headers without a word; so the
parser here is our own, small and fed bytes, and the wrapper checks the
sender against the trusted proxies and logs every refusal.

Specification: U{https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

log = Logger(namespace="wsrouter")

V1_PREFIX = b"PROXY "
#: A v1 header is at most this long, CRLF included.
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A v2 header longer than this (addresses plus TLVs) is refused.
V2_MAX = 4096

_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_TCP4, _V2_TCP6 = 0x11, 0x21
_V2_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}

Endpoint = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header; the message says what is wrong."""


@frozen
class ProxyHeader:
    """
    What a PROXY header says.

    @ivar source: the client's address and port; C{None} for a v1
        C{UNKNOWN} or a v2 C{LOCAL} header (a health check) or a family
        other than TCP over IPv4/IPv6: the connection's own peer stands.
    @ivar destination: the address and port the client connected to, or C{None}.
    """

    source: Endpoint | None
    destination: Endpoint | None


def parse_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """
    Parse the PROXY header at the start of C{data}.

    @return: the header and its length in bytes, or C{None} if C{data} is
        a valid beginning that needs more bytes.
    @raise ProxyHeaderError: if C{data} cannot start a v1 or v2 header.
    """
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and data:
        return _parse_v2(data) if len(data) >= 16 else None
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    fields = data[:end].split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header {data[:end]!r}")
    version = 4 if fields[1] == b"TCP4" else 6
    try:
        source = (_address(fields[2], version), _port(fields[4]))
        destination = (_address(fields[3], version), _port(fields[5]))
    except ValueError as e:
        raise ProxyHeaderError(f"malformed PROXY v1 header {data[:end]!r}: {e}") from None
    return ProxyHeader(source, destination), end + 2


def _address(text: bytes, version: int) -> str:
    address = ipaddress.ip_address(text.decode("ascii"))
    if address.version != version:
        raise ValueError(f"{address} is not an IPv{version} address")
    return str(address)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (text.startswith(b"0") and text != b"0"):
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    command, family, length = struct.unpack("!BBH", data[12:16])
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"unknown PROXY v2 version/command byte 0x{command:02x}")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError(f"PROXY v2 header of {16 + length} bytes is longer than {V2_MAX}")
    if len(data) < 16 + length:
        return None
    size = 16 + length
    if command == _V2_LOCAL or family not in (_V2_TCP4, _V2_TCP6):
        if family not in _V2_ADDRESS_SIZES and family != 0:
            raise ProxyHeaderError(f"unknown PROXY v2 address family 0x{family:02x}")
        return ProxyHeader(None, None), size
    if length < _V2_ADDRESS_SIZES[family]:
        raise ProxyHeaderError("PROXY v2 header too short for its addresses")
    body = data[16:size]
    if family == _V2_TCP4:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        kind = socket.AF_INET
    else:
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        kind = socket.AF_INET6
    return ProxyHeader((socket.inet_ntop(kind, src), sport), (socket.inet_ntop(kind, dst), dport)), size


def build_header(version: str, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """
    The PROXY header (C{version} C{"v1"} or C{"v2"}) announcing a client at
    C{source} connected to C{destination}.  Without both as IP addresses of
    one family (a client on a Unix socket), the header says so: v1
    C{UNKNOWN}, v2 C{LOCAL}, and the target sees the router's own address.
    """
    pair = _same_family(source, destination)
    if version == "v1":
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        (src, sport), (dst, dport), family = pair
        return f"PROXY TCP{family} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    if version != "v2":
        raise ValueError(f"PROXY protocol version must be v1 or v2, not {version!r}")
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    (src, sport), (dst, dport), family = pair
    kind, code = (socket.AF_INET, _V2_TCP4) if family == 4 else (socket.AF_INET6, _V2_TCP6)
    body = socket.inet_pton(kind, src) + socket.inet_pton(kind, dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, code, len(body)) + body


def _same_family(source: Endpoint | None, destination: Endpoint | None) -> tuple[Endpoint, Endpoint, int] | None:
    if source is None or destination is None:
        return None
    try:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
    except ValueError:
        return None
    if src.version != dst.version:
        # An IPv4 client on a dual-stack listener: say it in IPv6.
        src, dst = (_as_v6(src), _as_v6(dst))
    return (str(src), source[1]), (str(dst), destination[1]), src.version


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address("::ffff:" + str(address))


# -- accepting PROXY headers on a listener --------------------------------------


def _twisted_address(endpoint: Endpoint) -> IAddress:
    host, port = endpoint
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ProxyHeaderReceiver(ProtocolWrapper):
    """
    Reads the PROXY header a trusted load balancer sends first; then
    C{getPeer()} and C{getHost()} are the addresses it names, and the bytes
    after it go to the wrapped protocol (the HTTP channel).

    A connection from a peer that is not a trusted proxy, or that does not
    start with a valid header, is logged and dropped: nothing else may
    speak on such a listener.
    """

    factory: ProxyHeaderFactory
    transport: Any

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any):
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._buffer = b""
        self.header: ProxyHeader | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        peer = self.transport.getPeer()
        host = str(getattr(peer, "host", ""))
        if not self.factory.is_trusted(host):
            log.warn("refused a connection from {peer} on a PROXY protocol listener: it is not a trusted "
                     "proxy (add its address to trusted_proxies if it is your load balancer)", peer=host)
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.header is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except ProxyHeaderError as e:
            peer = getattr(self.transport.getPeer(), "host", "?")
            log.warn("dropped a connection from {peer} on a PROXY protocol listener: {problem}",
                     peer=peer, problem=e)
            self._buffer = b""
            self.transport.abortConnection()
            return
        if parsed is None:
            return
        self.header, length = parsed
        rest, self._buffer = self._buffer[length:], b""
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def getPeer(self) -> IAddress:
        if self.header is not None and self.header.source is not None:
            return _twisted_address(self.header.source)
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        if self.header is not None and self.header.destination is not None:
            return _twisted_address(self.header.destination)
        host: IAddress = self.transport.getHost()
        return host


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps a listener's factory (the Site) so every connection must start
    with a PROXY header from a trusted proxy.

    @param is_trusted: says whether a peer address may send the header;
        read at each connection, so a reload changes it for new ones.
    """

    protocol = ProxyHeaderReceiver
    noisy = False

    def __init__(self, wrappedFactory: Any, is_trusted: Callable[[str], bool]):
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.is_trusted = is_trusted

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped)

    def logPrefix(self) -> str:
        return "Site (PROXY)"
