"""The client-frame parser: RFC 6455 rules, fed all at once and a byte at a time."""

from __future__ import annotations

import os
import random
import struct

import pytest

from wsrouter.ws.parser import FrameParser, unmask


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04",
          rsv: int = 0, length_form: str = "auto") -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length_form == "64" or (length_form == "auto" and n >= 65536):
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    elif length_form == "16" or (length_form == "auto" and n >= 126):
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BB", first, mask_bit | n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Recorder:
    def __init__(self):
        self.events = []

    def message_begin(self, is_binary):
        self.events.append(("begin", is_binary))

    def message_data(self, payload):
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + payload)
        else:
            self.events.append(("data", payload))

    def message_end(self):
        self.events.append(("end",))

    def ping(self, payload):
        self.events.append(("ping", payload))

    def pong(self, payload):
        self.events.append(("pong", payload))

    def close(self, code, reason):
        self.events.append(("close", code, reason))

    def fail(self, code, reason):
        self.events.append(("fail", code))


def parse(stream: bytes, split: str, max_size: int = 0):
    recorder = Recorder()
    parser = FrameParser(recorder, max_size)
    if split == "whole":
        parser.feed(stream)
    elif split == "bytes":
        for i in range(len(stream)):
            parser.feed(stream[i:i + 1])
    else:
        rng = random.Random(7)
        i = 0
        while i < len(stream):
            n = rng.randint(1, 300)
            parser.feed(stream[i:i + n])
            i += n
    return recorder.events


SPLITS = ["whole", "bytes", "random"]


@pytest.mark.parametrize("split", SPLITS)
def test_messages_and_control_frames(split):
    """Text, binary, fragmented messages with a ping in between, and a close come out in order however fed."""
    stream = (frame(1, "héllo".encode()) + frame(2, b"\x00\xff")
              + frame(1, b"frag", fin=False) + frame(9, b"p") + frame(0, b"ment", fin=False) + frame(0, b"ed")
              + frame(10, b"q") + frame(8, struct.pack("!H", 1000) + b"bye"))
    assert parse(stream, split) == [
        ("begin", False), ("data", "héllo".encode()), ("end",),
        ("begin", True), ("data", b"\x00\xff"), ("end",),
        ("begin", False), ("data", b"frag"), ("ping", b"p"), ("data", b"mented"), ("end",),
        ("pong", b"q"), ("close", 1000, b"bye"),
    ]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("size, form", [(0, "auto"), (125, "auto"), (126, "auto"), (65535, "auto"),
                                        (65536, "auto"), (300_000, "auto"), (5, "16"), (5, "64")])
def test_lengths_and_unmasking(split, size, form):
    """Payloads of every length encoding are unmasked exactly, including non-minimal length forms."""
    payload = os.urandom(size)
    events = parse(frame(2, payload, length_form=form), split if size < 70000 else "random")
    assert events[0] == ("begin", True) and events[-1] == ("end",)
    assert b"".join(e[1] for e in events if e[0] == "data") == payload


def test_zero_mask_and_empty_messages():
    """An all-zero mask and empty messages are handled."""
    assert parse(frame(2, b"abc", mask=b"\0\0\0\0") + frame(1, b""), "whole") == [
        ("begin", True), ("data", b"abc"), ("end",), ("begin", False), ("end",)]


def test_close_without_payload_and_nothing_after_close():
    """A close with no payload has no code, and frames after a close are ignored."""
    assert parse(frame(8, b"") + frame(2, b"late"), "whole") == [("close", None, None)]


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize("stream, code", [
    (frame(2, b"x", rsv=1), 1002),
    (frame(2, b"x", mask=None), 1002),
    (frame(3, b"x"), 1002),
    (frame(11, b"x"), 1002),
    (frame(9, b"x", fin=False), 1002),
    (frame(9, b"x" * 126), 1002),
    (frame(0, b"x"), 1002),
    (frame(1, b"a", fin=False) + frame(2, b"b"), 1002),
    (frame(8, b"\x03"), 1002),
    (struct.pack("!BBQ", 0x82, 0xFF, 1 << 63) + b"\1\2\3\4", 1002),
    (frame(1, b"\xff\xfe"), 1007),
    (frame(1, b"\xc3"), 1007),
    (frame(1, b"\xc3", fin=False) + frame(0, b"\xa9") + frame(1, b"ok\xed\xa0\x80"), 1007),
])
def test_violations_fail_with_the_right_code(split, stream, code):
    """Each protocol violation fails the connection with its RFC close code, and parsing stops."""
    events = parse(stream + frame(2, b"after"), split)
    assert events[-1] == ("fail", code)
    assert ("data", b"after") not in events


def test_utf8_split_across_frames_is_valid():
    """A character split across two fragments is valid UTF-8."""
    events = parse(frame(1, b"\xc3", fin=False) + frame(0, b"\xa9"), "whole")
    assert events == [("begin", False), ("data", b"\xc3\xa9"), ("end",)]


