"""
The properties every fuzzer checks, shared by the hypothesis tests
(tests/test_fuzz_*.py) and the atheris targets (fuzz/fuzz_*.py).

Each C{check_*} function takes plain data, runs one surface of wsrouter on
it and raises C{AssertionError} (or lets an unexpected exception through)
when a property does not hold.  The errors a surface is documented to raise
for bad input (L{ConfigError}, L{ProxyHeaderError}, L{RecordingFormatError})
are the expected outcome and are swallowed here; anything else is a finding.

Pure: no I/O except the temporary file L{check_config_file} writes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from attrs import frozen

from wsrouter.config import ConfigError, Framing, build_config, load_config
from wsrouter.config.spec import parse_route, to_data
from wsrouter.framing import BinaryFramer, FixedLengthFramer, LineFramer, SeparatorFramer, message_is_binary
from wsrouter.interfaces import Framer
from wsrouter.policy import authenticate, origin_pattern_problem, origin_problem
from wsrouter.proxyproto import ProxyHeaderError, build_header, parse_header
from wsrouter.recording import (
    Event,
    Header,
    RecordingFormatError,
    encode_jsonl_event,
    encode_jsonl_header,
    parse_recording,
)
from wsrouter.routing import host_name
from wsrouter.streamframes import FramingError, make_new_framer
from wsrouter.ws import codec
from wsrouter.ws import parser as parser_module
from wsrouter.ws.deflate import Inflater, Negotiated
from wsrouter.ws.parser import FrameParser

# -- chunking ------------------------------------------------------------------------


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """C{data} cut at the offsets C{cuts} (taken modulo its length, sorted; empty chunks kept)."""
    if not data:
        return [data]
    offsets = sorted(cut % (len(data) + 1) for cut in cuts)
    chunks, start = [], 0
    for offset in offsets:
        chunks.append(data[start:offset])
        start = offset
    chunks.append(data[start:])
    return chunks


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# -- the frame parser ----------------------------------------------------------------


class ParserEvents:
    """A L{FrameHandler} that keeps what it is told, consecutive payload joined."""

    def __init__(self, deflate: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.reason = ""
        self._deflate = deflate

    def message_begin(self, is_binary: bool) -> None:
        self.events.append(("begin", is_binary))

    def message_data(self, payload: bytes) -> None:
        assert isinstance(payload, bytes), f"payload handed on as {type(payload).__name__}"
        if not payload:
            return
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + payload)
        else:
            self.events.append(("data", payload))

    def message_end(self) -> None:
        self.events.append(("end",))

    def ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def pong(self, payload: bytes) -> None:
        self.events.append(("pong", payload))

    def close(self, code: int | None, reason: bytes | None) -> None:
        self.events.append(("close", code, reason))

    def fail(self, code: int, reason: str) -> None:
        assert code in (1002, 1007, 1009), f"unexpected close code {code} ({reason})"
        # The part of a failing message handed on before the failure depends
        # on where the reads fell (a chunk with bad UTF-8 is held back
        # whole); what is compared is everything before that message and
        # the close code, not the reason: with compression, bad UTF-8 in what inflated so
        # far may be seen before the bad deflate data after it (both 1007).
        if self.events and self.events[-1][0] == "data":
            self.events.pop()
        # A compressed message can be both too big and not UTF-8 (or not
        # deflate): which shows first depends on how much inflated per read.
        self.events.append(("fail", "1007/1009" if self._deflate and code != 1002 else code))
        self.reason = reason


def parse_frames(chunks: Sequence[bytes], max_message_size: int = 0, deflate: bool = False) -> list[tuple[Any, ...]]:
    """Everything a fresh parser reports for C{chunks}, fed in order."""
    handler = ParserEvents(deflate)
    inflater = Inflater(Negotiated(), max_message_size) if deflate else None
    parser = FrameParser(handler, max_message_size, inflater)
    for chunk in chunks:
        parser.feed(chunk)
    stops = [e for e in handler.events if e[0] in ("close", "fail")]
    assert len(stops) <= 1, f"more than one close or failure reported: {stops}"
    assert parser.stopped == bool(stops), "the parser stopped without saying why, or went on after"
    return handler.events


def check_parser_any_bytes(data: bytes, cuts: Sequence[int], max_message_size: int, deflate: bool) -> None:
    """Any bytes: the parser never raises, and reports the same however the bytes are cut, with either codec."""
    whole = parse_frames([data], max_message_size, deflate)
    assert parse_frames(split_at(data, cuts), max_message_size, deflate) == whole
    if len(data) <= 512:
        assert parse_frames(byte_by_byte(data), max_message_size, deflate) == whole
    check_codec_builds_agree(data, cuts, max_message_size)
    if codec.COMPILED:
        with _pure_codec():
            assert parse_frames(split_at(data, cuts), max_message_size, deflate) == whole


def check_codec_builds_agree(data: bytes, positions: Sequence[int], limit: int) -> None:
    """The compiled frame codec (when built) takes the same frames as the pure one, from any position, alike."""
    if not codec.COMPILED:
        return
    for position in (0, *(p for p in positions if 0 <= p <= len(data))):
        assert codec.scan_binary(data, position, limit) == codec.py_scan_binary(data, position, limit)
    mask = data[:4].ljust(4, b"\0")
    for offset in range(4):
        assert codec.unmask(data, mask, offset) == codec.py_unmask(data, mask, offset)


@contextlib.contextmanager
def _pure_codec() -> Iterator[None]:
    """The parser on the pure-Python codec for a while (L{wsrouter.ws.codec})."""
    saved = parser_module._scan_binary, parser_module.unmask
    parser_module._scan_binary, parser_module.unmask = codec.py_scan_binary, codec.py_unmask
    try:
        yield
    finally:
        parser_module._scan_binary, parser_module.unmask = saved


@frozen
class Frame:
    """One client frame to build: what L{encode_frame} needs."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    mask: bytes = b"\x12\x34\x56\x78"
    #: the length form: 0 shortest, 1 16-bit, 2 64-bit (non-minimal forms are legal)
    length_form: int = 0


