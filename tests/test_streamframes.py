"""
Tests for L{wsrouter.streamframes} and L{wsrouter.framing.make_encoder}:
the typed framings give the same messages however the stream is chunked,
and what an encoder writes is cut back into the very messages it was given.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrouter.config import Framing, parse_framing
from wsrouter.framing import make_encoder, make_framer
from wsrouter.streamframes import (
    AutoFramer,
    FramingError,
    JsonFramer,
    LengthFramer,
    TextFramer,
    _incomplete_tail,
    encode_length,
)

Typed = list[tuple[bytes, bool]]


def run(framer: object, chunks: Iterable[bytes]) -> Typed:
    """Feed C{chunks}, then flush; every (payload, is_binary) in order."""
    messages: Typed = []
    for chunk in chunks:
        messages += framer.feed_typed(chunk)  # type: ignore[attr-defined]
    return messages + framer.flush_typed()  # type: ignore[attr-defined]


def chunkings(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and random cuts (empty chunks included)."""
    ways = [[data], [data[i:i + 1] for i in range(len(data))]]
    for seed in range(5):
        rng, chunks, offset = random.Random(seed), [], 0
        while offset < len(data):
            size = rng.choice((0, 1, 2, 3, 5, 8, 13))
            chunks.append(data[offset:offset + size])
            offset += size
        ways.append(chunks)
    return ways


def joined_text(messages: Typed) -> bytes:
    assert all(not is_binary for _, is_binary in messages)
    return b"".join(payload for payload, _ in messages)


# -- auto and text ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["plain ascii", "caf\u00e9 \u20ac \U0001f600 \u4e2d\u6587", "\U0001f600" * 5])
def test_auto_never_cuts_a_character(text: str) -> None:
    """Valid UTF-8 split anywhere comes out as text messages, each valid UTF-8, together the whole text."""
    data = text.encode("utf-8")
    for chunks in chunkings(data):
        messages = run(AutoFramer(), chunks)
        for payload, is_binary in messages:
            assert not is_binary
            payload.decode("utf-8")
        assert joined_text(messages) == data


def test_auto_sends_invalid_data_as_binary() -> None:
    """A chunk that is not UTF-8 goes out whole, as binary."""
    assert run(AutoFramer(), [b"ok", b"\xff\xfe", b"\xc3"]) == [(b"ok", False), (b"\xff\xfe", True), (b"\xc3", True)]


def test_auto_sends_a_held_partial_character_as_binary_at_eof() -> None:
    """An incomplete character at the end of the stream is sent as a last, binary message."""
    framer = AutoFramer()
    assert framer.feed_typed(b"a\xe2\x82") == [(b"a", False)]
    assert framer.flush_typed() == [(b"\xe2\x82", True)]
    assert framer.flush_typed() == []


@pytest.mark.parametrize(("data", "cut"), [
    (b"", 0), (b"abc", 3), (b"a\xc3", 1), (b"a\xc3\xa9", 3), (b"\xe2\x82", 0), (b"\xe2\x82\xac", 3),
    (b"\xf0\x9f\x98", 0), (b"\xf0\x9f\x98\x80", 4), (b"\x80\x80\x80", 3), (b"\xff", 1), (b"a\xc0", 2),
])
def test_incomplete_tail(data: bytes, cut: int) -> None:
    """Only a lead byte whose sequence is still short marks a tail to hold."""
    assert _incomplete_tail(data) == cut


def test_text_replaces_invalid_bytes_and_keeps_split_characters() -> None:
    """Text framing always sends text: split characters are joined, invalid bytes become U+FFFD."""
    data = "\u20ac1".encode() + b"\xff" + "\U0001f600".encode()
    for chunks in chunkings(data):
        assert joined_text(run(TextFramer(), chunks)).decode("utf-8") == "\u20ac1\ufffd\U0001f600"
    framer = TextFramer()
    assert framer.feed_typed(b"x\xe2\x82") == [(b"x", False)]
    assert framer.flush_typed() == [("\ufffd".encode(), False)]


