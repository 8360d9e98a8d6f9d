"""The echo: target is a message echo: each message comes back whole, with its type."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.support import connect, in_thread, start_router
from wsrouter.bridge import Bridge
from wsrouter.framing import make_framer
from wsrouter.targets.echo import EchoLink


class _Socket:
    """A WebSocket end that keeps what the bridge sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append((payload, is_binary))

    def close(self, code: int, reason: str) -> None:
        pass

    def attach_producer(self, producer: Any) -> None:
        pass

    def consumer_producer(self) -> Any:
        return None


def _bridge() -> tuple[Bridge, _Socket]:
    socket = _Socket()
    link = EchoLink()
    link.consumer = None
    bridge = Bridge(socket, link, make_framer(None, "binary", 0))
    bridge.start()
    return bridge, socket


@pytest.mark.parametrize("is_binary", [True, False])
@pytest.mark.parametrize("parts", [[b""], [b"abc"], [b"a", b"", b"bc"]])
def test_bridge_echoes_type_and_whole_message(is_binary: bool, parts: list[bytes]) -> None:
    """Through the bridge, the echo returns each message once, joined, with the type it came with."""
    bridge, socket = _bridge()
    bridge.message_begin(is_binary)
    for part in parts:
        bridge.frame_data(part)
    assert socket.sent == []
    bridge.message_end()
    assert socket.sent == [(b"".join(parts), is_binary)]


def _exchange(url: str, messages: list[Any]) -> list[Any]:
    with connect(url) as ws:
        replies = []
        for message in messages:
            ws.send(message)
            replies.append(ws.recv(timeout=10))
        return replies


@pytest_twisted.inlineCallbacks
def test_echo_keeps_type_and_empty_messages():
    """Text comes back as text and binary as binary, empty ones included, over a real socket."""
    router = start_router(routes=["/e=echo:"])
    messages = ["héllo", b"\x00\xffbin", "", b"", "x" * 70000, b"y" * 70000]
    try:
        replies = yield in_thread(_exchange, router.url + "/e", messages)
        assert replies == messages
        assert [type(r) for r in replies] == [type(m) for m in messages]
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_echo_joins_fragmented_message():
    """A message sent in fragments comes back as one message of the same type."""
    router = start_router(routes=["/e=echo:"])
    try:
        replies = yield in_thread(_exchange, router.url + "/e", [["fr", "ag", "", "ment"], [b"a", b"b"]])
        assert replies == ["fragment", b"ab"]
    finally:
        yield router.stopService()