def encode_frame(frame: Frame) -> bytes:
    """A masked client frame."""
    first = (0x80 if frame.fin else 0) | (0x40 if frame.rsv1 else 0) | frame.opcode
    n = len(frame.payload)
    if n < 126 and frame.length_form == 0:
        head = bytes([first, 0x80 | n])
    elif n < 65536 and frame.length_form <= 1:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ frame.mask[i % 4] for i, b in enumerate(frame.payload))
    return head + frame.mask + masked


def compress_message(payload: bytes) -> bytes:
    """A client message's payload as permessage-deflate sends it (RFC 7692 7.2.1), no context takeover."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data


@frozen
class Message:
    """A message to send as frames: its payload cut into fragments, control frames between them."""

    is_binary: bool
    payload: bytes
    #: fragment sizes (the rest goes in the last fragment)
    fragments: tuple[int, ...] = ()
    #: pings sent after each fragment, by fragment index
    pings: tuple[int, ...] = ()
    compressed: bool = False
    length_form: int = 0


def message_frames(message: Message, mask: bytes) -> list[Frame]:
    """The frames that carry C{message}, pings between its fragments (none in a compressed one)."""
    body = compress_message(message.payload) if message.compressed else message.payload
    pieces, offset = [], 0
    for size in message.fragments:
        pieces.append(body[offset:offset + size])
        offset += size
    pieces.append(body[offset:])
    frames: list[Frame] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        opcode = (2 if message.is_binary else 1) if index == 0 else 0
        frames.append(Frame(opcode, piece, last, message.compressed and index == 0, mask, message.length_form))
        if not last and not message.compressed:
            frames += [Frame(9, b"p%d" % n, True, False, mask) for n in range(message.pings.count(index))]
    return frames


def _ordered(expected: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Data joined, pings in place: the normal form L{ParserEvents} produces."""
    joined: list[tuple[Any, ...]] = []
    for event in expected:
        if event[0] == "data" and joined and joined[-1][0] == "data":
            joined[-1] = ("data", joined[-1][1] + event[1])
        else:
            joined.append(event)
    return joined