@pytest.mark.parametrize("split", SPLITS)
def test_message_limit_is_1009_before_payload(split):
    """A message whose frames add up past the limit fails with 1009 when the header says so."""
    events = parse(frame(2, b"a" * 60, fin=False) + frame(0, b"b" * 50), split, max_size=100)
    assert events[-1] == ("fail", 1009)
    assert parse(frame(2, b"a" * 100), split, max_size=100)[-1] == ("end",)


@pytest.mark.parametrize("offset", range(8))
@pytest.mark.parametrize("size", [1, 7, 1023, 1024, 5000])
def test_unmask_at_any_offset(offset, size):
    """Unmasking from any offset into a frame matches the byte-by-byte definition."""
    mask = b"\x9a\x01\xff\x42"
    data = os.urandom(size)
    expected = bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))
    assert unmask(data, mask, offset) == expected


def _random_stream(rng: random.Random) -> bytes:
    """A client stream of whole small binary frames mixed with every other kind of frame."""
    parts = []
    for _ in range(rng.randrange(1, 30)):
        kind = rng.randrange(7)
        payload = os.urandom(rng.choice((0, 1, 5, 31, 125, 126, 300)))
        if kind <= 2:
            parts.append(frame(2, payload[:125], mask=os.urandom(4)))
        elif kind == 3:
            parts.append(frame(1, b"caf\xc3\xa9"[: rng.randrange(6)]))
        elif kind == 4:
            parts.append(frame(2, payload, fin=False) + frame(9, b"p") + frame(0, payload[:7]))
        elif kind == 5:
            parts.append(frame(10, payload[:20]))
        else:
            parts.append(frame(2, payload[:40], mask=b"\0\0\0\0"))
    if rng.random() < 0.3:
        parts.append(frame(2, b"x", fin=False) + frame(2, b"new message inside"))
    return b"".join(parts)


class RunRecorder(Recorder):
    """A Recorder that also takes runs of whole binary messages in one call, as the bridge does."""

    def binary_messages(self, payloads):
        for payload in payloads:
            self.message_begin(True)
            if payload:
                self.message_data(payload)
            self.message_end()


try:
    from wsrouter.ws import _frames
except ImportError:
    _frames = None


@pytest.mark.parametrize("handler", [Recorder, RunRecorder], ids=["per-message", "runs"])
@pytest.mark.parametrize("build", [
    "pure",
    pytest.param("compiled", marks=pytest.mark.skipif(_frames is None, reason="wsrouter.ws._frames not built")),
])
@pytest.mark.parametrize("seed", range(40))
def test_whole_binary_fast_path_matches_the_general_path(seed, build, handler, monkeypatch):
    """Whole binary frames take a fast path (compiled or pure) whose events equal the general path's for any split."""
    import wsrouter.ws.codec as codec
    import wsrouter.ws.parser as parser_module

    rng = random.Random(seed)
    stream = _random_stream(rng)
    max_size = rng.choice((0, 0, 50, 130))
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 6))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    def events(recorder):
        parser = FrameParser(recorder, max_message_size=max_size)
        for chunk in chunks:
            parser.feed(chunk)
        return recorder.events

    monkeypatch.setattr(parser_module, "_scan_binary", _frames.scan_binary if build == "compiled"
                        else codec.py_scan_binary)
    fast = events(handler())
    monkeypatch.setattr(parser_module, "_WHOLE_BINARY", -1)  # no first byte matches: general path only
    assert fast == events(Recorder())
    assert any(e[0] == "begin" for e in fast) or fast[:1] == [("fail", 1009)] or not fast


@pytest.mark.parametrize("build", [
    "pure",
    pytest.param("compiled", marks=pytest.mark.skipif(_frames is None, reason="wsrouter.ws._frames not built")),
])
def test_a_read_of_whole_binary_frames_is_one_run(build, monkeypatch):
    """64 whole binary frames in one read, with a ping after them, reach the handler as one run, then the ping."""
    import wsrouter.ws.codec as codec
    import wsrouter.ws.parser as parser_module

    scan = _frames.scan_binary if build == "compiled" else codec.py_scan_binary
    calls = []

    def counting_scan(data, position, limit):
        calls.append(position)
        return scan(data, position, limit)

    monkeypatch.setattr(parser_module, "_scan_binary", counting_scan)
    runs = []
    recorder = RunRecorder()
    recorder.binary_messages = runs.append
    payloads = [os.urandom(size) for size in range(64)] + [b"x" * 126, b"y" * 70000]
    FrameParser(recorder).feed(b"".join(frame(2, p, mask=os.urandom(4)) for p in payloads) + frame(9, b"p"))
    assert runs == [payloads]
    assert recorder.events == [("ping", b"p")]
    assert calls == [0]
