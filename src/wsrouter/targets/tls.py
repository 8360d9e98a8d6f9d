"""
TLS targets (C{tls://HOST:PORT}, websockify's C{--ssl-target}).

The link is a stream link over a TLS layer; it is handed over only once
the handshake is done and the server's certificate accepted (chain, then
name or pin, see L{wsrouter.tls}), so a certificate that fails is the
client's 502 with the reason, never a session that opens and dies.
"""

from __future__ import annotations

from typing import Any, cast

from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import RouterConfig, TcpTarget, TlsTarget, WebSocketTarget
from wsrouter.interfaces import Link, SessionInfo, TargetError
from wsrouter.targets.stream import StreamLink, _connect_error, _tcp_endpoint
from wsrouter.tls import TlsProblem, check_peer, client_options, is_address, ssl_reason

log = Logger(namespace="wsrouter.tls")


@implementer(IHandshakeListener)
class TlsLink(StreamLink):
    """A stream link whose C{ready} fires once the server's certificate is accepted."""

    def __init__(self, target: TlsTarget, ready: Deferred[Link]):
        super().__init__()
        self.target = target
        self.ready = ready

    def connectionMade(self) -> None:
        super().connectionMade()
        # The handshake needs reading: pause only once it is done.
        if self.producer is not None:
            self.producer.resumeProducing()
        if (self.target.pin is not None or not self.target.verify) and not is_address(self.target.host):
            # optionsForClientTLS sends SNI itself; these options do not.
            self._handle().set_tlsext_host_name(self.target.host.encode("idna"))

    def _handle(self) -> Any:
        return cast(Any, self.transport).getHandle()

    def handshakeCompleted(self) -> None:
        if self.ready.called:
            return
        problem = check_peer(self.target, self._handle())
        if problem is not None:
            self._fail(problem)
            cast(Any, self.transport).abortConnection()
            return
        if self.producer is not None:
            self.producer.pauseProducing()
        self.ready.callback(self)

    def _fail(self, problem: str) -> None:
        if not self.ready.called:
            self.ready.errback(TargetError(f"TLS to {self.target.describe()} failed: {problem}", 502))

    def write_eof(self) -> None:
        """
        The client is done: send TLS's end of data (close_notify).  Twisted's
        TLS layer keeps reading until the server's own close_notify, so what
        the server still sends arrives (TCP's half-close would break TLS).
        It waits for no producer to be registered, and the client -- the
        bridge's producer for this link -- has nothing more to send.
        """
        if self.connected:
            transport = cast(Any, self.transport)
            transport.unregisterProducer()
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.ready.called:
            if isinstance(reason.value, VerificationError):
                self._fail(f"certificate is not for {self.target.host}")
            else:
                self._fail(ssl_reason(reason.value))
            return
        super().connectionLost(reason)


class TlsConnector:
    """Connects C{tls://} targets: TCP, then a verified TLS handshake, within the connect timeout."""

    def __init__(self, reactor: Any, timeout: float):
        self._reactor = reactor
        self._timeout = timeout

    def use_timeout(self, timeout: float) -> None:
        """Connections from now on get this long for TCP and the handshake together (a reload)."""
        self._timeout = timeout

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        if not isinstance(target, TlsTarget):
            raise TypeError(f"not a TLS target: {target!r}")
        try:
            options = client_options(target)
        except TlsProblem as e:
            raise TargetError(f"TLS to {target.describe()}: {e}", 502) from None
        if not target.verify:
            log.warn("session {session}: the certificate of {target} is NOT verified (tls_verify = false)",
                     session=session.session_id, target=target.describe())
        tcp = _tcp_endpoint(self._reactor, TcpTarget(target.host, target.port), self._timeout)
        ready: Deferred[Link] = Deferred()
        link: list[TlsLink] = []

        def build() -> TlsLink:
            link.append(TlsLink(target, ready))
            return link[0]

        factory = Factory.forProtocol(build)
        factory.noisy = False
        connecting = wrapClientTLS(options, tcp).connect(factory)
        timer: IDelayedCall = self._reactor.callLater(self._timeout, self._too_slow, target, ready, link)

        def failed(reason: Failure) -> None:
            if not ready.called:
                ready.errback(TargetError(f"cannot connect to {target.describe()}: {_connect_error(reason)}", 502))

        connecting.addErrback(failed)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        ready.addBoth(done)
        return ready

    @staticmethod
    def _too_slow(target: TlsTarget, ready: Deferred[Link], link: list[TlsLink]) -> None:
        if ready.called:
            return
        ready.errback(TargetError(f"TLS to {target.describe()} failed: the handshake timed out", 502))
        if link:
            link[0].abort()


def warn_unverified(config: RouterConfig) -> None:
    """At start-up and reload: say loudly which routes skip certificate checks."""
    for route in config.routes:
        if isinstance(route.target, TlsTarget | WebSocketTarget) and not route.target.verify:
            log.warn("route {route}: the certificate of {target} will NOT be verified (tls_verify = false); "
                     "anyone on the path can read and change this traffic",
                     route=route.describe(), target=route.target.describe())
