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

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
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


class ListenerService(Service):
    """
    Listens on one endpoint while running.  A listener that cannot start
    (port in use, no permission) raises from startService, so twistd and
    the C{wsrouter} command stop with that message instead of running deaf.
    """

    def __init__(self, reactor: Any, description: str, site: Site):
        self.description = description
        self._endpoint = serverFromString(reactor, description)
        self._site = site
        self._listening: Deferred[IListeningPort] | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._listening = self._endpoint.listen(self._site)
        failure: list[Failure] = []
        self._listening.addCallbacks(self._listened, failure.append)
        if failure:
            self._listening = None
            super().stopService()
            raise CannotListen(f"cannot listen on {self.description}: {failure[0].getErrorMessage()}")

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


class CannotListen(Exception):
    """A configured listener could not be opened."""


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
        self.listeners: list[ListenerService] = []
        for description in config.listeners:
            listener = ListenerService(reactor, description, self.site)
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self) -> None:
        super().startService()
        for description in self.config.listeners:
            log.info("listening on {listener}", listener=description)
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=route.target.describe())

    def ports(self) -> list[IListeningPort]:
        """The listening ports, once started (e.g. to learn a port chosen by the system)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

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
