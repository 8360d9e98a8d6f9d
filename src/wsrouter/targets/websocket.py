"""
WebSocket targets (C{ws://HOST:PORT/PATH}, C{wss://...}): a message-preserving proxy.

The upstream handshake is done before the client's is answered: the
client's offered subprotocols go upstream and the upstream's choice is the
one the client's 101 names (the link's C{subprotocol}); an upstream that
cannot be reached, refuses or is too slow is the client's 502 with why.

Each message keeps its type and its fragmentation, both ways: each frame
of a fragmented message goes on as one frame (the first with the type,
continuation frames after), once the frame is whole -- so memory holds one
frame, and C{max_message_size} still counts the whole message (the
router's parser on the client hop, Autobahn upstream).  A compressed client
message (permessage-deflate) goes on in one fragment per frame of inflated
data; a fragmented upstream message goes to a client with permessage-deflate,
or to a recorded/watched session, as one message.  A message injected by
a watcher waits until a fragmented client message is done.  Pings are
answered per hop (Autobahn does it upstream, the session for the client);
close codes and reasons pass through both ways.  Flow control is wiring, as
for stream links: the upstream transport is the link's producer and the
client's producer is registered with it.

For C{wss://} the certificate is checked as for C{tls://} (L{wsrouter.tls}),
and nothing -- not even the HTTP request -- is sent before it is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.util import encode_truncate
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IConsumer, IDelayedCall, IHandshakeListener, IProducer, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import Limits, TcpTarget, WebSocketTarget
from wsrouter.interfaces import Link, LinkReceiver, SessionInfo, TargetError
from wsrouter.targets.stream import _connect_error, _tcp_endpoint
from wsrouter.tls import TlsProblem, check_peer, client_options, is_address, ssl_reason

log = Logger(namespace="wsrouter.websocket")

#: Close codes a peer may not send in a close frame: "no code" and "dropped".
NO_STATUS = 1005
ABNORMAL = 1006

#: Data frame opcodes.
CONTINUATION, TEXT, BINARY = 0, 1, 2


@implementer(IPushProducer)
class _NoStop:
    """
    A producer as the other side sees it, minus C{stopProducing}: Twisted
    stops the producer of a transport that ends before its protocol hears of
    it, which would drop the other side before its close frame is sent.
    """

    def __init__(self, producer: IPushProducer):
        self._producer = producer

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """The session closes the other side with the right code."""


@implementer(IPushProducer, IConsumer)
class WebSocketLink:
    """
    One upstream WebSocket connection (a L{wsrouter.interfaces.MessageLink}).

    @ivar subprotocol: what the upstream chose from the client's offer.
    """

    message_oriented = True

    def __init__(self, protocol: UpstreamProtocol, subprotocol: str | None):
        self._protocol = protocol
        self.subprotocol = subprotocol
        self._receiver: LinkReceiver | None = None
        self._pending: list[tuple[bytes, bool, bool, bool]] = []
        #: A fragmented client message is being sent: whole messages wait in C{_held}.
        self._in_message = False
        self._held: list[tuple[bytes, bool]] = []
        self._gathered: list[bytes] = []
        self._done = False
        self.producer: IPushProducer | None = self
        self.consumer: IConsumer | None = self

    # flow control
    @property
    def transport(self) -> Any:
        """The upstream's transport: the session's drain watch reads what is still queued there."""
        return self._protocol.transport

    def _transport(self) -> Any:
        return self._protocol.transport

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        transport = self._transport()
        if transport is not None:
            transport.registerProducer(_NoStop(cast(IPushProducer, producer)), True)

    def unregisterProducer(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.unregisterProducer()

    def pauseProducing(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        """The client's transport is gone; the bridge closes the upstream with the client's code next."""

    # link
    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        pending, self._pending = self._pending, []
        for fragment in pending:
            self._to_receiver(receiver, *fragment)
        if not self._protocol.report_close():
            self.resumeProducing()

    def deliver_fragment(self, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        """One frame of an upstream message (C{first} and C{fin}: whole): to the client, or kept until L{start}."""
        if self._receiver is None:
            self._pending.append((payload, is_binary, first, fin))
        else:
            self._to_receiver(self._receiver, payload, is_binary, first, fin)

    def _to_receiver(self, receiver: LinkReceiver, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        """Fragments to a receiver that takes them (the bridge); whole messages to any other."""
        fragment_received = getattr(receiver, "fragment_received", None)
        if fragment_received is not None:
            fragment_received(payload, is_binary, first, fin)
            return
        if first:
            self._gathered = []
        self._gathered.append(payload)
        if fin:
            message, self._gathered = b"".join(self._gathered), []
            receiver.message_received(message, is_binary)

    def ended(self, code: int | None, reason: str, error: str | None) -> None:
        """The upstream connection is over: tell the bridge the close code (or the error)."""
        receiver = self._receiver
        if self._done or receiver is None:  # before start: start reports it
            return
        self._done = True
        if error is not None:
            receiver.link_lost(error)
        elif code is None:
            receiver.link_lost(None)
        else:
            closed = getattr(receiver, "link_closed", None)
            if closed is not None:
                closed(code, reason)
            else:
                receiver.link_lost(None)

    def write(self, data: bytes) -> None:
        """Bytes with no known type go as one binary message."""
        self.write_message(data, True)

    def write_message(self, payload: bytes, is_binary: bool) -> None:
        if self._in_message:  # a watcher's message, while the client's fragmented one is under way
            self._held.append((payload, is_binary))
        elif self._protocol.state == WebSocketClientProtocol.STATE_OPEN:
            self._protocol.sendMessage(payload, is_binary)  # type: ignore[no-untyped-call]

    def write_fragment(self, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        """One frame of a fragmented client message, sent as one frame (a continuation frame unless C{first})."""
        if self._protocol.state == WebSocketClientProtocol.STATE_OPEN:
            opcode = (BINARY if is_binary else TEXT) if first else CONTINUATION
            self._protocol.sendFrame(opcode=opcode, payload=payload, fin=fin)
        self._in_message = not fin
        if fin:
            held, self._held = self._held, []
            for message, binary in held:
                self.write_message(message, binary)

    def write_eof(self) -> None:
        """A WebSocket has no half-close; L{close_with} follows."""

    def close_with(self, code: int | None, reason: str) -> None:
        """
        The client closed with C{code}: the upstream gets the same code and
        reason; a client that sent no code sends none, one that dropped is
        1001 "client went away".
        """
        if code == ABNORMAL:
            code, reason = 1001, "client went away"
        elif code == NO_STATUS:
            code = None
        self._protocol.close_for_client(code, reason)

    def close(self) -> None:
        self.close_with(1000, "")

    def abort(self) -> None:
        self._protocol.dropConnection(abort=True)

    def finish(self) -> None:
        """
        End a close whose frame went out long ago without an answer: close
        the TCP connection gracefully (after what is queued), not with a
        reset, which can destroy what the upstream has received but not yet
        read -- the client's last messages and the close frame behind them.
        """
        self._protocol.dropConnection(abort=False)


@implementer(IHandshakeListener)
class UpstreamProtocol(WebSocketClientProtocol):
    """Autobahn's client side, reporting to a L{WebSocketLink} and the connector's C{ready}."""

    target: WebSocketTarget
    closeHandshakeTimeout: float
    ready: Deferred[Link]

    def __init__(self) -> None:
        super().__init__()
        self.link: WebSocketLink | None = None
        self._lost_reason: str | None = None
        self._closed_for_client = False
        self._tls_done = False
        self._started = False
        self._close: tuple[int | None, str, str | None] | None = None
        self._first_frame = True

    def connectionMade(self) -> None:
        if not self.target.secure:
            self._start()
            return
        handle = cast(Any, self.transport).getHandle()
        tls = self.target.tls()
        if (tls.pin is not None or not tls.verify) and not is_address(tls.host):
            handle.set_tlsext_host_name(tls.host.encode("idna"))
        # Autobahn's handshake waits for the certificate to be accepted.

    def handshakeCompleted(self) -> None:
        self._tls_done = True
        problem = check_peer(self.target.tls(), cast(Any, self.transport).getHandle())
        if problem is not None:
            self._fail(f"TLS to {self.target.describe()} failed: {problem}")
            cast(Any, self.transport).abortConnection()
            return
        self._start()

    def _start(self) -> None:
        self._started = True
        super().connectionMade()

    def _fail(self, reason: str) -> None:
        if not self.ready.called:
            self.ready.errback(TargetError(reason, 502))

    def onConnect(self, response: Any) -> None:
        self.link = WebSocketLink(self, response.protocol or None)

    def onOpen(self) -> None:
        assert self.link is not None
        self.link.pauseProducing()
        if self.ready.called:  # timed out meanwhile
            self.dropConnection(abort=True)
            return
        self.ready.callback(self.link)

    # Each frame goes on once whole, instead of Autobahn reassembling the message
    # (its frame-begin and frame-data handlers still check the sizes).
    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._first_frame = True

    def onMessageFrameEnd(self) -> None:
        frame = self.current_frame
        fin = bool(frame.fin)
        # A text message ending inside a UTF-8 sequence: Autobahn fails the connection next.
        broken = fin and self.utf8validateIncomingCurrentMessage and not self.utf8validateLast[1]
        if not self.failedByMe and not broken and self.link is not None:
            payload = b"".join(self.frame_data)
            self.link.deliver_fragment(payload, self.message_is_binary, self._first_frame, fin)
            self._first_frame = False
        self.frame_data = None  # type: ignore[assignment]

    def onMessageEnd(self) -> None:
        self.message_data = None  # type: ignore[assignment]

    def close_for_client(self, code: int | None, reason: str) -> None:
        self._closed_for_client = True
        if self.state == self.STATE_OPEN:
            # Autobahn's close timer would start now, while the close frame may still wait behind
            # messages the upstream is reading; the session's drain watch bounds the close instead.
            timeout, self.closeHandshakeTimeout = self.closeHandshakeTimeout, 0
            try:
                self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if code is not None else None,
                                    isReply=False)
            finally:
                self.closeHandshakeTimeout = timeout
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.ready.called and self.target.secure and not self._tls_done:
            value = reason.value
            if isinstance(value, VerificationError):
                self._lost_reason = f"certificate is not for {self.target.host}"
            else:
                self._lost_reason = ssl_reason(value)
        if self._started:
            super().connectionLost(reason)
        else:  # Autobahn never began (TLS failed): it has nothing to close
            self.onClose(False, ABNORMAL, "connection lost")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.ready.called:
            if self._lost_reason is not None:
                self._fail(f"TLS to {self.target.describe()} failed: {self._lost_reason}")
            else:
                self._fail(f"WebSocket handshake with {self.target.describe()} failed: {reason or 'connection closed'}")
            return
        if self._closed_for_client:
            self._close = (None, "", None)
        elif not wasClean:
            self._close = (None, "", f"upstream {reason or 'connection lost'}")
        elif self.closedByMe:
            # Autobahn failed the connection: a message over max_message_size, a protocol error.
            self._close = (None, "", f"upstream closed by the router ({self.localCloseCode}"
                                      f" {(self.localCloseReason or b'').decode('utf-8', 'replace')})")
        else:
            code = code if code is not None and code != NO_STATUS else 1000
            self._close = (code, reason or "", None)
        self.report_close()

    def report_close(self) -> bool:
        """Tell the link how the upstream connection ended, if it has; C{True} if it has."""
        if self._close is None:
            return False
        if self.link is not None:
            self.link.ended(*self._close)
        return True


def offered_subprotocols(info: SessionInfo) -> list[str]:
    """The client's offered subprotocols (those the route allows, if it names any), in its order."""
    offered = [name.strip() for key, value in info.headers if key == "sec-websocket-protocol"
               for name in value.split(",") if name.strip()]
    allowed = info.route.subprotocols
    return [name for name in offered if name in allowed] if allowed else offered


