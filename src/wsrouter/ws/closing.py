"""
Bounded closing: a connection being closed gets as long as its queued data
keeps draining, then a fixed time, and is then aborted.

A close frame or a TCP close waits behind the data already queued for the
peer, so a fixed timer started when the close is queued would throw away
data a slow but live client is still reading, while no timer at all would
let a peer that stopped reading hold the connection (and its target) open
forever.  This watches the transport's queue instead.
"""

from __future__ import annotations

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
        self._progress_at = clock.seconds()
        self._empty_since: float | None = None

    def start(self) -> DrainWatch:
        self._clock.callLater(CHECK_INTERVAL, self._check)
        return self

    def _check(self) -> None:
        if self._done():
            return
        now = self._clock.seconds()
        queued = queued_bytes(self._transport)
        if queued < self._last_queued:
            self._progress_at = now
        self._last_queued = queued
        if queued:
            self._empty_since = None
            if now - self._progress_at >= self._stall:
                self._abort()
                return
        else:
            if self._empty_since is None:
                self._empty_since = now
            if now - self._empty_since >= self._timeout:
                self._finish()
                if self._done():
                    return
                self._empty_since = now  # a graceful close takes a moment; then abort
                self._finish = self._abort
        self._clock.callLater(CHECK_INTERVAL, self._check)
