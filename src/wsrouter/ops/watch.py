"""
Shared sessions: others watch a session live, from its status page link
(C{STATUS/watch/ID}).

A watcher gets what the target sends the client, message by message, as
the client gets it (before websockify's base64).  It does not get what the
client sends: keystrokes a terminal does not echo (passwords) stay between
the client and the target.  On a route with C{watch = "write"} a
watcher's messages go to the target as if the client had sent them; with
C{read} (the default) a watcher that sends anything is closed with 4003;
with C{off} nobody may watch (403).

A watcher never slows the session: messages wait in the watcher's own
transport, and one that falls more than C{ops.watch_queue} bytes behind is
closed with 4008 and gets nothing more.  A writable watcher that sends
faster than the target reads is paused (its socket not read) until the
target's queue drains.

The watchers of a session live on it (C{session.watchers}), as a
L{wsrouter.interfaces.Recorder} the bridge feeds in place of the
session's own recorder, which it feeds in turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from wsrouter import __version__
from wsrouter.interfaces import Recorder
from wsrouter.policy import origin_problem
from wsrouter.ws.internals import queued_bytes

if TYPE_CHECKING:
    from wsrouter.session import Session

log = Logger(namespace="wsrouter.ops")

#: Close codes a watcher sees (application range; RFC codes need Autobahn's lower-level path).
READ_ONLY = 4003
TOO_SLOW = 4008
#: How often a paused writable watcher looks whether the target has drained.
INPUT_RETRY = 0.05
#: Seconds a dropped watcher has to read what waits for it and the close frame before its connection is aborted.
CLOSE_GRACE = 10.0


class Watchers:
    """
    The watchers of one session, fed by its bridge.

    @ivar inner: the recorder the bridge had before (the session's recording), fed first.
    """

    def __init__(self, session: Session, limit: int, on_dropped: Any = lambda: None):
        self.session = session
        self.limit = limit
        self._on_dropped = on_dropped
        self.watching: list[WatchProtocol] = []
        self.ended = False
        self.inner: Recorder | None = session.bridge.tap(self)

    def add(self, watcher: WatchProtocol) -> None:
        self.watching.append(watcher)

    def remove(self, watcher: WatchProtocol) -> None:
        if watcher in self.watching:
            self.watching.remove(watcher)

    # -- Recorder -----------------------------------------------------------------

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        if self.inner is not None:
            self.inner.client_message(payload, is_binary)

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        if self.inner is not None:
            self.inner.target_message(payload, is_binary)
        for watcher in list(self.watching):
            if not watcher.deliver(payload, is_binary, self.limit):
                self.remove(watcher)
                self._on_dropped()

    def closed(self, code: int | None, reason: str) -> None:
        if self.inner is not None:
            self.inner.closed(code, reason)
        self.end()

    def end(self) -> None:
        """The session is over: every watcher is closed with 1000."""
        if self.ended:
            return
        self.ended = True
        watching, self.watching = self.watching, []
        for watcher in watching:
            watcher.session_ended()


class WatchProtocol(WebSocketServerProtocol):
    """One watcher's WebSocket; the factory is a L{WatchFactory}."""

    factory: WatchFactory
    watched: Session | None = None
    writable = False
    _attached = False

    def onConnect(self, request: Any) -> None:
        session = self.factory.session_for(self.factory.session_id)
        if session is None:
            self._refuse(404, f"no open session {self.factory.session_id}")
        mode = session.info.route.watch
        if mode == "off":
            self._refuse(403, "this route's sessions cannot be watched (watch = off)")
        problem = origin_problem("same", request.headers.get("origin"), request.headers.get("host"),
                                 self.factory.secure)
        if problem is not None:
            self._refuse(403, f"origin not allowed: {problem}")
        self.watched = session
        self.writable = mode == "write"

    def _refuse(self, status: int, reason: str) -> NoReturn:
        log.info("refused watcher {peer} of session {id}: {status} {reason}", peer=self.factory.peer,
                 id=self.factory.session_id, status=status, reason=reason)
        raise ConnectionDeny(status, reason)  # type: ignore[no-untyped-call, unused-ignore]

    def onOpen(self) -> None:
        session = self.watched
        if session is None or session.ended:
            self.sendClose(1000, "session ended")
            return
        if session.watchers is None:
            session.watchers = Watchers(session, self.factory.limit, self.factory.on_dropped)
        session.watchers.add(self)
        self._attached = True
        self._replay(session)
        log.info("session {id}: watcher {peer} attached ({mode})", id=session.id, peer=self.factory.peer,
                 mode="writable" if self.writable else "read-only")

    def _replay(self, session: Session) -> None:
        """A terminal session's latest output first (pty routes keep 64 KiB of it), so the watcher sees its screen."""
        recent = getattr(session.link, "recent_output", None)
        replay = recent() if callable(recent) else b""
        if replay:
            self.sendMessage(replay[-self.factory.limit // 2:], isBinary=True)  # type: ignore[no-untyped-call, unused-ignore]

    def deliver(self, payload: bytes, is_binary: bool, limit: int) -> bool:
        """Send a message the client got; C{False} (and close 4008) when too far behind."""
        if self.transport is None:
            return False
        if queued_bytes(self.transport) + len(payload) > limit:
            log.info("session {id}: watcher {peer} dropped: more than {limit} bytes waiting for it",
                     id=self.factory.session_id, peer=self.factory.peer, limit=limit)
            self.sendClose(TOO_SLOW, f"watcher too slow: more than {limit} bytes behind")
            return False
        self.sendMessage(payload, isBinary=is_binary)  # type: ignore[no-untyped-call, unused-ignore]
        return True

    def session_ended(self) -> None:
        self.sendClose(1000, "session ended")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.watched
        if session is None or session.ended:
            return
        if not self.writable:
            self.sendClose(READ_ONLY, "read-only: this route's sessions are watched with watch = read")
            return
        if not session.bridge.inject(payload, isBinary):
            return
        self._hold_while_target_busy(session)

    def _hold_while_target_busy(self, session: Session) -> None:
        """Stop reading this watcher while the target's queue is over the limit."""
        link_transport = getattr(session.link, "transport", None)
        if link_transport is None or self.transport is None:
            return
        if queued_bytes(link_transport) <= self.factory.limit:
            return
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.factory.clock.callLater(INPUT_RETRY, self._resume_when_drained, session)

    def _resume_when_drained(self, session: Session) -> None:
        if self.transport is None or session.ended:
            return
        link_transport = getattr(session.link, "transport", None)
        if link_transport is not None and queued_bytes(link_transport) > self.factory.limit:
            self.factory.clock.callLater(INPUT_RETRY, self._resume_when_drained, session)
            return
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.watched
        if session is not None and self._attached:
            self._attached = False
            if session.watchers is not None:
                session.watchers.remove(self)
            log.info("session {id}: watcher {peer} detached", id=session.id, peer=self.factory.peer)


class WatchFactory(WebSocketServerFactory):
    """One watcher's factory (made per request: it knows the session id asked for)."""

    protocol = WatchProtocol  # type: ignore[assignment]

    def __init__(self, session_id: str, session_for: Any, *, limit: int, max_message_size: int, clock: Any,
                 peer: str, secure: bool, on_dropped: Any):
        super().__init__(server=f"wsrouter/{__version__}")  # type: ignore[no-untyped-call, unused-ignore]
        self.session_id = session_id
        self.session_for = session_for
        self.limit = limit
        self.clock = clock
        self.peer = peer
        self.secure = secure
        self.on_dropped = on_dropped
        self.setProtocolOptions(  # type: ignore[no-untyped-call, unused-ignore]
            maxMessagePayloadSize=max_message_size, maxFramePayloadSize=max_message_size,
            autoPingInterval=0, closeHandshakeTimeout=CLOSE_GRACE)


def watchers_open(sessions: Iterable[Session]) -> int:
    """How many watchers are attached to C{sessions} now."""
    return sum(len(s.watchers.watching) for s in sessions if s.watchers is not None)
