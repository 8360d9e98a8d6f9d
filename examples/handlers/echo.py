"""
A type-preserving echo: every message comes back whole, text as text,
binary as binary, empty ones included.

Flow control: when the client stops reading what comes back, the echo
stops reading what the client sends (a Deferred from C{on_message} holds
the client's reads until the client's queue has drained).
"""

from __future__ import annotations

from typing import Any

from wsrouter.handlers import HandlerContext, Session


class Echo:
    """C{python:examples.handlers.echo:Echo}"""

    def __init__(self, context: HandlerContext):
        self.context = context

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> Any:
        if session.send(payload, is_binary):
            return None
        return session.writable()
