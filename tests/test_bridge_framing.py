"""
Tests for the bridge with the typed framings and client-to-target encoders
(L{wsrouter.streamframes}): whole client messages are encoded, the target's
frames keep their types, and a broken frame closes the client with its code.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_bridge import FakeLink, FakeSocket, one_byte_per_frame
from wsrouter.bridge import Bridge
from wsrouter.config import parse_framing
from wsrouter.framing import make_encoder, make_framer


def bridge_for(framing: str, max_size: int = 1 << 20) -> tuple[Bridge, list[tuple[Any, ...]]]:
    """A started bridge over fakes with C{framing} both ways."""
    events: list[tuple[Any, ...]] = []
    parsed = parse_framing(framing)
    bridge = Bridge(FakeSocket(events), FakeLink(events, message_oriented=False),
                    make_framer(parsed, "binary", max_size), encoder=make_encoder(parsed, max_size))
    bridge.start()
    return bridge, events


def client_message(bridge: Bridge, frames: list[bytes], is_binary: bool) -> None:
    bridge.message_begin(is_binary)
    for frame in frames:
        bridge.frame_data(frame)
    bridge.message_end()


def of(events: list[tuple[Any, ...]], kind: str) -> list[tuple[Any, ...]]:
    return [event[1:] for event in events if event[0] == kind]


def test_length_encoder_writes_one_prefixed_frame_per_message() -> None:
    """A fragmented client message is written once, whole, behind its length and type byte."""
    bridge, events = bridge_for("length:u16:typed")
    client_message(bridge, one_byte_per_frame(b"hello"), is_binary=False)
    client_message(bridge, [], is_binary=True)
    assert of(events, "write") == [(b"\x00\x05\x01hello",), (b"\x00\x00\x02",)]


def test_line_encoder_terminates_each_message() -> None:
    """With line framing each client message reaches the target as one newline-terminated line."""
    bridge, events = bridge_for("line")
    client_message(bridge, [b"2+", b"2"], is_binary=False)
    assert of(events, "write") == [(b"2+2\n",)]


def test_typed_target_frames_keep_their_types() -> None:
    """Typed length frames from the target go to the client with the type their byte names, split or not."""
    bridge, events = bridge_for("length:u16:typed")
    stream = b"\x00\x02\x02hi\x00\x01\x01a"
    for byte in one_byte_per_frame(stream):
        bridge.data_received(byte)
    assert of(events, "send") == [(b"hi", True), (b"a", False)]


@pytest.mark.parametrize(("framing", "stream", "code"), [
    ("length:u32", b"\x00\x01\x00\x00", 1009),
    ("json", b'["' + b"x" * 200, 1009),
    ("json", b"{nope}", 1011),
    ("length:u16:typed", b"\x00\x01\x09x", 1011),
])
def test_broken_target_frame_closes_the_client(framing: str, stream: bytes, code: int) -> None:
    """A frame over the limit closes the client with 1009, data the framing forbids with 1011; the target is dropped."""
    bridge, events = bridge_for(framing, max_size=100)
    bridge.data_received(stream)
    bridge.data_received(b"more")
    assert [close[0] for close in of(events, "close")] == [code]
    assert ("abort",) in events
    assert of(events, "send") == []


def test_client_message_too_long_for_u16_is_refused_with_1009() -> None:
    """A client message that no 2-byte prefix can carry closes the client with 1009 and is not written."""
    bridge, events = bridge_for("length:u16")
    client_message(bridge, [b"x" * 70000], is_binary=True)
    assert of(events, "write") == []
    assert [close[0] for close in of(events, "close")] == [1009]


def test_eof_inside_a_frame_drops_it_and_closes_normally() -> None:
    """At the target's end a partial length frame is not sent; the client gets 1000."""
    bridge, events = bridge_for("length:u16")
    bridge.data_received(b"\x00\x01a\x00\x09abc")
    bridge.eof_received()
    assert of(events, "send") == [(b"a", False)]
    assert [close[0] for close in of(events, "close")] == [1000]


def test_auto_framing_holds_a_split_character() -> None:
    """Auto framing sends a character cut by a read only once it is whole, as text."""
    bridge, events = bridge_for("auto")
    bridge.data_received(b"caf\xc3")
    bridge.data_received(b"\xa9!")
    bridge.data_received(b"\xff")
    assert of(events, "send") == [(b"caf", False), ("\u00e9!".encode(), False), (b"\xff", True)]


def test_eof_then_connection_end_log_the_drop_once_with_the_session() -> None:
    """A partial JSON value at the target's end is logged once, with the session id, though the end comes twice."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[tuple[Any, ...]] = []
    parsed = parse_framing("json")
    bridge = Bridge(FakeSocket(events), FakeLink(events, message_oriented=False),
                    make_framer(parsed, "binary", 1 << 20), encoder=make_encoder(parsed, 1 << 20),
                    session_id="s42")
    bridge.start()
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        bridge.data_received(b'{"a"')
        bridge.eof_received()  # the half-close
        bridge.link_lost(None)  # then the connection's clean end
    finally:
        globalLogPublisher.removeObserver(logged.append)
    drops = [formatEvent(event) for event in logged if "dropped" in (event.get("log_format") or "")]
    assert drops == ["session s42: target ended inside a frame; 4 bytes of it dropped"]
    assert [close[0] for close in of(events, "close")] == [1000]


def test_json_flush_forgets_an_earlier_drop() -> None:
    """A second flush of the json framer with nothing pending reports nothing dropped, as the length framer does."""
    framer = make_framer(parse_framing("json"), "binary", 1 << 20)
    framer.feed_typed(b'[1')  # type: ignore[attr-defined]
    framer.flush_typed()  # type: ignore[attr-defined]
    assert framer.dropped == 2  # type: ignore[attr-defined]
    framer.flush_typed()  # type: ignore[attr-defined]
    assert framer.dropped == 0  # type: ignore[attr-defined]
