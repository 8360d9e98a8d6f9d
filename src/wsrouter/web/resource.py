"""
The router's twisted.web resource: WebSocket upgrades go to the gateway,
everything else to the static web root (if any), on the same port.

The resource can be the root of a Site or mounted anywhere in someone
else's resource tree; routes are matched below the mount point.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from wsrouter.gateway import Gateway
from wsrouter.routing import path_matches
from wsrouter.ws.upgrade import WebSocketUpgrade, is_websocket_upgrade

__all__ = ["RouterResource", "WebSocketUpgrade", "is_websocket_upgrade"]


def _mount_prefix(segments: list[bytes]) -> str:
    parts = [segment.decode("utf-8", "replace") for segment in segments if segment]
    return "/" + "/".join(parts) if parts else ""


class RouterResource(Resource):
    """
    Dispatches one path segment at a time, like any twisted.web resource,
    until it can tell an upgrade from a plain HTTP request.
    """

    def __init__(self, gateway: Gateway, web_root: IResource | None = None):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self.gateway = gateway
        self._web_root = web_root

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.gateway.factory, _mount_prefix((request.prepath or [])[:-1]))
        if self._web_root is not None:
            child: IResource = self._web_root.getChildWithDefault(name, request)
            return child
        return self._not_here(request, _mount_prefix((request.prepath or [])[:-1]))

    def render(self, request: Request) -> Any:
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.gateway.factory, _mount_prefix(request.prepath or [])).render(request)
        if self._web_root is not None:
            return self._web_root.render(request)
        return self._not_here(request, _mount_prefix(request.prepath or [])).render(request)

    def _not_here(self, request: Request, mount_prefix: str) -> IResource:
        """A 426 for plain HTTP on a WebSocket route's path, else 404."""
        path = unquote(request.path.decode("utf-8", "replace").partition("?")[0])
        path = path[len(mount_prefix):] or "/"
        if any(path_matches(route, path) for route in self.gateway.config.routes):
            return errorPage(426, "Upgrade Required", "This is a WebSocket endpoint; connect with a WebSocket client.")
        return notFound("No Such Resource", "No such resource.")
