"""
dumb-increment, as in libwebsockets' test server: a counter sent as text
every 50 ms, starting at 0; the message C{reset} sets it back to 0.

It speaks the C{dumb-increment-protocol} subprotocol when the client
offers it.  A client that is not keeping up gets no ticks (they are
skipped, not queued), so a slow reader costs no memory.
"""

from __future__ import annotations

from twisted.internet.task import LoopingCall

from wsrouter.handlers import Accept, HandlerContext, Request, Session

SUBPROTOCOL = "dumb-increment-protocol"
#: Seconds between two counts.
INTERVAL = 0.05


class DumbIncrement:
    """C{python:examples.handlers.increment:DumbIncrement}"""

    def __init__(self, context: HandlerContext):
        self.reactor = context.reactor

    def on_connect(self, request: Request) -> Accept:
        return Accept(SUBPROTOCOL if SUBPROTOCOL in request.protocols else None)

    def on_open(self, session: Session) -> None:
        session.data["count"] = 0
        ticker = LoopingCall(self._tick, session)
        ticker.clock = self.reactor
        session.data["ticker"] = ticker
        ticker.start(INTERVAL, now=True)

    def _tick(self, session: Session) -> None:
        if session.paused:
            return
        session.send(str(session.data["count"]))
        session.data["count"] += 1

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> None:
        if payload.strip() == b"reset":
            session.data["count"] = 0

    def on_close(self, session: Session, code: int, reason: str) -> None:
        ticker = session.data.get("ticker")
        if ticker is not None and ticker.running:
            ticker.stop()
