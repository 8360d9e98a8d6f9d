"""
Cutting a target's byte stream into WebSocket messages.

A stream target (a TCP socket, an exec: command's stdout) delivers bytes in chunks
whose boundaries mean nothing; a framer decides where each message ends.
Every framer here is pure: it is fed bytes and returns whole messages, so
the bridge stays free of parsing and the framers are tested without a
reactor.  All of them implement L{wsrouter.interfaces.Framer}.

Memory stays bounded: a line or separated record longer than C{max_size}
is sent as several messages of C{max_size} bytes (the last one shorter),
so a target that never writes a newline cannot make the router buffer
without limit.  The result never depends on how the stream was chunked.
A length-prefixed frame or JSON value longer than C{max_size} cannot be
cut without changing its meaning: the framer raises L{FramingError} with
close code 1009 instead.

Framers that know each message's type (C{auto}, C{text}, C{length},
C{json}) also have C{feed_typed}/C{flush_typed}, returning
C{(payload, is_binary)} pairs; the bridge prefers those.

The other direction, client messages to the target, is L{make_encoder}:
each whole client message is encoded so that the target's framing finds
its boundary again (newline or separator appended, length prefix put in
front).  The new framers live in L{wsrouter.streamframes}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wsrouter.config import FRAMINGS, Framing
from wsrouter.streamframes import NEW_FRAMINGS, make_new_encoder, make_new_framer

if TYPE_CHECKING:  # the protocol module imports Twisted; framing stays free of it
    from wsrouter.interfaces import Framer

#: Framings whose messages are sent as text when they are valid UTF-8.
TEXT_FRAMINGS = ("line", "separator")


class BinaryFramer:
    """
    Every chunk read from the target is one message, unchanged and uncopied.

    The natural framing for targets that already send whole messages
    (datagrams) or for byte streams whose client reassembles them itself
    (VNC, SSH).
    """

    def feed(self, data: bytes) -> list[bytes]:
        """Return C{[data]}, or nothing for an empty chunk."""
        return [data] if data else []

    def flush(self) -> list[bytes]:
        """Nothing is ever buffered."""
        return []


class SeparatorFramer:
    """
    One message per record ending in C{separator}; the separator is dropped.

    A separator split across chunks is found.  Each search starts where the
    previous one gave up, so a long record arriving in many small chunks
    costs time linear in its length.

    @ivar _buffer: bytes of the unfinished record.
    @ivar _scan_from: offset in C{_buffer} before which the separator is
        known not to start.
    @ivar _lookahead: bytes that must follow a C{max_size} piece, without a
        separator, before that piece is known to be part of a longer record
        and can be sent.  Waiting for them keeps the output independent of
        how the stream was chunked.
    """

    def __init__(self, separator: bytes, max_size: int) -> None:
        """
        @param separator: the bytes that end each record; not empty.
        @param max_size: the largest message in bytes; longer records are
            sent in pieces of this size.
        @raise ValueError: for an empty separator or a C{max_size} below 1.
        """
        if not separator:
            raise ValueError("separator must not be empty")
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size!r}")
        self._separator = bytes(separator)
        self._max_size = max_size
        self._lookahead = len(self._separator)
        self._buffer = bytearray()
        self._scan_from = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Return the records C{data} completes, and pieces of overlong ones."""
        if not data:
            return []
        if self._buffer:
            self._buffer += data
            stream: bytes | bytearray = self._buffer
        else:
            # Nothing pending: search the chunk itself and copy only its tail.
            stream = data
        messages: list[bytes] = []
        consumed = self._cut(stream, messages)
        if stream is self._buffer:
            del self._buffer[:consumed]
        else:
            self._buffer += memoryview(data)[consumed:]
        self._scan_from -= consumed
        return messages

    def flush(self) -> list[bytes]:
        """Return the unterminated last record, in pieces, if there is one."""
        messages: list[bytes] = []
        with memoryview(self._buffer) as view:
            self._split(view, 0, len(view), messages)
        self._buffer.clear()
        self._scan_from = 0
        return messages

    def _cut(self, stream: bytes | bytearray, messages: list[bytes]) -> int:
        """
        Append the messages found in C{stream} to C{messages}.

        @return: how many bytes of C{stream} they used up.
        """
        separator, size = self._separator, len(self._separator)
        start = 0
        with memoryview(stream) as view:
            index = stream.find(separator, self._scan_from)
            while index >= 0:
                self._record(view, start, index, messages)
                start = index + size
                index = stream.find(separator, start)
            end = len(stream)
            while end - start >= self._max_size + self._lookahead:
                messages.append(bytes(view[start:start + self._max_size]))
                start += self._max_size
        self._scan_from = max(start, end - size + 1)
        return start

    def _record(self, view: memoryview, start: int, end: int, messages: list[bytes]) -> None:
        """Append the record C{view[start:end]} (separator excluded)."""
        if start == end:
            messages.append(b"")
        else:
            self._split(view, start, end, messages)

    def _split(self, view: memoryview, start: int, end: int, messages: list[bytes]) -> None:
        """Append C{view[start:end]} in pieces of at most C{max_size}."""
        for offset in range(start, end, self._max_size):
            messages.append(bytes(view[offset:min(offset + self._max_size, end)]))


