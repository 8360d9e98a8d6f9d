"""
The seams between the router's parts, as typing protocols and plain data.

A session flows: the WebSocket handshake produces a L{SessionInfo}; a
L{Connector} turns it into a connected, paused L{Link}; the bridge moves
data between the WebSocket (a L{WebSocketEnd}) and the link, cutting the
target's bytes into messages with a L{Framer} and telling a L{Recorder}.
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer

from wsrouter.config import Route


@frozen
class SessionInfo:
    """
    What is known about a WebSocket session once its handshake is read.

    @ivar peer_host: the client's address.
    @ivar route_path: the path matched against routes (below any mount point).
    @ivar headers: the request headers, names lower-cased, in order.
    """

    session_id: str
    peer_host: str
    peer_port: int
    server_name: str
    server_port: int
    secure: bool
    path: str
    route_path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    subprotocol: str | None
    route: Route
    script_name: str = ""

    @property
    def request_uri(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    @property
    def path_info(self) -> str:
        """The part of the path below the route's own path."""
        if not self.route.prefix:
            return ""
        base = self.route.path.rstrip("/")
        return self.route_path[len(base):]

    def peer(self) -> str:
        host = f"[{self.peer_host}]" if ":" in self.peer_host else self.peer_host
        return f"{host}:{self.peer_port}"


class LinkReceiver(Protocol):
    """What a L{Link} tells about its target (implemented by the bridge)."""

    def data_received(self, data: bytes) -> None:
        """Bytes from the target (one datagram, for datagram links)."""

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """
        One whole message whose type the target knows (a replayed
        recording): sent to the client as it is, bypassing the framer.  A
        link uses either this or L{data_received}, not both.
        """

    def eof_received(self) -> None:
        """The target will send no more; it may still accept data."""

    def link_lost(self, error: str | None) -> None:
        """The link is gone; C{error} is C{None} for a clean close."""


class Link(Protocol):
    """
    A connected target, paused until L{start} is called.

    @ivar message_oriented: each L{write} is one datagram, so the bridge
        must hand over whole messages, not frames.
    @ivar producer: pauses and resumes reading from the target; the bridge
        registers it with the WebSocket transport.
    @ivar consumer: where the WebSocket transport is registered as a
        producer, so a slow target pauses reading from the client.
    """

    message_oriented: bool
    producer: IPushProducer | None
    consumer: IConsumer | None

    def start(self, receiver: LinkReceiver) -> None:
        """Begin delivering the target's data to C{receiver}."""

    def write(self, data: bytes) -> None:
        """Send bytes (or one datagram) to the target."""

    def write_eof(self) -> None:
        """Tell the target no more data follows (half-close if possible)."""

    def close(self) -> None:
        """Close after pending writes are flushed."""

    def abort(self) -> None:
        """Close now, discarding pending writes."""


class Connector(Protocol):
    """Makes links for one kind of target."""

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        """
        Connect to the session's route target.

        @return: fires with a paused L{Link}, or fails with L{TargetError}.
        """


class TargetError(Exception):
    """
    A target could not be used; carries the HTTP status for the handshake.

    @ivar status: 502 when the target cannot be reached, 503 when it is
        busy or not ready yet.
    """

    def __init__(self, reason: str, status: int = 502):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Framer(Protocol):
    """Cuts a byte stream into messages; pure, fed bytes."""

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete messages C{data} finishes, in order."""

    def flush(self) -> list[bytes]:
        """At end of stream: return whatever is buffered as messages."""


class Recorder(Protocol):
    """Writes one session's traffic somewhere; never raises into the relay."""

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        """A whole message from the client to the target."""

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        """A whole message from the target to the client."""

    def closed(self, code: int | None, reason: str) -> None:
        """The session ended; flush and close."""


class WebSocketEnd(Protocol):
    """The client side of a session, as the bridge sees it."""

    def send(self, payload: bytes, is_binary: bool) -> None:
        """Send one message."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with any RFC 6455 code."""

    def attach_producer(self, producer: IPushProducer) -> None:
        """Register the target's producer so a slow client pauses it."""

    def consumer_producer(self) -> IPushProducer:
        """The producer to register with the target (pauses client reads)."""
