"""
The in-process echo target: every client message comes straight back,
whole and with its type (text stays text), empty messages included.

Useful for demos and for testing a deployment end to end without a backend.
Flow control still holds: when the client stops reading, the echo stops
reading from the client.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from wsrouter.interfaces import Link, LinkReceiver, SessionInfo


@implementer(IPushProducer, IConsumer)
class EchoLink:
    """
    Echoes each whole message with its type (a L{MessageLink}); pausing it
    pauses the client's reading.

    As a consumer it keeps the client side's producer, so that when the
    client's transport asks the echo (the producer of what it sends) to
    pause, the echo pauses reading from that same client.
    """

    message_oriented = True

    def __init__(self) -> None:
        self._receiver: LinkReceiver | None = None
        self._upstream: IPushProducer | None = None
        self._closed = False
        self.producer: IPushProducer | None = self
        self.consumer: IConsumer | None = self

    # consumer side: the client's producer registers here
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        # The bridge registers the client's transport, a streaming (push) producer.
        self._upstream = cast(IPushProducer, producer)

    def unregisterProducer(self) -> None:
        self._upstream = None

    # producer side: the client's transport pauses us when it is full
    def pauseProducing(self) -> None:
        if self._upstream is not None:
            self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        if self._upstream is not None:
            self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client's transport is gone.  Twisted says so before the
        WebSocket hears of it; closing here would make the session look
        ended by the target (1000).  The bridge closes the echo next.
        """

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver

    def write(self, data: bytes) -> None:
        """Bytes with no known type go back as one binary message."""
        self.write_message(data, True)

    def write_message(self, payload: bytes, is_binary: bool) -> None:
        if self._receiver is not None and not self._closed:
            self._receiver.message_received(payload, is_binary)

    def write_eof(self) -> None:
        """The client is done; the echo has nothing more to say either."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._receiver is not None:
                self._receiver.link_lost(None)

    abort = close


class EchoConnector:
    def connect(self, session: SessionInfo) -> Deferred[Link]:
        return succeed(EchoLink())
