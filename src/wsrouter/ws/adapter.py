"""
The thin Autobahn adapter: a WebSocket server protocol that hands every
decision to the router and every byte to its session's bridge.

Autobahn performs the opening handshake and the closing handshake.  In
between, client frames are parsed by L{wsrouter.ws.parser}, which hands payload
on as it arrives, so a large message is relayed as it comes and never held
whole.  Messages to the client are framed here directly: server frames are
unmasked, so a frame is a small header written together with the payload.
"""

from __future__ import annotations

import struct
from pprint import pformat
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer

from wsrouter import __version__
from wsrouter.config import Limits
from wsrouter.targets.stream import IO_CHUNK
from wsrouter.ws.parser import FrameParser
from wsrouter.ws.writes import write_sequence_through, write_through

if TYPE_CHECKING:
    from wsrouter.bridge import Bridge
    from wsrouter.gateway import Router
    from wsrouter.ws.keepalive import Keepalive

_OPEN = WebSocketProtocol.STATE_OPEN


class _LazyFormat:
    """Formats only if a debug line is actually written."""

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    def __str__(self) -> str:
        return pformat(self._value)


# Autobahn pretty-prints every protocol option for a debug line on each new
# connection, whether debug logging is on or not; deferring the formatting
# takes a tenth of the cost of accepting a connection away.
if getattr(autobahn_protocol, "pformat", None) is pformat:
    autobahn_protocol.pformat = _LazyFormat
_HTTP_REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 426: "Upgrade Required",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


def frame_header(is_binary: bool, length: int) -> bytes:
    """The header of one unmasked, final data frame of C{length} payload bytes."""
    opcode = 0x82 if is_binary else 0x81
    if length < 126:
        return bytes((opcode, length))
    if length < 65536:
        return struct.pack("!BBH", opcode, 126, length)
    return struct.pack("!BBQ", opcode, 127, length)


class RouterProtocol(WebSocketServerProtocol):
    """
    One client connection.  Per-session state lives here and on the bridge.

    @ivar mount_prefix: the path under which the router's resource is
        mounted, removed from the request path before routing.
    """

    factory: RouterFactory
    bridge: Bridge | None = None
    keepalive: Keepalive | None = None
    mount_prefix = ""
    session_id = ""
    connection_gone = False
    _frames: FrameParser | None = None
    #: The target link, when it can gather writes (see StreamLink.hold).
    _held_link: Any = None

    def dataReceived(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            self._dataReceived(data)
            return
        link = self._held_link
        if link is None:
            frames.feed(data)
            return
        # All the payload one read carries goes to the target in one send.
        link.hold()
        try:
            frames.feed(data)
        finally:
            link.release()

    # -- handshake and lifecycle, decided by the router ---------------------------

    def onConnect(self, request: Any) -> Any:
        return self.factory.router.handshake(self, request)

    def onOpen(self) -> None:
        self._frames = FrameParser(_ClientFrames(self), self.maxMessagePayloadSize)
        self.transport.bufferSize = IO_CHUNK  # read more per call; queue as much before pausing
        leftover, self.data = self.data, b""
        self.factory.router.opened(self)
        link = getattr(self.bridge, "link", None)
        if hasattr(link, "hold"):
            self._held_link = link
        if leftover:
            self._frames.feed(leftover)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.connection_gone = True
        self.factory.router.closed(self, code, reason or "")

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Refuse the handshake with a proper status line and the reason as a one-line body."""
        body = (reason.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {code} {_HTTP_REASONS.get(code, 'Error')}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in responseHeaders or ()]
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)

    def onPong(self, payload: bytes) -> None:
        if self.keepalive is not None:
            self.keepalive.pong_received(payload)

    # -- WebSocketEnd, used by the bridge ------------------------------------------

    def send(self, payload: bytes, is_binary: bool) -> None:
        if self.state == _OPEN:
            self.factory.router.touch(self)
            header = frame_header(is_binary, len(payload))
            if len(payload) <= 1024:
                write_through(self.transport, header + payload)
            else:
                write_sequence_through(self.transport, (header, payload))

    def close(self, code: int, reason: str) -> None:
        """
        Close with any RFC 6455 code (the public sendClose refuses 1001, 1009,
        1011).  Autobahn's close timer would start now, while the close frame
        still waits behind queued data a slow client is reading; the router
        watches the drain instead.
        """
        if self.state == _OPEN:
            timeout, self.closeHandshakeTimeout = self.closeHandshakeTimeout, 0
            try:
                self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
            finally:
                self.closeHandshakeTimeout = timeout
            self.factory.router.watch_closing(self)

    def attach_producer(self, producer: IPushProducer) -> None:
        self.transport.registerProducer(producer, True)

    def consumer_producer(self) -> IPushProducer:
        return self.transport  # type: ignore[no-any-return]


class _ClientFrames:
    """What the frame parser finds, applied to one connection."""

    def __init__(self, protocol: RouterProtocol):
        self._protocol = protocol
        self._router = protocol.factory.router

    def message_begin(self, is_binary: bool) -> None:
        if self._protocol.keepalive is not None:
            self._protocol.keepalive.alive()
        if self._protocol.bridge is not None:
            self._protocol.bridge.message_begin(is_binary)

    def message_data(self, payload: bytes) -> None:
        bridge = self._protocol.bridge
        if bridge is not None:
            self._router.touch(self._protocol)
            bridge.frame_data(payload)

    def message_end(self) -> None:
        if self._protocol.bridge is not None:
            self._protocol.bridge.message_end()

    def ping(self, payload: bytes) -> None:
        if self._protocol.state == _OPEN:
            self._protocol.sendPong(payload)

    def pong(self, payload: bytes) -> None:
        self._protocol.onPong(payload)

    def close(self, code: int | None, reason: bytes | None) -> None:
        problem = close_frame_problem(code, reason)
        if problem is not None:
            self.fail(*problem)
            return
        # Autobahn answers (or completes our close) and closes the connection.
        self._protocol.onCloseFrame(code, reason)
        self._router.watch_closing(self._protocol)

    def fail(self, code: int, reason: str) -> None:
        """Close with the violation's code, then the TCP connection (RFC 6455 7.1.7)."""
        protocol = self._protocol
        if protocol.bridge is not None:
            protocol.bridge.refuse(code, reason)
        else:
            protocol.close(code, reason)
        protocol.wasClean = False
        protocol.wasNotCleanReason = reason
        protocol.dropConnection(abort=False)
        self._router.watch_closing(protocol)


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


class RouterFactory(WebSocketServerFactory):
    """Builds L{RouterProtocol}s with the router's limits applied once."""

    protocol = RouterProtocol

    def __init__(self, router: Router, limits: Limits, reactor: Any):
        super().__init__(server=f"wsrouter/{__version__}", reactor=reactor)
        self.router = router
        self.setProtocolOptions(
            maxFramePayloadSize=limits.max_message_size,
            maxMessagePayloadSize=limits.max_message_size,
            openHandshakeTimeout=limits.handshake_timeout,
            closeHandshakeTimeout=min(limits.shutdown_grace, 5.0),
            failByDrop=False,
            allowNullOrigin=True,
            perMessageCompressionAccept=lambda offers: None,
        )
