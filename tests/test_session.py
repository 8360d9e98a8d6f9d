"""
One L{Session}'s timers and life on a L{Clock}: keepalive pings, the idle
timeout, the drain watches that bound a closing client and a target that
stops reading, and a session that never opens.  Fakes stand in for the
client connection and the link; the bridge is the real one.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from wsrouter.config import Limits, Route, TcpTarget
from wsrouter.framing import BinaryFramer
from wsrouter.interfaces import SessionInfo
from wsrouter.session import Session


class QueueTransport:
    """A transport whose send queue the test sets (read by the drain accounting)."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.events: list[str] = []

    def queue(self, size: int) -> None:
        self.dataBuffer = b"x" * size

    def abortConnection(self) -> None:
        self.events.append("abort")

    def loseConnection(self) -> None:
        self.events.append("lose")


class FakeConnection:
    """A ClientConnection that records what the session does to it."""

    mount_prefix = ""
    http_request_uri = "/"

    def __init__(self) -> None:
        self.transport = QueueTransport()
        self.connection_gone = False
        self.events: list[tuple[Any, ...]] = []

    def is_secure(self) -> bool:
        return False

    def is_dropped(self) -> bool:
        return self.connection_gone

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.events.append(("send", payload))

    def close(self, code: int, reason: str) -> None:
        self.events.append(("close", code, reason))

    def attach_producer(self, producer: Any) -> None:
        pass

    def consumer_producer(self) -> Any:
        return None

    def send_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def abort(self, reason: str) -> None:
        self.events.append(("abort", reason))

    def finish(self) -> None:
        self.events.append(("finish",))


class FakeLink:
    """A Link with its own queue, recording what the session does to it."""

    message_oriented = False
    producer = None
    consumer = None

    def __init__(self) -> None:
        self.transport = QueueTransport()
        self.events: list[str] = []
        self.receiver: Any = None

    def start(self, receiver: Any) -> None:
        self.receiver = receiver

    def write(self, data: bytes) -> None:
        self.events.append("write")

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")


class FakeRecorder:
    def __init__(self) -> None:
        self.closed_with: list[tuple[int | None, str]] = []

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        pass

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        pass

    def closed(self, code: int | None, reason: str) -> None:
        self.closed_with.append((code, reason))


def limits(idle: float | None = None, **values: Any) -> Limits:
    """Limits with C{idle} as the session idle timeout."""
    return Limits(session_idle_timeout=idle, **values)


def make(clock: Clock, lim: Limits | None = None, recorder: FakeRecorder | None = None,
         ) -> tuple[Session, FakeConnection, FakeLink, list[str]]:
    connection, link = FakeConnection(), FakeLink()
    info = SessionInfo(session_id="s1", peer_host="127.0.0.1", peer_port=1, server_name="", server_port=2,
                       secure=False, path="/", route_path="/", query="", headers=(), subprotocol=None,
                       route=Route("/", TcpTarget("127.0.0.1", 7)))
    ended: list[str] = []
    session = Session(connection, info, link, BinaryFramer(), limits=lim or limits(), clock=clock,
                      recorder=recorder, on_ended=lambda s: ended.append(s.id))
    return session, connection, link, ended


def test_keepalive_pings_and_drops_a_silent_client() -> None:
    """A ping goes out every interval; with no answer within the timeout the client is dropped as 'ping timeout'."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(ping_interval=10, ping_timeout=3))
    session.opened()
    clock.advance(9.9)
    assert connection.events == []
    clock.advance(0.1)
    [(kind, payload)] = connection.events
    assert kind == "ping"
    session.pong(payload)
    clock.advance(10)
    assert [e[0] for e in connection.events] == ["ping", "ping"]
    clock.advance(2.9)
    assert connection.events[-1][0] == "ping"
    clock.advance(0.1)
    assert connection.events[-1] == ("abort", "ping timeout")


def test_keepalive_counts_any_client_message_as_an_answer() -> None:
    """A message from the client while a ping is outstanding counts as the pong."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(ping_interval=10, ping_timeout=3))
    session.opened()
    clock.advance(10)
    session.message_begin(True)
    clock.advance(5)
    assert ("abort", "ping timeout") not in connection.events


def test_keepalive_waits_while_the_ping_drains_behind_data() -> None:
    """An unanswered ping still queued behind data the client is reading does not drop it while the queue shrinks."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(ping_interval=10, ping_timeout=3))
    session.opened()
    connection.transport.queue(5000)
    clock.advance(10)
    connection.transport.queue(4000)
    clock.advance(3)
    assert ("abort", "ping timeout") not in connection.events
    clock.pump([1] * 13)  # another ping, and now the queue stays put
    assert connection.events[-1] == ("abort", "ping timeout")


def test_idle_timeout_closes_after_silence_only() -> None:
    """The session closes with 1000 'idle timeout' after that long without traffic either way, and not before."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(idle=30))
    session.opened()
    clock.advance(20)
    session.message_data(b"x")  # client traffic
    clock.advance(20)
    session.sent()  # traffic to the client
    clock.advance(29)
    assert connection.events == []
    clock.advance(1)
    assert connection.events == [("close", 1000, "idle timeout")]


