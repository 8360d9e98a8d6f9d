"""
TLS and plain connections on one port, told apart by their first byte.

A TLS connection starts with a handshake record (0x16); an HTTP request
starts with a letter.  L{DetectingFactory} waits for that byte, then hands
the connection either to the site through a TLS layer
(L{TLSMemoryBIOFactory}) or to the site directly -- websockify's same-port
detection.  With C{ssl_only} a plain connection gets a one-line 403 saying
TLS is required, then is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from wsrouter.tls import ServerTls
from wsrouter.tlswrites import TlsServerProtocol

log = Logger(namespace="wsrouter.tls")

#: The first byte of a TLS record carrying a handshake (ClientHello).
TLS_HANDSHAKE = 0x16
REFUSAL_TEXT = b"This port requires TLS: connect with wss:// or https://\n"
REFUSAL = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(REFUSAL_TEXT), REFUSAL_TEXT))


class Detector(Protocol):
    """
    One accepted connection until its first byte is known; then a thin
    pass-through to the protocol chosen (the transport stays the socket's).
    """

    def __init__(self, factory: DetectingFactory, addr: IAddress | None, site_protocol: IProtocol):
        self._factory = factory
        self._addr = addr
        self._site_protocol = site_protocol
        self._inner: IProtocol | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timer = self._factory.clock.callLater(self._factory.timeout, self._silent)

    def _silent(self) -> None:
        self._timer = None
        log.info("closed a connection from {peer} that sent nothing for {timeout} s",
                 peer=_peer(self._addr), timeout=self._factory.timeout)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._inner is None:
            if not data:
                return
            self._cancel()
            inner = self._choose(data[0] == TLS_HANDSHAKE)
            if inner is None:
                return
            self._inner = inner
            inner.makeConnection(self.transport)  # type: ignore[arg-type]
        self._inner.dataReceived(data)

    def _choose(self, tls: bool) -> IProtocol | None:
        transport: Any = self.transport
        if not tls and self._factory.tls.ssl_only:
            log.info("refused a plain connection from {peer}: this listener is TLS only (ssl_only)",
                     peer=_peer(self._addr))
            transport.write(REFUSAL)
            transport.loseConnection()
            return None
        if tls:
            return TlsServerProtocol(self._factory.tls_factory, self._site_protocol)  # type: ignore[no-untyped-call]
        return self._site_protocol

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        if self._inner is not None:
            self._inner.connectionLost(reason)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _peer(addr: IAddress | None) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)


class DetectingFactory(ServerFactory):
    """
    Serves C{site} over TLS (C{tls}'s current certificate) and, unless
    C{tls.ssl_only}, in plain text, on one listener.

    @ivar timeout: seconds a client has to send its first byte.
    """

    noisy = False

    def __init__(self, site: Factory[Any], tls: ServerTls, clock: Any, timeout: float):
        self.site = site
        self.tls = tls
        self.clock = clock
        self.timeout = timeout
        self.tls_factory = TLSMemoryBIOFactory(tls, False, site)
        self.tls_factory.noisy = False

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Detector | None:
        # The site's protocol is built at once: the site may refuse the
        # connection (the descriptor guard), and should know of it now.
        site_protocol: IProtocol | None = self.site.buildProtocol(addr)
        if site_protocol is None:
            return None
        return Detector(self, addr, site_protocol)


def listener_factory(description: str, site: Factory[Any], tls: ServerTls | None, clock: Any,
                     timeout: float) -> Factory[Any]:
    """The factory a listener serves: with TLS settings, C{tcp:} listeners detect TLS; others serve C{site}."""
    if tls is not None and description.startswith(("tcp:", "tcp6:")):
        return DetectingFactory(site, tls, clock, timeout)
    return site
