"""
The embedding API: build the router's twisted.web resource or a whole
service from a L{RouterConfig}.

    config = build_config({"routes": ["/vnc=tcp://127.0.0.1:5900"]})
    root.putChild(b"ws", build_resource(config, reactor))

The twistd plugin and the C{wsrouter} command are thin layers over
L{build_service}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site

from .config import RouterConfig
from .router import Router
from .static import build_web_root
from .web import RouterResource

log = Logger(namespace="wsrouter")


def build_resource(config: RouterConfig, reactor: Any = None, router: Router | None = None) -> RouterResource:
    """
    The router as a twisted.web resource, to be a Site's root or mounted
    under any path of an existing site.  Its L{Router} is C{.router}; call
    C{router.shutdown()} when the application stops, to close sessions
    with 1001.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    router = router or Router(config, reactor)
    web_root = build_web_root(config.web.directory, config.web.listing) if config.web else None
    return RouterResource(router, web_root)


class RouterService(MultiService):
    """
    Listens on every configured endpoint; stopping it stops listening, then
    closes the sessions (1001) and fires once they are gone.
    """

    def __init__(self, config: RouterConfig, reactor: Any):
        super().__init__()
        self.config = config
        self.resource = build_resource(config, reactor)
        self.router = self.resource.router
        self.site = Site(self.resource)
        self.site.noisy = False
        self.listeners: list[StreamServerEndpointService] = []
        for description in config.listeners:
            listener = StreamServerEndpointService(serverFromString(reactor, description), self.site)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self) -> None:
        super().startService()
        for description in self.config.listeners:
            log.info("listening on {listener}", listener=description)
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=route.target.describe())

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()
        await self.router.shutdown()


def build_service(config: RouterConfig, reactor: Any = None) -> RouterService:
    """The whole router as a Twisted service: listeners, routes, sessions."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    return RouterService(config, reactor)
