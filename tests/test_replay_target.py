"""
The replay target, C{replay:FILE}: the link on a fake clock, then end to
end with recordings written by the encoders or recorded by the router.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed

from wsrouter.config import ReplayTarget, Route
from wsrouter.interfaces import SessionInfo, TargetError
from wsrouter.recording import (
    Event,
    Header,
    encode_jsonl_event,
    encode_jsonl_header,
    parse_recording,
    read_recording,
)
from wsrouter.targets.replay import BURST, ReplayConnector, ReplayLink

from . import rawws
from .support import connect, handshake_status, in_thread, start_router
from .test_record_e2e import recordings, wait_for


class Receiver:
    """A LinkReceiver that notes what arrives and when, on the test's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.messages: list[tuple[float, bytes, bool]] = []
        self.lost: list[str | None] = []

    def data_received(self, data: bytes) -> None:
        raise AssertionError("the replay link delivers whole typed messages only")

    def eof_received(self) -> None:
        raise AssertionError("the replay link ends with link_lost")

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        self.messages.append((round(self.clock.seconds(), 6), payload, is_binary))

    def link_lost(self, error: str | None) -> None:
        self.lost.append(error)


def target(offset: float, payload: bytes, kind: str = "binary") -> Event:
    return Event(offset, "target", kind, payload)


def started(events: Iterable[Event], speed: float = 1.0) -> tuple[ReplayLink, Receiver, Clock]:
    clock = Clock()
    clock.advance(100)  # the recording's offsets are relative to the start, not to the epoch
    link = ReplayLink(clock, iter(events), speed)
    receiver = Receiver(clock)
    link.start(receiver)
    return link, receiver, clock


def run(clock: Clock, until: float, step: float = 0.01) -> None:
    while clock.seconds() < until - 1e-9:
        clock.advance(step)


def write_recording(path: Path, events: list[Event]) -> Path:
    with open(path, "wb") as f:
        f.write(encode_jsonl_header(Header(format="jsonl", version=1, start=time.time(), route="/rec")))
        for event in events:
            f.write(encode_jsonl_event(event))
    return path


def session_for(target: Any) -> SessionInfo:
    return SessionInfo(
        session_id="s1", peer_host="127.0.0.1", peer_port=1, server_name="", server_port=0, secure=False,
        path="/r", route_path="/r", query="", headers=(), subprotocol=None, route=Route("/r", target),
    )


# -- the link on a fake clock -------------------------------------------------------


def test_target_messages_at_recorded_offsets() -> None:
    """Only the target's messages are played, each at its recorded offset, with its own type."""
    _link, receiver, clock = started([
        target(0.1, b"one", "text"),
        Event(0.2, "client", "text", b"typed by the client"),
        Event(0.25, None, "note", b"a note"),
        target(0.4, b"\x00two"),
    ])
    run(clock, 100.5)
    assert receiver.messages == [(100.1, b"one", False), (100.4, b"\x00two", True)]


def test_speed_divides_offsets() -> None:
    """speed=2 plays every message at half its recorded offset."""
    _link, receiver, clock = started([target(0.2, b"a"), target(0.6, b"b")], speed=2)
    run(clock, 100.4)
    assert [at for at, _, _ in receiver.messages] == [100.1, 100.3]


def test_end_of_recording_waits_for_close_event() -> None:
    """The playback ends (link_lost(None)) at the recorded close's time, not at the last message."""
    _link, receiver, clock = started([target(0.1, b"a"), Event(1.0, None, "close", code=1000, reason="bye")])
    run(clock, 100.9)
    assert receiver.lost == []
    run(clock, 101.01)
    assert receiver.lost == [None]


def test_recording_without_close_ends_after_last_message() -> None:
    """A recording cut short ends right after its last message."""
    _link, receiver, clock = started([target(0.1, b"a")])
    run(clock, 100.15)
    assert (len(receiver.messages), receiver.lost) == (1, [None])


def test_pause_shifts_the_rest_of_the_timeline() -> None:
    """While paused nothing is sent; after resuming, the gaps between messages keep their recorded length."""
    link, receiver, clock = started([target(0.1, b"a"), target(0.3, b"b"), target(0.4, b"c")])
    run(clock, 100.15)
    link.pauseProducing()
    run(clock, 101.15)
    assert len(receiver.messages) == 1
    link.resumeProducing()
    run(clock, 101.5)
    assert [at for at, _, _ in receiver.messages] == [100.1, 101.3, 101.4]


def test_pause_before_start() -> None:
    """A link paused before it starts plays nothing until resumed, then from the recording's beginning."""
    clock = Clock()
    link = ReplayLink(clock, iter([target(0.1, b"a")]))
    link.pauseProducing()
    receiver = Receiver(clock)
    link.start(receiver)
    run(clock, 1.0)
    assert receiver.messages == []
    link.resumeProducing()
    run(clock, 1.2)
    assert receiver.messages == [(1.1, b"a", True)]


