"""
The embedding API: build the router's twisted.web resource or a whole
service from a L{RouterConfig}.

    config = build_config({"routes": [{"path": "/vnc", "target": "tcp://127.0.0.1:5900"}]})
    root.putChild(b"ws", build_resource(config, reactor))

The twistd plugin and the C{wsrouter} command are thin layers over
L{build_service}.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter import clientaddr
from wsrouter.balancing import describe_targets
from wsrouter.config import RouterConfig, WrappedTarget
from wsrouter.descriptors import DescriptorGuard, GuardedSite
from wsrouter.gateway import Gateway
from wsrouter.ops.pages import OpsPages
from wsrouter.process.instances import make_program
from wsrouter.process.supervisor import Supervisor
from wsrouter.process.wrapped import ProgramNotFound, ProgramSet, WrappedProgram, wrapped_targets
from wsrouter.proxyproto import ProxyHeaderFactory
from wsrouter.rebind import ShimUnavailable
from wsrouter.targets.instance import LeasingConnector
from wsrouter.targets.terminal import warn_open_terminals
from wsrouter.targets.tls import warn_unverified
from wsrouter.tls import ServerTls, TlsProblem
from wsrouter.tlsport import listener_factory
from wsrouter.web.channel import limit_requests
from wsrouter.web.resource import RouterResource
from wsrouter.web.static import build_web_root, security_headers
from wsrouter.web.terminal import mount_terminal

log = Logger(namespace="wsrouter")


def build_resource(config: RouterConfig, reactor: Any = None, gateway: Gateway | None = None) -> RouterResource:
    """
    The router as a twisted.web resource, to be a Site's root or mounted
    under any path of an existing site.  Its L{Gateway} is C{.gateway}; call
    C{gateway.shutdown()} when the application stops, to close sessions
    with 1001.
    """
    if reactor is None:
        from twisted.internet import reactor
    gateway = gateway or Gateway(config, reactor)
    web_root = None
    if config.web:
        headers = security_headers(config.web.content_security_policy, config.web.frame_options)
        web_root = build_web_root(config.web.directory, config.web.listing, headers)
    resource = RouterResource(gateway, mount_terminal(config, web_root))
    resource.ops = OpsPages(gateway, reactor)
    return resource


class ListenerService(Service):
    """
    Listens on one endpoint while running.  A listener that cannot start
    (port in use, no permission) raises from startService, so twistd and
    the C{wsrouter} command stop with that message instead of running deaf.
    """

    def __init__(self, reactor: Any, description: str, site: Factory[Any]):
        self.description = description
        self._endpoint = serverFromString(reactor, description)
        self._site = site
        self._listening: Deferred[IListeningPort] | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listening = self._endpoint.listen(self._site)
        failure: list[Failure] = []
        self._listening.addCallbacks(self._listened, failure.append)
        if failure:
            self._listening = None
            super().stopService()  # type: ignore[no-untyped-call]
            raise CannotListen(f"cannot listen on {self.description}: {failure[0].getErrorMessage()}")

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            port: Any = self.port
            self.port = None
            stopped: Deferred[None] | None = port.stopListening()
            return stopped
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
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.resource = build_resource(config, reactor)
        self.gateway = self.resource.gateway
        self.descriptors = DescriptorGuard.for_this_process(reactor, self.ports)
        self.gateway.descriptors = self.descriptors
        self.site = GuardedSite(self.resource, self.descriptors)
        self.site.noisy = False
        limit_requests(self.site, lambda: self.gateway.config.limits)
        self._reactor = reactor
        self.tls = server_tls(config)
        self.listeners: list[ListenerService] = []
        for description in config.listeners:
            self.add_listener(description)
        self.exit_status: int | None = None
        #: Called with a wrapped program's status when an C{exit}-mode
        #: program exits; the command line stops the reactor here.
        self.on_program_exit: Callable[[int], None] | None = None
        self.process_supervisor = Supervisor(reactor)
        self._programs = ProgramSet(self._make_program)
        self._programs.add(wrapped_targets(config))
        self.resource.ops.programs = self._programs.ordered
        self.gateway.connectors.register(
            WrappedTarget, LeasingConnector(reactor, self._programs.by_target, program_wait_timeout(config)))

    @property
    def programs(self) -> Mapping[WrappedTarget, WrappedProgram]:
        """The wrapped programs by target (read-only view; reload changes them)."""
        return MappingProxyType(self._programs.by_target)

    def _make_program(self, target: WrappedTarget) -> WrappedProgram:
        return make_program(self._reactor, target, on_exit=self.program_exited,
                            on_listening=self._program_listening, supervisor=self.process_supervisor)

    def add_listener(self, description: str) -> ListenerService:
        """Listen on C{description} too (at once if running); L{CannotListen} if that fails."""
        factory = proxy_header_factory(self, description, listener_factory(
            description, self.site, self.tls, self._reactor, self.config.limits.handshake_timeout))
        listener = ListenerService(self._reactor, description, factory)
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners.append(listener)
        return listener

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for description in self.config.listeners:
            proxied = " (PROXY protocol)" if description in self.config.proxies.proxy_protocol else ""
            log.info("listening on {listener}{proxied}", listener=description, proxied=proxied)
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=describe_targets(route))
        log.info("{capacity}", capacity=self.descriptors.describe_capacity(self.config))
        warn_unverified(self.config)
        warn_open_terminals(self.config)
        start_programs(self._programs.ordered())

    def _program_listening(self, program: WrappedProgram) -> None:
        follow_program_port(self, program)

    def program_exited(self, status: int) -> None:
        """An C{exit}-mode program exited with C{status}: the router should exit with it."""
        self.exit_status = status
        if self.on_program_exit is not None:
            self.on_program_exit(status)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, once started (e.g. to learn a port chosen by the system)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

    def reload(self, config: RouterConfig) -> Deferred[None]:
        """
        Serve C{config} from now on, without dropping open sessions: they
        keep the route they were opened on to their end.  Listeners and
        wrapped programs are brought to C{config} by difference -- an
        unchanged program keeps running, a removed one is stopped, a new or
        changed one started -- then the gateway switches to C{config}.

        Fires when done; fails with L{CannotStart} if a new listener cannot
        be opened or a new program cannot run (the rest is in force).
        """
        return ensureDeferred(self._reload(config))

    async def _reload(self, config: RouterConfig) -> None:
        added = await self._programs.change_to(wrapped_targets(config))
        problems: list[str] = reload_tls(self, config)
        try:
            start_programs(added)
        except CannotStart as e:
            problems.append(str(e))
        reproxied = set(self.config.proxies.proxy_protocol) ^ set(config.proxies.proxy_protocol)
        # New listeners are made for the new config (PROXY headers or not).
        self.config = config
        problems += await self._change_listeners(config.listeners, reproxied)
        self.gateway.use_config(config)
        warn_unverified(config)
        warn_open_terminals(config)
        log.info("configuration reloaded: {routes} routes, {listeners} listeners, {programs} wrapped programs",
                 routes=len(config.routes), listeners=len(self.listeners), programs=len(config.programs))
        if problems:
            log.error("reload incomplete, the rest is in force: {problems}", problems="; ".join(problems))
            raise CannotStart("; ".join(problems))

    async def _change_listeners(self, wanted: Sequence[str], reopen: Collection[str] = ()) -> list[str]:
        """Stop listeners not in C{wanted} or in C{reopen}, open the new ones; the problems met."""
        for listener in list(self.listeners):
            if listener.description not in wanted or listener.description in reopen:
                self.listeners.remove(listener)
                await listener.disownServiceParent()  # type: ignore[no-untyped-call]
                log.info("no longer listening on {listener}", listener=listener.description)
        have = {listener.description for listener in self.listeners}
        problems = []
        for description in wanted:
            if description in have:
                continue
            try:
                self.add_listener(description)
            except CannotListen as e:
                problems.append(str(e))
            else:
                log.info("listening on {listener}", listener=description)
        return problems

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.descriptors.stop()
        self.resource.ops.stop()
        await super().stopService()  # type: ignore[no-untyped-call]
        await self.gateway.shutdown()
        await DeferredList([self._programs.stop_all(), self.gateway.connectors.commands.terminate_all()])


class _HasConfigAndSite(Protocol):
    config: RouterConfig
    site: GuardedSite


def proxy_header_factory(service: _HasConfigAndSite, description: str, inner: Factory[Any]) -> Factory[Any]:
    """
    The factory for the listener C{description}: C{inner} (the service's
    Site, behind TLS detection when TLS is on), read through a PROXY header
    first on the listeners in C{proxy_protocol} (the header comes before TLS).
    The trusted proxies are read from the service's config at each
    connection, so a reload changes them for new connections.
    """
    if description not in service.config.proxies.proxy_protocol:
        return inner

    def is_trusted(host: str) -> bool:
        return clientaddr.is_trusted(host, service.config.proxies.trusted_proxies)

    return ProxyHeaderFactory(inner, is_trusted)


def server_tls(config: RouterConfig) -> ServerTls | None:
    """The listeners' TLS certificate holder (C{None} without C{[tls]}); L{CannotStart} if it cannot load."""
    if config.tls is None:
        return None
    try:
        return ServerTls(config.tls)
    except TlsProblem as e:
        raise CannotStart(f"tls: {e}") from None


