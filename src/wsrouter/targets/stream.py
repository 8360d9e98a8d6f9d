"""
Stream targets: TCP and Unix stream sockets.

The link is the Twisted protocol of the target connection.  It pauses its
transport as soon as it is connected, so nothing is read from the target
before the WebSocket handshake has completed and the bridge is ready.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import TcpTarget, UnixTarget
from wsrouter.interfaces import Link, LinkReceiver, SessionInfo, TargetError
from wsrouter.proxyproto import build_header
from wsrouter.ws.internals import forget_transport
from wsrouter.ws.writes import write_sequence_through, write_through

#: Bytes read from a target at once, and queued for it before pausing.
IO_CHUNK = 256 * 1024


class _Buffered(TypingProtocol):
    """A Twisted file descriptor's read size (not part of any interface)."""

    bufferSize: int


@implementer(IHalfCloseableProtocol)
class StreamLink(Protocol):
    """A paused stream connection to a target, driven by the bridge."""

    message_oriented = False
    #: Fired with this link once it is connected and paused (L{StreamConnector}'s direct connects).
    _made: Deferred[Link] | None = None

    def __init__(self) -> None:
        self._receiver: LinkReceiver | None = None
        self._early: list[tuple[str, Any]] = []
        self._held: list[bytes] | None = None
        #: The connection (TCP and Unix alike), its producer and consumer
        #: faces; set when connected, before the link is handed over.
        self._connection: ITCPTransport | None = None
        self.producer: IPushProducer | None = None
        self.consumer: IConsumer | None = None

    def connectionMade(self) -> None:
        # Adapting checks that the transport provides each interface.
        self._connection = ITCPTransport(self.transport)
        self.producer = IPushProducer(self.transport)
        self.consumer = IConsumer(self.transport)
        self.producer.pauseProducing()
        # Larger reads mean fewer system calls and fewer messages per byte
        # relayed; it is also how much may queue before the client is paused.
        cast(_Buffered, self.transport).bufferSize = IO_CHUNK
        self._connection.setTcpNoDelay(True)  # a no-op on Unix sockets
        made = self._made
        if made is not None:
            self._made = None
            made.callback(self)

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        early, self._early = self._early, []
        for event, argument in early:
            getattr(self, event)(*argument)
        if self.producer is not None and self.connected:
            self.producer.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._receiver is None:
            self._early.append(("dataReceived", (data,)))
        else:
            self._receiver.data_received(data)

    def readConnectionLost(self) -> None:
        if self._receiver is None:
            self._early.append(("readConnectionLost", ()))
        else:
            self._receiver.eof_received()

    def writeConnectionLost(self) -> None:
        """Our write side is shut; keep reading until the target closes."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._receiver is None:
            self._early.append(("connectionLost", (reason,)))
            return
        clean = isinstance(reason.value, error.ConnectionDone)
        receiver, self._receiver = self._receiver, _GONE
        receiver.link_lost(None if clean else _describe(reason))

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            write_through(self.transport, data)

    def hold(self) -> None:
        """Collect writes until L{release}: one send for all a client read produced."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if not held:
            return
        if len(held) == 1:
            write_through(self.transport, held[0])
        elif len(held) <= 512:
            write_sequence_through(self.transport, held)
        else:
            write_through(self.transport, b"".join(held))

    def write_eof(self) -> None:
        if self._connection is not None and self.connected:
            self._connection.loseWriteConnection()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.loseConnection()

    def abort(self) -> None:
        if self._connection is not None:
            self._connection.abortConnection()


class _Gone:
    """The receiver of a link whose connection is lost: late events have nowhere to go."""

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass

    def link_lost(self, reason: str | None) -> None:
        pass


#: Set once the connection is lost, so the link no longer holds the bridge
#: (which holds the link): freed by reference counting, not the collector.
_GONE: Any = _Gone()


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ConnectionLost):
        return "connection to target lost"
    return str(value).strip() or type(value).__name__


