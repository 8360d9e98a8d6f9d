"""
The private Twisted and Autobahn attributes wsrouter relies on, all read in
L{wsrouter.ws.internals}, checked against the installed libraries: if an
upgrade renames or changes one, these fail and name it, instead of the
relay silently losing early frames or its drain accounting.
"""

from __future__ import annotations

import pprint
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import txaio
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.web.http import HTTPChannel

from wsrouter.config import Limits
from wsrouter.ws.adapter import ClientFactory
from wsrouter.ws.internals import (
    PRIVATE_ATTRIBUTES,
    channel_producer_holder,
    channel_unread,
    idle_tcp,
    queued_bytes,
    take_after_handshake,
)


@pytest.fixture
def txaio_clock() -> Iterator[Clock]:
    """Autobahn's handshake timer runs on txaio's loop: a Clock here, so no timer is left on the reactor."""
    clock = Clock()
    previous = txaio.config.loop
    txaio.config.loop = clock
    yield clock
    txaio.config.loop = previous


def _missing(obj: Any, key: str) -> list[str]:
    return [name for name in PRIVATE_ATTRIBUTES[key] if not hasattr(obj, name)]


@pytest_twisted.inlineCallbacks
def test_tcp_transport_queue_attributes() -> Any:
    """A real TCP transport has the queue attributes read for write-through and drain accounting, as they were."""
    accepted: defer.Deferred[Any] = defer.Deferred()

    class Keep(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Keep), interface="127.0.0.1")
    client = protocol.ClientCreator(reactor, protocol.Protocol)
    try:
        peer = yield client.connectTCP("127.0.0.1", port.getHost().port)
        transport = yield accepted
        assert _missing(transport, "twisted.internet.tcp.Connection") == [], (
            "Twisted's TCP transport changed: update wsrouter/ws/internals.py")
        assert idle_tcp(transport)
        assert queued_bytes(transport) == 0
        transport.write(b"x" * 1000)  # queued until the reactor's next turn
        assert not idle_tcp(transport)
        assert queued_bytes(transport) >= 1000
        transport.loseConnection()
        peer.transport.loseConnection()
    finally:
        yield port.stopListening()


def test_http_channel_attributes() -> None:
    """twisted.web's HTTP channel keeps its producer registration and unread bytes where the upgrade takes them."""
    channel = HTTPChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    assert _missing(channel, "twisted.web.http.HTTPChannel") == [], (
        "twisted.web's HTTPChannel changed: update wsrouter/ws/internals.py")
    assert channel_producer_holder(channel, transport) is not None
    assert isinstance(channel._dataBuffer, list)  # type: ignore[attr-defined]
    channel._dataBuffer.append(b"early")  # type: ignore[attr-defined]
    channel._buffer = b" frames"  # type: ignore[attr-defined]
    assert channel_unread(channel) == b"early frames"


def test_autobahn_handshake_buffer(txaio_clock: Clock) -> None:
    """Autobahn still buffers received bytes in `data` and processes them in `_dataReceived`."""
    factory = ClientFactory(host=None, limits=Limits(), reactor=None)  # type: ignore[arg-type]
    proto: Any = factory.buildProtocol(iosim.FakeAddress())
    proto.makeConnection(iosim.FakeTransport(proto, isServer=True))
    assert _missing(proto, "autobahn.websocket.protocol.WebSocketProtocol") == [], (
        "Autobahn's WebSocketProtocol changed: update wsrouter/ws/internals.py")
    assert callable(WebSocketProtocol._dataReceived)
    proto.data = b"after the handshake"
    assert take_after_handshake(proto) == b"after the handshake"
    assert proto.data == b""


def test_protocol_options_copied_without_patching_autobahn(txaio_clock: Clock) -> None:
    """Each protocol gets every Autobahn option from the factory, and Autobahn's module is left unpatched."""
    factory = ClientFactory(host=None, limits=Limits(max_message_size=1234), reactor=None)  # type: ignore[arg-type]
    proto: Any = factory.buildProtocol(iosim.FakeAddress())
    proto.makeConnection(iosim.FakeTransport(proto, isServer=True))
    assert autobahn_protocol.pformat is pprint.pformat
    for name in autobahn_protocol.WebSocketServerProtocol.CONFIG_ATTRS:
        assert getattr(proto, name) == getattr(factory, name), name
    assert (proto.maxMessagePayloadSize, proto.maxFramePayloadSize) == (1234, 1234)
