"""
A chat room: each message goes to everyone on the route, its sender
included, with its type.

The broadcast never waits: each member has a bounded queue (C{max_queue}
messages), and a member that stops reading is closed with 1008 once its
queue is full, while the others go on.  Join and leave notices are sent as
text, e.g. C{* 3 members}.
"""

from __future__ import annotations

from wsrouter.handlers import HandlerContext, Session


class Chat:
    """C{python:examples.handlers.chat:Chat}"""

    #: Messages that may wait for a member who is not reading; past it, 1008.
    max_queue = 64

    def __init__(self, context: HandlerContext):
        self.room = context.group

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> None:
        self.room.broadcast(payload, is_binary)

    def on_close(self, session: Session, code: int, reason: str) -> None:
        self.room.broadcast(f"* {len(self.room)} members")
