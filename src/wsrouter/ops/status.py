"""
The status page's data and its live feed: routes, wrapped programs and
open sessions as one JSON snapshot, sent over a WebSocket (C{STATUS/live})
when a session opens or closes and once a second between.

A status client that reads slowly misses snapshots (each replaces the last)
rather than piling them up: none is sent while more than L{LIVE_QUEUE}
bytes wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wsrouter import __version__
from wsrouter.policy import origin_problem
from wsrouter.ws.internals import queued_bytes

if TYPE_CHECKING:
    from wsrouter.config import Route
    from wsrouter.gateway import Gateway
    from wsrouter.session import Session

log = Logger(namespace="wsrouter.ops")

#: Seconds between snapshots when nothing opens or closes (ages and bytes move).
INTERVAL = 1.0
#: Bytes that may wait for a status client before snapshots are skipped for it.
LIVE_QUEUE = 256 * 1024
#: Sessions listed at most; a snapshot says how many more there are.
MAX_LISTED = 1000


def snapshot(gateway: Gateway, programs: Iterable[Any], now: float) -> dict[str, Any]:
    """What the status page shows, as JSON-able data; C{now} is the gateway clock's seconds."""
    config = gateway.config
    sessions = [s for s in gateway.sessions.values() if s.is_open and not s.ended]
    return {
        "stopping": gateway.stopping,
        "opened_total": gateway.opened_total,
        "routes": [{"route": route.describe(), "target": route.target.describe(), "watch": route.watch,
                    "targets": target_states(gateway, route)} for route in config.routes],
        "programs": [{"name": p.name, "pid": p.pid, "running": p.running, "restarts": p.restarts,
                      "mode": p.target.mode} for p in programs],
        "sessions": [_session(s, now) for s in sessions[:MAX_LISTED]],
        "more_sessions": max(len(sessions) - MAX_LISTED, 0),
    }


def _session(session: Session, now: float) -> dict[str, Any]:
    info = session.info
    stats = session.stats
    return {
        "id": session.id, "peer": info.peer(), "path": info.request_uri, "route": info.route.describe(),
        "target": info.route.target.describe(), "age": round(max(now - stats.started, 0.0), 1),
        "bytes_from_client": stats.bytes_from_client, "bytes_to_client": stats.bytes_to_client,
        "watch": info.route.watch,
        "watchers": len(session.watchers.watching) if session.watchers is not None else 0,
        "terminal": terminal_size(session),
    }


def target_states(gateway: Gateway, route: Route) -> list[dict[str, Any]] | None:
    """A balanced route's targets: each one's open sessions and whether it is marked down; C{None}: one target."""
    if route.balance is None:
        return None
    balancer = gateway.balancing.balancer(route)
    return balancer.state() if balancer is not None else None


def terminal_size(session: Session) -> list[int] | None:
    """A pty session's window size, C{[columns, rows]} (the watch page sizes its terminal by it); else C{None}."""
    size = getattr(session.link, "window_size", None)
    found = size() if callable(size) else None
    return list(found) if found is not None else None


class StatusHub:
    """
    The live status clients of one router (a L{wsrouter.interfaces.SessionObserver}).

    @param programs: the wrapped programs now.
    """

    def __init__(self, gateway: Gateway, clock: Any, programs: Callable[[], Iterable[Any]]):
        self._gateway = gateway
        self._clock = clock
        self.programs = programs
        self.clients: list[StatusProtocol] = []
        self._loop = LoopingCall(self.push)
        self._loop.clock = clock
        gateway.observe(self)

    #: The worker's number under C{--workers N} (the page says which worker answered); C{None}: one process.
    worker: int | None = None

    def snapshot(self) -> dict[str, Any]:
        data = snapshot(self._gateway, self.programs(), self._clock.seconds())
        data["worker"] = self.worker
        return data

    def add(self, client: StatusProtocol) -> None:
        self.clients.append(client)
        if not self._loop.running:
            self._loop.start(INTERVAL, now=False)
        client.send_snapshot(self._encoded())

    def remove(self, client: StatusProtocol) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if not self.clients and self._loop.running:
            self._loop.stop()

    def push(self) -> None:
        """Send every live client the snapshot now."""
        if not self.clients:
            return
        encoded = self._encoded()
        for client in list(self.clients):
            client.send_snapshot(encoded)

    def _encoded(self) -> bytes:
        return json.dumps(self.snapshot(), separators=(",", ":")).encode()

    def session_opened(self, session: Session) -> None:
        self.push()

    def session_closed(self, session: Session) -> None:
        if session.watchers is not None:
            session.watchers.end()
        self.push()

    def stop(self) -> None:
        """The router stops: no more snapshots, and the live clients are closed."""
        if self._loop.running:
            self._loop.stop()
        clients, self.clients = self.clients, []
        for client in clients:
            client.sendClose(1000, "router shutting down")


class StatusProtocol(WebSocketServerProtocol):
    """One status page's live feed; it only listens (anything it sends is ignored)."""

    factory: StatusFactory

    def onConnect(self, request: Any) -> None:
        problem = origin_problem("same", request.headers.get("origin"), request.headers.get("host"),
                                 self.factory.secure)
        if problem is not None:
            log.info("refused status feed {peer}: 403 origin not allowed: {problem}", peer=request.peer,
                     problem=problem)
            raise ConnectionDeny(403, f"origin not allowed: {problem}")  # type: ignore[no-untyped-call, unused-ignore]

    def onOpen(self) -> None:
        self.factory.hub.add(self)

    def send_snapshot(self, encoded: bytes) -> None:
        if self.transport is None or queued_bytes(self.transport) > LIVE_QUEUE:
            return
        self.sendMessage(encoded, isBinary=False)  # type: ignore[no-untyped-call, unused-ignore]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.hub.remove(self)


class StatusFactory(WebSocketServerFactory):
    protocol = StatusProtocol  # type: ignore[assignment]

    def __init__(self, hub: StatusHub, secure: bool):
        super().__init__(server=f"wsrouter/{__version__}")  # type: ignore[no-untyped-call, unused-ignore]
        self.hub = hub
        self.secure = secure
        self.setProtocolOptions(  # type: ignore[no-untyped-call, unused-ignore]
            maxMessagePayloadSize=4096, maxFramePayloadSize=4096, autoPingInterval=0)
