"""
The seams between the router's parts, as typing protocols and plain data.

A session flows: the WebSocket adapter (a L{ClientConnection}) asks a
L{HandshakeHost} (the gateway) to decide a handshake; the gateway produces
a L{SessionInfo}, a L{Connector} turns it into a connected, paused L{Link},
and the adapter is handed a L{ConnectionSession} (the session) whose
callbacks it calls from then on.  The session's bridge moves data between
the WebSocket (a L{WebSocketEnd}) and the link, cutting the target's bytes
into messages with a L{Framer} and telling a L{Recorder}.  A
L{SessionObserver} hears of sessions opening and closing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer

from wsrouter.config import Route

if TYPE_CHECKING:
    from wsrouter.session import Session


@frozen
class SessionInfo:
    """
    What is known about a WebSocket session once its handshake is read.

    @ivar peer_host: the client's real address: from a PROXY header or a
        trusted proxy's forwarding headers if there are any, else the
        connection's peer (L{wsrouter.clientaddr}).  What logs, limits,
        recordings and CGI variables use.
    @ivar peer_port: the client's port; 0 when a forwarding header gave none.
    @ivar local_host: the address the client connected to (as a PROXY
        header said, else the listener's own); "" on a Unix socket.
    @ivar route_path: the path matched against routes (below any mount point).
    @ivar headers: the request headers, names lower-cased, in order.
    @ivar client_cert: see L{tls.client_subject}.
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
    local_host: str = ""
    #: The subject (RFC 4514) of the client's verified TLS certificate, if any.
    client_cert: str | None = None

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


class MessageLink(Link, Protocol):
    """
    A message-oriented link that keeps each message's type (the echo): the
    bridge hands it whole client messages with L{write_message} instead of
    L{Link.write}, empty ones included, and it answers through
    L{LinkReceiver.message_received}.
    """

    def write_message(self, payload: bytes, is_binary: bool) -> None:
        """Send one whole client message, with its type."""


class ClosingLink(MessageLink, Protocol):
    """
    A message link with close codes (a WebSocket target): the bridge closes
    it with the client's code and reason, and it reports the target's
    through the bridge's C{link_closed(code, reason)}.

    @ivar subprotocol: what the target chose; the client's 101 names it.

    Optional, to keep fragmentation (the ws:// target): C{write_fragment(payload,
    is_binary, first, fin)} takes each frame of a fragmented client message,
    and the link hands each frame of its messages to the bridge's
    C{fragment_received(payload, is_binary, first, fin)}; the client side's
    C{send_fragment} sends one frame.
    """

    subprotocol: str | None

    def close_with(self, code: int | None, reason: str) -> None:
        """The client closed with C{code} (C{None}: none given): close the target the same way."""


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


class ClientConnection(WebSocketEnd, Protocol):
    """
    One client's WebSocket connection, as the gateway and its session see
    it (implemented by the Autobahn adapter).

    @ivar transport: the Twisted transport, for drain accounting and the
        peer and host addresses.
    @ivar mount_prefix: the path the resource is mounted under, removed
        before routing.
    @ivar http_request_uri: the request target as the client sent it.
    @ivar connection_gone: the TCP connection has ended.
    """

    transport: Any
    mount_prefix: str
    http_request_uri: str
    connection_gone: bool

    def is_secure(self) -> bool:
        """The connection came over TLS."""

    def is_dropped(self) -> bool:
        """The connection has been closed or dropped, maybe not yet reported (a handshake timed out)."""

    def send_ping(self, payload: bytes) -> None:
        """Send a ping frame (a keepalive)."""

    def abort(self, reason: str) -> None:
        """Drop the TCP connection now, recording C{reason} as why it was not clean."""

    def finish(self) -> None:
        """Close the TCP connection after queued data is sent."""


class Gatherer(Protocol):
    """A link that can gather several writes into one send (see StreamLink.hold)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


class ConnectionSession(Protocol):
    """
    What the adapter calls once the gateway has accepted a handshake
    (implemented by L{wsrouter.session.Session}).

    @ivar subprotocol: the subprotocol to accept, or C{None}.
    @ivar gatherer: the link, when one read's payload can go out in one send.
    """

    subprotocol: str | None
    gatherer: Gatherer | None

    def opened(self) -> None:
        """The handshake is answered: start relaying."""

    def closed(self, code: int | None, reason: str) -> None:
        """The WebSocket connection is gone (cleanly or not)."""

    def closing(self) -> None:
        """A closing handshake has started: bound how long it may take."""

    def message_begin(self, is_binary: bool) -> None: ...

    def message_data(self, payload: bytes) -> None:
        """Part of the current client message (per frame: kept cheap)."""

    def message_end(self) -> None: ...

    def binary_messages(self, payloads: list[bytes]) -> None:
        """Several whole binary client messages, a read's run: what the three calls above do for each."""

    def frame_end(self) -> None:
        """A non-final frame of the current client message ended (a fragment boundary)."""

    def pong(self, payload: bytes) -> None: ...

    def sent(self) -> None:
        """A message went to the client (for the idle timeout; per message: kept cheap)."""

    def refuse(self, code: int, reason: str) -> None:
        """The client broke the protocol: close with C{code}, relay nothing more."""


class HandshakeHost(Protocol):
    """Decides WebSocket handshakes (implemented by the gateway)."""

    def handshake(self, connection: ClientConnection, request: Any) -> Deferred[ConnectionSession | None]:
        """
        Route C{request} (Autobahn's C{ConnectionRequest}) and connect its target.

        @return: fires with the session to hand the connection to (C{None}
            if the connection went away meanwhile), or fails with Autobahn's
            C{ConnectionDeny} carrying the HTTP status.
        @raise ConnectionDeny: when the refusal is known at once (no route,
            no subprotocol in common, shutting down, no descriptors left).
        """


class SessionObserver(Protocol):
    """Hears of sessions opening and ending (the status page, websockify's --run-once)."""

    def session_opened(self, session: Session) -> None:
        """C{session} has been opened and is relaying."""

    def session_closed(self, session: Session) -> None:
        """An opened C{session} has ended: both sides closed, its recording flushed."""


class HandshakeWatcher(Protocol):
    """Told of what a handshake did not get (the metrics count it)."""

    def handshake_refused(self, status: int, reason: str) -> None:
        """A handshake was answered with HTTP C{status}, for C{reason}."""

    def target_failed(self, info: SessionInfo) -> None:
        """The target of C{info}'s route could not be connected."""
