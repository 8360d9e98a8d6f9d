"""
One connection's life, from an accepted handshake to its summary line.

A L{Session} owns everything about one client connection: its bridge, its
keepalive, its idle timer, the watches that bound a closing connection and
a target that stops reading, its recorder and its stats.  The gateway
creates it once the target is connected and only keeps the set of live
sessions; the WebSocket adapter calls it (a L{ConnectionSession}) and knows
nothing else.

Timers run on the injected clock, so tests drive them with
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsrouter.bridge import Bridge, SessionStats
from wsrouter.config import Limits
from wsrouter.interfaces import ClientConnection, Framer, Gatherer, Link, Recorder, SessionInfo
from wsrouter.ws.closing import DrainWatch
from wsrouter.ws.internals import queued_bytes
from wsrouter.ws.keepalive import Keepalive

if TYPE_CHECKING:
    from wsrouter.ops.watch import Watchers

log = Logger(namespace="wsrouter")


def always_binary(payload: bytes) -> bool:
    return True


class Session:
    """
    One client connection bridged to one target.

    @ivar id: the session id (in log lines and recording names).
    @ivar info: what the handshake said, and the route chosen.
    @ivar is_open: the handshake has been answered and data flows.
    @ivar ended: the session is over (both sides done, or it never opened).
    @ivar done: fires once the session has ended and its recording is closed.
    @param on_opened: called when the session opens.
    @param on_ended: called once when it ends, opened or not.
    """

    def __init__(self, connection: ClientConnection, info: SessionInfo, link: Link, framer: Framer, *,
                 limits: Limits, clock: IReactorTime, base64_mode: bool = False,
                 binary_for: Callable[[bytes], bool] = always_binary, recorder: Recorder | None = None,
                 on_opened: Callable[[Session], None] = lambda session: None,
                 on_ended: Callable[[Session], None] = lambda session: None,
                 encoder: Callable[[bytes, bool], bytes] | None = None):
        self.id = info.session_id
        self.info = info
        self.subprotocol = info.subprotocol
        self.connection = connection
        self.link = link
        self.recorder = recorder
        self.limits = limits
        self._clock = clock
        self._on_opened = on_opened
        self._on_ended = on_ended
        self.bridge = Bridge(connection, link, framer, base64_mode=base64_mode, binary_for=binary_for,
                             recorder=recorder, on_finished=_weak(self._bridge_finished), clock=clock.seconds,
                             encoder=encoder, session_id=self.id)
        self.gatherer: Gatherer | None = link if hasattr(link, "hold") else None  # type: ignore[assignment]
        self.keepalive: Keepalive | None = None
        self.is_open = False
        self.ended = False
        self.done: Deferred[None] = Deferred()
        self._recording_closed = False
        self._closing_watched = False
        self._idle_call: IDelayedCall | None = None
        self._last_activity = 0.0
        #: Who watches this session (L{wsrouter.ops.watch.Watchers}); made by the first watcher.
        self.watchers: Watchers | None = None
        # The per-frame path: with no idle timeout to feed, client payload
        # goes straight to the bridge, with no call in between.
        if limits.session_idle_timeout is None:
            self.message_data = self.bridge.frame_data  # type: ignore[method-assign]
            self.sent = _nothing  # type: ignore[method-assign]

    @property
    def stats(self) -> SessionStats:
        return self.bridge.stats

    # -- called by the WebSocket adapter --------------------------------------------

    def opened(self) -> None:
        if self.ended:
            return
        self.is_open = True
        info = self.info
        log.info(
            "session {id} open: {peer} {path} -> {target} (route {route}, subprotocol {subprotocol})"
            + (", client certificate {client_cert}" if info.client_cert else ""),
            id=self.id, peer=info.peer(), path=info.request_uri, target=info.route.target.describe(),
            route=info.route.describe(), subprotocol=info.subprotocol or "none", client_cert=info.client_cert,
        )
        self._on_opened(self)
        self._last_activity = self._clock.seconds()
        self._schedule_idle_check()
        self._start_keepalive()
        self.bridge.start()

    def message_begin(self, is_binary: bool) -> None:
        if self.keepalive is not None:
            self.keepalive.alive()
        self.bridge.message_begin(is_binary)

    def message_data(self, payload: bytes) -> None:
        self._last_activity = self._clock.seconds()
        self.bridge.frame_data(payload)

    def message_end(self) -> None:
        self.bridge.message_end()

    def binary_messages(self, payloads: list[bytes]) -> None:
        """A read's run of whole binary client messages (the frame parser's fast path), taken in one call."""
        if self.keepalive is not None:
            self.keepalive.alive()
        self._last_activity = self._clock.seconds()
        self.bridge.binary_messages(payloads)

    def frame_end(self) -> None:
        """A non-final frame of the client's message ended (a fragment boundary)."""
        self.bridge.fragment_end()

    def sent(self) -> None:
        self._last_activity = self._clock.seconds()

    def pong(self, payload: bytes) -> None:
        if self.keepalive is not None:
            self.keepalive.pong_received(payload)

    def refuse(self, code: int, reason: str) -> None:
        self.bridge.refuse(code, reason)

    def closing(self) -> None:
        """Abort a closing client connection that stops draining (see L{DrainWatch})."""
        connection = self.connection
        if self._closing_watched or connection.connection_gone:
            return
        self._closing_watched = True
        grace = self.limits.shutdown_grace
        transport = connection.transport
        DrainWatch(self._clock, transport, lambda: connection.connection_gone, transport.abortConnection,
                   timeout=min(grace, 5.0), stall=2 * grace, finish=connection.finish).start()

    def closed(self, code: int | None, reason: str) -> None:
        self._cancel_idle()
        if self.keepalive is not None:
            self.keepalive.stop()
        if not self.is_open:
            # Never opened: the bridge never started, so it will not finish
            # the recording either.
            if not self.ended:
                self.link.abort()
                self.close_recording(code, reason)
                self._end()
            return
        bridge = self.bridge
        bridge.websocket_closed(code, reason)
        if not bridge.finished:
            self._watch_link()

    # -- called by the gateway ----------------------------------------------------------

    def shutdown(self) -> None:
        """The router is stopping: close an open session with 1001, drop one not open yet."""
        if self.is_open:
            self.bridge.shutdown()
        elif not self.ended:
            self.close_recording(None, "router shutting down")
            self.connection.abort("router shutting down")

    def abort(self) -> None:
        """Out of time: drop both sides now and close the recording."""
        log.warn("session {id} did not close in time; dropping it", id=self.id)
        connection = self.connection
        if not connection.connection_gone and connection.transport is not None:
            connection.transport.abortConnection()
        if not self.bridge.finished:
            self.link.abort()
        if not self.ended:
            self.close_recording(None, "router stopped before the session ended")

    def close_recording(self, code: int | None, reason: str) -> None:
        """Close the recording now, if the bridge will not (it never started, or time is up)."""
        if self.recorder is not None and not self._recording_closed:
            self._recording_closed = True
            self.recorder.closed(code, reason)

    # -- timers -----------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        limits = self.limits
        if not limits.ping_interval:
            return
        connection = self.connection
        queued_at_ping = [0]

        def send_ping(payload: bytes) -> None:
            queued_at_ping[0] = queued_bytes(connection.transport)
            connection.send_ping(payload)

        def timed_out() -> None:
            queued = queued_bytes(connection.transport)
            if 0 < queued < queued_at_ping[0] and self.keepalive is not None:
                # The ping still waits behind data the client is reading.
                self.keepalive.start()
                return
            log.info("session {id}: no pong within {timeout} s; dropping the client",
                     id=self.id, timeout=limits.ping_timeout)
            connection.abort("ping timeout")

        self.keepalive = Keepalive(self._clock, limits.ping_interval, limits.ping_timeout or limits.ping_interval,
                                   send_ping, timed_out)
        self.keepalive.start()

    def _schedule_idle_check(self) -> None:
        idle = self.limits.session_idle_timeout
        if idle is None:
            return
        due = self._last_activity + idle - self._clock.seconds()
        self._idle_call = self._clock.callLater(max(due, 0.0), self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        idle = self.limits.session_idle_timeout
        if idle is None or self.ended:
            return
        if self._clock.seconds() - self._last_activity >= idle:
            self.bridge.idle_timeout()
        else:
            self._schedule_idle_check()

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _watch_link(self) -> None:
        """A target that stops reading what it was sent is not waited for forever."""
        bridge = self.bridge
        link = self.link
        grace = self.limits.shutdown_grace
        # A link that can end gracefully (a WebSocket upstream, whose close frame may
        # sit unread behind the last messages) does so first; abort is the last resort.
        DrainWatch(self._clock, getattr(link, "transport", None), lambda: bridge.finished,
                   link.abort, timeout=grace, stall=2 * grace, finish=getattr(link, "finish", None)).start()

    # -- the end ---------------------------------------------------------------------

    def _bridge_finished(self, stats: SessionStats) -> None:
        self._recording_closed = True  # the bridge has closed it
        info = self.info
        log.info(
            "session {id} closed: {peer} {path} -> {target} (subprotocol {subprotocol}): "
            "{up} bytes to target, {down} bytes to client, {duration:.3f} s, "
            "close {code} {reason!r} by {by}",
            id=self.id, peer=info.peer(), path=info.request_uri, target=info.route.target.describe(),
            subprotocol=info.subprotocol or "none", up=stats.bytes_from_client, down=stats.bytes_to_client,
            duration=stats.duration(), code=stats.close_code, reason=stats.close_reason,
            by=stats.closed_by or "client",
        )
        self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._cancel_idle()
        self._on_ended(self)
        self.done.callback(None)

    def __repr__(self) -> str:
        state = "ended" if self.ended else "open" if self.is_open else "opening"
        return f"<Session {self.id} {state} {self.info.request_uri}>"


def _nothing() -> None:
    return None


def _weak(method: Callable[[SessionStats], None]) -> Callable[[SessionStats], None]:
    """
    C{method} called through a weak reference to its session: the bridge
    then holds no strong reference back to the session that owns it, so
    an ended session is freed by reference counting, not left as a cycle
    for the garbage collector (the gateway holds every live session).
    """
    ref = weakref.WeakMethod(method)

    def call(stats: SessionStats) -> None:
        bound = ref()
        if bound is not None:
            bound(stats)

    return call