# -- length-prefixed ---------------------------------------------------------------

MESSAGES: Typed = [(b"hello", False), (b"", False), (b"\x00\xff\x80", True), (b"", True),
                   (("\u20ac" * 100).encode(), False), (b"binary but UTF-8", True), (b"x" * 70000, True)]


@pytest.mark.parametrize("width", [2, 4])
def test_typed_length_round_trip(width: int) -> None:
    """Encoded typed frames, however split, give back every message with its type, empty ones included."""
    messages = [m for m in MESSAGES if len(m[0]) < (1 << (8 * width))]
    encode = encode_length(width, typed=True)
    stream = b"".join(encode(payload, is_binary) for payload, is_binary in messages)
    for chunks in chunkings(stream) if width == 2 else [[stream], [stream[i:i + 7] for i in range(0, len(stream), 7)]]:
        assert run(LengthFramer(width, True, 1 << 20), chunks) == messages


def test_untyped_length_frames_are_text_when_utf8() -> None:
    """Without a type byte a frame is text when it is valid UTF-8, binary otherwise."""
    stream = struct.pack(">H", 2) + b"hi" + struct.pack(">H", 2) + b"\xff\x00"
    assert run(LengthFramer(2, False, 100), [stream]) == [(b"hi", False), (b"\xff\x00", True)]
    assert encode_length(2, False)(b"hi", True) == b"\x00\x02hi"


def test_length_over_the_limit_raises_1009_before_buffering() -> None:
    """A prefix announcing more than max_size raises FramingError 1009 as soon as the prefix is read."""
    framer = LengthFramer(4, False, 10)
    with pytest.raises(FramingError) as caught:
        framer.feed_typed(struct.pack(">I", 11))
    assert caught.value.code == 1009
    assert run(LengthFramer(4, False, 10), [struct.pack(">I", 10) + b"x" * 10]) == [(b"x" * 10, False)]


def test_length_encoder_refuses_a_message_too_long_for_u16() -> None:
    """A client message that cannot fit a 2-byte prefix raises FramingError 1009."""
    with pytest.raises(FramingError) as caught:
        encode_length(2, True)(b"x" * 65536, True)
    assert caught.value.code == 1009
    assert len(encode_length(2, True)(b"x" * 65535, True)) == 65538


@pytest.mark.parametrize("frame", [b"\x00\x01\x07x", b"\x00\x01\x01\xff"])
def test_bad_typed_frames_raise_1011(frame: bytes) -> None:
    """An unknown type byte, or a text frame that is not UTF-8, raises FramingError 1011."""
    with pytest.raises(FramingError) as caught:
        LengthFramer(2, True, 100).feed_typed(frame)
    assert caught.value.code == 1011


def test_length_partial_frame_is_dropped_at_eof() -> None:
    """A frame cut by the end of the stream is dropped and counted, never sent."""
    framer = LengthFramer(2, False, 100)
    assert framer.feed_typed(b"\x00\x01a\x00\x05ab") == [(b"a", False)]
    assert framer.flush_typed() == []
    assert framer.dropped == 4


# -- json ----------------------------------------------------------------------------

JSON_VALUES = ['{"a": [1, 2, {"b": "}]\\"["}]}', "[]", '"str\\\\"', "42", "true", '{"u": "\u20ac\\u20ac"}',
               "-1.5e3", "null", '[[["deep"]]]', '""']


def test_json_values_ignore_chunking() -> None:
    """Consecutive JSON values, with or without whitespace between, come out one text message each."""
    stream = ("\n".join(JSON_VALUES[:4]) + " " + "".join(JSON_VALUES[5:7]) + "\r\n\t" + " ".join(JSON_VALUES[7:])
              + " " + JSON_VALUES[4]).encode()
    expected = [value.encode() for value in JSON_VALUES[:4] + JSON_VALUES[5:] + [JSON_VALUES[4]]]
    for chunks in chunkings(stream):
        messages = run(JsonFramer(1000), chunks)
        assert [payload for payload, _ in messages] == expected
        assert all(not is_binary for _, is_binary in messages)
        assert [json.loads(payload) for payload, _ in messages]