def test_pause_inside_a_burst_stops_at_once() -> None:
    """A pause requested while a message is delivered stops the playback before the next one."""
    link, receiver, clock = started([target(0.0, b"a"), target(0.0, b"b")])
    original = receiver.message_received

    def pausing(payload: bytes, is_binary: bool) -> None:
        original(payload, is_binary)
        link.pauseProducing()

    receiver.message_received = pausing  # type: ignore[method-assign]
    clock.advance(0)
    assert [payload for _, payload, _ in receiver.messages] == [b"a"]


def test_overdue_messages_sent_in_bursts() -> None:
    """Many messages due at once go out at most BURST per reactor turn."""
    clock = Clock()
    turns: list[int] = []
    receiver = Receiver(clock)
    schedule = clock.callLater

    def call_later(delay: float, function: Any, *args: Any) -> Any:
        turns.append(len(receiver.messages))  # how many were sent before this turn was scheduled
        return schedule(delay, function, *args)

    clock.callLater = call_later  # type: ignore[method-assign]
    ReplayLink(clock, iter([target(0.0, b"x")] * (BURST + 5))).start(receiver)
    clock.advance(0)
    assert turns == [0, BURST]
    assert len(receiver.messages) == BURST + 5


def test_text_that_is_not_utf8_goes_out_binary() -> None:
    """A recorded text message whose bytes are not UTF-8 is sent as binary (as text the client would fail)."""
    _link, receiver, clock = started([target(0.0, b"\xff\xfe", "text"), target(0.0, "é".encode(), "text")])
    clock.advance(0)
    assert [(payload, is_binary) for _, payload, is_binary in receiver.messages] == [
        (b"\xff\xfe", True), ("é".encode(), False)]


def test_close_stops_playback_and_reports_once() -> None:
    """close() (the client went away) stops the playback, reports link_lost(None) once and closes the reader."""
    closed = []

    def events():
        try:
            yield target(0.1, b"a")
            yield target(0.2, b"b")
        finally:
            closed.append(True)

    clock = Clock()
    link = ReplayLink(clock, events())
    receiver = Receiver(clock)
    link.start(receiver)
    run(clock, 0.15)
    link.close()
    link.abort()
    run(clock, 1.0)
    assert [payload for _, payload, _ in receiver.messages] == [b"a"]
    assert receiver.lost == [None]
    assert closed == [True]


def test_stop_producing_waits_for_close() -> None:
    """stopProducing (the client's transport is gone) stops the playback but leaves the end to close()."""
    link, receiver, clock = started([target(0.1, b"a")])
    link.stopProducing()
    run(clock, 100.5)
    assert (receiver.messages, receiver.lost) == ([], [])
    link.close()
    assert receiver.lost == [None]


def test_client_data_ignored() -> None:
    """What the client sends is dropped; the playback goes on."""
    link, receiver, clock = started([target(0.1, b"a")])
    link.write(b"hello?")
    link.write_eof()
    run(clock, 100.2)
    assert [payload for _, payload, _ in receiver.messages] == [b"a"]


def test_bad_event_ends_with_error() -> None:
    """A broken line later in the recording ends the playback with an error naming the line."""
    header = encode_jsonl_header(Header(format="jsonl", version=1, start=0.0))
    lines = [header, encode_jsonl_event(target(0.0, b"ok")), b'{"t": "soon", "event": "text"}\n']
    _, events = parse_recording(lines, "rec.jsonl")
    _link, receiver, clock = started(events)  # the iterator itself: its error surfaces while playing
    run(clock, 100.1)
    assert [payload for _, payload, _ in receiver.messages] == [b"ok"]
    assert receiver.lost == ["bad recording: line 3: time must be a number >= 0, not 'soon'"]


