"""
Bounded closing: a connection being closed gets as long as its queued data
keeps draining, then a fixed time, and is then aborted.

A close frame or a TCP close waits behind the data already queued for the
peer, so a fixed timer started when the close is queued would throw away
data a slow but live client is still reading, while no timer at all would
let a peer that stopped reading hold the connection (and its target) open
forever.  This watches the transport's queue instead.

The watches of one clock share one timer (L{_Sweep}): a churning router
starts a watch for nearly every connection that closes, and a reactor
C{DelayedCall} each (made, pushed on the reactor's heap, popped, run) cost
more than the check itself, which mostly finds the connection gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from wsrouter.ws.internals import queued_bytes

__all__ = ["CHECK_INTERVAL", "DrainWatch", "queued_bytes"]

CHECK_INTERVAL = 0.25


class DrainWatch:
    """
    Ends a closing connection unless C{done()} becomes true first.

    While queued data keeps draining, it waits.  Once nothing is queued on
    this side, C{finish} is called after C{timeout} seconds: a graceful
    close, since what was sent may still sit unread in the peer's buffers.
    If the queue stays the same size, non-empty, for C{stall} seconds, the
    peer has stopped reading and C{abort} is called.

    The queue is checked every L{CHECK_INTERVAL} seconds, first between one
    and two intervals after L{start} (the clock's watches are checked
    together); the times above are measured on the clock, so a check
    never acts early.
    """

    def __init__(self, clock: IReactorTime, transport: Any, done: Callable[[], bool],
                 abort: Callable[[], None], timeout: float, stall: float,
                 finish: Callable[[], None] | None = None):
        self._clock = clock
        self._transport = transport
        self._done = done
        self._abort = abort
        self._finish = finish or abort
        self._timeout = timeout
        self._stall = stall
        self._last_queued = queued_bytes(transport)
        self._started = self._progress_at = clock.seconds()
        self._empty_since: float | None = None

    def start(self) -> DrainWatch:
        _sweep_of(self._clock).add(self)
        return self

    def check(self, now: float) -> bool:
        """One look at the queue at C{now}; whether to keep watching."""
        if self._done():
            return False
        return self._check(now)

    def _check(self, now: float) -> bool:
        queued = queued_bytes(self._transport)
        if queued < self._last_queued:
            self._progress_at = now
        self._last_queued = queued
        if queued:
            self._empty_since = None
            if now - self._progress_at >= self._stall:
                self._abort()
                return False
        else:
            if self._empty_since is None:
                self._empty_since = now
            if now - self._empty_since >= self._timeout:
                self._finish()
                if self._done():
                    return False
                self._empty_since = now  # a graceful close takes a moment; then abort
                self._finish = self._abort
        return True

    @property
    def started(self) -> float:
        return self._started


class _Sweep:
    """
    The drain watches of one clock, checked together every
    L{CHECK_INTERVAL} seconds by one timer that runs while any is left.  A
    watch younger than one interval waits for the next round, so each is
    first checked one to two intervals after it started.
    """

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        #: In start order (a dict: ordered, and removal is O(1)).
        self._watches: dict[DrainWatch, None] = {}
        self._call: Any = None

    def add(self, watch: DrainWatch) -> None:
        self._watches[watch] = None
        if self._call is None:
            self._call = self._clock.callLater(CHECK_INTERVAL, self._round)

    def _round(self) -> None:
        self._call = None
        now = self._clock.seconds()
        watches = self._watches
        for watch in list(watches):
            if now - watch.started < CHECK_INTERVAL:
                break  # this one and the rest started later: next round
            if not watch.check(now):
                watches.pop(watch, None)
        if watches:
            self._call = self._clock.callLater(CHECK_INTERVAL, self._round)


_sweeps: weakref.WeakKeyDictionary[IReactorTime, _Sweep] = weakref.WeakKeyDictionary()


def _sweep_of(clock: IReactorTime) -> _Sweep:
    try:
        return _sweeps[clock]
    except KeyError:
        sweep = _sweeps[clock] = _Sweep(clock)
        return sweep