def check_parser_messages(messages: Sequence[Message], cuts: Sequence[int], close: int | None,
                          mask: bytes = b"\x01\x02\x03\x04") -> None:
    """Valid frames, cut anywhere: the parser gives back exactly the messages, then the close."""
    stream, events = b"", []
    deflate = any(m.compressed for m in messages)
    for message in messages:
        frames = message_frames(message, mask)
        stream += b"".join(encode_frame(f) for f in frames)
        events += _message_events(message, frames)
    if close is not None:
        stream += encode_frame(Frame(8, close.to_bytes(2, "big") + b"bye", True, False, mask))
        events.append(("close", close, b"bye"))
    expected = _ordered(events)
    assert parse_frames([stream], 0, deflate) == expected
    assert parse_frames(split_at(stream, cuts), 0, deflate) == expected
    if len(stream) <= 2048:
        assert parse_frames(byte_by_byte(stream), 0, deflate) == expected


def _message_events(message: Message, frames: list[Frame]) -> list[tuple[Any, ...]]:
    """What a parser reports for C{frames}: begin, the payload (with pings in between), end."""
    events: list[tuple[Any, ...]] = [("begin", message.is_binary)]
    body = message.payload
    for frame in frames:
        if frame.opcode == 9:
            events.append(("ping", frame.payload))
            continue
        if not message.compressed and frame.payload:
            events.append(("data", frame.payload))
    if message.compressed and body:
        events.insert(1, ("data", body))
    events.append(("end",))
    return events


# -- framing -------------------------------------------------------------------------


@frozen
class FramingCase:
    """
    One framing to fuzz: how to make its framer and what holds for its output.

    @ivar make: a fresh framer for the stream, given C{max_size}.
    @ivar kind: the framing kind, for L{message_is_binary}.
    @ivar encode: messages to the stream that frames into them again
        (the other direction), or C{None}; given C{max_size}.
    @ivar fits: whether a message could have come out of this framer
        (a size bound, no separator inside), given C{max_size}.
    @ivar same_however_cut: whether the messages are independent of the
        reads (binary framing sends each read as it is, by design).
    @ivar keeps_bytes: whether the messages hold exactly the stream's bytes
        (text framing replaces what is not UTF-8).
    """

    name: str
    kind: str
    make: Callable[[int], Framer]
    fits: Callable[[bytes, int], bool]
    encode: Callable[[Sequence[bytes], int], bytes | None] | None = None
    same_however_cut: bool = True
    keeps_bytes: bool = True


def _records(separator: bytes, strip_cr: bool = False) -> Callable[[Sequence[bytes], int], bytes | None]:
    """The stream of C{separator}-terminated records, or C{None} if a message could not round-trip."""
    def encode(messages: Sequence[bytes], max_size: int) -> bytes | None:
        for m in messages:
            if separator in m or len(m) > max_size or (strip_cr and m.endswith(b"\r")):
                return None
        stream = b"".join(m + separator for m in messages)
        # A separator that starts inside a record's end would be found early.
        return stream if stream.split(separator)[:-1] == list(messages) else None
    return encode


def _whole(messages: Sequence[bytes], max_size: int) -> bytes | None:
    return b"".join(messages) if all(messages) else None


def _fixed(length: int) -> FramingCase:
    return FramingCase(
        f"fixed-{length}", "fixed", lambda _: FixedLengthFramer(length), lambda m, _: 0 < len(m) <= length,
        lambda ms, _: b"".join(ms) if all(len(m) == length for m in ms) else None)


def _utf8(message: bytes) -> bool:
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: RFC 8259's insignificant whitespace.
JSON_WHITESPACE = b" \t\r\n"


def _json_value(message: bytes, max_size: int) -> bool:
    # Decoded as UTF-8 first: json.loads guesses UTF-16 for bytes such as b"1\x00".
    try:
        json.loads(message.decode("utf-8"))
    except ValueError:
        return False
    return len(message) <= max_size


