"""
Tests for L{wsrouter.bridge}: one session's data, flow-control wiring and
close codes, with recording fakes for the WebSocket, the link and the
recorder, and the real framers.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from wsrouter.bridge import Bridge, SessionStats
from wsrouter.framing import BinaryFramer, LineFramer, message_is_binary
from wsrouter.interfaces import Framer


class FakeProducer:
    """Stands in for a push producer: records the calls made to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeConsumer:
    """The link's consumer: records the producers registered with it."""

    def __init__(self) -> None:
        self.registered: list[tuple[Any, bool]] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.registered.append((producer, streaming))

    def unregisterProducer(self) -> None:
        self.registered.append((None, False))


class FakeSocket:
    """A WebSocketEnd that logs what the bridge does to it in a shared event list."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events
        self.attached: list[Any] = []
        self.producer = FakeProducer("client transport")

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.events.append(("send", payload, is_binary))

    def close(self, code: int, reason: str) -> None:
        self.events.append(("close", code, reason))

    def attach_producer(self, producer: Any) -> None:
        self.attached.append(producer)

    def consumer_producer(self) -> Any:
        return self.producer


class FakeLink:
    """A Link that logs what the bridge does to it in a shared event list."""

    def __init__(self, events: list[tuple[Any, ...]], message_oriented: bool, wired: bool = True) -> None:
        self.events = events
        self.message_oriented = message_oriented
        self.producer = FakeProducer("target") if wired else None
        self.consumer = FakeConsumer() if wired else None
        self.receivers: list[Any] = []

    def start(self, receiver: Any) -> None:
        self.receivers.append(receiver)

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def write_eof(self) -> None:
        self.events.append(("write_eof",))

    def close(self) -> None:
        self.events.append(("link_close",))

    def abort(self) -> None:
        self.events.append(("abort",))


class FakeRecorder:
    """A Recorder that keeps everything it is told."""

    def __init__(self) -> None:
        self.client: list[tuple[bytes, bool]] = []
        self.target: list[tuple[bytes, bool]] = []
        self.closes: list[tuple[int | None, str]] = []

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        self.client.append((payload, is_binary))

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        self.target.append((payload, is_binary))

    def closed(self, code: int | None, reason: str) -> None:
        self.closes.append((code, reason))


class Session:
    """One bridge wired to fakes, started, with helpers to play the client's part."""

    def __init__(
        self,
        *,
        message_oriented: bool = False,
        framer: Framer | None = None,
        base64_mode: bool = False,
        binary_for: Callable[[bytes], bool] | None = None,
        wired: bool = True,
        start: bool = True,
    ) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.socket = FakeSocket(self.events)
        self.link = FakeLink(self.events, message_oriented, wired)
        self.recorder = FakeRecorder()
        self.finished: list[SessionStats] = []
        options: dict[str, Any] = {}
        if binary_for is not None:
            options["binary_for"] = binary_for
        self.bridge = Bridge(
            self.socket, self.link, framer or BinaryFramer(),
            base64_mode=base64_mode, recorder=self.recorder, on_finished=self.finished.append, **options,
        )
        if start:
            self.bridge.start()

    def client_message(self, frames: list[bytes], is_binary: bool = True) -> None:
        """The client sends one message made of C{frames}."""
        self.bridge.message_begin(is_binary)
        for frame in frames:
            self.bridge.frame_data(frame)
        self.bridge.message_end()

    def writes(self) -> list[bytes]:
        return [event[1] for event in self.events if event[0] == "write"]

    def sent(self) -> list[tuple[bytes, bool]]:
        return [(event[1], event[2]) for event in self.events if event[0] == "send"]

    def closes(self) -> list[tuple[int, str]]:
        return [(event[1], event[2]) for event in self.events if event[0] == "close"]