def reload_tls(service: Any, config: RouterConfig) -> list[str]:
    """
    New TLS handshakes use C{config.tls} (open sessions keep theirs); the
    problems met (the old certificate then stays in force).  Turning TLS on
    or off takes a restart: listeners keep what they were opened with.
    """
    if (service.tls is None) != (config.tls is None):
        return ["tls: turning TLS on or off for the listeners takes a restart"]
    if service.tls is None or config.tls is None:
        return []
    # Even unchanged settings are read again: certificates are renewed in place.
    try:
        service.tls.use(config.tls)
    except TlsProblem as e:
        return [f"tls: {e}; the previous certificate stays in use"]
    log.info("TLS certificate reloaded from {cert}", cert=config.tls.cert)
    return []


def start_programs(programs: list[WrappedProgram]) -> None:
    """Start C{programs}; a program that cannot run is a L{CannotStart}."""
    for program in programs:
        try:
            program.start()
        except (ShimUnavailable, ProgramNotFound) as e:
            raise CannotStart(str(e)) from None


class FollowingService(Protocol):
    """What L{follow_program_port} needs of a service (single process or supervisor)."""

    config: RouterConfig

    @property
    def listeners(self) -> Sequence[ListenerService]: ...

    def add_listener(self, description: str) -> ListenerService: ...

    def program_exited(self, status: int) -> None: ...


def follow_program_port(service: FollowingService, program: WrappedProgram) -> bool:
    """
    With no listener of its own (C{follow_program_port}), the router takes
    the loopback port the wrapped program asked for.

    @return: whether a listener was opened.
    """
    if not service.config.follow_program_port or service.listeners or program.requested_port is None:
        return False
    description = f"tcp:{program.requested_port}:interface=127.0.0.1"
    try:
        service.add_listener(description)
    except CannotListen as e:
        log.error("{error}; the router has nowhere to listen", error=e)
        service.program_exited(1)
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
        from twisted.internet import reactor
    return RouterService(config, reactor)