def _length(width: int, typed: bool) -> FramingCase:
    fmt, limit = (">H", 0xFFFF) if width == 2 else (">I", 0xFFFFFFFF)

    def encode(messages: Sequence[bytes], max_size: int) -> bytes | None:
        if any(len(m) > min(max_size, limit) for m in messages):
            return None
        return b"".join(struct.pack(fmt, len(m)) + (b"\x02" if typed else b"") + m for m in messages)

    return FramingCase(f"length-u{8 * width}{'-typed' if typed else ''}", "length",
                       lambda size: make_new_framer(Framing(kind="length", width=width, typed=typed), size),
                       lambda m, size: len(m) <= size, encode)


def _json_lines(messages: Sequence[bytes], max_size: int) -> bytes | None:
    if not all(_json_value(m, max_size) and b"\n" not in m for m in messages):
        return None
    return b"".join(m + b"\n" for m in messages)


#: Every framing function, both ways where it has an encoder.  A new framing
#: is one more line here.
FRAMINGS: list[FramingCase] = [
    FramingCase("binary", "binary", lambda _: BinaryFramer(), lambda m, _: bool(m), _whole, same_however_cut=False),
    FramingCase("line", "line", LineFramer, lambda m, size: len(m) <= size and b"\n" not in m,
                _records(b"\n", strip_cr=True)),
    FramingCase("separator-nul", "separator", lambda size: SeparatorFramer(b"\0", size),
                lambda m, size: len(m) <= size and b"\0" not in m, _records(b"\0")),
    FramingCase("separator-crlfcrlf", "separator", lambda size: SeparatorFramer(b"\r\n\r\n", size),
                lambda m, size: len(m) <= size and b"\r\n\r\n" not in m, _records(b"\r\n\r\n")),
    FramingCase("separator-abab", "separator", lambda size: SeparatorFramer(b"abab", size),
                lambda m, size: len(m) <= size and b"abab" not in m, _records(b"abab")),
    _fixed(1),
    _fixed(7),
    FramingCase("auto", "auto", lambda _: make_new_framer(Framing(kind="auto"), 0), lambda m, _: bool(m),
                same_however_cut=False),
    FramingCase("text", "text", lambda _: make_new_framer(Framing(kind="text"), 0),
                lambda m, _: _utf8(m), same_however_cut=False, keeps_bytes=False),
    _length(2, False),
    _length(2, True),
    _length(4, False),
    _length(4, True),
    FramingCase("json", "json", lambda size: make_new_framer(Framing(kind="json"), size), _json_value, _json_lines),
]


def frame_stream(framer: Framer, chunks: Sequence[bytes]) -> list[bytes]:
    """The messages; a stream the framing refuses (FramingError) ends them with a marker of its close code."""
    messages: list[bytes] = []
    try:
        for chunk in chunks:
            out = framer.feed(chunk)
            assert all(isinstance(m, bytes) for m in out), "a message is not bytes"
            messages += out
        return messages + framer.flush()
    except FramingError as e:
        assert e.code in (1009, 1011), f"close code {e.code} for a refused stream"
        return [*messages, *(payload for payload, _ in e.messages), REFUSED % e.code]


#: How L{frame_stream} marks a refused stream (not a message: see L{_messages}).
REFUSED = b"\0refused %d"


def _messages(framed: list[bytes]) -> list[bytes]:
    return framed[:-1] if framed and framed[-1].startswith(b"\0refused ") else framed


def check_framing_stream(case: FramingCase, data: bytes, cuts: Sequence[int], max_size: int) -> None:
    """Any stream: the same messages however it is cut, each one a message this framing can make."""
    whole = frame_stream(case.make(max_size), [data])
    chunkings = [split_at(data, cuts)] + ([byte_by_byte(data)] if len(data) <= 256 else [])
    for chunks in chunkings:
        cut = frame_stream(case.make(max_size), chunks)
        if case.same_however_cut:
            assert cut == whole, case.name
        elif case.keeps_bytes:
            assert b"".join(cut) == data, f"{case.name}: bytes lost or added"
    for message in _messages(whole):
        assert case.fits(message, max_size), f"{case.name}: {message!r} is not a message it makes"
        message_is_binary(case.kind, message)
    if case.kind in ("binary", "fixed"):
        assert b"".join(whole) == data, f"{case.name}: bytes lost or added"


