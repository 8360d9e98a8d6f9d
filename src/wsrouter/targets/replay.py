"""
The replay target, C{replay:FILE}: plays a recording back to each client.

Every client that connects gets its own playback of the messages the
recorded target sent, each with its recorded type (text or binary), at its
recorded time divided by the route's speed, timed on the injected reactor.
When the recording ends (at the time of its close event, if it has one)
the session closes with 1000.

The recording cannot answer, so what the client sends is read and dropped;
the client's close ends the playback.  Client messages, notes and the
recorded close code are not played.

Flow control: while the client's transport asks the link to pause, nothing
is sent or scheduled; on resume the rest of the timeline moves later by the
time spent paused, so the gaps between messages keep their recorded length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from wsrouter.config import ReplayTarget
from wsrouter.interfaces import Link, LinkReceiver, SessionInfo, TargetError
from wsrouter.recording import Event, RecordingFormatError, read_recording

#: The most overdue messages sent in one go before letting the reactor run
#: (a fast speed, or many messages recorded at the same instant).
BURST = 64


def _plays(event: Event) -> bool:
    """Messages the target sent, and the close that marks the end."""
    return event.kind == "close" or (event.direction == "target" and event.kind in ("text", "binary"))


def _is_binary(event: Event) -> bool:
    """
    Text goes out as text unless its bytes are not UTF-8 (a recording may
    keep such bytes); sent as text, they would make the client fail the
    connection (1007), so they go out as binary.
    """
    if event.kind == "binary":
        return True
    try:
        event.payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@implementer(IPushProducer)
class ReplayLink:
    """
    One playback of a recording; a push producer for the client's transport.

    @param events: the recording's events, read lazily (L{read_recording}).
    @param speed: 2.0 plays twice as fast; greater than 0.
    """

    message_oriented = False

    def __init__(self, clock: IReactorTime, events: Iterator[Event], speed: float = 1.0):
        self._clock = clock
        self._events = (event for event in events if _plays(event))
        self._source = events
        self._speed = speed
        self._receiver: LinkReceiver | None = None
        self._next: Event | None = None
        self._origin = 0.0  # clock time of the recording's offset 0, moved later by pauses
        self._paused_at: float | None = None
        self._call: IDelayedCall | None = None
        self._stopped = False
        self._done = False
        self.producer: IPushProducer | None = self
        #: Whatever the client sends is ignored, so nothing to slow down.
        self.consumer: IConsumer | None = None

    @property
    def paused(self) -> bool:
        """Whether the client's transport has asked the playback to wait."""
        return self._paused_at is not None

    # -- Link ------------------------------------------------------------------------

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._origin = self._clock.seconds()
        if self._paused_at is not None:
            self._paused_at = self._origin
        self._schedule(0.0)

    def write(self, data: bytes) -> None:
        """Client data: a recording cannot answer, so it is dropped."""

    def write_eof(self) -> None:
        """The client will send no more; the playback ends when the client closes."""

    def close(self) -> None:
        self._finish(None)

    abort = close

    # -- IPushProducer ---------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock.seconds()
            self._cancel()

    def resumeProducing(self) -> None:
        if self._paused_at is None:
            return
        paused_at, self._paused_at = self._paused_at, None
        self._origin += self._clock.seconds() - paused_at
        if self._receiver is not None:
            self._schedule(0.0)

    def stopProducing(self) -> None:
        """
        The client's transport is gone: stop playing.  The bridge, told by
        the WebSocket next, calls L{close}; reporting the end here first
        would make the session look ended by the recording (1000).
        """
        self._stopped = True
        self._cancel()

    # -- playback --------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not (self._done or self._stopped) and self._call is None and self._paused_at is None:
            self._call = self._clock.callLater(delay, self._play)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _play(self) -> None:
        """Send every message that is due, then wait for the next one."""
        self._call = None
        receiver = self._receiver
        if receiver is None:  # only scheduled once started
            return
        sent = 0
        while not (self._done or self._stopped) and self._paused_at is None:
            event = self._peek()
            if event is None:
                return
            delay = self._origin + event.offset / self._speed - self._clock.seconds()
            if delay > 0 or sent >= BURST:
                self._schedule(max(delay, 0.0))
                return
            self._next = None
            if event.kind == "close":
                self._finish(None)
                return
            receiver.message_received(event.payload, _is_binary(event))
            sent += 1

    def _peek(self) -> Event | None:
        """The next event to play; at the end of the recording, finish and return C{None}."""
        if self._next is None:
            try:
                self._next = next(self._events)
            except StopIteration:
                self._finish(None)
            except RecordingFormatError as e:
                self._finish(f"bad recording: line {e.line_number}: {e.problem}")
            except OSError as e:
                self._finish(f"cannot read the recording: {e.strerror or e}")
        return self._next

    def _finish(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        self._next = None
        self._cancel()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()  # the reader's generator closes its file
        if self._receiver is not None:
            self._receiver.link_lost(error)


class ReplayConnector:
    """
    Opens the route's recording for each session; a missing, unreadable
    or invalid file (header) refuses the handshake with 502 and the reason.
    A problem found later in the file ends the session with 1011.
    """

    def __init__(self, reactor: Any):
        self._reactor = reactor

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        if not isinstance(target, ReplayTarget):
            raise TypeError(f"not a replay target: {target!r}")
        try:
            _, events = read_recording(target.path)
        except OSError as e:
            return fail(TargetError(f"cannot read recording {target.path}: {e.strerror or e}", 502))
        except RecordingFormatError as e:
            return fail(TargetError(f"not a usable recording: {e}", 502))
        return succeed(ReplayLink(self._reactor, events, target.speed))
