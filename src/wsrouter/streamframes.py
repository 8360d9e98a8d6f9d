"""
The framings that know each message's type: C{auto}, C{text},
C{length:u16|u32[:typed]} and C{json}, both directions.

Pure and fed bytes, like L{wsrouter.framing} (which dispatches here).  Each
framer has C{feed}/C{flush} (the L{wsrouter.interfaces.Framer} protocol) and
C{feed_typed}/C{flush_typed}, which return C{(payload, is_binary)} pairs so
a message's type is decided once, where the bytes are looked at.

Rules at the end of the stream (C{flush}):
  - C{auto}: an incomplete UTF-8 character held back is sent as a last
    (binary) message; C{text}: it is sent as U+FFFD (text).
  - C{length}: a partial frame (prefix or payload) is dropped; C{dropped}
    counts its bytes so the bridge can log it.
  - C{json}: an unfinished value is dropped likewise; a number or literal
    (C{42}, C{true}) ended by the stream is sent if it is valid JSON.

Over the limit: a length prefix announcing more than C{max_size}, or a
JSON value growing past it, raises L{FramingError} with code 1009 before
any of it is buffered beyond the limit; data the framing forbids (an
unknown type byte, invalid JSON, a text frame that is not UTF-8) raises
it with 1011.
"""

from __future__ import annotations

import codecs
import json
import re
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsrouter.config import Framing

#: The framing kinds this module implements.
NEW_FRAMINGS = ("auto", "text", "length", "json")
#: The type byte of C{length:...:typed} frames: the WebSocket opcodes.
TYPE_TEXT = 0x01
TYPE_BINARY = 0x02
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

Typed = list[tuple[bytes, bool]]


class FramingError(ValueError):
    """
    The target's stream cannot be cut into messages, or a client message
    cannot be encoded for it: the session closes with C{code}.

    @ivar code: the WebSocket close code: 1009 for a message over the size
        limit, 1011 for data the framing does not allow.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        #: The whole messages framed before the bad data, in the same read:
        #: delivered before the close, as they would be had the read been cut.
        self.messages: Typed = []


class _TypedBase:
    """C{feed}/C{flush} in terms of C{feed_typed}/C{flush_typed}."""

    #: Bytes thrown away at the end of the stream (an unfinished frame).
    dropped = 0

    def feed_typed(self, data: bytes) -> Typed:
        raise NotImplementedError

    def flush_typed(self) -> Typed:
        return []

    def feed(self, data: bytes) -> list[bytes]:
        return [payload for payload, _ in self.feed_typed(data)]

    def flush(self) -> list[bytes]:
        return [payload for payload, _ in self.flush_typed()]


def _incomplete_tail(data: bytes | bytearray) -> int:
    """
    Where an unfinished UTF-8 sequence at the end of C{data} starts
    (C{len(data)} if there is none); only the last three bytes are looked at.
    """
    end = len(data)
    for back in range(1, min(3, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            return end
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            if byte < 0xC2 or byte > 0xF4:
                return end  # never valid: nothing worth waiting for
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if back < need else end
    return end


class AutoFramer(_TypedBase):
    """
    Each chunk is one message: text when it is valid UTF-8, binary
    otherwise.  A character cut by a read is never split: its first bytes
    wait for the next chunk (at most three bytes are held).
    """

    def __init__(self) -> None:
        self._held = b""

    def feed_typed(self, data: bytes) -> Typed:
        if not data:
            return []
        if self._held:
            data, self._held = self._held + data, b""
        cut = _incomplete_tail(data)
        head = data[:cut] if cut < len(data) else data
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return [(data, True)]  # not text anyway: nothing to keep whole
        self._held = data[cut:]
        return [(head, False)] if head else []

    def flush_typed(self) -> Typed:
        held, self._held = self._held, b""
        return [(held, True)] if held else []


class TextFramer(_TypedBase):
    """
    Each chunk is one text message; bytes that are not UTF-8 become U+FFFD,
    and a character cut by a read waits for its last bytes.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed_typed(self, data: bytes) -> Typed:
        text = self._decoder.decode(data)
        return [(text.encode("utf-8"), False)] if text else []

    def flush_typed(self) -> Typed:
        text = self._decoder.decode(b"", final=True)
        return [(text.encode("utf-8"), False)] if text else []


