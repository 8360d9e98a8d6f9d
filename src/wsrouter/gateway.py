"""
The router core: turns handshakes into bridged sessions and keeps track of
them until they end.

Every decision is made before the handshake is answered: the route is
chosen and the target connected while the client waits, so a refusal is a
real HTTP status (404, 400, 502, 503) and never an accepted connection that
closes at once.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.bridge import Bridge, SessionStats
from wsrouter.config import DATAGRAM_TARGETS, ExecTarget, RouterConfig
from wsrouter.descriptors import DescriptorGuard, session_cost
from wsrouter.framing import make_framer, message_is_binary
from wsrouter.interfaces import Link, Recorder, SessionInfo, TargetError
from wsrouter.recording import open_recorder
from wsrouter.routing import Match, NoRoute, select_route
from wsrouter.targets import Connectors
from wsrouter.traffic import with_traffic_log
from wsrouter.ws.adapter import RouterFactory, RouterProtocol
from wsrouter.ws.closing import DrainWatch, queued_bytes
from wsrouter.ws.keepalive import Keepalive

log = Logger(namespace="wsrouter")


class Router:
    """
    Owns the WebSocket factory, the target connectors and the open sessions.

    @param reactor: used for timers and connections; never the global one
        unless the caller passes it.
    """

    def __init__(self, config: RouterConfig, reactor: Any, connectors: Connectors | None = None):
        self.config = config
        self._reactor = reactor
        self.connectors = connectors or Connectors(reactor, config.limits, config.pass_env)
        self.factory = RouterFactory(self, config.limits, reactor)
        self.sessions: dict[str, RouterProtocol] = {}
        self._pending: dict[RouterProtocol, Link] = {}
        self._activity: dict[RouterProtocol, float] = {}
        self._stopping = False
        # Recorders of sessions not finished yet, and a Deferred per open
        # session that fires when it has finished (both sides done, its
        # recording flushed): what shutdown waits for.
        self._recorders: dict[RouterProtocol, Recorder] = {}
        self._finishing: dict[RouterProtocol, Deferred[None]] = {}
        #: Refuses sessions (503) when the open-file limit is near; set by
        #: the service, C{None} for no accounting.
        self.descriptors: DescriptorGuard | None = None
        #: Put before every session id (a worker's number), so the ids and
        #: recording names of several processes never collide.
        self.session_prefix = ""
        #: Told C{session_opened(session)} / C{session_closed(session)}; see L{observe}.
        self._observers: list[Any] = []
        #: websockify's --traffic: one debug log line per message relayed.
        self.traffic = False

    def observe(self, observer: Any) -> None:
        """
        Tell C{observer} when a session opens and when it has finished:
        C{observer.session_opened(session)}, C{observer.session_closed(session)}.
        """
        self._observers.append(observer)

    def use_config(self, config: RouterConfig) -> None:
        """Placeholder until the gateway's own reload lands: new handshakes use C{config}."""
        self.config = config

    # -- handshake -----------------------------------------------------------------

    def handshake(self, protocol: RouterProtocol, request: Any) -> Deferred[Any]:
        """
        Route the request and connect its target before answering.

        @return: fires with the subprotocol to accept, or fails with a
            L{ConnectionDeny} carrying the HTTP status.
        """
        protocol.session_id = self.session_prefix + secrets.token_hex(4)
        path = unquote(urlsplit(request.path).path)
        route_path = path[len(protocol.mount_prefix):] or "/"
        if self._stopping:
            return self._refuse(protocol, request, 503, "router is shutting down")
        try:
            match = select_route(self.config.routes, route_path, request.protocols)
        except NoRoute as e:
            return self._refuse(protocol, request, e.status, e.reason)
        if self.descriptors is not None and not self.descriptors.admit(session_cost(match.route, self.config)):
            return self._refuse(protocol, request, 503, "too many open connections")
        session = self._session_info(protocol, request, path, route_path, match)
        connecting = self.connectors.connect(session)
        connecting.addCallbacks(
            self._connected, self._not_connected,
            callbackArgs=(protocol, session, match), errbackArgs=(protocol, request),
        )
        return connecting

    def _session_info(self, protocol: RouterProtocol, request: Any, path: str,
                      route_path: str, match: Match) -> SessionInfo:
        peer = protocol.transport.getPeer()
        host = protocol.transport.getHost()
        query = urlsplit(protocol.http_request_uri).query
        server_name = (request.host or "").rsplit(":", 1)[0].strip("[]") if request.host else ""
        return SessionInfo(
            session_id=protocol.session_id,
            peer_host=str(getattr(peer, "host", "") or getattr(peer, "name", "") or "unix"),
            peer_port=int(getattr(peer, "port", 0) or 0),
            server_name=server_name,
            server_port=int(getattr(host, "port", 0) or 0),
            secure=bool(getattr(protocol.transport_details, "is_secure", False)),
            path=path,
            route_path=route_path,
            query=query,
            headers=tuple((name.lower(), value) for name, value in request.headers.items()),
            subprotocol=match.subprotocol,
            route=match.route,
            script_name=protocol.mount_prefix + match.route.path.rstrip("/") if match.route.prefix
            else path,
        )

    def _connected(self, link: Link, protocol: RouterProtocol, session: SessionInfo,
                   match: Match) -> str | None:
        if protocol.state == protocol.STATE_CLOSED:
            link.abort()
            return None
        if self._stopping:
            link.abort()
            raise ConnectionDeny(503, "router is shutting down")
        target = match.route.target
        default = "line" if isinstance(target, ExecTarget) else "binary"
        kind = match.route.framing.kind if match.route.framing else default
        max_size = self.config.limits.max_message_size
        framer = make_framer(match.route.framing, default, max_size)
        if isinstance(target, DATAGRAM_TARGETS) or kind == "binary" or kind == "fixed":
            binary_for = _always_binary
        else:
            def binary_for(payload: bytes) -> bool:
                return message_is_binary(kind, payload)
        recorder = self._open_recorder(session)
        if self.traffic:
            recorder = with_traffic_log(recorder, session.session_id)
        if recorder is not None:
            self._recorders[protocol] = recorder
        protocol.bridge = Bridge(
            protocol, link, framer,
            base64_mode=match.base64,
            binary_for=binary_for,
            recorder=recorder,
            on_finished=lambda stats: self._finished(protocol, session, stats),
        )
        protocol.session = session  # type: ignore[attr-defined]
        self._pending[protocol] = link
        return match.subprotocol

    def _open_recorder(self, session: SessionInfo) -> Recorder | None:
        """
        A recorder if the session's route records (its own directory, else
        the router's), else C{None}.  A directory that cannot be written is
        logged and the session goes on unrecorded.
        """
        directory = self.config.recording_directory(session.route)
        if directory is None:
            return None
        settings = self.config.recording
        return open_recorder(
            directory, session, session.route.target.describe(),
            fmt=settings.format, max_bytes=settings.max_bytes, clock=self._reactor, redact=settings.redact,
        )

    def _not_connected(self, reason: Failure, protocol: RouterProtocol, request: Any) -> None:
        if not reason.check(TargetError):
            log.failure("unexpected error while connecting a target for {path}", reason, path=request.path)
            self._refuse(protocol, request, 502, "internal error while connecting the target")
        error: TargetError = reason.value  # type: ignore[assignment]
        self._refuse(protocol, request, error.status, error.reason)

    def _refuse(self, protocol: RouterProtocol, request: Any, status: int, reason: str) -> Any:
        hint = {
            404: "check the client's URL against the routes",
            400: "the client must offer one of the route's subprotocols",
            502: "check that the target is running and the route's address is right",
            503: "retry later",
        }.get(status, "")
        log.info(
            "refused {peer} {path}: {status} {reason}{hint}",
            peer=request.peer, path=request.path, status=status, reason=reason,
            hint=f" ({hint})" if hint else "",
        )
        raise ConnectionDeny(status, reason)

    # -- open sessions ---------------------------------------------------------------

    def opened(self, protocol: RouterProtocol) -> None:
        link = self._pending.pop(protocol, None)
        bridge = protocol.bridge
        if link is None or bridge is None:
            return
        session: SessionInfo = protocol.session  # type: ignore[attr-defined]
        self.sessions[protocol.session_id] = protocol
        self._finishing[protocol] = Deferred()
        log.info(
            "session {id} open: {peer} {path} -> {target} (route {route}, subprotocol {subprotocol})",
            id=protocol.session_id, peer=session.peer(), path=session.request_uri,
            target=session.route.target.describe(), route=session.route.describe(),
            subprotocol=session.subprotocol or "none",
        )
        self._activity[protocol] = self._reactor.seconds()
        self._schedule_idle_check(protocol)
        self._start_keepalive(protocol)
        bridge.start()
        for observer in list(self._observers):
            observer.session_opened(session)

    def _start_keepalive(self, protocol: RouterProtocol) -> None:
        limits = self.config.limits
        if not limits.ping_interval:
            return

        queued_at_ping = [0]

        def send_ping(payload: bytes) -> None:
            queued_at_ping[0] = queued_bytes(protocol.transport)
            protocol.sendPing(payload)

        def timed_out() -> None:
            queued = queued_bytes(protocol.transport)
            if 0 < queued < queued_at_ping[0]:
                # The ping still waits behind data the client is reading.
                protocol.keepalive.start()  # type: ignore[union-attr]
                return
            log.info("session {id}: no pong within {timeout} s; dropping the client",
                     id=protocol.session_id, timeout=limits.ping_timeout)
            protocol.wasClean = False
            protocol.wasNotCleanReason = "ping timeout"
            protocol.transport.abortConnection()

        protocol.keepalive = Keepalive(
            self._reactor, limits.ping_interval, limits.ping_timeout or limits.ping_interval,
            send_ping, timed_out,
        )
        protocol.keepalive.start()

    def touch(self, protocol: RouterProtocol) -> None:
        """Note traffic on a session, for the idle timeout (per message: kept cheap)."""
        if self.config.limits.session_idle_timeout is not None and protocol in self._activity:
            self._activity[protocol] = self._reactor.seconds()

    def closed(self, protocol: RouterProtocol, code: int | None, reason: str) -> None:
        link = self._pending.pop(protocol, None)
        if link is not None:
            # Never opened: the bridge never starts, so it will not finish
            # the recording either.
            link.abort()
            self._close_recording(protocol, code, reason)
        self._activity.pop(protocol, None)
        if protocol.keepalive is not None:
            protocol.keepalive.stop()
        bridge = protocol.bridge
        if bridge is not None:
            bridge.websocket_closed(code, reason)
            if not bridge.finished:
                self._watch_link(bridge)

    def watch_closing(self, protocol: RouterProtocol) -> None:
        """Abort a closing client connection that stops draining (see L{DrainWatch})."""
        if getattr(protocol, "_closing_watched", False) or protocol.connection_gone:
            return
        protocol._closing_watched = True  # type: ignore[attr-defined]
        grace = self.config.limits.shutdown_grace
        DrainWatch(self._reactor, protocol.transport, lambda: protocol.connection_gone,
                   protocol.transport.abortConnection, timeout=min(grace, 5.0), stall=2 * grace,
                   finish=protocol.transport.loseConnection).start()

    def _watch_link(self, bridge: Bridge) -> None:
        """A target that stops reading what it was sent is not waited for forever."""
        link = bridge.link
        grace = self.config.limits.shutdown_grace
        DrainWatch(self._reactor, getattr(link, "transport", None), lambda: bridge.finished,
                   link.abort, timeout=grace, stall=2 * grace).start()

    def _close_recording(self, protocol: RouterProtocol, code: int | None, reason: str) -> None:
        recorder = self._recorders.pop(protocol, None)
        if recorder is not None:
            recorder.closed(code, reason)

    def _finished(self, protocol: RouterProtocol, session: SessionInfo, stats: SessionStats) -> None:
        self.sessions.pop(protocol.session_id, None)
        self._recorders.pop(protocol, None)  # the bridge has closed it
        finishing = self._finishing.pop(protocol, None)
        if finishing is not None:
            finishing.callback(None)
        log.info(
            "session {id} closed: {peer} {path} -> {target} (subprotocol {subprotocol}): "
            "{up} bytes to target, {down} bytes to client, {duration:.3f} s, "
            "close {code} {reason!r} by {by}",
            id=protocol.session_id, peer=session.peer(), path=session.request_uri,
            target=session.route.target.describe(), subprotocol=session.subprotocol or "none",
            up=stats.bytes_from_client, down=stats.bytes_to_client, duration=stats.duration(),
            code=stats.close_code, reason=stats.close_reason, by=stats.closed_by or "client",
        )
        if finishing is not None:  # it had opened
            for observer in list(self._observers):
                observer.session_closed(session)

    # -- idle timeout ----------------------------------------------------------------

    def _schedule_idle_check(self, protocol: RouterProtocol) -> None:
        idle = self.config.limits.session_idle_timeout
        if idle is None or protocol not in self._activity:
            return
        due = self._activity[protocol] + idle - self._reactor.seconds()
        self._reactor.callLater(max(due, 0.0), self._idle_check, protocol)

    def _idle_check(self, protocol: RouterProtocol) -> None:
        last = self._activity.get(protocol)
        if last is None or protocol.bridge is None:
            return
        if self._reactor.seconds() - last >= self.config.limits.session_idle_timeout:  # type: ignore[operator]
            protocol.bridge.idle_timeout()
        else:
            self._schedule_idle_check(protocol)

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """
        Close every session with 1001 after its pending data, and refuse new ones.

        @return: fires when all sessions have ended (both sides closed and
            their recordings flushed), or after the shutdown grace period,
            when the rest are dropped and their recordings closed.
        """
        self._stopping = True
        for protocol in list(self._pending):
            protocol.dropConnection(abort=True)
            self._close_recording(protocol, None, "router shutting down")
        sessions = list(self.sessions.values())
        if not sessions:
            return succeed(None)
        # Not the WebSockets' is_closed: Autobahn fires it before onClose,
        # and the target side may end later still.
        waits = [self._finishing[protocol] for protocol in sessions]
        for protocol in sessions:
            if protocol.bridge is not None:
                protocol.bridge.shutdown()
        done: Deferred[None] = Deferred()
        timer = self._reactor.callLater(self.config.limits.shutdown_grace, self._abort_all, done)

        def all_closed(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        DeferredList(waits).addCallback(all_closed)
        return done

    def _abort_all(self, done: Deferred[None]) -> None:
        for protocol in list(self.sessions.values()):
            log.warn("session {id} did not close in time; dropping it", id=protocol.session_id)
            if not protocol.connection_gone and protocol.transport is not None:
                protocol.transport.abortConnection()
            if protocol.bridge is not None and not protocol.bridge.finished:
                protocol.bridge.link.abort()
        for protocol in list(self._recorders):
            self._close_recording(protocol, None, "router stopped before the session ended")
        if not done.called:
            done.callback(None)


def _always_binary(payload: bytes) -> bool:
    return True