def one_byte_per_frame(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def frames_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# -- start -----------------------------------------------------------------------


def test_start_registers_producers_both_ways() -> None:
    """start() gives the link's producer to the socket and registers the socket's producer with the link."""
    session = Session(start=False)
    assert session.socket.attached == [] and session.link.consumer.registered == []
    session.bridge.start()
    assert session.socket.attached == [session.link.producer]
    assert session.link.consumer.registered == [(session.socket.producer, True)]
    assert session.link.receivers == [session.bridge]


def test_start_without_flow_control_objects() -> None:
    """A link without producer or consumer is started without registering anything."""
    session = Session(wired=False)
    assert session.socket.attached == []
    assert session.link.receivers == [session.bridge]


# -- client to target -----------------------------------------------------------


@pytest.mark.parametrize("is_binary", [True, False], ids=["binary", "text"])
def test_stream_link_gets_frames_as_they_arrive(is_binary: bool) -> None:
    """For a stream link each frame's bytes are written as soon as the frame arrives, before the message ends."""
    session = Session(message_oriented=False)
    session.bridge.message_begin(is_binary)
    session.bridge.frame_data(b"hel")
    assert session.writes() == [b"hel"]
    session.bridge.frame_data(b"lo")
    assert session.writes() == [b"hel", b"lo"]
    session.bridge.message_end()
    assert session.writes() == [b"hel", b"lo"]


def test_stream_link_gets_no_empty_writes() -> None:
    """Empty frames and empty messages write nothing to a stream link."""
    session = Session(message_oriented=False)
    session.client_message([b"", b"a", b""])
    session.client_message([])
    assert session.writes() == [b"a"]


@pytest.mark.parametrize("is_binary", [True, False], ids=["binary", "text"])
def test_message_link_gets_whole_messages(is_binary: bool) -> None:
    """For a message-oriented link nothing is written until the message ends, then the frames joined as one write."""
    session = Session(message_oriented=True)
    session.bridge.message_begin(is_binary)
    session.bridge.frame_data(b"one ")
    session.bridge.frame_data(b"two")
    assert session.writes() == []
    session.bridge.message_end()
    session.client_message([b"three"], is_binary)
    session.client_message(one_byte_per_frame(b"four"), is_binary)
    assert session.writes() == [b"one two", b"three", b"four"]


def test_text_frames_forwarded_as_bytes() -> None:
    """A text message's UTF-8 bytes reach the target unchanged."""
    text = "héllo, wörld ✓".encode()
    for message_oriented in (False, True):
        session = Session(message_oriented=message_oriented)
        session.client_message([text[:2], text[2:]], is_binary=False)
        assert b"".join(session.writes()) == text


def test_partial_message_dropped_when_client_goes() -> None:
    """A message-oriented link never gets the unfinished message of a client that went away."""
    session = Session(message_oriented=True)
    session.bridge.message_begin(True)
    session.bridge.frame_data(b"half")
    session.bridge.websocket_closed(None, "")
    assert session.writes() == []


# -- base64 ---------------------------------------------------------------------

PAYLOAD = bytes(range(256)) + b"tail"
ENCODED = base64.b64encode(PAYLOAD)


@pytest.mark.parametrize("frames", [
    pytest.param([ENCODED], id="one-frame"),
    pytest.param(one_byte_per_frame(ENCODED), id="one-byte-per-frame"),
    pytest.param(frames_of(ENCODED, 3), id="three-byte-frames"),
    pytest.param(frames_of(ENCODED, 7), id="seven-byte-frames"),
    pytest.param([b"", *frames_of(ENCODED, 5), b""], id="empty-frames"),
])
@pytest.mark.parametrize("message_oriented", [False, True], ids=["stream", "message"])
def test_base64_decoded_across_frames(frames: list[bytes], message_oriented: bool) -> None:
    """In base64 mode the target gets the decoded bytes however the text is cut into frames."""
    session = Session(message_oriented=message_oriented, base64_mode=True)
    session.client_message(frames, is_binary=False)
    assert b"".join(session.writes()) == PAYLOAD
    if message_oriented:
        assert session.writes() == [PAYLOAD]
    else:
        assert all(session.writes())
    assert session.closes() == []


def test_base64_messages_decoded_separately() -> None:
    """Each base64 message, padded on its own, is decoded to its own bytes."""
    session = Session(message_oriented=True, base64_mode=True)
    for data in (b"a", b"bc", b"def"):
        session.client_message(one_byte_per_frame(base64.b64encode(data)), is_binary=False)
    assert session.writes() == [b"a", b"bc", b"def"]


@pytest.mark.parametrize("frames, valid_prefix", [
    pytest.param([b"QUJD!!!!"], b"", id="bad-character"),
    pytest.param([b"QUJD", b"QU J"], b"ABC", id="space"),
    pytest.param([b"QUJDRA"], b"ABC", id="length-not-multiple-of-4"),
    pytest.param(one_byte_per_frame(b"QUJDRA"), b"ABC", id="length-not-multiple-of-4-bytewise"),
])
@pytest.mark.parametrize("message_oriented", [False, True], ids=["stream", "message"])
def test_invalid_base64_closes_1007(frames: list[bytes], valid_prefix: bytes, message_oriented: bool) -> None:
    """
    Invalid base64 from the client closes the WebSocket with 1007, once; a
    stream target has been sent the valid groups before the problem, a
    datagram target nothing of that message; later messages are not written.
    """
    session = Session(message_oriented=message_oriented, base64_mode=True)
    session.client_message(frames, is_binary=False)
    session.client_message([b"QUJD"], is_binary=False)
    assert [code for code, _ in session.closes()] == [1007]
    assert b"".join(session.writes()) == (b"" if message_oriented else valid_prefix)
    assert session.bridge.stats.close_code == 1007
    assert session.bridge.stats.closed_by == "router"


def test_base64_outcome_ignores_fragmentation() -> None:
    """A base64 message with padding in the middle gets the same outcome however it is fragmented."""
    outcomes = []
    for frames in ([b"QQ==QQ=="], [b"QQ==", b"QQ=="], one_byte_per_frame(b"QQ==QQ==")):
        session = Session(base64_mode=True)
        session.client_message(frames, is_binary=False)
        outcomes.append((session.writes(), session.closes()))
    assert outcomes[1] == outcomes[0]
    assert outcomes[2] == outcomes[0]


def test_base64_target_data_sent_as_text() -> None:
    """In base64 mode target data goes to the client as base64 in text messages."""
    session = Session(base64_mode=True)
    session.bridge.data_received(b"\x00\xffhello")
    session.bridge.data_received(b"x")
    assert session.sent() == [(base64.b64encode(b"\x00\xffhello"), False), (b"eA==", False)]


# -- target to client -----------------------------------------------------------


def test_target_data_sent_as_binary() -> None:
    """With the binary framer each chunk from the target is one binary message."""
    session = Session()
    session.bridge.data_received(b"abc")
    session.bridge.data_received(b"\x00\x01")
    session.bridge.data_received(b"")
    assert session.sent() == [(b"abc", True), (b"\x00\x01", True)]


@pytest.mark.parametrize("chunks", [
    pytest.param([b"one\ntwo\r\n\xff\xfe\n"], id="all-at-once"),
    pytest.param(one_byte_per_frame(b"one\ntwo\r\n\xff\xfe\n"), id="byte-by-byte"),
    pytest.param([b"on", b"e\ntw", b"o\r", b"\n\xff", b"\xfe\n"], id="split"),
])
def test_line_framer_sends_text_lines(chunks: list[bytes]) -> None:
    """With a line framer each line is one message, text when it is UTF-8, however the target's data is cut."""
    session = Session(framer=LineFramer(1000), binary_for=lambda payload: message_is_binary("line", payload))
    for chunk in chunks:
        session.bridge.data_received(chunk)
    assert session.sent() == [(b"one", False), (b"two", False), (b"\xff\xfe", True)]


@pytest.mark.parametrize("end", ["eof_received", "link_lost"])
def test_target_eof_flushes_then_closes_1000(end: str) -> None:
    """At the target's clean end the framer's buffered remainder is sent, then the client closed with 1000."""
    session = Session(framer=LineFramer(1000), binary_for=lambda payload: False)
    session.bridge.data_received(b"first\nrest")
    assert session.sent() == [(b"first", False)]
    if end == "eof_received":
        session.bridge.eof_received()
    else:
        session.bridge.link_lost(None)
    socket_events = [event for event in session.events if event[0] in ("send", "close")]
    assert [event[:2] for event in socket_events] == [("send", b"first"), ("send", b"rest"), ("close", 1000)]
    assert session.bridge.stats.closed_by == "target"


def test_target_error_closes_1011() -> None:
    """A link lost with an error closes the client with 1011, giving the error in the reason."""
    session = Session()
    session.bridge.link_lost("Connection refused by peer")
    [(code, reason)] = session.closes()
    assert code == 1011
    assert "Connection refused by peer" in reason
    assert session.bridge.stats.closed_by == "target"


@pytest.mark.parametrize("end, code, reason", [
    ("shutdown", 1001, None),
    ("idle_timeout", 1000, "idle timeout"),
])
def test_router_closes(end: str, code: int, reason: str | None) -> None:
    """shutdown() closes the client with 1001 and idle_timeout() with 1000 'idle timeout'."""
    session = Session()
    getattr(session.bridge, end)()
    [(sent_code, sent_reason)] = session.closes()
    assert sent_code == code
    if reason is None:
        assert "shutting down" in sent_reason
    else:
        assert sent_reason == reason
    assert session.bridge.stats.closed_by == "router"
    assert "write_eof" not in [event[0] for event in session.events]


def test_client_closed_at_most_once() -> None:
    """However many reasons to close pile up, the client gets a single close."""
    session = Session()
    session.bridge.idle_timeout()
    session.bridge.shutdown()
    session.bridge.eof_received()
    session.bridge.link_lost("late error")
    assert session.closes() == [(1000, "idle timeout")]


# -- the client goes away -------------------------------------------------------


def test_websocket_closed_shuts_link_in_order() -> None:
    """When the WebSocket closes the link gets write_eof, then close, after the data already written."""
    session = Session()
    session.client_message([b"last words"])
    session.bridge.websocket_closed(1000, "bye")
    assert session.events == [("write", b"last words"), ("write_eof",), ("link_close",)]


def test_nothing_sent_to_client_after_websocket_closed() -> None:
    """Once the WebSocket has closed, target data, end or errors send nothing more to the client."""
    session = Session(framer=LineFramer(1000))
    session.bridge.data_received(b"buffered")
    session.bridge.websocket_closed(1000, "bye")
    socket_events_before = [e for e in session.events if e[0] in ("send", "close")]
    session.bridge.data_received(b"\nmore\n")
    session.bridge.eof_received()
    session.bridge.link_lost("reset")
    session.bridge.shutdown()
    assert [e for e in session.events if e[0] in ("send", "close")] == socket_events_before == []
    assert session.events.count(("link_close",)) == 1


def test_link_not_closed_again_after_it_was_lost() -> None:
    """A link that is already gone is not told to close when the WebSocket closes afterwards."""
    session = Session()
    session.bridge.link_lost("boom")
    session.bridge.websocket_closed(1011, "target error: boom")
    assert ("write_eof",) not in session.events
    assert ("link_close",) not in session.events


# -- the end of a session -------------------------------------------------------


def traffic(session: Session) -> None:
    """Five bytes from the client, three from the target, both as single messages."""
    session.client_message([b"hel", b"lo"])
    session.bridge.data_received(b"abc")


END_SCENARIOS = [
    pytest.param(
        lambda b: (b.websocket_closed(1000, "bye"), b.link_lost(None)),
        1000, "bye", "client", id="client-closes"),
    pytest.param(
        lambda b: (b.websocket_closed(None, ""), b.link_lost(None)),
        None, "", "client", id="client-drops"),
    pytest.param(
        lambda b: (b.link_lost(None), b.websocket_closed(1000, "target closed the connection")),
        1000, "target closed the connection", "target", id="target-ends"),
    pytest.param(
        lambda b: (b.eof_received(), b.websocket_closed(1000, "echoed"), b.link_lost(None)),
        1000, "target closed the connection", "target", id="target-eof-then-lost"),
    pytest.param(
        lambda b: (b.link_lost("boom"), b.websocket_closed(1011, "target error: boom")),
        1011, "target error: boom", "target", id="target-error"),
    pytest.param(
        lambda b: (b.shutdown(), b.websocket_closed(1001, "router shutting down"), b.link_lost(None)),
        1001, "router shutting down", "router", id="shutdown"),
    pytest.param(
        lambda b: (b.idle_timeout(), b.link_lost(None), b.websocket_closed(1000, "idle timeout")),
        1000, "idle timeout", "router", id="idle"),
]


@pytest.mark.parametrize("end, code, reason, closed_by", END_SCENARIOS)
def test_on_finished_once_with_stats(end: Callable[[Bridge], Any], code: int | None, reason: str,
                                     closed_by: str) -> None:
    """on_finished is called exactly once, after both sides end, with bytes each way and who closed with what."""
    session = Session()
    traffic(session)
    end(session.bridge)
    [stats] = session.finished
    assert (stats.bytes_from_client, stats.bytes_to_client) == (5, 3)
    assert (stats.messages_from_client, stats.messages_to_client) == (1, 1)
    assert (stats.close_code, stats.close_reason, stats.closed_by) == (code, reason, closed_by)


def test_duration_is_measured_on_the_given_clock() -> None:
    """The stats' duration is the time from the bridge's creation to now on the injected clock."""
    now = [100.0]
    bridge = Bridge(FakeSocket([]), FakeLink([], message_oriented=False), BinaryFramer(), clock=lambda: now[0])
    now[0] = 102.5
    assert bridge.stats.duration() == 2.5
    assert SessionStats(lambda: 7.0, started=5.0).duration() == 2.0


@pytest.mark.parametrize("end, code, reason, closed_by", END_SCENARIOS)
def test_recorder_closed_once(end: Callable[[Bridge], Any], code: int | None, reason: str, closed_by: str) -> None:
    """The recorder sees the client's and the target's payloads, then closed(code, reason) exactly once."""
    session = Session()
    traffic(session)
    end(session.bridge)
    assert b"".join(payload for payload, _ in session.recorder.client) == b"hello"
    assert session.recorder.target == [(b"abc", True)]
    assert session.recorder.closes == [(code, reason)]


def test_recorder_sees_text_and_binary() -> None:
    """The recorder is told whether each client and target message is binary or text."""
    session = Session(framer=LineFramer(100), binary_for=lambda payload: message_is_binary("line", payload))
    session.client_message([b"text"], is_binary=False)
    session.client_message([b"\x00bin"], is_binary=True)
    session.bridge.data_received(b"line\n\xff\n")
    assert session.recorder.client == [(b"text", False), (b"\x00bin", True)]
    assert session.recorder.target == [(b"line", False), (b"\xff", True)]


def test_recorder_sees_decoded_base64() -> None:
    """In base64 mode the recorder gets the decoded payloads, not the base64 text."""
    session = Session(message_oriented=True, base64_mode=True)
    session.client_message([base64.b64encode(b"\x00\x01\x02")], is_binary=False)
    session.bridge.data_received(b"\xff")
    assert b"".join(payload for payload, _ in session.recorder.client) == b"\x00\x01\x02"
    assert [payload for payload, _ in session.recorder.target] == [b"\xff"]


@pytest.mark.parametrize("message_oriented", [False, True], ids=["stream", "message"])
def test_recorder_gets_whole_client_messages(message_oriented: bool) -> None:
    """A client message that arrives in several frames is recorded as one message."""
    session = Session(message_oriented=message_oriented)
    session.client_message([b"hel", b"lo"], is_binary=False)
    assert session.recorder.client == [(b"hello", False)]


def test_on_finished_waits_for_link() -> None:
    """on_finished is not called while the link is still open after the client closed, only once it is lost."""
    session = Session()
    session.bridge.websocket_closed(1000, "bye")
    assert session.finished == []
    session.bridge.link_lost(None)
    assert len(session.finished) == 1


# -- whole typed messages (a replayed recording) ---------------------------------------


def test_message_received_keeps_type_and_bypasses_framer() -> None:
    """A typed message from the link goes out whole with its own type, neither framed nor judged by binary_for."""
    session = Session(framer=LineFramer(100), binary_for=lambda payload: True)
    session.bridge.message_received(b"no newline", False)
    session.bridge.message_received(b"", True)
    session.bridge.message_received(b"a\nb", True)
    assert session.sent() == [(b"no newline", False), (b"", True), (b"a\nb", True)]
    assert session.recorder.target == [(b"no newline", False), (b"", True), (b"a\nb", True)]
    assert (session.bridge.stats.messages_to_client, session.bridge.stats.bytes_to_client) == (3, 13)


def test_message_received_base64_mode() -> None:
    """In base64 mode a typed message is sent base64-encoded as text, like framed data."""
    session = Session(base64_mode=True)
    session.bridge.message_received(b"\x00\xff", True)
    assert session.sent() == [(base64.b64encode(b"\x00\xff"), False)]


def test_message_received_after_websocket_closed_dropped() -> None:
    """Typed messages arriving after the WebSocket is gone are not sent."""
    session = Session()
    session.bridge.websocket_closed(1000, "bye")
    session.bridge.message_received(b"late", False)
    assert session.sent() == []