class WebSocketConnector:
    """Connects C{ws://} and C{wss://} targets: TCP, TLS for wss, the handshake, all within the connect timeout."""

    def __init__(self, reactor: Any, limits: Limits):
        self._reactor = reactor
        self._limits = limits

    def use_limits(self, limits: Limits) -> None:
        """New connections use these limits (a reload)."""
        self._limits = limits

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        if not isinstance(target, WebSocketTarget):
            raise TypeError(f"not a WebSocket target: {target!r}")
        limits = self._limits
        tcp = _tcp_endpoint(self._reactor, TcpTarget(target.host, target.port), limits.connect_timeout)
        endpoint = tcp
        if target.secure:
            try:
                options = client_options(target.tls())
            except TlsProblem as e:
                raise TargetError(f"TLS to {target.describe()}: {e}", 502) from None
            if not target.verify:
                log.warn("session {session}: the certificate of {target} is NOT verified (tls_verify = false)",
                         session=session.session_id, target=target.describe())
            endpoint = wrapClientTLS(options, tcp)
        ready: Deferred[Link] = Deferred()
        factory = _factory(self._reactor, target, limits, offered_subprotocols(session), ready)
        connecting = endpoint.connect(factory)
        protocols: list[Any] = []
        connecting.addCallback(protocols.append)

        def failed(reason: Failure) -> None:
            if not ready.called:
                ready.errback(TargetError(f"cannot connect to {target.describe()}: {_connect_error(reason)}", 502))

        connecting.addErrback(failed)

        def too_slow() -> None:
            if ready.called:
                return
            ready.errback(TargetError(f"WebSocket handshake with {target.describe()} timed out", 502))
            if protocols and protocols[0].transport is not None:
                # Before the TLS handshake ends Autobahn has not started: abort the transport itself.
                protocols[0].transport.abortConnection()
            else:
                connecting.cancel()

        timer: IDelayedCall = self._reactor.callLater(limits.connect_timeout, too_slow)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        ready.addBoth(done)
        return ready


def _factory(reactor: Any, target: WebSocketTarget, limits: Limits, offered: Sequence[str],
             ready: Deferred[Link]) -> WebSocketClientFactory:
    host = f"[{target.host}]" if ":" in target.host else target.host
    url = f"{'wss' if target.secure else 'ws'}://{host}:{target.port}{target.path}"
    factory = WebSocketClientFactory(url, protocols=list(offered) or None, reactor=reactor)
    factory.noisy = False

    def build() -> UpstreamProtocol:
        protocol = UpstreamProtocol()
        protocol.factory = factory
        protocol.target = target
        protocol.ready = ready
        return protocol

    factory.buildProtocol = lambda address: build()  # type: ignore[method-assign, assignment]
    factory.setProtocolOptions(
        maxMessagePayloadSize=limits.max_message_size or 0,
        maxFramePayloadSize=limits.max_message_size or 0,
        autoPingInterval=limits.ping_interval or 0,
        autoPingTimeout=limits.ping_timeout or 0,
        openHandshakeTimeout=0,
        failByDrop=False,  # a refused upstream message gets its close code (1009), not a dropped connection
        closeHandshakeTimeout=limits.shutdown_grace,
    )
    return factory
