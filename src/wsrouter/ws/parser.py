"""
An incremental parser for the frames a WebSocket client sends (RFC 6455),
used on the relay's hot path once the handshake is done.

Autobahn parses the handshake; this takes over afterwards because a relay
needs less than a general WebSocket library does: payload is handed on as
it arrives, a frame at a time or part of one, without building frame
objects, copying into message buffers or logging per frame.  The rules are
the RFC's, checked here, each violation reported with its close code:

  - 1002: reserved bits or opcodes, unmasked frames, fragmented or oversized
    control frames, a continuation with no message or a new message inside
    one, a 64-bit length with its top bit set, a close payload of one byte;
  - 1007: a text message that is not valid UTF-8, a compressed message
    that does not inflate;
  - 1009: a message larger than the limit (known from the frame header, so
    the payload is never read; for a compressed message, its inflated size
    too, counted as it inflates).

With permessage-deflate negotiated (an L{Inflater} given), RSV1 on a
message's first frame marks it compressed: its payload is inflated as it
arrives, then validated and handed on like any other.

Its inner loops (a read's run of whole binary frames; unmasking) are in
L{wsrouter.ws.codec}: compiled when the optional extension is built, the
pure-Python twins otherwise, with the same results.

Pure: no I/O, fed bytes, reporting to a L{FrameHandler}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from autobahn.websocket.utf8validator import Utf8Validator

from wsrouter.ws import codec
from wsrouter.ws.deflate import InflateError, Inflater

PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10

#: First byte of a whole binary frame (FIN, no RSV bits, opcode 2): see L{FrameParser._binary_run}.
_WHOLE_BINARY = codec.WHOLE_BINARY

#: Unmasks a payload: compiled when the extension is built (L{wsrouter.ws.codec}).
unmask = codec.unmask

#: Takes a run of whole binary frames: compiled when the extension is built.
_scan_binary = codec.scan_binary


class FrameHandler(Protocol):
    """Receives what the parser finds, in order."""

    def message_begin(self, is_binary: bool) -> None: ...

    def message_data(self, payload: bytes) -> None:
        """Unmasked payload of the current message (a frame or part of one)."""

    def message_end(self) -> None: ...

    def ping(self, payload: bytes) -> None: ...

    def pong(self, payload: bytes) -> None: ...

    def close(self, code: int | None, reason: bytes | None) -> None:
        """A close frame; its code and reason are not validated here."""

    def fail(self, code: int, reason: str) -> None:
        """The client broke the protocol; nothing more is parsed."""


class BinaryRunHandler(FrameHandler, Protocol):
    """A handler that can take several whole binary messages in one call (optional)."""

    def binary_messages(self, payloads: list[bytes]) -> None:
        """
        Whole binary messages, in order: for each, what C{message_begin(True)},
        C{message_data(payload)} (unless empty) and C{message_end()} would say.
        """


class FrameParser:
    """
    Parses client frames fed in chunks of any size; stops after a close
    frame or an error.

    @param max_message_size: largest message payload in bytes; 0 for none.
    @param inflater: when permessage-deflate was negotiated, what inflates
        compressed messages (its own limit bounds their inflated size).
    """

    def __init__(self, handler: FrameHandler, max_message_size: int = 0, inflater: Inflater | None = None):
        self._handler = handler
        self._max = max_message_size
        self._pending = b""
        self._in_payload = False
        self._opcode = 0
        self._fin = True
        self._mask = b""
        self._remaining = 0
        self._offset = 0
        self._control: list[bytes] = []
        self._in_message = False
        self._text: Utf8Validator | None = None
        self._message_size = 0
        self._inflater = inflater
        self._compressed = False
        #: Told when a non-final data frame ends (a fragment boundary), if the handler wants to know.
        self._frame_end: Callable[[], None] | None = getattr(handler, "frame_end", None)
        #: Takes a read's run of whole binary messages in one call, if the handler can.
        self._binary_messages: Callable[[list[bytes]], None] | None = getattr(handler, "binary_messages", None)
        self.stopped = False

    def feed(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._pending:
            data, self._pending = self._pending + data, b""
        position, end = 0, len(data)
        while not self.stopped:
            if self._in_payload:
                if self._remaining:
                    if position >= end:
                        return
                    take = min(self._remaining, end - position)
                    chunk = data[position:position + take] if take != end - position or position else data
                    position += take
                    self._payload(chunk)
                if not self._remaining and not self.stopped:
                    self._frame_done()
            elif (position < end and data[position] == _WHOLE_BINARY and not self._in_message
                  and (after := self._binary_run(data, position)) != position):
                position = after
            else:
                used = self._header(data, position, end)
                if not used:
                    if position < end:
                        self._pending = data[position:]
                    return
                position += used

    def _binary_run(self, data: bytes, position: int) -> int:
        """
        The fast path for the commonest frames of all: whole, unfragmented,
        masked binary frames, entirely in C{data}, outside any message, many
        to a read.  All of them up to the first other frame are unmasked in
        one call (compiled when built) and handed on in one call when the
        handler can take them so; what the general path would do for each.
        A frame over the message limit ends the run (the general path
        refuses it).  Returns the position after the run (C{position}: none).
        """
        payloads, after = _scan_binary(data, position, self._max)
        if not payloads:
            return position
        take_all = self._binary_messages
        if take_all is not None:
            take_all(payloads)
            return after
        handler = self._handler
        for payload in payloads:
            handler.message_begin(True)
            if payload and not self.stopped:
                handler.message_data(payload)
            if self.stopped:
                break
            handler.message_end()
        return after

    # -- frame headers -------------------------------------------------------------

    def _header(self, data: bytes, position: int, end: int) -> int:
        """Parse one frame header at C{position}; the bytes it took, or 0 if incomplete."""
        available = end - position
        if available < 2:
            return 0
        first, second = data[position], data[position + 1]
        length = second & 0x7F
        size = 2
        if length == 126:
            size = 4
            if available < size:
                return 0
            length = int.from_bytes(data[position + 2:position + 4], "big")
        elif length == 127:
            size = 10
            if available < size:
                return 0
            length = int.from_bytes(data[position + 2:position + 10], "big")
        masked = second & 0x80
        if masked:
            size += 4
            if available < size:
                return 0
        rsv = first & 0x70
        if rsv and (rsv != 0x40 or self._inflater is None):
            return self._fail(PROTOCOL_ERROR, "reserved bits set, but no extension was negotiated")
        if not masked:
            return self._fail(PROTOCOL_ERROR, "client frames must be masked")
        if length >> 63:
            return self._fail(PROTOCOL_ERROR, "frame length has its most significant bit set")
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if rsv and opcode not in (TEXT, BINARY):
            return self._fail(PROTOCOL_ERROR, "compression bit set on a control or continuation frame")
        if opcode >= CLOSE:
            if not self._control_header(opcode, fin, length):
                return 0
        elif not self._data_header(opcode, fin, length, bool(rsv)):
            return 0
        self._mask = data[position + size - 4:position + size]
        self._opcode = opcode
        self._fin = fin
        self._remaining = length
        self._offset = 0
        self._in_payload = True
        return size

    def _control_header(self, opcode: int, fin: bool, length: int) -> bool:
        if opcode not in (CLOSE, PING, PONG):
            return bool(self._fail(PROTOCOL_ERROR, f"reserved opcode {opcode}"))
        if not fin:
            return bool(self._fail(PROTOCOL_ERROR, "control frames must not be fragmented"))
        if length > 125:
            return bool(self._fail(PROTOCOL_ERROR, "control frame payload longer than 125 bytes"))
        self._control = []
        return True

    def _data_header(self, opcode: int, fin: bool, length: int, compressed: bool = False) -> bool:
        if opcode == CONTINUATION:
            if not self._in_message:
                return bool(self._fail(PROTOCOL_ERROR, "continuation frame with no message to continue"))
        elif opcode in (TEXT, BINARY):
            if self._in_message:
                return bool(self._fail(PROTOCOL_ERROR, "new message started inside a fragmented message"))
        else:
            return bool(self._fail(PROTOCOL_ERROR, f"reserved opcode {opcode}"))
        self._message_size += length
        if self._max and self._message_size > self._max:
            return bool(self._fail(MESSAGE_TOO_BIG, f"message larger than {self._max} bytes"))
        if opcode != CONTINUATION:
            self._in_message = True
            self._text = Utf8Validator() if opcode == TEXT else None
            self._compressed = compressed
            if compressed:
                self._inflater.begin()  # type: ignore[union-attr]  # compressed only with an inflater
            self._handler.message_begin(opcode == BINARY)
        return not self.stopped

    # -- payload -------------------------------------------------------------------

    def _payload(self, chunk: bytes) -> None:
        payload = unmask(chunk, self._mask, self._offset)
        self._offset += len(chunk)
        self._remaining -= len(chunk)
        if self._opcode >= CLOSE:
            self._control.append(payload)
            return
        if self._compressed:
            self._inflated(self._inflater.feed(payload))  # type: ignore[union-attr]
            return
        if self._text is not None and not self._text.validate(payload)[0]:
            self._fail(INVALID_PAYLOAD, "text message is not valid UTF-8")
            return
        self._handler.message_data(payload)

    def _inflated(self, pieces: Iterator[bytes]) -> None:
        """Validate and hand on inflated payload, step by step, until a problem."""
        try:
            for piece in pieces:
                if self._text is not None and not self._text.validate(piece)[0]:
                    self._fail(INVALID_PAYLOAD, "text message is not valid UTF-8")
                    return
                self._handler.message_data(piece)
                if self.stopped:
                    return
        except InflateError as e:
            self._fail(e.code, e.reason)

    def _frame_done(self) -> None:
        self._in_payload = False
        opcode = self._opcode
        if opcode >= CLOSE:
            self._control_frame(opcode, b"".join(self._control))
            return
        if not self._fin:
            if self._frame_end is not None and not self.stopped:
                self._frame_end()
            return
        if self._compressed:
            self._compressed = False
            self._inflated(self._inflater.end())  # type: ignore[union-attr]
            if self.stopped:
                return
        if self._text is not None:
            valid, complete = self._text.validate(b"")[:2]
            if not (valid and complete):
                self._fail(INVALID_PAYLOAD, "text message ends inside a UTF-8 sequence")
                return
        self._in_message = False
        self._text = None
        self._message_size = 0
        self._handler.message_end()

    def _control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self._handler.ping(payload)
        elif opcode == PONG:
            self._handler.pong(payload)
        elif len(payload) == 1:
            self._fail(PROTOCOL_ERROR, "close frame payload of one byte")
        else:
            self.stopped = True
            code = int.from_bytes(payload[:2], "big") if payload else None
            self._handler.close(code, payload[2:] if len(payload) > 2 else None)

    def _fail(self, code: int, reason: str) -> int:
        self.stopped = True
        self._handler.fail(code, reason)
        return 0
