"""
The handshake decision: route, limits, resolve and connect the target, then
hand a L{Session} over.  The gateway keeps only the set of live sessions.

Every decision is made before the handshake is answered: the route is
chosen and the target connected while the client waits, so a refusal is a
real HTTP status (404, 400, 502, 503) and never an accepted connection that
closes at once.
"""

from __future__ import annotations

import secrets
from sys import intern
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import attrs
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.auth import Authenticator, NotAuthorized
from wsrouter.balancing import Balancing
from wsrouter.clientaddr import real_client
from wsrouter.config import DATAGRAM_TARGETS, ConfigError, ResolverTarget, RouterConfig, default_framing
from wsrouter.descriptors import DescriptorGuard, session_cost
from wsrouter.framing import make_encoder, make_framer, message_is_binary
from wsrouter.interfaces import (
    ClientConnection,
    ConnectionSession,
    HandshakeWatcher,
    Link,
    Recorder,
    SessionInfo,
    SessionObserver,
    TargetError,
)
from wsrouter.policy import Accepted, ClientCounts, Refusal, origin_problem
from wsrouter.querytoken import with_query_token, without_query_token
from wsrouter.recording import open_recorder
from wsrouter.resolvers import ResolveRequest, Resolvers, redact_token, redacted_session
from wsrouter.routing import Match, NoRoute, RouteTable
from wsrouter.session import Session, always_binary
from wsrouter.targets import Connectors
from wsrouter.tls import client_subject, server_name
from wsrouter.traffic import with_traffic_log
from wsrouter.ws.adapter import ClientFactory, DenyWithHeaders

log = Logger(namespace="wsrouter")

_HINTS = {
    404: "check the client's URL against the routes",
    400: "the client must offer one of the route's subprotocols",
    502: "check that the target is running and the route's address is right",
    503: "retry later",
    429: "the client address is over its limits (limits.max_connections_per_client, "
         "limits.max_handshakes_per_client)",
    403: "the route's origin policy (origin, security.origin) or client_cert_names refused it",
    401: "the route asks for credentials (auth, security.auth)",
    421: "no route serves this host name (routes' host, unknown_host), or TLS name and Host differ",
}
#: Statuses refused for several reasons whose hint fits only some: the reason must start with one of these.
_HINT_ONLY_FOR = {
    400: ("no acceptable subprotocol",),
    # Handlers, resolvers and token checks refuse with 403 too; the hint is only for these.
    403: ("origin ", "a verified client certificate", "client certificate "),
}


def _hint(status: int, reason: str) -> str:
    """The log line's advice for a refusal, or "" where the status's hint does not fit the reason."""
    if not reason.startswith(_HINT_ONLY_FOR.get(status, ("",))):
        return ""
    return _HINTS.get(status, "")


