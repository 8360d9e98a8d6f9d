"""
The thin Autobahn adapter: a WebSocket server protocol that hands every
decision to a L{HandshakeHost} (the gateway) and every byte to the
L{ConnectionSession} it is given.

Autobahn performs the opening handshake and the closing handshake.  In
between, client frames are parsed by L{wsrouter.ws.parser}, which hands payload
on as it arrives, so a large message is relayed as it comes and never held
whole.  Messages to the client are framed here directly: server frames are
unmasked, so a frame is a small header written together with the payload.

This module knows the gateway and the session only through the typing
protocols in L{wsrouter.interfaces}, so it imports neither.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from wsrouter import __version__
from wsrouter.config import Compression, Limits
from wsrouter.interfaces import ConnectionSession, Gatherer, HandshakeHost
from wsrouter.targets.stream import IO_CHUNK
from wsrouter.ws.deflate import Deflater, Inflater, Negotiated, offer_acceptor, usable_offers
from wsrouter.ws.internals import (
    autobahn_data_received,
    drop_handshake_state,
    negotiated_deflate,
    release_closed_future,
    take_after_handshake,
)
from wsrouter.ws.parser import FrameParser
from wsrouter.ws.writes import write_sequence_through, write_through

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED

_HTTP_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 421: "Misdirected Request",
    426: "Upgrade Required",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


class DenyWithHeaders(ConnectionDeny):
    """A refusal whose answer carries headers too (Retry-After, WWW-Authenticate)."""

    def __init__(self, code: int, reason: str, headers: Sequence[tuple[str, str]]):
        super().__init__(code, reason)  # type: ignore[no-untyped-call, unused-ignore]
        self.headers = tuple(headers)


def frame_header(is_binary: bool, length: int, compressed: bool = False) -> bytes:
    """
    The header of one unmasked, final data frame of C{length} payload bytes;
    C{compressed} sets RSV1 (permessage-deflate).
    """
    opcode = (0x82 if is_binary else 0x81) | (0x40 if compressed else 0)
    if length < 126:
        return bytes((opcode, length))
    if length < 65536:
        return struct.pack("!BBH", opcode, 126, length)
    return struct.pack("!BBQ", opcode, 127, length)


class ClientProtocol(WebSocketServerProtocol):
    """
    One client connection (a L{wsrouter.interfaces.ClientConnection}).

    @ivar mount_prefix: the path under which the router's resource is
        mounted, removed from the request path before routing.
    @ivar session: the session the host handed over, once the handshake
        was accepted.
    """

    factory: ClientFactory
    transport: Any
    maxMessagePayloadSize: int
    closeHandshakeTimeout: float
    logOctets: bool
    #: The factory copies its options onto each protocol itself (see
    #: L{ClientFactory.apply_limits}): Autobahn's own copy pretty-prints
    #: every option for a debug line on each new connection, whether debug
    #: logging is on or not, a tenth of the cost of accepting a connection.
    CONFIG_ATTRS: list[str] = []
    session: ConnectionSession | None = None
    mount_prefix = ""
    connection_gone = False
    _deny_headers: tuple[tuple[str, str], ...] = ()
    #: The host refused the handshake with a L{ConnectionDeny} (see L{failHandshake}).
    _refused_by_host = False
    _frames: FrameParser | None = None
    #: The session's link, when one read's payload can go out in one send.
    _gatherer: Gatherer | None = None
    #: Compresses messages to the client, when permessage-deflate is in use.
    _deflater: Deflater | None = None
    #: A fragmented target message gathered for the deflater (L{send_fragment}).
    _fragments: list[bytes] = []
    #: The factory options this class carries as class attributes (see
    #: L{with_options}); a protocol whose class carries others copies them.
    _options_of: dict[str, Any] | None = None
    #: The permessage-deflate settings (a factory option, see L{ClientFactory.apply_limits}).
    compression: Compression = Compression()
    websocket_extensions: list[Any]

    def connectionMade(self) -> None:
        options = self.factory.protocol_options
        if self._options_of is not options:
            self.__dict__.update(options)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            autobahn_data_received(self, data)
            return
        gatherer = self._gatherer
        if gatherer is None:
            frames.feed(data)
            return
        # All the payload one read carries goes to the target in one send.
        gatherer.hold()
        try:
            frames.feed(data)
        finally:
            gatherer.release()

    # -- handshake and lifecycle, decided by the host -----------------------------

    def onConnect(self, request: Any) -> Any:
        # Offers that cannot be met are declined here, before Autobahn's
        # answer would turn one into a 400 (L{usable_offers}).
        self.websocket_extensions = usable_offers(self.websocket_extensions, self.compression)
        try:
            deciding = self.factory.host.handshake(self, request)
        except ConnectionDeny as e:
            self._note_refusal(e)
            raise
        accepted: Deferred[str | None] = deciding.addCallbacks(self._accepted, self._denied)
        return accepted

    def _denied(self, reason: Failure) -> Failure:
        if isinstance(reason.value, ConnectionDeny):
            self._note_refusal(reason.value)
        return reason

    def _note_refusal(self, deny: ConnectionDeny) -> None:
        """
        The host refused (and logged it): keep the refusal's headers for
        L{sendHttpErrorResponse} (Autobahn passes only code and reason),
        and let L{failHandshake} know not to log it again.
        """
        self._refused_by_host = True
        if isinstance(deny, DenyWithHeaders):
            self._deny_headers = deny.headers

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """
        Autobahn's refusal of the handshake, quiet for a refusal the host
        made: the host has logged it in one line, and Autobahn would add an
        info line ("failing WebSocket opening handshake") and a warning
        ("dropping connection ... abort=False") to every 404 and 403.  A
        handshake Autobahn itself refuses (bad version, key, headers) or an
        unexpected error in the host keeps Autobahn's lines: nothing else
        logs those.
        """
        if not self._refused_by_host:
            super().failHandshake(reason, code, responseHeaders)  # type: ignore[no-untyped-call, unused-ignore]
            return
        self.log.debug("refused the WebSocket opening handshake ({code} {reason})", code=code, reason=reason)
        self.wasNotCleanReason = reason
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        # A refusal answered with its HTTP status ends the connection as
        # intended: Autobahn logs a clean drop at debug, an unclean one as a warning.
        self.wasClean = True
        self.dropConnection(abort=False)

    def _accepted(self, session: ConnectionSession | None) -> str | None:
        if session is None:
            return None
        self.session = session
        return session.subprotocol


    def onOpen(self) -> None:
        session = self.session
        if session is None:
            return
        self._frames = FrameParser(_ClientFrames(self, session), self.maxMessagePayloadSize, self._start_deflate())
        self.transport.bufferSize = IO_CHUNK  # read more per call; queue as much before pausing
        leftover = take_after_handshake(self)
        session.opened()
        self._gatherer = session.gatherer
        drop_handshake_state(self)
        if leftover:
            self._frames.feed(leftover)

    def _start_deflate(self) -> Inflater | None:
        """If permessage-deflate was agreed: make the compressor; return the inflater."""
        agreed = negotiated_deflate(self)
        if agreed is None:
            return None
        negotiated = Negotiated(*agreed)
        self._deflater = Deflater(negotiated)
        return Inflater(negotiated, self.maxMessagePayloadSize)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.connection_gone = True
        if self.session is not None:
            self.session.closed(code, reason or "")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        After Autobahn's teardown (and L{onClose}), let go of the session
        and the frame parser: the session still points at this protocol,
        so keeping them would leave a reference cycle for the garbage
        collector instead of freeing the connection's objects at once.
        """
        super().connectionLost(reason)
        self.session = None
        self._frames = None
        self._gatherer = None
        release_closed_future(self)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Refuse the handshake with a proper status line and the reason as a one-line body."""
        body = (reason.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {code} {_HTTP_REASONS.get(code, 'Error')}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in responseHeaders or self._deny_headers]
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Autobahn's writes (the 101 or refusal, close frames, pings and
        pongs) go out at once when the socket is idle (L{write_through}),
        instead of a turn of the reactor and two epoll changes later; its
        synchronous or chopped sends, and anything behind them, keep its
        own queue.
        """
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)  # type: ignore[no-untyped-call, unused-ignore]
        else:
            write_through(self.transport, data)

    def onPong(self, payload: bytes) -> None:
        if self.session is not None:
            self.session.pong(payload)

    # -- ClientConnection, used by the session and its bridge -----------------------

    def send(self, payload: bytes, is_binary: bool) -> None:
        if self.state == _OPEN:
            self.session.sent()  # type: ignore[union-attr]
            deflater = self._deflater
            if deflater is not None:
                payload = deflater.compress(payload)
            header = frame_header(is_binary, len(payload), deflater is not None)
            if len(payload) <= 1024:
                write_through(self.transport, header + payload)
            else:
                write_sequence_through(self.transport, (header, payload))

    def send_fragment(self, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        """
        Send one frame of a fragmented message (a continuation frame unless
        C{first}).  With permessage-deflate the fragments are gathered and
        the message goes out compressed as one frame.
        """
        if self.state != _OPEN:
            return
        if self._deflater is not None:
            if first:
                self._fragments = []
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self.send(whole, is_binary)
            return
        self.session.sent()  # type: ignore[union-attr]
        header = bytearray(frame_header(is_binary, len(payload)))
        header[0] = (header[0] & 0x0F if first else 0) | (0x80 if fin else 0)
        if len(payload) <= 1024:
            write_through(self.transport, bytes(header) + payload)
        else:
            write_sequence_through(self.transport, (bytes(header), payload))

    def close(self, code: int, reason: str) -> None:
        """
        Close with any RFC 6455 code (the public sendClose refuses 1001, 1009,
        1011).  Autobahn's close timer would start now, while the close frame
        still waits behind queued data a slow client is reading; the session
        watches the drain instead.
        """
        if self.state == _OPEN:
            timeout, self.closeHandshakeTimeout = self.closeHandshakeTimeout, 0
            try:
                self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
            finally:
                self.closeHandshakeTimeout = timeout
            if self.session is not None:
                self.session.closing()

    def attach_producer(self, producer: IPushProducer) -> None:
        self.transport.registerProducer(producer, True)

    def consumer_producer(self) -> IPushProducer:
        return self.transport  # type: ignore[no-any-return]

    def is_secure(self) -> bool:
        return bool(getattr(self.transport_details, "is_secure", False))

    def is_dropped(self) -> bool:
        return bool(self.state == _CLOSED)

    def send_ping(self, payload: bytes) -> None:
        self.sendPing(payload)

    def abort(self, reason: str) -> None:
        self.wasClean = False
        self.wasNotCleanReason = reason
        self.transport.abortConnection()

    def finish(self) -> None:
        self.transport.loseConnection()


class _ClientFrames:
    """
    What the frame parser finds, applied to one connection: data goes
    straight to the session's bound methods, with no call in between.
    """

    __slots__ = ("_protocol", "_session", "binary_messages", "frame_end", "message_begin", "message_data",
                 "message_end", "pong")

    def __init__(self, protocol: ClientProtocol, session: ConnectionSession):
        self._protocol = protocol
        self._session = session
        self.message_begin = session.message_begin
        self.message_data = session.message_data
        self.message_end = session.message_end
        self.frame_end = session.frame_end
        self.pong = session.pong
        self.binary_messages = session.binary_messages

    def ping(self, payload: bytes) -> None:
        if self._protocol.state == _OPEN:
            self._protocol.sendPong(payload)  # type: ignore[no-untyped-call, unused-ignore]

    def close(self, code: int | None, reason: bytes | None) -> None:
        problem = close_frame_problem(code, reason)
        if problem is not None:
            self.fail(*problem)
            return
        # Autobahn answers (or completes our close) and closes the connection.
        self._protocol.onCloseFrame(code, reason)  # type: ignore[arg-type]  # None: no code, no reason
        self._session.closing()

    def fail(self, code: int, reason: str) -> None:
        """Close with the violation's code, then the TCP connection (RFC 6455 7.1.7)."""
        protocol = self._protocol
        self._session.refuse(code, reason)
        protocol.wasClean = False
        protocol.wasNotCleanReason = reason
        protocol.dropConnection(abort=False)
        self._session.closing()


def close_frame_problem(code: int | None, reason: bytes | None) -> tuple[int, str] | None:
    """What is wrong with a client's close frame, as (close code, reason), if anything."""
    if code is not None and not (code in WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED or 3000 <= code <= 4999):
        return 1002, f"invalid close code {code}"
    if reason is not None:
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            return 1007, "close reason is not valid UTF-8"
    return None


class ClientFactory(WebSocketServerFactory):
    """Builds L{ClientProtocol}s for a host, with the limits applied once per change."""

    protocol = ClientProtocol  # type: ignore[assignment]

    def __init__(self, host: HandshakeHost, limits: Limits, reactor: Any, compression: Compression | None = None):
        super().__init__(server=f"wsrouter/{__version__}", reactor=reactor)  # type: ignore[no-untyped-call, unused-ignore]
        self.host = host
        self.protocol_options: dict[str, Any] = {}
        self.apply_limits(limits, compression)

    def apply_limits(self, limits: Limits, compression: Compression | None = None) -> None:
        """
        Connections made from now on use C{limits} and C{compression}
        (permessage-deflate; off when C{None}); open ones keep theirs.
        """
        self.setProtocolOptions(  # type: ignore[no-untyped-call, unused-ignore]
            maxFramePayloadSize=limits.max_message_size,
            maxMessagePayloadSize=limits.max_message_size,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=min(limits.shutdown_grace, 5.0),
            failByDrop=False,
            allowNullOrigin=True,
            perMessageCompressionAccept=offer_acceptor(compression or Compression()),
        )
        # What Autobahn would copy onto each protocol; a new dict, so
        # protocols already made keep the one they copied.
        self.protocol_options = {name: getattr(self, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}
        self.protocol_options["compression"] = compression or Compression()
        self.protocol = with_options(self.protocol_options)


def with_options(options: dict[str, Any]) -> type[ClientProtocol]:
    """
    A L{ClientProtocol} class carrying C{options} as class attributes:
    each connection then reads them from its class instead of holding
    forty copies in its own C{__dict__} (about 2 KiB per held connection).
    """
    # A function option (perMessageCompressionAccept) must not become a method.
    namespace: dict[str, Any] = {name: staticmethod(value) if callable(value) else value
                                 for name, value in options.items()}
    namespace.update({"_options_of": options, "__module__": ClientProtocol.__module__,
                      "__qualname__": ClientProtocol.__qualname__})
    return type(ClientProtocol.__name__, (ClientProtocol,), namespace)