class LengthFramer(_TypedBase):
    """
    Frames of a big-endian length (2 or 4 bytes) and that many payload
    bytes; with C{typed}, a type byte (1 text, 2 binary: the WebSocket
    opcodes) sits between the length and the payload and is not counted.
    Untyped frames are text when valid UTF-8, else binary.
    """

    def __init__(self, width: int, typed: bool, max_size: int) -> None:
        if width not in (2, 4):
            raise ValueError(f"length prefix must be 2 or 4 bytes, not {width!r}")
        self._format = ">H" if width == 2 else ">I"
        self._header = width + (1 if typed else 0)
        self._width = width
        self._typed = typed
        self._max_size = max_size
        self._buffer = bytearray()

    def feed_typed(self, data: bytes) -> Typed:
        if not data:
            return []
        self._buffer += data
        buffer, header, messages = self._buffer, self._header, []
        offset, total = 0, len(buffer)
        try:
            with memoryview(buffer) as view:
                while total - offset >= header:
                    (length,) = struct.unpack_from(self._format, buffer, offset)
                    if length > self._max_size:
                        raise FramingError(MESSAGE_TOO_BIG, f"target frame of {length} bytes is over the "
                                                            f"{self._max_size}-byte limit")
                    end = offset + header + length
                    if end > total:
                        break
                    payload = bytes(view[offset + header:end])
                    type_byte = buffer[offset + self._width] if self._typed else -1
                    messages.append((payload, self._type(type_byte, payload)))
                    offset = end
        except FramingError as e:
            e.messages = messages
            raise
        del buffer[:offset]
        return messages

    def _type(self, type_byte: int, payload: bytes) -> bool:
        if type_byte not in (-1, TYPE_TEXT, TYPE_BINARY):
            raise FramingError(INTERNAL_ERROR, f"target sent unknown frame type {type_byte}")
        if type_byte == TYPE_BINARY:
            return True
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            if type_byte == TYPE_TEXT:
                raise FramingError(INTERNAL_ERROR, "target sent a text frame that is not UTF-8") from None
            return True
        return False

    def flush_typed(self) -> Typed:
        self.dropped = len(self._buffer)
        self._buffer.clear()
        return []


def encode_length(width: int, typed: bool) -> Callable[[bytes, bool], bytes]:
    """
    The client-to-target half of L{LengthFramer}: the prefix (and type
    byte) put in front of each message.

    @raise FramingError: (1009) from the encoder, for a message too long
        for a 2-byte prefix.
    """
    fmt = ">H" if width == 2 else ">I"
    limit = (1 << (8 * width)) - 1

    def encode(payload: bytes, is_binary: bool) -> bytes:
        if len(payload) > limit:
            raise FramingError(MESSAGE_TOO_BIG, f"message of {len(payload)} bytes does not fit "
                                                f"a {width}-byte length prefix")
        head = struct.pack(fmt, len(payload))
        if typed:
            head += bytes((TYPE_BINARY if is_binary else TYPE_TEXT,))
        return head + payload

    return encode


#: In a container: a whole string (1), an opening (2) or closing (3) bracket, or an unfinished string (4).
_TOKEN = re.compile(rb'("[^"\\]*(?:\\.[^"\\]*)*")|([{\[])|([}\]])|(")', re.S)
_IN_STRING = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb'[ \t\r\n{\["]')
_SPACE = b" \t\r\n"


