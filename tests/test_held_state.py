"""
What a held connection keeps once its session is open: the handshake's
leftovers are gone, the factory's options live on the protocol's class,
and the connection still relays, pings and closes.  Real loopback sockets,
a router in this process and the ``websockets`` client in a thread.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from wsrouter.config import Limits
from wsrouter.ws.adapter import ClientFactory
from wsrouter.ws.internals import HANDSHAKE_ONLY, drop_handshake_state

from .support import RecordingTarget, connect, in_thread, listen_target, start_router


def _on_reactor(function: Any) -> Any:
    """Run C{function} on the reactor thread and wait for its result (from a client thread)."""
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, function)


@pytest_twisted.inlineCallbacks
def test_open_connection_forgets_the_handshake_and_still_relays():
    """An open session's protocol holds no handshake leftovers nor option copies, and echoes and closes as before."""
    port, _ = listen_target(lambda: RecordingTarget(echo=True))
    router = start_router(routes=[f"/echo=tcp://127.0.0.1:{port.getHost().port}"])
    seen: dict[str, Any] = {}

    def inspect() -> None:
        (session,) = router.gateway.sessions.values()
        protocol = session.connection
        seen["left"] = [name for name in HANDSHAKE_ONLY if name in protocol.__dict__]
        seen["options_in_instance"] = "maxMessagePayloadSize" in protocol.__dict__
        seen["max"] = protocol.maxMessagePayloadSize
        seen["queue"] = type(protocol.send_queue).__name__

    def client() -> tuple[bytes, bytes]:
        with connect(router.url + "/echo?x=1", subprotocols=["binary"]) as ws:
            ws.send(b"first")
            first = ws.recv()
            _on_reactor(inspect)
            ws.ping(b"p").wait(10)
            ws.send(b"second")
            return first, ws.recv()

    try:
        first, second = yield in_thread(client)
        assert (first, second) == (b"first", b"second")
        assert seen["left"] == []
        assert seen["options_in_instance"] is False
        assert seen["max"] == router.gateway.config.limits.max_message_size
        assert seen["queue"] == "SendQueue"
    finally:
        yield router.stopService()
        yield port.stopListening()


def test_options_are_class_attributes_per_limits():
    """Each limits change gives new connections a class with those options; the earlier class keeps its own."""
    factory = ClientFactory(host=None, limits=Limits(max_message_size=1234), reactor=None)  # type: ignore[arg-type]
    before = factory.protocol
    factory.apply_limits(Limits(max_message_size=5678))
    after = factory.protocol
    assert (before.maxMessagePayloadSize, after.maxMessagePayloadSize) == (1234, 5678)
    # A function option is not turned into a method of the protocol.
    protocol: Any = after()
    assert protocol.perMessageCompressionAccept is factory.perMessageCompressionAccept


def test_drop_handshake_state_shrinks_the_instance_dict():
    """Forgetting the handshake's attributes rebuilds the instance dict smaller and keeps the rest."""

    class Holder:
        pass

    holder = Holder()
    for i in range(80):
        setattr(holder, f"kept{i}", i)
    for name in HANDSHAKE_ONLY:
        setattr(holder, name, name * 20)
    holder.send_queue = __import__("collections").deque()
    before = sys.getsizeof(holder.__dict__)
    drop_handshake_state(holder)
    assert not any(hasattr(holder, name) for name in HANDSHAKE_ONLY)
    assert [getattr(holder, f"kept{i}") for i in range(80)] == list(range(80))
    assert holder.send_queue == [] and hasattr(holder.send_queue, "popleft")
    assert sys.getsizeof(holder.__dict__) < before


def test_send_queue_is_first_in_first_out():
    """The small send queue hands its entries back in the order they were queued, as Autobahn expects."""
    from wsrouter.ws.internals import SendQueue

    queue = SendQueue()
    queue.append((b"a", True))
    queue.append((b"b", False))
    assert [queue.popleft(), queue.popleft()] == [(b"a", True), (b"b", False)]
    assert len(queue) == 0




@pytest.mark.parametrize("path", ["one-parse", "twisted.web"])
@pytest_twisted.inlineCallbacks
def test_closed_connection_is_freed_without_the_garbage_collector(path, monkeypatch):
    """A closed connection's protocol, session, bridge, link, channel (and request) are freed by reference counting."""
    import gc
    import weakref

    from twisted.internet.task import deferLater

    from wsrouter.web import channel as channel_module
    from wsrouter.ws.upgrade import WebSocketUpgrade

    port, _ = listen_target(lambda: RecordingTarget(echo=True))
    router = start_router(routes=[f"/echo=tcp://127.0.0.1:{port.getHost().port}"])
    refs: list[Any] = []

    class Observer:
        def session_opened(self, session: Any) -> None:
            refs.extend(weakref.ref(o) for o in (session, session.connection, session.bridge, session.link))

        def session_closed(self, session: Any) -> None:
            pass

    router.gateway.observe(Observer())
    if path == "one-parse":
        hand_over = channel_module.hand_over

        def spy_hand_over(channel: Any, *args: Any) -> Any:
            refs.append(weakref.ref(channel))
            return hand_over(channel, *args)

        monkeypatch.setattr(channel_module, "hand_over", spy_hand_over)
        expected = 5
    else:
        monkeypatch.setattr(channel_module, "upgrade_factory", lambda *args: None)
        render = WebSocketUpgrade.render

        def spy(self: Any, request: Any) -> Any:
            refs.extend((weakref.ref(request), weakref.ref(request.channel)))
            return render(self, request)

        monkeypatch.setattr(WebSocketUpgrade, "render", spy)
        expected = 6

    def client() -> bytes:
        with connect(router.url + "/echo") as ws:
            ws.send(b"one")
            return bytes(ws.recv())

    gc.collect()
    gc.disable()
    try:
        assert (yield in_thread(client)) == b"one"
        for _ in range(200):  # bounded: the session ends as soon as both sides have closed
            if refs and not router.gateway.sessions and all(ref() is None for ref in refs):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        assert len(refs) == expected
        assert [ref() for ref in refs] == [None] * expected
    finally:
        gc.enable()
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_autobahn_writes_go_through_write_through(monkeypatch):
    """The 101 answer and the close frame Autobahn writes take the direct send path, not the transport's queue."""
    from wsrouter.ws import adapter

    seen: list[bytes] = []
    direct = adapter.write_through

    def spy(transport: Any, data: bytes) -> None:
        seen.append(bytes(data))
        direct(transport, data)

    monkeypatch.setattr(adapter, "write_through", spy)
    port, _ = listen_target(lambda: RecordingTarget(echo=True))
    router = start_router(routes=[f"/echo=tcp://127.0.0.1:{port.getHost().port}"])

    def client() -> bytes:
        with connect(router.url + "/echo") as ws:
            ws.send(b"one")
            return bytes(ws.recv())

    try:
        assert (yield in_thread(client)) == b"one"
        assert any(data.startswith(b"HTTP/1.1 101") for data in seen)
        assert any(data[:1] == b"\x88" for data in seen)  # the close frame answering the client's
    finally:
        yield router.stopService()
        yield port.stopListening()
