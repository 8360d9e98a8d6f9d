"""
Keepalive pings for one session, on an injected clock.

Autobahn's own auto-ping rounds its timers down to whole seconds on a
global timer, so a short timeout can fire at once; this one keeps exact
times on whatever clock the router runs on, and tests drive it with
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Keepalive:
    """
    Pings every C{interval} seconds; calls C{on_timeout} if a ping is not
    answered within C{timeout} seconds.
    """

    def __init__(self, clock: IReactorTime, interval: float, timeout: float,
                 send_ping: Callable[[bytes], Any], on_timeout: Callable[[], Any]):
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._send_ping = send_ping
        self._on_timeout = on_timeout
        self._sequence = 0
        self._expected: bytes | None = None
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._call = self._clock.callLater(self._interval, self._ping)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def pong_received(self, payload: bytes) -> None:
        """An answer to the outstanding ping restarts the interval; others are ignored."""
        if self._expected is not None and payload == self._expected:
            self._expected = None
            self.stop()
            self.start()

    def alive(self) -> None:
        """Any frame from the client shows it is there: count it as the awaited pong."""
        if self._expected is not None:
            self.pong_received(self._expected)

    def _ping(self) -> None:
        self._sequence += 1
        self._expected = struct.pack("!Q", self._sequence)
        self._call = self._clock.callLater(self._timeout, self._expired)
        self._send_ping(self._expected)

    def _expired(self) -> None:
        self._call = None
        self._on_timeout()
