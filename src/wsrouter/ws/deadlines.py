"""
Coarse deadlines that are nearly always cancelled: the opening handshake's
timeout (L{wsrouter.ws.adapter}).

Autobahn's batched timer arms one reactor C{DelayedCall} per second bucket
and cancels it when its last call is cancelled, so with a few handshakes in
flight each connection made and cancelled a reactor timer of its own (and
a closure, and a C{list.remove}).  Here a deadline is an entry in a
per-second bucket (a dict: O(1) to drop), and one timer per clock ticks
once a second while any bucket is left; a deadline dropped before that
costs no reactor work at all.

A deadline fires at the first tick at or after its time (never early, at
most a second late; Autobahn's rounded down, up to a second early).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["TICK", "Deadline", "Deadlines", "deadlines_for"]

#: Seconds between ticks: the deadlines' resolution.
TICK = 1.0


class Deadline:
    """One pending deadline; L{cancel} drops it (again: nothing)."""

    __slots__ = ("_bucket", "_call")

    def __init__(self, bucket: dict[Deadline, None], call: Callable[[], Any]):
        self._bucket = bucket
        self._call = call

    def cancel(self) -> None:
        self._bucket.pop(self, None)

    def fire(self) -> None:
        self._call()


class Deadlines:
    """The deadlines of one clock, in buckets of whole ticks."""

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        #: Tick number -> the deadlines due at it; ticks in no particular order.
        self._buckets: dict[int, dict[Deadline, None]] = {}
        self._timer: Any = None

    def call_later(self, delay: float, call: Callable[[], Any]) -> Deadline:
        """Call C{call} at the first tick at least C{delay} seconds from now, unless cancelled."""
        due = math.ceil((self._clock.seconds() + delay) / TICK)
        bucket = self._buckets.get(due)
        if bucket is None:
            bucket = self._buckets[due] = {}
        deadline = Deadline(bucket, call)
        bucket[deadline] = None
        if self._timer is None:
            self._timer = self._clock.callLater(TICK, self._tick)
        return deadline

    def pending(self) -> int:
        """Deadlines not yet fired nor cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def _tick(self) -> None:
        self._timer = None
        now = self._clock.seconds() / TICK
        for due in [due for due in self._buckets if due <= now]:
            for deadline in list(self._buckets.pop(due)):
                deadline.fire()
        # Empty buckets are left for their tick (dropping one costs more than keeping it).
        if self._buckets:
            self._timer = self._clock.callLater(TICK, self._tick)


_of_clock: weakref.WeakKeyDictionary[IReactorTime, Deadlines] = weakref.WeakKeyDictionary()


def deadlines_for(clock: IReactorTime) -> Deadlines:
    """The one L{Deadlines} of C{clock}."""
    try:
        return _of_clock[clock]
    except KeyError:
        deadlines = _of_clock[clock] = Deadlines(clock)
        return deadlines