def check_framing_round_trip(case: FramingCase, messages: Sequence[bytes], cuts: Sequence[int],
                             max_size: int) -> None:
    """Messages made into a stream and framed again come back the same (where they can be encoded)."""
    if case.encode is None:
        return
    stream = case.encode(messages, max_size)
    if stream is None:
        return
    framed = frame_stream(case.make(max_size), split_at(stream, cuts))
    if case.kind == "binary":
        assert b"".join(framed) == stream
    elif case.kind == "json":
        # Whitespace around a value separates values; the framer sends the value alone.
        assert framed == [m.strip(JSON_WHITESPACE) for m in messages], case.name
    else:
        assert framed == list(messages), case.name


# -- handshake: PROXY headers, origins, credentials, Host ----------------------------


def check_proxy_header(data: bytes) -> None:
    """Any bytes: a header, a need for more, or ProxyHeaderError; and a header's prefix needs more."""
    try:
        result = parse_header(data)
    except ProxyHeaderError:
        return
    if result is None:
        return
    _header, size = result
    assert 0 < size <= len(data), f"header length {size} outside the {len(data)} bytes"
    assert parse_header(data[:size]) == result, "the header alone parses differently"
    for cut in range(1, size, max(1, size // 16)):
        try:
            assert parse_header(data[:cut]) is None, f"a {cut}-byte prefix of a {size}-byte header was taken"
        except ProxyHeaderError:
            # A v1 header is judged by its fields once its line ends.
            assert data.startswith(b"PROXY") and b"\r\n" in data[:cut], f"prefix of {cut} bytes refused"


def check_proxy_round_trip(version: str, source: tuple[str, int], destination: tuple[str, int],
                           tail: bytes) -> None:
    """A header the router builds parses back to the same addresses, whatever follows it."""
    data = build_header(version, source, destination)
    result = parse_header(data + tail)
    assert result is not None
    header, size = result
    assert size == len(data)
    if (":" in source[0]) == (":" in destination[0]):
        assert header.source is not None and header.destination is not None, header
        got = [(ipaddress.ip_address(host), port) for host, port in (header.source, header.destination)]
        assert got == [(ipaddress.ip_address(host), port) for host, port in (source, destination)], header
    else:
        assert header.source is None or header.source[1] == source[1], header


def check_origin(policy: str | Sequence[str], origin: str | None, host: str | None, secure: bool) -> None:
    """Any Origin and Host: a decision (None or a one-line reason), never an exception."""
    problem = origin_problem(policy, origin, host, secure)
    assert problem is None or (isinstance(problem, str) and problem.isprintable()), problem
    if origin is not None and policy not in ("same", "off"):
        for pattern in policy:
            origin_pattern_problem(pattern)


def check_authenticate(credentials: Any, headers: dict[str, str], peer: str) -> None:
    """Any headers: an acceptance, a password check or a refusal with 401/403; no secret in a reason."""
    result = authenticate(credentials, headers, peer)
    status = getattr(result, "status", None)
    if status is not None:
        assert status in (401, 403), status
        reason = result.reason
        assert reason.isprintable(), f"a refusal reason with control characters: {reason!r}"
        presented = headers.get("authorization", "").strip()
        # (the reason may name the peer and the forward header's value, not what was presented)
        for secret in (presented, presented.partition(" ")[2].strip(), presented.partition(" ")[0]):
            if len(secret) >= 8 and secret not in peer and secret not in headers.get("x-forwarded-user", ""):
                assert secret not in reason, "a credential is quoted in a refusal"


def check_host_name(header: str | None) -> None:
    """Any Host header: a lower-case name without a port, or None."""
    name = host_name(header)
    assert name is None or (isinstance(name, str) and name == name.lower()), name


# -- configuration -------------------------------------------------------------------


def check_config_data(raw: dict[str, Any]) -> None:
    """Any nested data: a configuration or ConfigError; a configuration survives to_data and back."""
    try:
        config = build_config(raw)
    except ConfigError as e:
        assert e.problems, "a ConfigError with no problem"
        return
    assert build_config(to_data(config)) == config, "to_data does not round-trip"


def check_config_file(text: bytes) -> None:
    """Any file content: a configuration or ConfigError naming the file."""
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        try:
            load_config(path, {})
        except ConfigError as e:
            assert path in str(e), "the error does not name the file"
    finally:
        os.unlink(path)


def check_route_string(text: str) -> None:
    """Any route string: a Route or ConfigError."""
    try:
        route = parse_route(text)
    except ConfigError as e:
        assert e.problems
        return
    assert route.path.startswith("/") or route.path == "", route.path


# -- recordings ----------------------------------------------------------------------


def check_recording_lines(lines: Sequence[bytes]) -> None:
    """Any lines: a header and events, or RecordingFormatError at the line that is wrong."""
    try:
        _header, events = parse_recording(lines, "fuzz")
        for event in events:
            assert isinstance(event, Event)
            assert event.offset >= 0
    except RecordingFormatError as e:
        assert 1 <= e.line_number <= max(1, len(lines)), e.line_number


def check_recording_round_trip(header: Header, events: Sequence[Event]) -> None:
    """Events the recorder writes are read back the same."""
    lines = [encode_jsonl_header(header)] + [encode_jsonl_event(e) for e in events]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines), "a record spans lines"
    _, back = parse_recording(b"".join(lines).splitlines(keepends=True), "fuzz")
    assert list(back) == list(events)



# -- the HTTP request head (web/channel.py) -------------------------------------------


def http_response(chunks: Sequence[bytes], max_header_bytes: int) -> tuple[bytes, bool]:
    """What a L{LimitedChannel} of a site serving C{hello} answers C{chunks} with, and if it closed."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from wsrouter.config import Limits
    from wsrouter.web.channel import LimitedChannel, limit_requests

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"hello"

    site = Site(Hello())
    site.reactor = Clock()  # type: ignore[assignment]
    site.log = lambda request: None  # type: ignore[method-assign]
    limit_requests(site, lambda: Limits(max_header_bytes=max_header_bytes))
    protocol = site.buildProtocol(None)
    assert isinstance(protocol, LimitedChannel)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for chunk in chunks:
        if transport.disconnecting:
            break
        protocol.dataReceived(chunk)
    protocol.connectionLost()
    answer = b"\r\n".join(line for line in transport.value().split(b"\r\n") if not line.startswith(b"Date: "))
    return answer, transport.disconnecting


def check_http_head(data: bytes, cuts: Sequence[int], max_header_bytes: int) -> None:
    """Any request bytes: the same answer however cut, each response with a status line; a big head gets 431."""
    whole = http_response([data], max_header_bytes)
    assert http_response(split_at(data, cuts), max_header_bytes) == whole
    answer = whole[0]
    assert answer == b"" or answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:40]
    head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else None
    if head is not None and b"\n" not in head.replace(b"\r\n", b"") and len(head) + 4 > max_header_bytes + 2:
        assert b" 431 " in answer.split(b"\r\n", 1)[0] or b" 400 " in answer.split(b"\r\n", 1)[0], answer[:60]


# -- the route decision (routing.py, as the gateway asks it) ----------------------------


def check_route_select(routes: Sequence[Any], path: str, offered: Sequence[str], host: str | None,
                       unknown_host: str = "default") -> None:
    """Any path, subprotocols and Host: a route that serves them, or NoRoute 400/404/421 with a printable reason."""
    from wsrouter.routing import NoRoute, RouteTable, path_matches

    try:
        match = RouteTable(routes, unknown_host).select(path, offered, host)
    except NoRoute as e:
        assert e.status in (400, 404, 421), e.status
        assert e.reason.isprintable(), f"a refusal reason with control characters: {e.reason!r}"
        return
    assert path_matches(match.route, path)
    assert match.subprotocol is None or match.subprotocol in offered


# -- PROXY headers through the reader (proxyproto.ProxyHeaderReceiver) --------------------


def proxy_stream_outcome(chunks: Sequence[bytes]) -> tuple[bool, bytes, Any, Any]:
    """
    Feed C{chunks} to a L{ProxyHeaderReceiver} from a trusted peer: whether
    it aborted, the bytes the wrapped protocol got, and its peer and host.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    from wsrouter.proxyproto import ProxyHeaderFactory

    received: list[bytes] = []

    class Sink(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    peer = IPv4Address("TCP", "192.0.2.1", 4000)
    factory = ProxyHeaderFactory(Factory.forProtocol(Sink), lambda host: True)
    receiver = factory.buildProtocol(peer)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.2", 80), peerAddress=peer)
    receiver.makeConnection(transport)
    try:
        for chunk in chunks:
            if transport.disconnecting:
                break
            receiver.dataReceived(chunk)
        return transport.disconnecting, b"".join(received), receiver.getPeer(), receiver.getHost()
    finally:
        receiver.connectionLost(None)  # the factory lets go of it


def check_proxy_stream(data: bytes, cuts: Sequence[int]) -> None:
    """
    A connection's first bytes, however they are cut: the reader ends the
    same (aborted, or passing on exactly the bytes after a valid header,
    with the header's addresses as peer and host) as when they come whole;
    an aborted connection passes nothing on.
    """
    whole = proxy_stream_outcome([data])
    aborted, passed, peer, host = whole
    try:
        parsed = parse_header(data)
    except ProxyHeaderError:
        parsed = None
        assert aborted and passed == b"", whole
    if parsed is not None:
        header, size = parsed
        assert not aborted and passed == data[size:], whole
        if header.source is not None:
            assert ipaddress.ip_address(peer.host) == ipaddress.ip_address(header.source[0]), (header, peer)
            assert peer.port == header.source[1], (header, peer)
    elif not aborted:
        assert passed == b"", whole  # still waiting for the rest of the header
    for chunks in (split_at(data, cuts), [*byte_by_byte(data[:160]), data[160:]]):
        pieces = proxy_stream_outcome(chunks)
        assert pieces[:2] == whole[:2], (chunks, pieces, whole)
        assert (pieces[2], pieces[3]) == (peer, host), (chunks, pieces, whole)


# -- token resolvers (resolvers/base.py, template.py, tokenfile.py) -------------------------


def resolve_request(query: Sequence[tuple[str, str]], cookies: dict[str, str], path_info: str, host: str,
                    headers: Sequence[tuple[str, str]] = ()) -> Any:
    """A L{ResolveRequest} on a prefix route C{/vnc/*}, as the gateway makes one."""
    from wsrouter.config import Route
    from wsrouter.config.model import ResolverTarget
    from wsrouter.resolvers.base import ResolveRequest

    route = Route(path="/vnc", prefix=True, target=ResolverTarget("vnc"))
    return ResolveRequest(path="/vnc" + path_info, route=route, path_info=path_info, query=tuple(query),
                          cookies=cookies, host=host, headers=tuple((k.lower(), v) for k, v in headers))


def check_token_of(query: Sequence[tuple[str, str]], cookies: dict[str, str], path_info: str, host: str,
                   host_token: bool) -> None:
    """Any query, cookies, path and Host: a non-empty token or none, never an exception; from the path one segment."""
    from wsrouter.resolvers.base import token_of

    made = resolve_request(query, cookies, path_info, host)
    token = token_of(made, host_token)
    assert token is None or (isinstance(token, str) and token), token
    if host_token:
        assert token == (host or None), (token, host)
    elif token is not None and made.query_value("token") is None and not cookies.get("token"):
        assert token == path_info.strip("/") and "/" not in token, (token, path_info)


def _template_regex(pattern: str) -> Any:
    """C{pattern} as a regular expression: its text as is, each placeholder a safe value."""
    import re

    from wsrouter.resolvers.template import SAFE_VALUE

    parts = re.split(r"\{[^{}]*\}", pattern)
    return re.compile(f"(?:{SAFE_VALUE.pattern})".join(re.escape(part) for part in parts))


def check_template(pattern: str, request: Any) -> None:
    """
    Any request values: the template resolver refuses with 400, or gives a
    target whose string is the pattern with a safe value (letters, digits,
    '_' and '-') in each placeholder's place, and nothing else changed.
    """
    from wsrouter.config import TcpTarget, UnixTarget
    from wsrouter.resolvers.base import Refuse
    from wsrouter.resolvers.template import TemplateResolver

    resolver = TemplateResolver(type("Settings", (), {"source": pattern})())
    try:
        target = resolver.resolve(request)
    except Refuse as e:
        assert e.status == 400, e.status
        assert e.reason.isprintable(), e.reason
        return
    text = resolver.render(request)
    assert _template_regex(pattern).fullmatch(text), (pattern, text)
    if isinstance(target, TcpTarget):
        host = f"[{target.host}]" if ":" in target.host else target.host
        assert _template_regex(pattern).fullmatch(f"tcp://{host}:{target.port}"), (pattern, target)
    else:
        assert isinstance(target, UnixTarget), target
        assert _template_regex(pattern).fullmatch(f"unix://{target.path}"), (pattern, target)


#: A token file line the fuzzed text cannot contain (it is checked for).
KNOWN_TOKEN_LINE = ("zz-known-token", "127.0.0.1:5901")


def check_token_lines(text: str, known_at: int) -> None:
    """
    A token file of any text: TCP or Unix targets for the lines that are
    'TOKEN: HOST:PORT', other lines skipped, never an exception; a valid
    line put among them (at line C{known_at}) is read as written.
    """
    from wsrouter.config import TcpTarget, UnixTarget
    from wsrouter.resolvers.tokenfile import parse_token_lines

    lines = text.splitlines()
    known = KNOWN_TOKEN_LINE[0] not in text
    if known:
        lines.insert(known_at % (len(lines) + 1), f"{KNOWN_TOKEN_LINE[0]}: {KNOWN_TOKEN_LINE[1]}")
    targets = parse_token_lines("\n".join(lines), "fuzz")
    assert all(isinstance(t, TcpTarget | UnixTarget) for t in targets.values()), targets
    for token in targets:
        # A line ': HOST:PORT' is skipped, not kept under the empty token (finding 8, docs/fuzzing.md).
        assert token, "an entry under the empty token"
        assert "\n" not in token and "\r" not in token, token
    if known:
        assert targets.get(KNOWN_TOKEN_LINE[0]) == TcpTarget("127.0.0.1", 5901), targets


def check_split_target(text: str) -> None:
    """websockify's HOST:PORT (or unix_socket:PATH) text: a TCP or Unix target, or a ValueError."""
    from wsrouter.config import TcpTarget, UnixTarget
    from wsrouter.resolvers.base import split_target

    try:
        target = split_target(text)
    except ValueError as e:
        assert str(e), "a ValueError without a reason"
        return
    assert isinstance(target, TcpTarget | UnixTarget), target


def check_redaction(token: str, other: str) -> None:
    """After redaction, no path segment and no C{token=} value shows the token."""
    from urllib.parse import parse_qsl, quote

    from wsrouter.resolvers.base import redact_token

    if not token.strip() or token in ("REDACTED", "/"):
        return
    path = "/vnc/" + quote(token, safe="")
    query = "token=" + quote(token, safe="") + "&o=" + quote(other, safe="")
    shown_path, shown_query = redact_token(path, query, token)
    assert quote(token, safe="") not in shown_path.split("/"), shown_path
    assert [v for k, v in parse_qsl(shown_query, keep_blank_values=True) if k == "token"] == ["REDACTED"], shown_query
