"""
The HTTP channel with limits on the request head, before anything else
(static file or WebSocket upgrade) sees the request.

twisted.web's own channel restarts its idle timer at every byte, so a
client trickling one header byte at a time is never cut, and it drops the
socket without an answer when a header line outgrows its line limit.
L{LimitedChannel} gives each request head a deadline counted from the
connection's accept (for the first request) or from the request's first
byte (for the next ones on a kept-alive connection), however slowly it
is sent, and a size limit over the request line and all headers; each
refusal is answered (408, 431) with a one-line reason, then the
connection is closed.

A whole, plain WebSocket upgrade request in the connection's first read
skips twisted.web's parsing altogether (L{wsrouter.web.fastupgrade}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from wsrouter.config import Limits
from wsrouter.web.fastupgrade import upgrade_factory
from wsrouter.ws.upgrade import hand_over

log = Logger(namespace="wsrouter")

#: Seconds a refused client gets to read the answer before the socket is aborted.
ABORT_AFTER = 5.0


class LimitedChannel(HTTPChannel):
    """
    An HTTP channel whose request heads have a deadline and a size limit.

    @param limits: called at each new connection for the current limits
        (so a reload applies to the next connection).
    """

    def __init__(self, limits: Callable[[], Limits]):
        super().__init__()  # type: ignore[no-untyped-call]
        current = limits()
        self._deadline_after = current.handshake_timeout
        self._max_head = current.max_header_bytes
        # Twisted's own limits must not fire first: they answer 400 or drop the socket.
        self.MAX_LENGTH = self._max_head + 1
        self.totalHeadersSize = self._max_head + 1
        self._head_bytes = 0
        self._in_head = False
        self._deadline: Any = None
        self._refused = False
        self._abort: Any = None
        self._first_read = True

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._start_head()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._deadline = self.callLater(self._deadline_after, self._too_slow)  # type: ignore[no-untyped-call]

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self._first_read:
            self._first_read = False
            # A whole upgrade request in the first read goes straight to
            # the WebSocket protocol (L{wsrouter.web.fastupgrade}).
            factory = upgrade_factory(self, data, self._max_head)
            if factory is not None:
                self._in_head = False
                self._stop_deadline()
                hand_over(self, factory, "", data)
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            self._start_head()
        self._head_bytes += len(line) + 2
        if self._head_bytes > self._max_head:
            self._too_large()
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_large()

    def allHeadersReceived(self) -> None:
        self._in_head = False
        self._stop_deadline()
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, "Request Timeout",
                     f"the request head was not complete after {self._deadline_after:g} s")

    def _too_large(self) -> None:
        self._refuse(431, "Request Header Fields Too Large",
                     f"the request line and headers exceed {self._max_head} bytes")

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        """Answer C{status} with C{reason} as the body, close, and abort if the client will not read."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._stop_deadline()
        peer = self.transport.getPeer()
        log.info("refused {peer}: {status} {reason}", peer=_peer_text(peer), status=status, reason=reason)
        body = reason.encode("utf-8") + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, phrase.encode("ascii"), len(body), body))
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        transport: Any = self.transport
        # A lingering close: closing a socket with unread input makes the
        # kernel send a reset, which can destroy the answer before the client
        # reads it (a client still trickling bytes always has unread input).
        # So stop writing, keep reading (and discarding) until the client
        # closes, and abort after ABORT_AFTER whatever it does.
        # (Not under TLS: its wrapper would hand the half-close to the TCP
        # socket beneath, cutting the TLS stream; TLS closes with close_notify.)
        half_close = None if isinstance(transport, TLSMemoryBIOProtocol) else getattr(
            transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            transport.loseConnection()
        self._abort = self.callLater(ABORT_AFTER, transport.abortConnection)  # type: ignore[no-untyped-call]


def _peer_text(peer: Any) -> str:
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', 0)}" if host else str(peer)


def limit_requests(site: Any, limits: Callable[[], Limits]) -> None:
    """Make C{site} build L{LimitedChannel}s that read C{limits()} when a connection opens."""
    def build() -> LimitedChannel:
        return LimitedChannel(limits)
    site.protocol = build