# -- the connector ------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read recording"),
    (b"", "empty file"),
    (b"var VNC_frame_data = [\n", "websockify recording"),
    (b'{"format": "wsrouter-recording", "version": 99, "start": 0}\n', "unsupported recording version"),
])
def test_connector_refuses_unusable_files(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    """A missing file or one that is not a recording fails the connection with TargetError 502 and the reason."""
    path = tmp_path / "rec.jsonl"
    if content is not None:
        path.write_bytes(content)
    failures: list[Any] = []
    ReplayConnector(Clock()).connect(session_for(ReplayTarget(str(path)))).addErrback(failures.append)
    [failure] = failures
    assert failure.check(TargetError)
    assert failure.value.status == 502 and fragment in failure.value.reason


# -- end to end -----------------------------------------------------------------------


def timed_client(url: str) -> tuple[list[tuple[float, Any]], int | None, str]:
    """Receive until the router closes; return (arrival time, message) pairs and the close code and reason."""
    received = []
    with connect(url) as ws:
        start = time.monotonic()
        try:
            while True:
                message = ws.recv()
                received.append((time.monotonic() - start, message))
        except ConnectionClosed as e:
            return received, e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else ""


@pytest_twisted.inlineCallbacks
def test_replay_plays_messages_with_types_and_timing(tmp_path):
    """
    A replay route sends the recorded messages in order, with their types and gaps (scaled by speed), then closes
    1000.
    """
    path = write_recording(tmp_path / "rec.jsonl", [
        Event(0.0, "target", "text", b"one"),
        Event(0.05, "client", "text", b"not played"),
        Event(0.3, "target", "binary", b"\x00two"),
        Event(0.35, "target", "text", "trois é".encode()),
        Event(0.4, None, "close", code=1000, reason="bye"),
    ])
    router = start_router(routes=[f"/r=replay:{path}", f"/fast=replay:{path}?speed=2"])
    try:
        received, code, _reason = yield in_thread(timed_client, router.url + "/r")
        fast, fast_code, _ = yield in_thread(timed_client, router.url + "/fast")
    finally:
        yield router.stopService()
    assert [message for _, message in received] == ["one", b"\x00two", "trois é"]
    assert [message for _, message in fast] == ["one", b"\x00two", "trois é"]
    assert (code, fast_code) == (1000, 1000)
    gap = received[1][0] - received[0][0]
    fast_gap = fast[1][0] - fast[0][0]
    assert gap >= 0.2
    assert 0.08 <= fast_gap <= gap * 0.8


@pytest_twisted.inlineCallbacks
def test_record_then_replay(tmp_path):
    """A session recorded by the router plays back through a replay route: same messages, same types."""
    directory = tmp_path / "rec"
    router = start_router(routes=["/echo=echo:"], record=str(directory))

    def session():
        with connect(router.url + "/echo") as ws:
            for message in ("text", b"\x00\x01binary", bytes(70000)):
                ws.send(message)
                ws.recv()

    try:
        yield in_thread(session)
        yield wait_for(lambda: len(recordings(directory)) == 1)
    finally:
        yield router.stopService()
    [path] = recordings(directory)
    yield wait_for(lambda: any(e.kind == "close" for e in read_recording(path)[1]))
    replay = start_router(routes=[f"/replay=replay:{path}?speed=10"])
    try:
        received, code, _ = yield in_thread(timed_client, replay.url + "/replay")
    finally:
        yield replay.stopService()
    # the echo route sends each message back with its type, and the replay keeps it
    assert [message for _, message in received] == ["text", b"\x00\x01binary", bytes(70000)]
    assert code == 1000


@pytest_twisted.inlineCallbacks
def test_missing_recording_is_502(tmp_path):
    """A replay route whose file does not exist refuses the handshake with 502 naming the problem."""
    router = start_router(routes=[f"/r=replay:{tmp_path / 'missing.jsonl'}"])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/r")
    finally:
        yield router.stopService()
    assert status == 502
    assert b"cannot read recording" in body and b"No such file" in body


@pytest_twisted.inlineCallbacks
def test_client_close_ends_replay(tmp_path):
    """
    A client that closes in the middle of a long replay ends the session at once, without waiting for the recording.
    """
    path = write_recording(tmp_path / "long.jsonl", [
        Event(0.0, "target", "text", b"first"),
        Event(60.0, "target", "text", b"a minute later"),
    ])
    router = start_router(routes=[f"/r=replay:{path}"])

    def client():
        with connect(router.url + "/r") as ws:
            return ws.recv()

    try:
        assert (yield in_thread(client)) == "first"
        yield wait_for(lambda: not router.gateway.sessions)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_slow_reader_pauses_playback(tmp_path):
    """
    A client that does not read pauses the playback (bounded buffering); once it reads, everything arrives in order.
    """
    count, size = 24, 1 << 20
    path = write_recording(tmp_path / "bulk.jsonl", [
        Event(0.0, "target", "binary", bytes([i]) * size) for i in range(count)
    ])
    router = start_router(routes=[f"/r=replay:{path}"])
    reading = threading.Event()

    def client():
        sock = rawws.upgrade(router.port_number, "/r")
        reading.wait(30)
        reader = rawws.FrameReader(sock)
        reader.read_to_close()
        sock.close()
        return reader.received, reader.messages, reader.close_code, reader.sha.hexdigest()

    done = in_thread(client)
    try:
        yield wait_for(lambda: len(router.gateway.sessions) == 1)
        [protocol] = router.gateway.sessions.values()
        yield task.deferLater(reactor, 0.5, lambda: None)
        sent_while_stalled = protocol.bridge.stats.bytes_to_client
        assert protocol.bridge._link.paused
        reading.set()
        received, messages, code, digest = yield done
    finally:
        reading.set()
        yield router.stopService()
    assert sent_while_stalled < count * size // 2
    assert (received, messages, code) == (count * size, count, 1000)
    assert digest == hashlib.sha256(b"".join(bytes([i]) * size for i in range(count))).hexdigest()