def test_json_scalar_at_eof_is_sent_and_unfinished_value_dropped() -> None:
    """A number ended by the stream is a last message; an unfinished object is dropped and counted."""
    assert run(JsonFramer(100), [b"[1] 42"]) == [(b"[1]", False), (b"42", False)]
    framer = JsonFramer(100)
    assert framer.feed_typed(b'{"a": 1} {"b": ') == [(b'{"a": 1}', False)]
    assert framer.flush_typed() == []
    assert framer.dropped == 6


@pytest.mark.parametrize("stream", [b"]", b"{'a': 1}", b"[1,]", b'"\xff"'])
def test_invalid_json_raises_1011(stream: bytes) -> None:
    """Data that is not JSON raises FramingError 1011."""
    with pytest.raises(FramingError) as caught:
        JsonFramer(100).feed_typed(stream)
    assert caught.value.code == 1011


def test_json_value_over_the_limit_raises_1009_while_buffering() -> None:
    """A value that grows past max_size raises 1009 without waiting for its end."""
    framer = JsonFramer(10)
    framer.feed_typed(b'["0123')
    with pytest.raises(FramingError) as caught:
        framer.feed_typed(b"45678")
    assert caught.value.code == 1009


def test_long_json_value_in_small_chunks_is_linear() -> None:
    """A value fed in small chunks is scanned from where the last scan stopped (no rescans)."""
    value = b'["' + b"x" * 200000 + b'"]'
    framer = JsonFramer(1 << 20)
    scanned = []
    original = framer._scan

    def counting(messages: Typed) -> None:
        scanned.append(len(framer._buffer) - framer._pos)
        original(messages)

    framer._scan = counting  # type: ignore[method-assign]
    for offset in range(0, len(value), 100):
        framer.feed_typed(value[offset:offset + 100])
    assert sum(scanned) <= len(value) + 100
    assert framer.flush_typed() == []


# -- encoders and decoders together -----------------------------------------------------

def encode_all(framing: str, messages: Typed) -> bytes:
    encoder = make_encoder(parse_framing(framing), 1 << 20)
    assert encoder is not None
    return b"".join(encoder(payload, is_binary) for payload, is_binary in messages)


@pytest.mark.parametrize(("framing", "messages"), [
    ("line", [(b"one", False), (b"", False), (b"two", False)]),
    ("line:crlf", [(b"one", False), (b"\xe2\x82\xac", False)]),
    ("separator:\\0", [(b"a", False), (b"b\n", False)]),
    ("length:u16:typed", MESSAGES[:5]),
    ("length:u32:typed", MESSAGES),
    ("json", [(b'{"a":1}', False), (b"[2]", False), (b'"s"', False)]),
])
def test_encoder_then_framer_gives_the_messages_back(framing: str, messages: Typed) -> None:
    """What the encoder writes, split anywhere, is cut back into the same messages with the same types."""
    stream = encode_all(framing, messages)
    big = [[stream], [stream[i:i + 1000] for i in range(0, len(stream), 1000)]]
    for chunks in chunkings(stream) if len(stream) < 5000 else big:
        framer = make_framer(parse_framing(framing), "binary", 1 << 20)
        got: list[bytes] = []
        for chunk in chunks:
            got += framer.feed(chunk)
        got += framer.flush()
        assert got == [payload for payload, _ in messages]
        if framing.startswith("length"):
            assert run(make_framer(parse_framing(framing), "binary", 1 << 20), chunks) == messages


def test_line_encoder_appends_the_end_only_once() -> None:
    """A line message already ending in the newline gets none added; others get exactly one."""
    encoder = make_encoder(parse_framing("line"), 100)
    assert encoder is not None
    assert encoder(b"a", False) == b"a\n"
    assert encoder(b"a\n", False) == b"a\n"
    assert encoder(b"", False) == b"\n"
    crlf = make_encoder(parse_framing("line:crlf"), 100)
    assert crlf is not None and crlf(b"a", False) == b"a\r\n"


