"""
One handler session: the L{Session} a handler is given, and the link the
bridge sees (L{HandlerLink}, a L{wsrouter.interfaces.ClosingLink}).

Flow control, both ways:

  - to the client: the link is the producer registered with the client's
    transport, so a client that stops reading pauses it.  While paused,
    L{Session.send} queues instead of writing, and says so (it returns
    C{False}); L{Session.writable} fires when the queue has drained.  The
    queue is bounded (C{max_queue} messages, C{max_queue_bytes} bytes):
    past it the session is closed with 1008, so neither a handler that
    ignores the signal nor a group broadcast can grow memory without end.
  - from the client: the client's transport is registered with the link;
    while a Deferred returned by C{on_message} is pending, the client's
    next messages wait (in order, at most what one read held) and reading
    from that client is paused.

Every call into handler code is guarded: an exception is logged with its
traceback and closes that session with 1011.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.handlers.api import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    HANDLER_ERROR,
    TOO_SLOW,
    Group,
    Request,
)
from wsrouter.interfaces import LinkReceiver

log = Logger(namespace="wsrouter.handlers")

NO_STATUS = 1005
ABNORMAL = 1006


class SessionClosed(Exception):
    """The session has ended (L{Session.writable} fails with it)."""


def close_code_problem(code: object) -> str | None:
    """Why a handler may not close with C{code} (1000, 1001, 1008, 1011 and 3000-4999 are fine)."""
    if isinstance(code, int) and not isinstance(code, bool) and (code in (1000, 1001, 1008, 1011)
                                                                  or 3000 <= code <= 4999):
        return None
    return f"close code must be 1000, 1001, 1008, 1011 or 3000-4999, not {code!r}"


class Session:
    """
    One client's session, as its handler sees it.

    @ivar id: the session id (as in the router's log lines).
    @ivar request: the handshake (L{Request}).
    @ivar subprotocol: the subprotocol the 101 named, or C{None}.
    @ivar group: the route's group (every open session on the route).
    @ivar data: the handler's own per-session state.
    @ivar closed: the session has ended (or is closing); L{send} does nothing.
    """

    def __init__(self, link: HandlerLink, request: Request, subprotocol: str | None, group: Group,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES):
        self.id = request.session_id
        self.request = request
        self.subprotocol = subprotocol
        self.group = group
        self.data: dict[str, Any] = {}
        self.closed = False
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self._link = link
        self._outbox: deque[tuple[bytes, bool]] = deque()
        self._queued_bytes = 0
        self._writer_paused = True  # until the link starts
        self._waiters: list[Deferred[None]] = []

    @property
    def paused(self) -> bool:
        """The client is not keeping up: what is sent now waits in the session's queue."""
        return self._writer_paused or bool(self._outbox)

    @property
    def queued(self) -> tuple[int, int]:
        """Messages and bytes waiting in the session's queue."""
        return len(self._outbox), self._queued_bytes

    def send(self, payload: bytes | str, is_binary: bool | None = None) -> bool:
        """
        Send one message: C{str} as text, C{bytes} as binary unless
        C{is_binary} says otherwise (text must be UTF-8).

        @return: C{True} if more may be sent now; C{False} if the client is
            not keeping up (wait for L{writable}) or the session is closed.
            A queue past its bound closes the session with 1008.
        """
        if self.closed:
            return False
        if isinstance(payload, str):
            data, binary = payload.encode("utf-8"), False if is_binary is None else is_binary
        else:
            data, binary = bytes(payload), True if is_binary is None else is_binary
        if self.paused:
            self._queue(data, binary)
        else:
            self._link.deliver(data, binary)
        return not (self.closed or self.paused)

    def writable(self) -> Deferred[None]:
        """
        Fires when the client is keeping up again (at once if it is);
        fails with L{SessionClosed} once the session has ended.
        """
        if self.closed:
            return fail(SessionClosed(self.id))
        if not self.paused:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close the session with C{code} (1000, 1001, 1008, 1011 or
        3000-4999) and C{reason}, after the messages already queued.

        @raise ValueError: for any other code.
        """
        problem = close_code_problem(code)
        if problem is not None:
            raise ValueError(problem)
        if not self.closed:
            self._flush()
            self._link.end_by_handler(code, reason)

    # -- called by the link ------------------------------------------------------------

    def _queue(self, data: bytes, is_binary: bool) -> None:
        self._outbox.append((data, is_binary))
        self._queued_bytes += len(data)
        count, size = len(self._outbox), self._queued_bytes
        if count > self.max_queue:
            limit = f"more than {self.max_queue} messages waiting"
        elif count > 1 and size > self.max_queue_bytes:
            limit = f"more than {self.max_queue_bytes} bytes waiting"
        else:
            return
        log.info("session {id}: client too slow, {count} messages ({size} bytes) waiting ({limit}); "
                 "closing it with 1008", id=self.id, count=count, size=size, limit=limit)
        self._drop_queue()
        self._link.end_by_handler(TOO_SLOW, f"client too slow: {limit}")

    def _drop_queue(self) -> None:
        self._outbox.clear()
        self._queued_bytes = 0

    def _flush(self) -> None:
        """Everything queued goes to the transport now (it is bounded), before a close."""
        while self._outbox:
            data, is_binary = self._outbox.popleft()
            self._link.deliver(data, is_binary)
        self._queued_bytes = 0

    def _pause(self) -> None:
        self._writer_paused = True

    def _resume(self) -> None:
        """The client reads again: send what waits until it pauses us again, then wake the waiters."""
        self._writer_paused = False
        outbox = self._outbox
        while outbox and not self._writer_paused and not self.closed:
            data, is_binary = outbox.popleft()
            self._queued_bytes -= len(data)
            self._link.deliver(data, is_binary)
        if not self.paused and not self.closed:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _ended(self) -> None:
        self.closed = True
        self._drop_queue()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(SessionClosed(self.id))

    def __repr__(self) -> str:
        return f"<handler Session {self.id}{' closed' if self.closed else ''}>"


@implementer(IPushProducer, IConsumer)
class HandlerLink:
    """
    The bridge's side of a handler session: client messages go to the
    handler, the handler's L{Session.send} comes back through the bridge.
    """

    message_oriented = True

    def __init__(self, handler: Any, request: Request, subprotocol: str | None, group: Group):
        self.subprotocol = subprotocol
        self.session = Session(self, request, subprotocol, group,
                               _positive(getattr(handler, "max_queue", None), DEFAULT_MAX_QUEUE),
                               _positive(getattr(handler, "max_queue_bytes", None), DEFAULT_MAX_QUEUE_BYTES))
        self._handler = handler
        self._group = group
        self._receiver: LinkReceiver | None = None
        self._client: IPushProducer | None = None
        self._holding = False
        self._inbox: deque[tuple[bytes, bool]] = deque()
        self._ended = False
        self.producer: IPushProducer | None = self
        self.consumer: IConsumer | None = self

    # -- the client's transport, registered by the bridge (reading from the client) --------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._client = cast(IPushProducer, producer)

    def unregisterProducer(self) -> None:
        self._client = None

    # -- producer: the client's transport pauses us when its queue is full -----------------

    def pauseProducing(self) -> None:
        self.session._pause()

    def resumeProducing(self) -> None:
        if not self._ended and self._receiver is not None:
            self.session._resume()

    def stopProducing(self) -> None:
        """The client's transport is gone; the bridge tells us the close next."""

    # -- link ------------------------------------------------------------------------------

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._group.add(self.session)
        self._call("on_open", self.session)
        if not self._ended:
            self.session._resume()

    def write(self, data: bytes) -> None:
        self.write_message(data, True)

    def write_message(self, payload: bytes, is_binary: bool) -> None:
        """
        One client message to the handler; held while an earlier message's
        Deferred is pending (with reading from the client paused, what waits
        is at most what the last read held).
        """
        if self._ended:
            return
        if self._holding:
            self._inbox.append((payload, is_binary))
            return
        self._hand_over(payload, is_binary)

    def write_eof(self) -> None:
        """Only a close ends a handler session."""

    def close_with(self, code: int | None, reason: str) -> None:
        """The client (or the router, for it) closed: tell the handler, then the bridge."""
        code = NO_STATUS if code is None else code
        if self._end(code, reason) and self._receiver is not None:
            _closed(self._receiver, code, reason)

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Out of time, or the handshake never finished."""
        if self._end(ABNORMAL, "session dropped") and self._receiver is not None:
            self._receiver.link_lost("session dropped")

    # -- called by the session ------------------------------------------------------------

    def deliver(self, payload: bytes, is_binary: bool) -> None:
        if self._receiver is not None:
            self._receiver.message_received(payload, is_binary)

    def end_by_handler(self, code: int, reason: str) -> None:
        """The handler (or its queue bound) closes the session: the client gets C{code}."""
        if self._end(code, reason) and self._receiver is not None:
            _closed(self._receiver, code, reason)

    # -- internals --------------------------------------------------------------------------

    def _end(self, code: int, reason: str) -> bool:
        """Mark the session over and tell the handler once (if it was opened); C{False} if already over."""
        if self._ended:
            return False
        self._ended = True
        self.session._ended()
        self._group.discard(self.session)
        if self._receiver is not None:
            self._call("on_close", self.session, code, reason)
        self._inbox.clear()
        if self._holding and self._client is not None:
            self._holding = False
            self._client.resumeProducing()
        return True

    def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self._handler, name, None)
        if method is None:
            return None
        try:
            result = method(*args)
        except Exception:
            self._failed(Failure(), name)
            return None
        if isinstance(result, Deferred):
            result.addErrback(self._failed, name)
        return result

    def _failed(self, failure: Failure, name: str) -> None:
        if failure.check(SessionClosed):  # type: ignore[no-untyped-call, unused-ignore]
            return
        log.failure("session {id}: handler {handler!r} failed in {method}; closing the session with 1011",
                    failure, id=self.session.id, handler=self._handler, method=name)
        if not self._ended:
            self.session._drop_queue()
            self.end_by_handler(HANDLER_ERROR, "internal error in the handler")

    def _hand_over(self, payload: bytes, is_binary: bool) -> None:
        result = self._call("on_message", self.session, payload, is_binary)
        if isinstance(result, Deferred) and not result.called:
            self._holding = True
            if self._client is not None:
                self._client.pauseProducing()
            result.addBoth(self._released)

    def _released(self, result: object) -> None:
        """on_message's Deferred fired: the held messages go on, then reading from the client resumes."""
        self._holding = False
        while self._inbox and not self._holding and not self._ended:
            self._hand_over(*self._inbox.popleft())
        if not self._holding and not self._ended and self._client is not None:
            self._client.resumeProducing()


def _positive(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _closed(receiver: LinkReceiver, code: int, reason: str) -> None:
    """Tell the bridge the session closed with C{code} (the bridge's C{link_closed}, as for a WebSocket target)."""
    closed = getattr(receiver, "link_closed", None)
    if closed is not None:
        closed(code, reason)
    else:
        receiver.link_lost(None)