class StreamConnector:
    """Connects TCP and Unix stream targets, failing with a 502 reason."""

    def __init__(self, reactor: Any, timeout: float):
        self._reactor = reactor
        self._timeout = timeout

    def use_timeout(self, timeout: float) -> None:
        """Connections from now on wait this long for the target (a reload)."""
        self._timeout = timeout

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        if isinstance(target, TcpTarget):
            if _ip_version(target.host) is None:
                connecting = _by_endpoint(HostnameEndpoint(self._reactor, target.host, target.port,
                                                           timeout=self._timeout))
            else:
                connecting = _direct(lambda factory: self._reactor.connectTCP(
                    target.host, target.port, factory, timeout=self._timeout))
        elif isinstance(target, UnixTarget):
            connecting = _direct(lambda factory: self._reactor.connectUNIX(
                target.path, factory, timeout=int(self._timeout)))
        else:
            raise TypeError(f"not a stream target: {target!r}")

        def failed(reason: Failure) -> Failure:
            raise TargetError(f"cannot connect to {target.describe()}: {_connect_error(reason)}", 502)

        connecting.addErrback(failed)
        if session.route.proxy_protocol is not None:
            connecting.addCallback(_send_first, proxy_header_for(session))
        return connecting


def proxy_header_for(session: SessionInfo) -> bytes:
    """The PROXY header the route sends its target: the real client, and the address it connected to."""
    version = session.route.proxy_protocol or "v2"
    source = (session.peer_host, session.peer_port) if session.peer_host else None
    destination = (session.local_host, session.server_port) if session.local_host else None
    return build_header(version, source, destination)


def _send_first(link: Any, header: bytes) -> Any:
    """Write C{header} to the L{StreamLink} before anything the client sends (it is paused only for reading)."""
    link.write(header)
    return link


def _tcp_endpoint(reactor: Any, target: TcpTarget, timeout: float) -> IStreamClientEndpoint:
    """An address connects directly; only a name needs HostnameEndpoint's resolving."""
    version = _ip_version(target.host)
    if version is None:
        return HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    endpoint = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
    return endpoint(reactor, target.host, target.port, timeout=timeout)


@functools.lru_cache(maxsize=256)
def _ip_version(host: str) -> int | None:
    """4 or 6 for an address, C{None} for a name (asked once per target, not per connection)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _by_endpoint(endpoint: IStreamClientEndpoint) -> Deferred[Link]:
    factory = Factory.forProtocol(StreamLink)
    factory.noisy = False
    return cast("Deferred[Link]", endpoint.connect(factory))


class _LinkFactory(ClientFactory):
    """
    Builds the one L{StreamLink} of a direct connect and fires
    C{connecting} with it once connected, or fails it with the reason
    (the same errors an endpoint gives: the reactor's connect is what an
    endpoint calls too).
    """

    noisy = False

    def __init__(self, connecting: Deferred[Link]):
        self._connecting: Deferred[Link] | None = connecting

    def buildProtocol(self, addr: Any) -> StreamLink:
        link = StreamLink()
        link.factory = self
        # The link fires it; the factory lets go, so the fired Deferred (and
        # the session it ends up holding) is not kept by the connector.
        link._made, self._connecting = self._connecting, None
        return link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self._connecting is not None and not self._connecting.called:
            self._connecting.errback(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        forget_transport(connector)


def _direct(connect: Callable[[ClientFactory], IConnector]) -> Deferred[Link]:
    """
    Connect through the reactor's C{connectTCP}/C{connectUNIX} without an
    endpoint's wrapping protocol, factory and Deferred chain (a tenth of a
    churned connection's set-up); cancelling stops the attempt.
    """
    connector: list[IConnector] = []

    def cancel(_: Deferred[Link]) -> None:
        if connector:
            with contextlib.suppress(error.NotConnectingError):  # connected or failed already
                connector[0].stopConnecting()

    connecting: Deferred[Link] = Deferred(cancel)
    try:
        connector.append(connect(_LinkFactory(connecting)))
    except Exception:  # as an endpoint does: a connect that raises is a failed connect
        connecting.errback(Failure())
    return connecting


def _connect_error(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.TimeoutError):
        return "timed out"
    if isinstance(value, error.DNSLookupError):
        return "host name not found"
    if isinstance(value, error.ConnectError) and value.osError == errno.ENOENT:
        return "no such socket file"
    text = str(value).strip()
    return text or type(value).__name__
