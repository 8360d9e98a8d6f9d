"""
L{Refuse}: a handshake refused with an HTTP status, by a resolver
(L{wsrouter.resolvers}) or a Python handler (L{wsrouter.handlers}).

One class for both, exported from both packages, so code written for one
works in the other.  Pure: no Twisted, no config.
"""

from __future__ import annotations


class Refuse(Exception):
    """
    Refuse the handshake with an HTTP C{status} (400-599) and a one-line
    C{reason} shown to the client; returned or raised by a resolver's
    C{resolve} or a handler's C{on_connect}.
    """

    def __init__(self, status: int = 403, reason: str = "refused"):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"