def test_a_run_of_binary_messages_answers_a_ping_and_counts_as_traffic() -> None:
    """A read's run of binary messages reaches the target, counts as the pong and resets the idle timeout."""
    clock = Clock()
    session, connection, link, _ = make(clock, limits(idle=30, ping_interval=10, ping_timeout=3))
    session.opened()
    clock.advance(10)
    assert [e[0] for e in connection.events] == ["ping"]
    session.binary_messages([b"a", b"b"])
    assert "write" in link.events
    clock.advance(5)
    assert ("abort", "ping timeout") not in connection.events
    clock.advance(24)
    assert ("close", 1000, "idle timeout") not in connection.events
    clock.advance(1)
    assert connection.events[-1] == ("close", 1000, "idle timeout")


def test_no_idle_timer_when_off() -> None:
    """With no idle timeout nothing is scheduled once the session opens, and client data goes straight to the bridge."""
    clock = Clock()
    session, _, link, _ = make(clock, limits())
    session.opened()
    assert clock.getDelayedCalls() == []
    session.message_data(b"abc")
    assert link.events == ["write"]


def test_closing_client_that_stops_reading_is_aborted() -> None:
    """A closing client whose queue stays the same, not empty, for twice the grace period is aborted."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(shutdown_grace=2.0))
    session.opened()
    connection.transport.queue(100)
    session.closing()
    session.closing()  # watched once
    clock.pump([0.25] * 15)  # 3.75 s
    assert connection.transport.events == []
    clock.pump([0.25] * 2)
    assert connection.transport.events == ["abort"]


def test_closing_client_that_drained_is_closed_after_the_timeout() -> None:
    """A closing client with nothing left queued is closed gracefully after min(grace, 5) seconds, then aborted."""
    clock = Clock()
    session, connection, _, _ = make(clock, limits(shutdown_grace=2.0))
    session.opened()
    session.closing()
    clock.pump([0.25] * 9)
    assert connection.events == [("finish",)]
    clock.pump([0.25] * 9)
    assert connection.transport.events == ["abort"]


def test_target_that_stops_reading_after_the_client_left_is_aborted() -> None:
    """After the client is gone, a target whose queue does not move for twice the grace period is aborted."""
    clock = Clock()
    session, connection, link, ended = make(clock, limits(shutdown_grace=1.0))
    session.opened()
    link.transport.queue(10)
    connection.connection_gone = True
    session.closed(1000, "bye")
    assert link.events == ["eof", "close"]
    clock.pump([0.25] * 7)
    assert "abort" not in link.events
    clock.pump([0.25] * 2)
    assert link.events[-1] == "abort"
    assert ended == []  # ends when the link reports it is gone
    link.receiver.link_lost("aborted")
    assert ended == ["s1"] and session.done.called


def test_session_that_never_opens_ends_at_once() -> None:
    """A connection lost before the session opens aborts the link, closes the recording once and ends the session."""
    clock = Clock()
    recorder = FakeRecorder()
    session, _, link, ended = make(clock, limits(ping_interval=5, idle=5), recorder)
    session.closed(None, "lost")
    session.closed(None, "lost")
    assert link.events == ["abort"]
    assert recorder.closed_with == [(None, "lost")]
    assert ended == ["s1"] and session.done.called
    assert clock.getDelayedCalls() == []
    session.opened()  # too late: nothing starts
    assert not session.is_open


def test_shutdown_of_a_session_not_open_drops_the_client() -> None:
    """Shutting down a session not open yet closes its recording and drops the client connection."""
    clock = Clock()
    recorder = FakeRecorder()
    session, connection, _, _ = make(clock, recorder=recorder)
    session.shutdown()
    assert connection.events == [("abort", "router shutting down")]
    assert recorder.closed_with == [(None, "router shutting down")]


@pytest.mark.parametrize("opened", [True, False])
def test_abort_closes_the_recording_once(opened: bool) -> None:
    """abort (shutdown grace over) drops both sides and closes the recording exactly once."""
    clock = Clock()
    recorder = FakeRecorder()
    session, connection, link, _ = make(clock, recorder=recorder)
    if opened:
        session.opened()
    session.abort()
    assert connection.transport.events == ["abort"] and link.events == ["abort"]
    assert recorder.closed_with == [(None, "router stopped before the session ended")]


def test_stats_duration_uses_the_session_clock() -> None:
    """The summary's duration is measured on the session's clock."""
    clock = Clock()
    clock.advance(50)
    session, _, _, _ = make(clock)
    clock.advance(7)
    assert session.stats.duration() == 7