class Gateway:
    """
    Decides handshakes (a L{wsrouter.interfaces.HandshakeHost}) and keeps the live sessions.

    @param reactor: used for timers and connections; never the global one
        unless the caller passes it.
    @ivar config: read at each handshake; replace it with L{use_config}.
    @ivar sessions: the live sessions by id, from an accepted handshake to
        their end.
    @ivar opened_total: sessions opened since the gateway was made.
    @ivar descriptors: refuses sessions (503) when the open-file limit is
        near; set by the service, C{None} for no accounting.
    @ivar session_prefix: put before every session id (a worker's number),
        so the ids and recording names of several processes never collide.
    @ivar traffic: websockify's C{--traffic}: log one debug line per message.
    """

    def __init__(self, config: RouterConfig, reactor: Any, connectors: Connectors | None = None):
        self.config = config
        self._reactor = reactor
        self.connectors = connectors or Connectors(reactor, config.limits, config.pass_env)
        self.factory = ClientFactory(self, config.limits, reactor, config.compression)
        self.sessions: dict[str, Session] = {}
        self.opened_total = 0
        self.descriptors: DescriptorGuard | None = None
        self.session_prefix = ""
        #: websockify's --traffic: one debug log line per message relayed.
        self.traffic = False
        self._observers: list[SessionObserver] = []
        self._handshake_watchers: list[HandshakeWatcher] = []
        self._stopping = False
        limits = config.limits
        #: Sessions in total and per client address (L{wsrouter.policy}).
        self.counts = ClientCounts(limits.max_connections, limits.max_connections_per_client,
                                   limits.max_handshakes_per_client)
        # session id -> the client address it is counted under
        self._counted: dict[str, str] = {}
        #: Checks credentials for routes with an C{auth} (files loaded now and on L{use_config}).
        self.authenticator = Authenticator(config, reactor)
        self._table = RouteTable(config.routes, config.unknown_host)
        self._table_of = config
        #: The C{[resolvers.NAME]} of C{resolve:NAME} targets (L{wsrouter.resolvers}).
        self.resolvers = Resolvers(reactor)
        #: The balanced routes' counters and target choice (L{wsrouter.balancing}).
        self.balancing = Balancing(reactor)

    def use_config(self, config: RouterConfig) -> None:
        """New connections use C{config}'s routes and limits; open sessions keep theirs."""
        self.config = config
        self.factory.apply_limits(config.limits, config.compression)
        limits = config.limits
        self.counts.set_limits(limits.max_connections, limits.max_connections_per_client,
                               limits.max_handshakes_per_client)
        self.authenticator.use_config(config)
        self.connectors.use_settings(config.limits, config.pass_env)
        self.resolvers.use_config(config)
        self.balancing.forget_routes(config.routes)

    def observe(self, observer: SessionObserver) -> None:
        """Tell C{observer} of every session that opens and, later, ends."""
        self._observers.append(observer)

    # -- handshake -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """The router is shutting down: new handshakes get 503."""
        return self._stopping

    def watch_handshakes(self, watcher: HandshakeWatcher) -> None:
        """Tell C{watcher} of every refused handshake and failed target connection (metrics)."""
        self._handshake_watchers.append(watcher)

    def handshake(self, connection: ClientConnection, request: Any) -> Deferred[ConnectionSession | None]:
        """
        Route the request and connect its target before answering.

        @return: fires with the session to hand the connection to, or fails
            with a L{ConnectionDeny} carrying the HTTP status.
        """
        if not self._handshake_watchers:
            return self._handshake(connection, request)
        try:
            deciding = self._handshake(connection, request)
        except ConnectionDeny as e:
            self._refused(e)
            raise
        return deciding.addErrback(self._refusal)

    def _refusal(self, reason: Failure) -> Failure:
        if isinstance(reason.value, ConnectionDeny):
            self._refused(reason.value)
        return reason

    def _refused(self, deny: ConnectionDeny) -> None:
        for watcher in self._handshake_watchers:
            watcher.handshake_refused(deny.code, deny.reason or "")

    def _target_failed(self, reason: Failure, info: SessionInfo) -> Failure:
        for watcher in self._handshake_watchers:
            watcher.target_failed(info)
        return reason

    def _handshake(self, connection: ClientConnection, request: Any) -> Deferred[ConnectionSession | None]:
        config = self.config
        session_id = self.session_prefix + secrets.token_hex(4)
        path = unquote(urlsplit(request.path).path)
        route_path = path[len(connection.mount_prefix):] or "/"
        client = client_address(connection, request, config.proxies.trusted_proxies)
        if self._stopping:
            return _refuse(request, 503, "router is shutting down", client)
        refusal = self.counts.admit(client[0], self._reactor.seconds())
        if refusal is not None:
            return _refuse_with(request, refusal, client)
        try:
            deciding = self._decide(connection, request, config, session_id, path, route_path, client)
        except BaseException:
            self.counts.release(client[0])
            raise
        return deciding.addCallbacks(self._counted_as, self._uncount,
                                     callbackArgs=(client[0],), errbackArgs=(client[0],))

    def _counted_as(self, session: ConnectionSession | None, client: str) -> ConnectionSession | None:
        """A session stays counted under C{client} until it ends; no session: no count."""
        if isinstance(session, Session):
            self._counted[session.id] = client
        else:
            self.counts.release(client)
        return session

    def _uncount(self, reason: Failure, client: str) -> Failure:
        self.counts.release(client)
        return reason

    def _decide(self, connection: ClientConnection, request: Any, config: RouterConfig, session_id: str,
                path: str, route_path: str, client: tuple[str, int]) -> Deferred[ConnectionSession | None]:
        """Route, origin, then the target: the handshake's decision after the client's limits."""
        try:
            match = self._select(connection, request, config, route_path)
        except NoRoute as e:
            return _refuse(request, e.status, e.reason, client)
        if isinstance(match.route.target, ResolverTarget):
            request = self._token_redacted(connection, request, config, session_id, path, route_path, match, client)
        origin = request.headers.get("origin")
        problem = origin_problem(config.origin_policy(match.route), origin, request.headers.get("host"),
                                 connection.is_secure())
        if problem is not None:
            return _refuse(request, 403, f"origin {origin} not allowed: {problem}", client)
        auth = config.auth_for(match.route)
        if auth is None:
            return self._connect(connection, request, config, session_id, path, route_path, match, client)
        headers = with_query_token(request.headers, connection.http_request_uri)
        checking = self.authenticator.check(auth.name, headers, client[0], client_subject(connection.transport))

        def authenticated(accepted: Accepted) -> Deferred[ConnectionSession | None]:
            log.info("{peer} {path}: {user} ({method}) for route {route}", peer=request.peer, path=request.path,
                     user=accepted.user, method=accepted.method, route=match.route.describe())
            return self._connect(connection, request, config, session_id, path, route_path, match, client)

        return checking.addCallbacks(authenticated, _unauthorized, errbackArgs=(request, client))

    def _select(self, connection: ClientConnection, request: Any, config: RouterConfig, route_path: str) -> Match:
        """
        The route for the request's Host, path and subprotocols (the table
        is built once per configuration).

        @raise NoRoute: also 421 when a TLS client's server name is not its Host.
        """
        if self._table_of is not config:
            self._table, self._table_of = RouteTable(config.routes, config.unknown_host), config
        table = self._table
        host = request.headers.get("host")
        if table.uses_hosts and connection.is_secure():
            problem = table.tls_name_problem(host, server_name(connection.transport))
            if problem is not None:
                raise NoRoute(421, problem)
        return table.select(route_path, request.protocols, host)

    def _connect(self, connection: ClientConnection, request: Any, config: RouterConfig, session_id: str,
                 path: str, route_path: str, match: Match,
                 client: tuple[str, int]) -> Deferred[ConnectionSession | None]:
        if isinstance(match.route.target, ResolverTarget):
            return self._resolve(connection, request, config, session_id, path, route_path, match, client)
        info = _session_info(session_id, connection, request, path, route_path, match, client)
        return self._connect_session(connection, request, config, info, match, client)

    def _connect_session(self, connection: ClientConnection, request: Any, config: RouterConfig, info: SessionInfo,
                         match: Match, client: tuple[str, int]) -> Deferred[ConnectionSession | None]:
        if self.descriptors is not None and not self.descriptors.admit(session_cost(match.route, config)):
            return _refuse(request, 503, "too many open connections", client)
        try:
            connecting = self.balancing.connect(info, self.connectors.connect)
        except TargetError as e:
            return _refuse(request, e.status, e.reason, client)
        if self._handshake_watchers:
            connecting.addErrback(self._target_failed, info)
        return connecting.addCallbacks(
            self._connected_to, _not_connected,
            callbackArgs=(connection, match, config), errbackArgs=(request, client),
        )

    def _token_redacted(self, connection: ClientConnection, request: Any, config: RouterConfig, session_id: str,
                        path: str, route_path: str, match: Match, client: tuple[str, int]) -> Any:
        """C{request} as a resolver route's log lines show it: its token (C{/vnc/TOKEN}) redacted."""
        settings = config.resolver(match.route.target.name)  # type: ignore[union-attr]
        info = _session_info(session_id, connection, request, path, route_path, match, client)
        token = ResolveRequest.of_session(info, (), settings is not None and settings.host_token).token
        return _LoggedRequest(request, redact_token(request.path, "", token)[0])

    def _resolve(self, connection: ClientConnection, request: Any, config: RouterConfig, session_id: str,
                 path: str, route_path: str, match: Match,
                 client: tuple[str, int]) -> Deferred[ConnectionSession | None]:
        """A C{resolve:NAME} route: find this connection's target, then go on as if the route named it."""
        settings = config.resolver(match.route.target.name)  # type: ignore[union-attr]
        if settings is None:  # RouterConfig checks every resolve:NAME has its table
            return _refuse(request, 502, "no such resolver", client)
        info = _session_info(session_id, connection, request, path, route_path, match, client)
        asking = ResolveRequest.of_session(info, tuple(request.protocols or ()), settings.host_token)

        def resolved(target: Any) -> Deferred[ConnectionSession | None]:
            try:
                route = attrs.evolve(match.route, target=target)
            except ConfigError as e:
                _refuse(request, 502, f"resolved target does not fit the route: {e.problems[0][1]}", client)
            # The token is a secret: session logs, status pages and recordings never see it.
            found = redacted_session(attrs.evolve(info, route=route), asking.token)
            return self._connect_session(connection, request, config, found, attrs.evolve(match, route=route), client)

        return self.resolvers.resolve(settings, asking).addCallbacks(
            resolved, _not_resolved, errbackArgs=(request, client, settings.name))

    def _connected_to(self, chosen: tuple[Link, SessionInfo], connection: ClientConnection, match: Match,
                      config: RouterConfig) -> ConnectionSession | None:
        """L{_connected} with the target the route's balancer chose; a session that never starts is uncounted."""
        link, info = chosen
        try:
            session = self._connected(link, connection, info, match, config)
        except BaseException:
            self.balancing.ended(info.session_id)
            raise
        if session is None:
            self.balancing.ended(info.session_id)
        return session

    def _connected(self, link: Link, connection: ClientConnection, info: SessionInfo, match: Match,
                   config: RouterConfig) -> ConnectionSession | None:
        if connection.connection_gone or connection.is_dropped():
            link.abort()
            return None
        if self._stopping:
            link.abort()
            log.info("refused {peer} {path}: 503 router is shutting down (retry later)", peer=info.peer(),
                     path=info.path)
            raise ConnectionDeny(503, "router is shutting down")  # type: ignore[no-untyped-call, unused-ignore]
        info, base64_mode = _upstream_choice(link, info, match.base64)
        target = match.route.target
        default = default_framing(target)
        kind = match.route.framing.kind if match.route.framing else default
        framer = make_framer(match.route.framing, default, config.limits.max_message_size)
        if isinstance(target, DATAGRAM_TARGETS) or kind == "binary" or kind == "fixed":
            binary_for = always_binary
        else:
            def binary_for(payload: bytes) -> bool:
                return message_is_binary(kind, payload)
        session = Session(
            connection, info, link, framer,
            limits=config.limits, clock=self._reactor, base64_mode=base64_mode, binary_for=binary_for,
            recorder=self._recorder(info, config),
            on_opened=self._opened, on_ended=self._ended,
            encoder=make_encoder(match.route.framing, config.limits.max_message_size),
        )
        self.sessions[session.id] = session
        return session

    def _recorder(self, info: SessionInfo, config: RouterConfig) -> Recorder | None:
        """The session's recording and, with L{traffic} on, the traffic log."""
        recorder = self._open_recorder(info, config)
        return with_traffic_log(recorder, info.session_id) if self.traffic else recorder

    def _open_recorder(self, info: SessionInfo, config: RouterConfig) -> Recorder | None:
        """
        A recorder if the session's route records (its own directory, else
        the router's), else C{None}.  A directory that cannot be written is
        logged and the session goes on unrecorded.
        """
        directory = config.recording_directory(info.route)
        if directory is None:
            return None
        settings = config.recording
        return open_recorder(
            directory, info, info.route.target.describe(),
            fmt=settings.format, max_bytes=settings.max_bytes, clock=self._reactor, redact=settings.redact,
        )

    # -- session lifecycle ------------------------------------------------------------

    def _opened(self, session: Session) -> None:
        self.opened_total += 1
        for observer in self._observers:
            observer.session_opened(session)

    def _ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.balancing.ended(session.id)
        client = self._counted.pop(session.id, None)
        if client is not None:
            self.counts.release(client)
        if session.is_open:
            for observer in self._observers:
                observer.session_closed(session)

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """
        Close every session with 1001 after its pending data, and refuse new
        ones; once they have ended, call each C{python:} handler's
        C{on_shutdown()} (docs/handlers.md).

        @return: fires when all sessions have ended (both sides closed and
            their recordings flushed), or after the shutdown grace period,
            when the rest are dropped and their recordings closed; then
            after the handlers' C{on_shutdown} (each bounded by the grace
            period too).
        """
        grace = self.config.limits.shutdown_grace
        return self._close_sessions().addCallback(lambda _: self.connectors.handlers.shutdown(grace))

    def _close_sessions(self) -> Deferred[None]:
        self._stopping = True
        sessions = list(self.sessions.values())
        if not sessions:
            return succeed(None)
        # Not the WebSockets' is_closed: Autobahn fires it before onClose,
        # and the target side may end later still.
        waits = [session.done for session in sessions]
        for session in sessions:
            session.shutdown()
        done: Deferred[None] = Deferred()
        timer = self._reactor.callLater(self.config.limits.shutdown_grace, self._abort_all, done)

        def all_closed(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        DeferredList(waits).addCallback(all_closed)
        return done

    def _abort_all(self, done: Deferred[None]) -> None:
        for session in list(self.sessions.values()):
            session.abort()
        if not done.called:
            done.callback(None)


def client_address(connection: ClientConnection, request: Any, trusted_proxies: tuple[str, ...]) -> tuple[str, int]:
    """
    The real client of a handshake, as C{(address, port)}: what logs, limits,
    recordings and CGI variables use.  The connection's peer is already the
    client a PROXY header named (L{wsrouter.proxyproto}); from a trusted
    proxy, its C{Forwarded} / C{X-Forwarded-For} headers are followed too
    (L{wsrouter.clientaddr.real_client}; the port is 0 when they give none).
    A Unix-socket peer is C{("unix", 0)}.
    """
    peer = connection.transport.getPeer()
    own = (str(getattr(peer, "host", "") or getattr(peer, "name", "") or "unix"), int(getattr(peer, "port", 0) or 0))
    return real_client(own, [(name.lower(), value) for name, value in request.headers.items()], trusted_proxies)


def _session_info(session_id: str, connection: ClientConnection, request: Any, path: str,
                  route_path: str, match: Match, client: tuple[str, int]) -> SessionInfo:
    host = connection.transport.getHost()
    query = without_query_token(urlsplit(connection.http_request_uri).query)
    server_name = (request.host or "").rsplit(":", 1)[0].strip("[]") if request.host else ""
    # Interned names: every held session shares one copy of "host", "origin"...
    headers = tuple((intern(name.lower()), value) for name, value in request.headers.items())
    return SessionInfo(
        session_id=session_id,
        peer_host=client[0],
        peer_port=client[1],
        local_host=str(getattr(host, "host", "") or ""),
        server_name=server_name,
        server_port=int(getattr(host, "port", 0) or 0),
        secure=connection.is_secure(),
        path=path,
        route_path=route_path,
        query=query,
        headers=headers,
        subprotocol=match.subprotocol,
        route=match.route,
        script_name=connection.mount_prefix + match.route.path.rstrip("/") if match.route.prefix else path,
        client_cert=client_subject(connection.transport),
    )


class _LoggedRequest:
    """A handshake request whose C{path} (what log lines show) has a resolver token redacted; the rest delegates."""

    def __init__(self, request: Any, path: str) -> None:
        self._request = request
        self.path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _unauthorized(reason: Failure, request: Any, client: tuple[str, int]) -> NoReturn:
    """A L{NotAuthorized} as a 401 with the challenge; anything else goes on failing."""
    if not reason.check(NotAuthorized):  # type: ignore[no-untyped-call, unused-ignore]
        reason.raiseException()
    error: NotAuthorized = reason.value  # type: ignore[assignment]
    if error.status != 401:
        _refuse(request, error.status, error.reason, client)
    try:
        _refuse(request, 401, error.reason, client)
    except ConnectionDeny:
        raise DenyWithHeaders(401, error.reason, error.challenge) from None


def _not_connected(reason: Failure, request: Any, client: tuple[str, int]) -> None:
    if not reason.check(TargetError):  # type: ignore[no-untyped-call, unused-ignore]
        log.failure("unexpected error while connecting a target for {path}", reason, path=request.path)
        _refuse(request, 502, "internal error while connecting the target", client)
    error: TargetError = reason.value  # type: ignore[assignment]
    _refuse(request, error.status, error.reason, client)


def _not_resolved(reason: Failure, request: Any, client: tuple[str, int], name: str) -> NoReturn:
    """A resolver's outcome (L{wsrouter.resolvers}) as the refusal, logged without the route hints."""
    if not reason.check(TargetError):  # type: ignore[no-untyped-call, unused-ignore]
        _not_connected(reason, request, client)
    error: TargetError = reason.value  # type: ignore[assignment]
    log.info("refused {peer} {path}: {status} {reason} (resolver {name})", peer=f"{client[0]}:{client[1]}",
             path=request.path, status=error.status, reason=error.reason, name=name)
    raise ConnectionDeny(error.status, error.reason)  # type: ignore[no-untyped-call, unused-ignore]


def _refuse(request: Any, status: int, reason: str, client: tuple[str, int] | None = None) -> NoReturn:
    hint = _hint(status, reason)
    peer = request.peer
    if client is not None:
        peer = f"[{client[0]}]:{client[1]}" if ":" in client[0] else f"{client[0]}:{client[1]}"
    log.info(
        "refused {peer} {path}: {status} {reason}{hint}",
        peer=peer, path=request.path, status=status, reason=reason,
        hint=f" ({hint})" if hint else "",
    )
    raise ConnectionDeny(status, reason)  # type: ignore[no-untyped-call, unused-ignore]


def _refuse_with(request: Any, refusal: Refusal, client: tuple[str, int]) -> NoReturn:
    """L{_refuse} for a policy's refusal, with its Retry-After."""
    if refusal.retry_after is None:
        _refuse(request, refusal.status, refusal.reason, client)
    try:
        _refuse(request, refusal.status, refusal.reason, client)
    except ConnectionDeny:
        raise DenyWithHeaders(refusal.status, refusal.reason, [("Retry-After", str(refusal.retry_after))]) from None


def _upstream_choice(link: Link, info: SessionInfo, base64_mode: bool) -> tuple[SessionInfo, bool]:
    """
    A link that negotiated a subprotocol with its target (a WebSocket
    target, L{wsrouter.interfaces.ClosingLink}) decides the client's: the
    upstream's choice, and no websockify base64 dialect.
    """
    if not hasattr(link, "close_with"):
        return info, base64_mode
    return attrs.evolve(info, subprotocol=getattr(link, "subprotocol", None)), False


