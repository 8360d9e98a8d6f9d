"""
A TTL cache of found targets, by resolver and token (C{cache_ttl}).

Only targets are kept: a refusal or "no such token" is asked again next
time, so a token added to the store works at once.  Bounded: past
L{MAX_ENTRIES} the oldest entry goes.  Time is the injected clock's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from wsrouter.config import Target

#: The most tokens one resolver's cache keeps.
MAX_ENTRIES = 4096


class TargetCache:
    """Remembers C{token -> target} for C{ttl} seconds of C{clock} (an C{IReactorTime})."""

    def __init__(self, ttl: float, clock: Any, max_entries: int = MAX_ENTRIES):
        self.ttl, self._clock, self.max_entries = ttl, clock, max_entries
        self._entries: OrderedDict[str, tuple[float, Target]] = OrderedDict()

    def get(self, token: str) -> Target | None:
        """The target remembered for C{token}, if it has not expired."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if self._clock.seconds() >= entry[0]:
            del self._entries[token]
            return None
        return entry[1]

    def put(self, token: str, target: Target) -> None:
        self._entries.pop(token, None)
        self._entries[token] = (self._clock.seconds() + self.ttl, target)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
