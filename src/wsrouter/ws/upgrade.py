"""
Handing an upgrade request's connection from twisted.web to a WebSocket
protocol.

A plain upgrade request that arrives whole in a connection's first read
never reaches twisted.web: L{wsrouter.web.fastupgrade} finds it and the
HTTP channel hands the connection over at once (L{hand_over}), so
Autobahn parses the request once.  Any other upgrade (a head split over
reads, HTTP/1.0, the router mounted in someone else's tree, ...) reaches
L{WebSocketUpgrade} as a twisted.web request; it is given to Autobahn
again as bytes (L{raw_request}), and Autobahn parses it a second time.
That is deliberate: Autobahn's opening handshake (C{processHandshake})
is one long method that parses the bytes, validates every header
(version, key, origin, subprotocols, extensions), calls C{onConnect} and
writes the 101 or the refusal; it has no entry point that takes headers
already parsed, and Autobahn stays the one judge of what a valid
handshake is.

The private attributes the handover needs are read in
L{wsrouter.ws.internals}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.protocols.policies import ProtocolWrapper
from twisted.web.pages import errorPage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsrouter.ws.adapter import ClientFactory, ClientProtocol
from wsrouter.ws.internals import channel_producer_holder, channel_unread


def is_websocket_upgrade(request: Request) -> bool:
    """A GET asking to upgrade to the WebSocket protocol."""
    upgrade = request.getHeader(b"upgrade") or b""
    return request.method == b"GET" and b"websocket" in upgrade.lower()


class WebSocketUpgrade(Resource):
    """
    Hands a request's connection over to a new WebSocket protocol from
    C{factory}, which performs (and can refuse) the handshake itself.
    """

    isLeaf = True

    def __init__(self, factory: ClientFactory, mount_prefix: str):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self._factory = factory
        self._mount_prefix = mount_prefix

    def render(self, request: Request) -> Any:
        channel = request.channel
        if channel.transport is None:
            return errorPage(426, "Upgrade Required", "WebSocket needs HTTP/1.1.").render(request)
        # The channel has paused the transport while handling this request.
        hand_over(channel, self._factory, self._mount_prefix, raw_request(request), resume=True)
        # The channel is done with this request (never finished: the
        # connection is the WebSocket's now); without this the pair is a
        # reference cycle left for the garbage collector.
        if request in channel.requests:
            channel.requests.remove(request)
        return NOT_DONE_YET


def hand_over(channel: Any, factory: ClientFactory, mount_prefix: str, data: bytes,
              resume: bool = False) -> ClientProtocol:
    """
    Give the HTTP C{channel}'s connection to a new protocol from C{factory}
    and feed it C{data} (the request head and whatever followed it); the
    channel is left detached, with no timer running.  C{resume}: the
    channel had paused the transport (while handling a request).
    """
    transport: Any = channel.transport
    protocol = cast(ClientProtocol, factory.buildProtocol(transport.getPeer()))
    protocol.mount_prefix = mount_prefix
    channel.transport = None
    # The HTTP channel is registered as the transport's producer; the
    # session brings its own flow control, so the channel must let go first.
    holder = channel_producer_holder(channel, transport)
    holder.unregisterProducer()
    channel.setTimeout(None)
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call, unused-ignore]
    protocol.dataReceived(data)
    if resume:
        holder.resumeProducing()
    return protocol


def raw_request(request: Request) -> bytes:
    """The request as received, plus anything the client sent after it."""
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    body = request.content.read() if request.content is not None else b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body + channel_unread(request.channel)
