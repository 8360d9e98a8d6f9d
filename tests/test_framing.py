"""
Tests for L{wsrouter.framing}: every framer gives the same messages however
the stream is chunked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import pytest

from wsrouter.config import Framing
from wsrouter.framing import (
    BinaryFramer,
    FixedLengthFramer,
    LineFramer,
    SeparatorFramer,
    make_framer,
    message_is_binary,
)
from wsrouter.interfaces import Framer

FramerFactory = Callable[[], Framer]


def run(framer: Framer, chunks: Iterable[bytes]) -> list[bytes]:
    """Feed C{chunks} in order, then flush; return every message."""
    messages: list[bytes] = []
    for chunk in chunks:
        messages += framer.feed(chunk)
    return messages + framer.flush()


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int) -> list[bytes]:
    """Cut C{data} at random places (empty chunks included), reproducibly."""
    rng = random.Random(seed)
    chunks, offset = [], 0
    while offset < len(data):
        size = rng.choice((0, 1, 2, 3, 5, 8, 13, 64))
        chunks.append(data[offset:offset + size])
        offset += size
    return chunks


def chunkings(data: bytes) -> list[list[bytes]]:
    """All the ways a test feeds one input: whole, byte by byte, random cuts."""
    return [[data], one_byte_at_a_time(data)] + [random_splits(data, seed) for seed in range(5)]


# (framer factory, stream, messages including those from flush)
STREAM_CASES = [
    pytest.param(lambda: LineFramer(100), b"", [], id="line-empty"),
    pytest.param(lambda: LineFramer(100), b"one\ntwo\n", [b"one", b"two"], id="line-lf"),
    pytest.param(lambda: LineFramer(100), b"one\r\ntwo\r\n", [b"one", b"two"], id="line-crlf"),
    pytest.param(lambda: LineFramer(100), b"a\n\n\r\nb\n", [b"a", b"", b"", b"b"], id="line-empty-lines"),
    pytest.param(lambda: LineFramer(100), b"a\rb\n", [b"a\rb"], id="line-lone-cr-is-data"),
    pytest.param(lambda: LineFramer(100), b"a\r\r\n", [b"a\r"], id="line-only-one-cr-stripped"),
    pytest.param(lambda: LineFramer(100), b"one\ntail", [b"one", b"tail"], id="line-flush-tail"),
    pytest.param(lambda: LineFramer(100), b"tail\r", [b"tail\r"], id="line-flush-keeps-cr"),
    pytest.param(lambda: LineFramer(4), b"abcdefghij\n", [b"abcd", b"efgh", b"ij"], id="line-oversized"),
    pytest.param(lambda: LineFramer(4), b"abcdefgh\n", [b"abcd", b"efgh"], id="line-exact-multiple"),
    pytest.param(lambda: LineFramer(4), b"abcd\r\nx\n", [b"abcd", b"x"], id="line-max-then-crlf"),
    pytest.param(lambda: LineFramer(4), b"abcd\rx\n", [b"abcd", b"\rx"], id="line-max-then-lone-cr"),
    pytest.param(lambda: LineFramer(4), b"abcdefghij", [b"abcd", b"efgh", b"ij"], id="line-oversized-tail"),
    pytest.param(lambda: LineFramer(1), b"ab\r\n\n", [b"a", b"b", b""], id="line-max-one"),
    pytest.param(lambda: SeparatorFramer(b"\0", 100), b"a\0b\0c", [b"a", b"b", b"c"], id="sep-nul"),
    pytest.param(lambda: SeparatorFramer(b"--", 100), b"a--b----c-", [b"a", b"b", b"", b"c-"], id="sep-two-bytes"),
    pytest.param(lambda: SeparatorFramer(b"\r\n\r\n", 100), b"h1\r\nh2\r\n\r\nbody\r\n\r\n",
                 [b"h1\r\nh2", b"body"], id="sep-overlapping-prefix"),
    pytest.param(lambda: SeparatorFramer(b"<END>", 100), b"x<EN<END>y<END", [b"x<EN", b"y<END"], id="sep-partial"),
    pytest.param(lambda: SeparatorFramer(b"<END>", 3), b"abcdefg<END>hi", [b"abc", b"def", b"g", b"hi"],
                 id="sep-oversized"),
    pytest.param(lambda: SeparatorFramer(b"<END>", 3), b"abc<END>abcdef<END>", [b"abc", b"abc", b"def"],
                 id="sep-exact-max"),
    pytest.param(lambda: SeparatorFramer(b"\n", 100), b"a\r\n", [b"a\r"], id="sep-keeps-cr"),
    pytest.param(lambda: FixedLengthFramer(3), b"", [], id="fixed-empty"),
    pytest.param(lambda: FixedLengthFramer(3), b"abcdef", [b"abc", b"def"], id="fixed-exact"),
    pytest.param(lambda: FixedLengthFramer(3), b"abcdefgh", [b"abc", b"def", b"gh"], id="fixed-remainder"),
    pytest.param(lambda: FixedLengthFramer(1), b"xyz", [b"x", b"y", b"z"], id="fixed-one"),
]


@pytest.mark.parametrize("factory, stream, expected", STREAM_CASES)
def test_stream_framers_ignore_chunking(factory: FramerFactory, stream: bytes, expected: list[bytes]) -> None:
    """A framer gives the same messages whether fed all at once, byte by byte or in random pieces."""
    for chunks in chunkings(stream):
        assert run(factory(), chunks) == expected, chunks


@pytest.mark.parametrize("factory", [
    pytest.param(lambda: LineFramer(7), id="line"),
    pytest.param(lambda: SeparatorFramer(b"\r\n", 7), id="separator"),
    pytest.param(lambda: FixedLengthFramer(7), id="fixed"),
])
@pytest.mark.parametrize("seed", range(20))
def test_random_streams_ignore_chunking(factory: FramerFactory, seed: int) -> None:
    """On random streams rich in separators, chunking never changes the messages."""
    rng = random.Random(seed)
    stream = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randrange(200)))
    expected = run(factory(), [stream])
    for chunks in chunkings(stream)[1:]:
        assert run(factory(), chunks) == expected


@pytest.mark.parametrize("max_size", [1, 3, 16])
@pytest.mark.parametrize("factory, content", [
    pytest.param(LineFramer, b"x" * 50 + b"<>" + b"y" * 7, id="line"),
    pytest.param(lambda size: SeparatorFramer(b"<>", size), b"x" * 50 + b"\r\n" + b"y" * 7 + b"\n", id="separator"),
])
def test_messages_never_exceed_max_size(factory: Callable[[int], Framer], content: bytes, max_size: int) -> None:
    """No message is longer than max_size, and the pieces together hold every byte but the separators."""
    stream = b"x" * 50 + b"\r\n<>" + b"y" * 7 + b"\n"
    for chunks in chunkings(stream):
        messages = run(factory(max_size), chunks)
        assert all(len(m) <= max_size for m in messages)
        assert b"".join(messages) == content


def test_pending_data_stays_below_max_size() -> None:
    """A stream without line endings is passed on as it arrives, not buffered without limit."""
    framer = LineFramer(10)
    sent = []
    for _ in range(1000):
        sent += framer.feed(b"abc")
        assert len(framer._buffer) < 10 + 2
    assert b"".join(sent + framer.flush()) == b"abc" * 1000


def test_flush_empties_the_framer() -> None:
    """After flush the framer starts afresh, so a second flush returns nothing."""
    framer = SeparatorFramer(b"||", 100)
    assert framer.feed(b"a||b|") == [b"a"]
    assert framer.flush() == [b"b|"]
    assert framer.flush() == []
    assert framer.feed(b"|c||") == [b"|c"]


def test_long_line_in_small_chunks_is_linear() -> None:
    """A long line fed in many small chunks is searched once, not from its start at every chunk."""
    framer = LineFramer(64 * 1024 * 1024)
    chunk = b"x" * 100
    started = time.perf_counter()
    for _ in range(100_000):  # 10 MB; rescanning the buffer each time reads ~500 GB
        assert framer.feed(chunk) == []
    assert framer.feed(b"\n") == [b"x" * 10_000_000]
    assert time.perf_counter() - started < 10


def test_binary_framer_passes_chunks_through() -> None:
    """The binary framer returns each non-empty chunk itself, uncopied, and buffers nothing."""
    framer = BinaryFramer()
    chunk = b"hello\nworld"
    (message,) = framer.feed(chunk)
    assert message is chunk
    assert framer.feed(b"") == []
    assert framer.flush() == []


@pytest.mark.parametrize("framing, default, expected_type", [
    (None, "binary", BinaryFramer),
    (None, "line", LineFramer),
    (Framing("binary"), "line", BinaryFramer),
    (Framing("line"), "binary", LineFramer),
    (Framing("separator", separator=b"\0"), "binary", SeparatorFramer),
    (Framing("fixed", length=4), "binary", FixedLengthFramer),
])
def test_make_framer_picks_the_framer(framing: Framing | None, default: str, expected_type: type) -> None:
    """make_framer builds the route's framer, or the default kind's when the route names none."""
    assert type(make_framer(framing, default, 100)) is expected_type


def test_make_framer_passes_parameters() -> None:
    """make_framer hands the separator, length and max_size to the framer it builds."""
    assert run(make_framer(Framing("separator", separator=b"::"), "binary", 2), [b"abc::d"]) == [b"ab", b"c", b"d"]
    assert run(make_framer(Framing("fixed", length=2), "binary", 100), [b"abcde"]) == [b"ab", b"cd", b"e"]
    assert run(make_framer(None, "line", 2), [b"abc\n"]) == [b"ab", b"c"]


@pytest.mark.parametrize("framing, default", [
    (lambda: Framing("morse"), "binary"),
    (lambda: None, "morse"),
    (lambda: Framing("fixed", length=0), "binary"),
    (lambda: None, "fixed"),
    (lambda: Framing("separator", separator=b""), "binary"),
])
def test_make_framer_rejects_bad_framing(framing: Callable[[], Framing | None], default: str) -> None:
    """An unknown kind, a missing length or an empty separator raises ValueError (Framing itself refuses it)."""
    with pytest.raises(ValueError):
        make_framer(framing(), default, 100)


@pytest.mark.parametrize("factory", [lambda: LineFramer(0), lambda: FixedLengthFramer(-1)])
def test_sizes_must_be_positive(factory: FramerFactory) -> None:
    """A max_size or length below 1 is refused when the framer is built."""
    with pytest.raises(ValueError):
        factory()


@pytest.mark.parametrize("kind, payload, binary", [
    ("line", b"hello", False),
    ("line", "h\u00e9llo \u2603".encode(), False),
    ("line", b"", False),
    ("line", b"\xff\xfe", True),
    ("line", "\u2603".encode()[:2], True),
    ("separator", b"text", False),
    ("separator", b"\x80", True),
    ("binary", b"text", True),
    ("fixed", b"text", True),
])
def test_message_is_binary(kind: str, payload: bytes, binary: bool) -> None:
    """Line and separator messages are text when valid UTF-8; binary and fixed messages are always binary."""
    assert message_is_binary(kind, payload) is binary