class LineFramer(SeparatorFramer):
    """
    One message per line; the C{\\n} and a C{\\r} just before it are dropped.

    An empty line is an empty message.  A C{\\r} not followed by C{\\n} is
    data, also at the end of the stream.
    """

    def __init__(self, max_size: int) -> None:
        """
        @param max_size: the largest message in bytes; longer lines are sent
            in pieces of this size.
        """
        super().__init__(b"\n", max_size)
        # A piece is only sent once two more bytes show that a line does not
        # end right after it with "\r\n".
        self._lookahead = 2

    def _record(self, view: memoryview, start: int, end: int, messages: list[bytes]) -> None:
        if end > start and view[end - 1] == 0x0D:
            end -= 1
        super()._record(view, start, end, messages)


class FixedLengthFramer:
    """
    Messages of exactly C{length} bytes, for records of a fixed size.

    At the end of the stream a shorter remainder is sent as a last message.
    """

    def __init__(self, length: int) -> None:
        """
        @param length: the size of each message in bytes.
        @raise ValueError: for a length below 1.
        """
        if length < 1:
            raise ValueError(f"fixed framing needs a length of at least 1, not {length!r}")
        self._length = length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return every whole message that C{data} completes."""
        if not data:
            return []
        if self._buffer:
            self._buffer += data
            stream: bytes | bytearray = self._buffer
        else:
            stream = data
        length = self._length
        whole = len(stream) - len(stream) % length
        with memoryview(stream) as view:
            messages = [bytes(view[offset:offset + length]) for offset in range(0, whole, length)]
        if stream is self._buffer:
            del self._buffer[:whole]
        else:
            self._buffer += memoryview(data)[whole:]
        return messages

    def flush(self) -> list[bytes]:
        """Return the short remainder, if any, as one message."""
        if not self._buffer:
            return []
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [rest]


def make_framer(framing: Framing | None, default: str, max_size: int) -> Framer:
    """
    Build the framer a route asks for.

    @param framing: the route's framing, or C{None} for the target kind's
        default.
    @param default: the framing kind to use when C{framing} is C{None}; one
        of L{FRAMINGS} except C{fixed}, which needs a length.
    @param max_size: the largest message in bytes, for line and separator
        framing (binary and fixed messages are not limited here).
    @raise ValueError: for an unknown kind or a fixed framing without a
        positive length.
    """
    chosen = framing if framing is not None else Framing(kind=default)
    kind = chosen.kind
    if kind in NEW_FRAMINGS:
        return make_new_framer(chosen, max_size)
    if kind == "binary":
        return BinaryFramer()
    if kind == "line":
        return LineFramer(max_size)
    if kind == "separator":
        return SeparatorFramer(chosen.separator, max_size)
    if kind == "fixed":
        return FixedLengthFramer(chosen.length)
    raise ValueError(f"unknown framing {kind!r}; expected one of {', '.join(FRAMINGS)}")


def message_is_binary(kind: str, payload: bytes) -> bool:
    """
    Say whether a message cut by framing C{kind} goes out as a binary message.

    Line and separator framing carry text, so, like websocketd, their
    messages are sent as text whenever they are valid UTF-8 (a browser
    rejects a text message that is not).  Binary and fixed framing always
    send binary messages.  Note that a line cut at C{max_size} may split a
    multi-byte character, making its pieces binary.
    """
    if kind == "text" or kind == "json":
        return False
    if kind not in TEXT_FRAMINGS and kind not in ("auto", "length"):
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def make_encoder(framing: Framing | None, max_size: int) -> Callable[[bytes, bool], bytes] | None:
    """
    How whole client messages are written to a target with C{framing}.

    C{None} (binary, fixed, auto, text framings, or none): client frames
    are streamed to the target as they arrive, unbuffered, as before.
    Otherwise the bridge gathers each message (at most C{max_size} bytes,
    Autobahn's limit) and writes C{encoder(payload, is_binary)}:

      - C{line}: the message and C{\\n} (C{line:crlf}: C{\\r\\n}),
        unless it already ends with it (clients that send whole lines keep
        working unchanged);
      - C{separator:SEP}: the message and SEP, likewise;
      - C{length:u16}, C{length:u32} (C{:typed}): see
        L{wsrouter.streamframes.encode_length};
      - C{json}: the message and a newline (NDJSON), so a bare number ends.

    A message that already holds the newline or separator reaches the
    target as several records: line framing cannot say otherwise.
    """
    if framing is None:
        return None
    kind = framing.kind
    if kind == "line" or kind == "separator":
        end = framing.separator

        def terminated(payload: bytes, is_binary: bool) -> bytes:
            return payload if payload.endswith(end) else payload + end

        return terminated
    if kind in NEW_FRAMINGS:
        return make_new_encoder(framing)
    return None

