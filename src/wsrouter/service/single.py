"""
The embedding API: build the router's twisted.web resource or a whole
service from a L{RouterConfig}.

    config = build_config({"routes": [{"path": "/vnc", "target": "tcp://127.0.0.1:5900"}]})
    root.putChild(b"ws", build_resource(config, reactor))

The twistd plugin and the C{wsrouter} command are thin layers over
L{build_service}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from wsrouter.config import RouterConfig, WrappedTarget
from wsrouter.descriptors import DescriptorGuard, GuardedSite
from wsrouter.gateway import Gateway
from wsrouter.process.wrapped import ProgramNotFound, WrappedProgram
from wsrouter.rebind import ShimUnavailable
from wsrouter.targets.wrapped import WrappedConnector
from wsrouter.web.resource import RouterResource
from wsrouter.web.static import build_web_root

log = Logger(namespace="wsrouter")


def build_resource(config: RouterConfig, reactor: Any = None, gateway: Gateway | None = None) -> RouterResource:
    """
    The router as a twisted.web resource, to be a Site's root or mounted
    under any path of an existing site.  Its L{Gateway} is C{.gateway}; call
    C{gateway.shutdown()} when the application stops, to close sessions
    with 1001.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    gateway = gateway or Gateway(config, reactor)
    web_root = build_web_root(config.web.directory, config.web.listing) if config.web else None
    return RouterResource(gateway, web_root)


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


class CannotStart(Exception):
    """The router cannot start as configured; the message says why."""


class CannotListen(CannotStart):
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
        self.router = self.resource.gateway
        self.descriptors = DescriptorGuard.for_this_process(reactor, self.ports)
        self.router.descriptors = self.descriptors
        self.site = GuardedSite(self.resource, self.descriptors)
        self.site.noisy = False
        self._reactor = reactor
        self.listeners: list[ListenerService] = []
        for description in config.listeners:
            self._add_listener(description)
        self.exit_status: int | None = None
        #: Called with a wrapped program's status when an C{exit}-mode
        #: program exits; the command line stops the reactor here.
        self.on_program_exit: Callable[[int], None] | None = None
        self.programs: dict[WrappedTarget, WrappedProgram] = {}
        for route in config.routes:
            if isinstance(route.target, WrappedTarget) and route.target not in self.programs:
                self.programs[route.target] = WrappedProgram(
                    reactor, route.target, on_exit=self._program_exited, on_listening=self._program_listening,
                )
        if self.programs:
            self.router.connectors.register(
                WrappedTarget, WrappedConnector(reactor, self.programs, program_wait_timeout(config)))

    def _add_listener(self, description: str) -> ListenerService:
        listener = ListenerService(self._reactor, description, self.site)
        listener.setServiceParent(self)
        self.listeners.append(listener)
        return listener

    def startService(self) -> None:
        super().startService()
        for description in self.config.listeners:
            log.info("listening on {listener}", listener=description)
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=route.target.describe())
        log.info("{capacity}", capacity=self.descriptors.describe_capacity(self.config))
        try:
            for program in self.programs.values():
                program.start()
        except (ShimUnavailable, ProgramNotFound) as e:
            raise CannotStart(str(e)) from None

    def _program_listening(self, program: WrappedProgram) -> None:
        follow_program_port(self, program)

    def _program_exited(self, status: int) -> None:
        self.exit_status = status
        if self.on_program_exit is not None:
            self.on_program_exit(status)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, once started (e.g. to learn a port chosen by the system)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.descriptors.stop()
        await super().stopService()
        await self.router.shutdown()
        stopping = [program.stop() for program in self.programs.values()]
        stopping.append(self.router.connectors.programs.terminate_all())
        await DeferredList(stopping)


def follow_program_port(service: Any, program: WrappedProgram) -> bool:
    """
    With no listener of its own (C{follow_program_port}), the router takes
    the loopback port the wrapped program asked for.  C{service} has
    C{config}, C{listeners}, C{_add_listener} and C{_program_exited}.

    @return: whether a listener was opened.
    """
    if not service.config.follow_program_port or service.listeners or program.requested_port is None:
        return False
    description = f"tcp:{program.requested_port}:interface=127.0.0.1"
    try:
        service._add_listener(description)
    except CannotListen as e:
        log.error("{error}; the router has nowhere to listen", error=e)
        service._program_exited(1)
        return False
    log.info("listening on {listener}, the port {name} asked for", listener=description, name=program.name)
    return True


def program_wait_timeout(config: RouterConfig) -> float:
    """How long a client waits for a wrapped program: within its handshake timeout."""
    limits = config.limits
    return max(min(limits.connect_timeout, limits.handshake_timeout - 1.0), 0.5)


def build_service(config: RouterConfig, reactor: Any = None) -> RouterService:
    """The whole router as a Twisted service: listeners, routes, sessions."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    return RouterService(config, reactor)
