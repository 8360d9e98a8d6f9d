"""
The router's twisted.web resource: WebSocket upgrades go to the gateway,
everything else to the static web root (if any), on the same port.

The resource can be the root of a Site or mounted anywhere in someone
else's resource tree; routes are matched below the mount point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.util import DeferredResource

from wsrouter.auth import NotAuthorized
from wsrouter.gateway import Gateway
from wsrouter.routing import path_matches
from wsrouter.tls import client_subject
from wsrouter.ws.upgrade import WebSocketUpgrade, is_websocket_upgrade

__all__ = ["RouterResource", "WebSocketUpgrade", "is_websocket_upgrade"]

log = Logger(namespace="wsrouter")


def _mount_prefix(segments: list[bytes]) -> str:
    parts = [segment.decode("utf-8", "replace") for segment in segments if segment]
    return "/" + "/".join(parts) if parts else ""


def _challenge(reason: Failure, request: Request, peer: str) -> IResource:
    """A refused web root request: 401 with the challenge headers, and a log line (no secrets)."""
    reason.trap(NotAuthorized)
    error: NotAuthorized = reason.value  # type: ignore[assignment]
    if error.status != 401:
        log.info("refused {peer} {path}: {status} {reason} (security.web_auth)", peer=peer,
                 path=request.uri.decode("latin-1"), status=error.status, reason=error.reason)
        return errorPage(error.status, "Forbidden", error.reason)
    for name, value in error.challenge:
        request.responseHeaders.addRawHeader(name, value)
    log.info("refused {peer} {path}: 401 {reason} (the web root asks for credentials: security.web_auth)",
             peer=peer, path=request.uri.decode("latin-1"), reason=error.reason)
    return errorPage(401, "Unauthorized", error.reason)


class RouterResource(Resource):
    """
    Dispatches one path segment at a time, like any twisted.web resource,
    until it can tell an upgrade from a plain HTTP request.
    """

    def __init__(self, gateway: Gateway, web_root: IResource | None = None):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self.gateway = gateway
        self._web_root = web_root
        #: The operator's pages (L{wsrouter.ops.pages.OpsPages}), set by the service; C{None}: none.
        self.ops: Any = None

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        if self.ops is not None:
            page: IResource | None = self.ops.page_for(request, _mount_prefix((request.prepath or [])[:-1]))
            if page is not None:
                return page
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.gateway.factory, _mount_prefix((request.prepath or [])[:-1]))
        if self._web_root is not None:
            web_root = self._web_root
            gate = self._gate(request, lambda: web_root.getChildWithDefault(name, request))
            if gate is not None:
                return DeferredResource(gate)
            child: IResource = web_root.getChildWithDefault(name, request)
            return child
        return self._not_here(request, _mount_prefix((request.prepath or [])[:-1]))

    def render(self, request: Request) -> Any:
        if is_websocket_upgrade(request):
            return WebSocketUpgrade(self.gateway.factory, _mount_prefix(request.prepath or [])).render(request)
        if self._web_root is not None:
            web_root = self._web_root
            gate = self._gate(request, lambda: web_root)
            if gate is not None:
                return DeferredResource(gate).render(request)
            return web_root.render(request)
        return self._not_here(request, _mount_prefix(request.prepath or [])).render(request)

    def _gate(self, request: Request, then: Callable[[], IResource]) -> Deferred[IResource] | None:
        """
        With C{security.web_auth}: fires with C{then()} once the request's
        credentials are accepted, else with a 401 page (its challenge set on
        the request); C{None} when the web root asks for nothing.
        """
        config = self.gateway.config
        auth = config.auth_for(None)
        if auth is None:
            return None
        headers = {name.decode("latin-1").lower(): values[0].decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        peer = str(getattr(request.getClientAddress(), "host", "") or "unix")
        checking = self.gateway.authenticator.check(auth.name, headers, peer, client_subject(request.transport))
        return checking.addCallbacks(lambda _: then(), _challenge, errbackArgs=(request, peer))

    def _not_here(self, request: Request, mount_prefix: str) -> IResource:
        """A 426 for plain HTTP on a WebSocket route's path, else 404."""
        path = unquote(request.path.decode("utf-8", "replace").partition("?")[0])
        path = path[len(mount_prefix):] or "/"
        if any(path_matches(route, path) for route in self.gateway.config.routes):
            return errorPage(426, "Upgrade Required", "This is a WebSocket endpoint; connect with a WebSocket client.")
        return notFound("No Such Resource", "No such resource.")
