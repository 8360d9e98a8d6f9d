"""
Flow control with a message framing: a client that stops reading pauses a
target flooding it with length-prefixed frames, and the framer's buffer
never holds more than one frame.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from websockets.exceptions import ConnectionClosed

from wsrouter.streamframes import encode_length

from .support import TargetFactory, connect, in_thread, start_router
from .test_tls import Flooder

FRAME = encode_length(4, True)(b"\x07" * (64 * 1024 - 5), True)  # 64 KiB on the wire


class FrameFlooder(Flooder):
    """Writes whole typed length frames, 1 MiB at a time."""

    chunk = FRAME * 16


@pytest_twisted.inlineCallbacks
def test_slow_client_stalls_a_target_sending_length_frames() -> Any:
    """A client that does not read makes the router stop reading the framed target, far from done; all arrives later."""
    total = 64 * 1024 * 1024
    factory = TargetFactory(lambda: FrameFlooder(total))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    service = start_router(routes=[f"/t[framing=length:u32:typed]=tcp://127.0.0.1:{port.getHost().port}"])
    may_read, opened = threading.Event(), threading.Event()

    def slow_client() -> tuple[int, int]:
        received = messages = 0
        with connect(service.url + "/t", max_queue=4) as ws:
            opened.set()
            may_read.wait(60)
            try:
                while True:
                    message = ws.recv(timeout=30)
                    assert isinstance(message, bytes) and len(message) == len(FRAME) - 5
                    received, messages = received + len(message), messages + 1
            except ConnectionClosed:
                return received, messages

    try:
        reading = in_thread(slow_client)
        assert (yield in_thread(opened.wait, 30))
        flooder = yield factory.connected.addTimeout(10, reactor)
        yield flooder.paused.addTimeout(10, reactor)
        steady, last = 0, -1
        for _ in range(150):
            yield deferLater(reactor, 0.2, lambda: None)
            steady, last = (steady + 1, last) if flooder.sent == last else (0, flooder.sent)
            if steady == 5:
                break
        assert steady == 5 and flooder.sent < total // 2, (steady, flooder.sent)
        session = next(iter(service.gateway.sessions.values()))
        assert len(session.bridge._framer._buffer) < len(FRAME)
        may_read.set()
        received, messages = yield reading
        assert messages == total // len(FRAME)
        assert received == messages * (len(FRAME) - 5)
    finally:
        may_read.set()
        yield service.stopService()
        yield port.stopListening()
