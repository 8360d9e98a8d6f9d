"""
The router's twisted.web resource: WebSocket upgrades go to the router,
everything else to the static web root (if any), on the same port.

The resource can be the root of a Site or mounted anywhere in someone
else's resource tree; routes are matched below the mount point.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from twisted.protocols.policies import ProtocolWrapper
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsrouter.gateway import Router
from wsrouter.routing import path_matches


def is_websocket_upgrade(request: Request) -> bool:
    """A GET asking to upgrade to the WebSocket protocol."""
    upgrade = request.getHeader(b"upgrade") or b""
    return request.method == b"GET" and b"websocket" in upgrade.lower()


def _mount_prefix(segments: list[bytes]) -> str:
    parts = [segment.decode("utf-8", "replace") for segment in segments if segment]
    return "/" + "/".join(parts) if parts else ""


class RouterResource(Resource):
    """
    Dispatches one path segment at a time, like any twisted.web resource,
    until it can tell an upgrade from a plain HTTP request.
    """

    def __init__(self, router: Router, web_root: IResource | None = None):
        super().__init__()
        self.router = router
        self._web_root = web_root

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.router, _mount_prefix(request.prepath[:-1]))
        if self._web_root is not None:
            return self._web_root.getChildWithDefault(name, request)
        return self._not_here(request, _mount_prefix(request.prepath[:-1]))

    def render(self, request: Request) -> Any:
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.router, _mount_prefix(request.prepath)).render(request)
        if self._web_root is not None:
            return self._web_root.render(request)
        return self._not_here(request, _mount_prefix(request.prepath)).render(request)

    def _not_here(self, request: Request, mount_prefix: str) -> IResource:
        """A 426 for plain HTTP on a WebSocket route's path, else 404."""
        path = unquote(request.path.decode("utf-8", "replace").partition("?")[0])
        path = path[len(mount_prefix):] or "/"
        if any(path_matches(route, path) for route in self.router.config.routes):
            return errorPage(426, "Upgrade Required", "This is a WebSocket endpoint; connect with a WebSocket client.")
        return notFound("No Such Resource", "No such resource.")


class WebSocketUpgrade(Resource):
    """
    Hands a request's connection over to a new WebSocket protocol.

    The HTTP channel has already parsed the request; the WebSocket protocol
    is given the raw request again so that Autobahn performs (and can
    refuse) the handshake itself.
    """

    isLeaf = True

    def __init__(self, router: Router, mount_prefix: str):
        super().__init__()
        self._router = router
        self._mount_prefix = mount_prefix

    def render(self, request: Request) -> Any:
        channel = request.channel
        transport = channel.transport
        if transport is None:
            return errorPage(426, "Upgrade Required", "WebSocket needs HTTP/1.1.").render(request)
        protocol = self._router.factory.buildProtocol(transport.getPeer())
        protocol.mount_prefix = self._mount_prefix
        channel.transport = None
        # The HTTP channel is registered as the transport's producer and has
        # paused it while handling this request; the session brings its own
        # flow control, so the channel must let go first.
        network_producer = getattr(channel, "_networkProducer", transport)
        network_producer.unregisterProducer()
        channel.setTimeout(None)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(_raw_request(request))
        network_producer.resumeProducing()
        return NOT_DONE_YET


def _raw_request(request: Request) -> bytes:
    """The request as received, plus anything the client sent after it."""
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n" + request.content.read() + _unread(request.channel)


def _unread(channel: Any) -> bytes:
    """
    Bytes the HTTP channel holds beyond this request (frames a client sent
    without waiting for the 101): the channel buffers them while the request
    is handled, and they belong to the WebSocket now.
    """
    held = b"".join(getattr(channel, "_dataBuffer", None) or ())
    rest = getattr(channel, "_buffer", b"")
    return held + (rest if isinstance(rest, bytes) else b"")
