"""
The bridge: moves one session's data between a WebSocket and a target link.

It owns the session's rules, and nothing about I/O:

  - client frames go to the target as they arrive (whole messages for
    datagram targets), decoded from base64 for websockify's C{base64}
    subprotocol;
  - target bytes are cut into messages by a framer and sent to the client
    (a link whose messages have a known type, a replayed recording, hands
    them over whole with L{message_received}, bypassing the framer);
  - flow control is wiring: the target's producer is registered with the
    client's transport and the client's with the target's, so whichever
    side is slow pauses the other;
  - whichever side ends first decides the close: target end-of-stream gives
    1000 after everything already received is sent, a target error 1011,
    router shutdown 1001; a client close shuts the target's write side,
    then closes it once pending data is written.

No reactor, no Autobahn: the WebSocket is a L{WebSocketEnd}.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from attrs import define, field
from twisted.logger import Logger

from wsrouter.interfaces import ClosingLink, Framer, Link, MessageLink, Recorder, WebSocketEnd
from wsrouter.streamframes import FramingError

NORMAL = 1000
GOING_AWAY = 1001
INVALID_PAYLOAD = 1007
INTERNAL_ERROR = 1011

log = Logger(namespace="wsrouter")


@define
class SessionStats:
    """
    Counters for the session's summary log line; bytes are payload bytes.

    @ivar clock: seconds now (the session's reactor's C{seconds}); time
        since C{started} is the duration.
    """

    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    started: float = field()
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    messages_from_client: int = 0
    messages_to_client: int = 0
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str = ""

    @started.default
    def _now(self) -> float:
        return self.clock()

    def duration(self) -> float:
        """Seconds since the session started."""
        return self.clock() - self.started


class Bridge:
    """
    Relays one session.  Call L{start} once the WebSocket is open.

    @param binary_for: tells whether a framed target message goes out as a
        binary (C{True}) or text message.
    @param encoder: turns each whole client message (payload, is_binary)
        into the bytes the target's framing expects (L{wsrouter.framing.make_encoder});
        C{None}: client frames are streamed to the target as they arrive.
    @param on_finished: called once, when both sides are done, with the stats.
    @param clock: seconds now, for the session's duration.
    """

    def __init__(
        self,
        socket: WebSocketEnd,
        link: Link,
        framer: Framer,
        *,
        base64_mode: bool = False,
        binary_for: Callable[[bytes], bool] = lambda payload: True,
        recorder: Recorder | None = None,
        on_finished: Callable[[SessionStats], None] = lambda stats: None,
        clock: Callable[[], float] = time.monotonic,
        encoder: Callable[[bytes, bool], bytes] | None = None,
        session_id: str = "",
    ):
        #: Starts the bridge's own log lines, as the session's do (C{"session ID: "}).
        self._log_prefix = f"session {session_id}: " if session_id else ""
        self._eof_done = False
        self._socket = socket
        self._link = link
        self._framer = framer
        self._encoder = encoder
        #: A framer that knows its messages' types (L{wsrouter.streamframes}).
        self._typed_framer = hasattr(framer, "feed_typed")
        self._framing_broken = False
        self._base64 = base64_mode
        self._binary_for = binary_for
        self._recorder = recorder
        self._on_finished = on_finished
        self.stats = SessionStats(clock)
        self._message: list[bytes] | None = None
        self._message_is_binary = True
        self._base64_rest = b""
        self._base64_padded = False
        self._recorded: list[bytes] = []
        self._closing = False
        self._upstream_stopped = False
        self._socket_done = False
        self._link_done = False
        self._finished = False
        #: Set for a link that keeps message types (L{MessageLink}).
        self._typed_link: MessageLink | None = link if hasattr(link, "write_message") else None  # type: ignore[assignment]
        #: Set for a link that passes the client's close code on (a WebSocket target).
        self._closing_link: ClosingLink | None = link if hasattr(link, "close_with") else None  # type: ignore[assignment]
        #: Set for a link that keeps fragmentation (a WebSocket target): L{fragment_end}.
        self._fragment_link: Callable[[bytes, bool, bool, bool], None] | None = getattr(link, "write_fragment", None)
        #: Fragments of the client's current message were sent to the link already.
        self._fragmented = False
        #: A fragmented target message gathered to go as one (see L{fragment_received}).
        self._target_parts: list[bytes] | None = None

    @property
    def link(self) -> Link:
        return self._link

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Wire flow control both ways, then let the target's data flow."""
        if self._link.producer is not None:
            self._socket.attach_producer(self._link.producer)
        if self._link.consumer is not None:
            self._link.consumer.registerProducer(self._socket.consumer_producer(), True)
        self._link.start(self)

    def shutdown(self, reason: str = "router shutting down") -> None:
        """The router is stopping: close the client with 1001, then the target."""
        self._close_client(GOING_AWAY, reason, by="router")

    def idle_timeout(self) -> None:
        """No traffic for too long: close normally, saying why."""
        self._close_client(NORMAL, "idle timeout", by="router")

    # -- client side (called by the WebSocket protocol) -------------------------

    def message_begin(self, is_binary: bool) -> None:
        self._message_is_binary = is_binary
        self._base64_padded = False
        self._fragmented = False
        self.stats.messages_from_client += 1
        if self._link.message_oriented or self._encoder is not None:
            self._message = []

    def frame_data(self, payload: bytes) -> None:
        """
        Part of a client message; forwarded now unless the target wants
        whole messages.  Frames still arrive after the router has sent its
        close (until the client's close crosses it) and are delivered too.
        """
        if self._upstream_stopped or self._link_done:
            return
        if self._base64:
            payload, problem = self._decode_base64(payload)
            self._forward(payload)
            if problem:
                self._refuse_payload(problem)
            return
        self._forward(payload)

    def _forward(self, payload: bytes) -> None:
        self.stats.bytes_from_client += len(payload)
        if self._recorder is not None:
            self._recorded.append(payload)
        if self._message is not None:
            self._message.append(payload)
        elif payload:
            self._link.write(payload)

    def message_end(self) -> None:
        if self._base64 and self._base64_rest:
            self._base64_rest = b""
            self._refuse_payload("base64 message length is not a multiple of 4")
            return
        if self._recorder is not None and not self._upstream_stopped:
            recorded, self._recorded = b"".join(self._recorded), []
            self._recorder.client_message(recorded, self._message_is_binary)
        if self._message is not None:
            message, self._message = b"".join(self._message), None
            if self._upstream_stopped or self._link_done:
                return
            if self._fragmented and self._fragment_link is not None:
                self._fragmented = False
                self._fragment_link(message, self._message_is_binary, False, True)
            elif self._typed_link is not None:
                self._typed_link.write_message(message, self._message_is_binary)
            elif self._encoder is not None:
                self._write_encoded(message)
            else:
                self._link.write(message)

    def binary_messages(self, payloads: list[bytes]) -> None:
        """
        Several whole binary client messages (a read's run, from the frame
        parser's fast path): what L{message_begin}, L{frame_data} and
        L{message_end} would do for each.  On a plain byte relay (a stream
        target, no recorder, no base64, no encoder) they go to the target
        as one write.
        """
        if (self._message is not None or self._base64 or self._recorder is not None or self._encoder is not None
                or self._link.message_oriented or self._upstream_stopped or self._link_done):
            for payload in payloads:
                self.message_begin(True)
                self.frame_data(payload)
                self.message_end()
            return
        self._message_is_binary = True
        self._fragmented = False
        stats = self.stats
        stats.messages_from_client += len(payloads)
        data = b"".join(payloads) if len(payloads) > 1 else payloads[0]
        if data:
            stats.bytes_from_client += len(data)
            self._link.write(data)

    def fragment_end(self) -> None:
        """A client frame that does not end its message: a link that keeps fragmentation gets it now."""
        write_fragment = self._fragment_link
        if write_fragment is None or self._message is None or self._upstream_stopped or self._link_done:
            return
        part, self._message = b"".join(self._message), []
        write_fragment(part, self._message_is_binary, not self._fragmented, False)
        self._fragmented = True

    def _write_encoded(self, message: bytes) -> None:
        try:
            encoded = self._encoder(message, self._message_is_binary)  # type: ignore[misc]
        except FramingError as e:
            self.refuse(e.code, e.reason)
            return
        self._link.write(encoded)

    def websocket_closed(self, code: int | None, reason: str) -> None:
        """
        The WebSocket is gone (closing handshake done, or dropped).

        Shut the target's write side so it sees end of input, then close it;
        data the client sent before is still written first.
        """
        if self.stats.close_code is None:
            self.stats.close_code = code
            self.stats.close_reason = reason or ""
            self.stats.closed_by = "client"
        self._closing = True
        self._upstream_stopped = True
        self._socket_done = True
        if not self._link_done:
            if self._closing_link is not None:
                # The close that ended the session: the client's, or the router's own (idle, shutdown).
                self._closing_link.close_with(self.stats.close_code, self.stats.close_reason)
            else:
                self._link.write_eof()
                self._link.close()
        self._maybe_finished()

    def _decode_base64(self, payload: bytes) -> tuple[bytes, str]:
        """
        Decode the whole 4-character groups received so far.  Padding ends
        the message: anything after it is refused, however the message was
        fragmented, once the valid part before it has been forwarded.

        @return: the decoded bytes, and a problem (empty if none).
        """
        data = self._base64_rest + payload
        if self._base64_padded and data:
            return b"", "invalid base64 payload: data after padding"
        whole = len(data) - len(data) % 4
        problem = ""
        first_pad = data.find(b"=", 0, whole)
        if first_pad != -1:
            self._base64_padded = True
            end = (first_pad // 4 + 1) * 4
            if end < len(data):
                whole, problem = end, "invalid base64 payload: data after padding"
        self._base64_rest = b"" if problem else data[whole:]
        try:
            return base64.b64decode(data[:whole], validate=True), problem
        except binascii.Error:
            return b"", "invalid base64 payload"

    def _refuse_payload(self, reason: str) -> None:
        self.refuse(INVALID_PAYLOAD, reason)

    def refuse(self, code: int, reason: str) -> None:
        """The client broke the protocol: relay nothing more from it, close with C{code}."""
        self._upstream_stopped = True
        self._message = None
        self._close_client(code, reason, by="router")

    @property
    def finished(self) -> bool:
        """Both sides are done and the session's summary has been given."""
        return self._finished

    # -- target side (LinkReceiver) --------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._typed_framer:
            if self._framing_broken:
                return
            try:
                typed = self._framer.feed_typed(data)  # type: ignore[attr-defined]
            except FramingError as e:
                for message, is_binary in e.messages:  # whole before the bad data: delivered first
                    self._send(message, is_binary)
                self._framing_failed(e)
                return
            for message, is_binary in typed:
                self._send(message, is_binary)
            return
        for message in self._framer.feed(data):
            self._send(message)

    def _framing_failed(self, error: FramingError) -> None:
        """The target's stream broke its framing: close the client with the error's code, then the target."""
        self._framing_broken = True
        log.info("{prefix}target stream broke its framing: {reason}; closing with {code}",
                 prefix=self._log_prefix, reason=error.reason, code=error.code)
        self._close_client(error.code, error.reason, by="target")
        if not self._link_done:
            self._link.abort()

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        self._send(payload, is_binary)

    def fragment_received(self, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        """
        One frame of a target message (a WebSocket target), sent to the
        client as one frame; gathered and sent whole when the client side
        cannot take fragments, in base64 mode or when the session is recorded.
        """
        if first and fin:
            self._send(payload, is_binary)
            return
        if self._socket_done:
            return
        send_fragment = getattr(self._socket, "send_fragment", None)
        if first:
            gather = send_fragment is None or self._base64 or self._recorder is not None
            self._target_parts = [] if gather else None
        parts = self._target_parts
        if parts is not None:
            parts.append(payload)
            if fin:
                self._target_parts = None
                self._send(b"".join(parts), is_binary)
            return
        if send_fragment is None:  # not so: then the message is gathered
            return
        self.stats.bytes_to_client += len(payload)
        if first:
            self.stats.messages_to_client += 1
        send_fragment(payload, is_binary, first, fin)

    def eof_received(self) -> None:
        """
        The target has said everything: deliver what is left, then close
        1000.  Once: a half-close and then the connection's end both report it.
        """
        if self._eof_done:
            return
        self._eof_done = True
        if self._typed_framer:
            for message, is_binary in self._framer.flush_typed():  # type: ignore[attr-defined]
                self._send(message, is_binary)
            dropped = getattr(self._framer, "dropped", 0)
            if dropped:
                log.info("{prefix}target ended inside a frame; {dropped} bytes of it dropped",
                         prefix=self._log_prefix, dropped=dropped)
        else:
            for message in self._framer.flush():
                self._send(message)
        self._close_client(NORMAL, "target closed the connection", by="target")

    def link_closed(self, code: int, reason: str) -> None:
        """A WebSocket target closed with C{code}: the client gets the same code and reason."""
        self._link_done = True
        self._close_client(code, reason, by="target")
        self._maybe_finished()

    def link_lost(self, error: str | None) -> None:
        self._link_done = True
        if error is None:
            self.eof_received()
        else:
            self._close_client(INTERNAL_ERROR, f"target error: {error}", by="target")
        self._maybe_finished()

    def _send(self, message: bytes, is_binary: bool | None = None) -> None:
        if self._socket_done:
            return
        if is_binary is None:
            is_binary = self._binary_for(message)
        self.stats.bytes_to_client += len(message)
        self.stats.messages_to_client += 1
        if self._recorder is not None:
            self._recorder.target_message(message, is_binary)
        if self._base64:
            self._socket.send(base64.b64encode(message), False)
        else:
            self._socket.send(message, is_binary)

    # -- watchers (L{wsrouter.ops.watch}) ------------------------------------------

    def tap(self, recorder: Recorder) -> Recorder | None:
        """Feed C{recorder} instead, from now on; the recorder it replaces (to be fed by it) is returned."""
        replaced, self._recorder = self._recorder, recorder
        return replaced

    def inject(self, payload: bytes, is_binary: bool) -> bool:
        """
        Send a whole message from elsewhere than the client (a writable
        watcher) to the target; C{False} once the target takes no more.
        """
        if self._upstream_stopped or self._link_done:
            return False
        if self._typed_link is not None:
            self._typed_link.write_message(payload, is_binary)
        elif payload:
            self._link.write(payload)
        return True

    # -- closing ----------------------------------------------------------------

    def _close_client(self, code: int, reason: str, by: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.stats.close_code = code
        self.stats.close_reason = reason
        self.stats.closed_by = by
        self._socket.close(code, reason)

    def _maybe_finished(self) -> None:
        if self._finished or not (self._socket_done and self._link_done):
            return
        self._finished = True
        if self._recorder is not None:
            self._recorder.closed(self.stats.close_code, self.stats.close_reason)
        self._on_finished(self.stats)