class JsonFramer(_TypedBase):
    """
    One text message per JSON value in the stream (values may follow each
    other directly or with whitespace between, as in NDJSON).  The scanner
    only tracks strings and nesting, jumping between the bytes that matter,
    so a long value in small chunks costs time linear in its length; each
    value found is then checked with L{json.loads}.
    """

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._pos = 0
        self._start = -1  # where the value being read starts; -1: between values
        self._depth = 0
        self._string = False
        self._scalar = False

    def feed_typed(self, data: bytes) -> Typed:
        if not data:
            return []
        self._buffer += data
        messages: Typed = []
        try:
            self._scan(messages)
        except FramingError as e:
            e.messages = messages
            raise
        consumed = self._start if self._start >= 0 else self._pos
        if consumed:
            del self._buffer[:consumed]
            self._pos -= consumed
            if self._start >= 0:
                self._start = 0
        if self._start >= 0 and len(self._buffer) > self._max_size:
            error = FramingError(MESSAGE_TOO_BIG, f"target JSON value is over the {self._max_size}-byte limit")
            error.messages = messages
            raise error
        return messages

    def _scan(self, messages: Typed) -> None:
        buffer, end = self._buffer, len(self._buffer)
        while self._pos < end:
            if self._start < 0 and not self._begin(buffer, end):
                return
            if self._string:
                match = _IN_STRING.search(buffer, self._pos)
                if match is None:
                    self._pos = end
                    return
                if match.group() == b"\\":
                    if match.end() >= end:
                        self._pos = match.start()  # the escaped byte is still to come
                        return
                    self._pos = match.end() + 1
                    continue
                self._string = False
                self._pos = match.end()
                if self._depth == 0:
                    self._emit(messages)
            elif self._scalar:
                match = _SCALAR_END.search(buffer, self._pos)
                if match is None:
                    self._pos = end
                    return
                self._pos = match.start()
                self._emit(messages)
            elif not self._scan_container(buffer, end, messages):
                return

    def _scan_container(self, buffer: bytearray, end: int, messages: Typed) -> bool:
        """
        Follow the nesting from C{_pos}, skipping whole strings in one regex
        step; C{False} when the data ends first (C{_pos} is then where to go
        on; an unfinished string is followed in string mode).
        """
        for match in _TOKEN.finditer(buffer, self._pos):
            kind = match.lastindex
            if kind == 1:
                continue  # a whole string: its brackets mean nothing
            if kind == 4:  # a string that does not end in the data yet
                self._string, self._pos = True, match.end()
                return True
            if kind == 2:
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 0:
                self._pos = match.end()
                self._emit(messages)
                return True
        self._pos = end
        return False

    def _begin(self, buffer: bytearray, end: int) -> bool:
        """Skip whitespace to the next value and note its kind; C{False} at the end of the data."""
        pos = self._pos
        while pos < end and buffer[pos] in _SPACE:
            pos += 1
        self._pos = pos
        if pos == end:
            return False
        self._start = pos
        first = buffer[pos]
        if first in b"{[":
            self._depth, self._pos = 1, pos + 1
        elif first == 0x22:  # '"'
            self._depth, self._string, self._pos = 0, True, pos + 1
        elif first in b"}]":
            raise FramingError(INTERNAL_ERROR, f"target sent invalid JSON: unexpected {chr(first)!r}")
        else:
            self._scalar = True
        return True

    def _emit(self, messages: Typed) -> None:
        value = bytes(self._buffer[self._start:self._pos])
        self._start, self._scalar = -1, False
        if len(value) > self._max_size:
            raise FramingError(MESSAGE_TOO_BIG, f"target JSON value is over the {self._max_size}-byte limit")
        try:
            json.loads(value.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError alike
            raise FramingError(INTERNAL_ERROR, f"target sent invalid JSON: {e}") from None
        messages.append((value, False))

    def flush_typed(self) -> Typed:
        messages: Typed = []
        self.dropped = 0
        if self._start >= 0:
            size = len(self._buffer) - self._start
            if self._scalar:
                self._pos = len(self._buffer)
                try:
                    self._emit(messages)
                except FramingError:
                    self.dropped = size
            else:
                self.dropped = size
        self._buffer.clear()
        self._pos, self._start, self._depth, self._string, self._scalar = 0, -1, 0, False, False
        return messages


def make_new_framer(framing: Framing, max_size: int) -> _TypedBase:
    """The framer for one of L{NEW_FRAMINGS}."""
    kind = framing.kind
    if kind == "auto":
        return AutoFramer()
    if kind == "text":
        return TextFramer()
    if kind == "length":
        return LengthFramer(framing.width, framing.typed, max_size)
    if kind == "json":
        return JsonFramer(max_size)
    raise ValueError(f"unknown framing {kind!r}")


def make_new_encoder(framing: Framing) -> Callable[[bytes, bool], bytes] | None:
    """The client-to-target encoder for one of L{NEW_FRAMINGS}; C{None}: stream as is."""
    if framing.kind == "length":
        return encode_length(framing.width, framing.typed)
    if framing.kind == "json":
        return _json_line
    return None


def _json_line(payload: bytes, is_binary: bool) -> bytes:
    """
    The message as it is, and a newline (NDJSON): whitespace between JSON
    values is allowed, and it ends a top-level number, which otherwise
    would wait for whatever follows it.
    """
    return payload if payload.endswith(b"\n") else payload + b"\n"