@pytest.mark.parametrize("framing", [None, Framing("binary"), Framing("fixed", length=4), Framing("auto"),
                                     Framing("text")])
def test_stream_framings_have_no_encoder(framing: Framing | None) -> None:
    """Framings without message boundaries on the target side stream client frames unbuffered."""
    assert make_encoder(framing, 100) is None


@pytest.mark.parametrize("size", [1 << 16, 1 << 20])
def test_length_framer_handles_big_coalesced_streams(size: int) -> None:
    """Many frames in one chunk are all cut out, and the buffer ends empty."""
    frame = encode_length(4, True)(b"y" * 1000, True)
    count = size // len(frame)
    framer = LengthFramer(4, True, 1 << 20)
    messages = framer.feed_typed(frame * count)
    assert len(messages) == count and not framer._buffer



_MESSAGE = st.one_of(st.binary(max_size=300).map(lambda data: (data, True)),
                     st.text(max_size=100).map(lambda text: (text.encode("utf-8"), False)))


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(_MESSAGE, max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=50), max_size=40), width=st.sampled_from([2, 4]))
def test_typed_length_round_trip_property(messages: Typed, cuts: list[int], width: int) -> None:
    """Any messages, encoded with typed length prefixes and cut anywhere, come back exactly, types included."""
    encode = encode_length(width, typed=True)
    stream = b"".join(encode(payload, is_binary) for payload, is_binary in messages)
    chunks, offset = [], 0
    for cut in cuts:
        chunks.append(stream[offset:offset + cut])
        offset += cut
    chunks.append(stream[offset:])
    assert run(LengthFramer(width, True, 1000), chunks) == messages


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                    lambda inner: st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10),
                       max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=30))
def test_json_round_trip_property(values: list[object], cuts: list[int]) -> None:
    """Any JSON values, written as NDJSON by the encoder and cut anywhere, come back one message each, equal."""
    encoder = make_encoder(parse_framing("json"), 1 << 20)
    assert encoder is not None
    stream = b"".join(encoder(json.dumps(value, ensure_ascii=False).encode("utf-8"), False)
                      for value in values)
    chunks, offset = [], 0
    for cut in cuts:
        chunks.append(stream[offset:offset + cut])
        offset += cut
    chunks.append(stream[offset:])
    got = run(JsonFramer(1 << 20), chunks)
    assert [json.loads(payload) for payload, _ in got] == values


def test_unknown_type_byte_is_refused_whatever_the_payload() -> None:
    """A typed frame with type 0 is refused (1011), even when its payload is not UTF-8 (found by atheris)."""
    framer = LengthFramer(2, True, 64)
    with pytest.raises(FramingError) as caught:
        framer.feed_typed(b"\x00\x03\x00\x91\x91\x9a")
    assert caught.value.code == 1011


def test_messages_before_a_bad_frame_in_one_read_come_with_the_error() -> None:
    """Whole frames read together with a bad one are handed over with the error, as if the read had been cut."""
    framer = LengthFramer(2, True, 64)
    with pytest.raises(FramingError) as caught:
        framer.feed_typed(b"\x00\x02\x01hi" + b"\x00\x01\x02\x00" + b"\xff\xff\x01")
    assert caught.value.code == 1009
    assert caught.value.messages == [(b"hi", False), (b"\x00", True)]


def test_json_values_before_an_oversized_one_come_with_the_error() -> None:
    """JSON values read together with one over the limit are handed over with the 1009 (found by atheris)."""
    framer = JsonFramer(14)
    with pytest.raises(FramingError) as caught:
        framer.feed_typed(b'""""\x00\x00t\x80\x02\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00')
    assert caught.value.code == 1009
    assert caught.value.messages == [(b'""', False), (b'""', False)]
