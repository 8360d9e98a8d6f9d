"""
The handshake decision in memory: a L{Gateway} on a L{MemoryReactorClock},
its real Autobahn adapter on an L{iosim.FakeTransport}, and a connector
whose Deferred the test fires: refusals with their HTTP statuses, accepted
sessions, observers, hot reload and shutdown, without a socket.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import txaio
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from wsrouter.config import EchoTarget, Limits, Route, RouterConfig, TcpTarget
from wsrouter.gateway import Gateway
from wsrouter.interfaces import TargetError
from wsrouter.session import Session

from .support import REPO, child_env


class FakeLink:
    """A paused Link that records what is done to it."""

    message_oriented = False
    producer = None
    consumer = None
    transport = None

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.events: list[str] = []
        self.receiver: Any = None

    def start(self, receiver: Any) -> None:
        self.receiver = receiver
        self.events.append("start")

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")


class FakeConnectors:
    """Connects every session to a Deferred the test controls."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.result: Any = None
        self.settings: list[tuple[Any, Any]] = []

    def use_settings(self, limits: Any, pass_env: Any) -> None:
        self.settings.append((limits, pass_env))

    class handlers:  # the connectors' in-process handler registry, with nothing to stop
        @staticmethod
        def shutdown(grace: float) -> Deferred[None]:
            return succeed(None)

    def connect(self, info: Any) -> Deferred[Any]:
        if self.result is not None:
            return self.result  # type: ignore[no-any-return]
        d: Deferred[Any] = Deferred()
        self.pending.append((info, d))
        return d


class Observer:
    """Records what a SessionObserver is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Session]] = []

    def session_opened(self, session: Session) -> None:
        self.events.append(("opened", session))

    def session_closed(self, session: Session) -> None:
        self.events.append(("closed", session))


@pytest.fixture
def clock() -> Iterator[MemoryReactorClock]:
    """A fake reactor, also used by txaio (Autobahn's handshake timers run there)."""
    reactor = MemoryReactorClock()
    previous = txaio.config.loop
    txaio.config.loop = reactor
    yield reactor
    txaio.config.loop = previous


def config(*routes: Route, **limits: Any) -> RouterConfig:
    return RouterConfig(routes=routes, limits=Limits(**limits))


ROUTES = (
    Route("/echo", TcpTarget("127.0.0.1", 7)),
    Route("/chat", TcpTarget("127.0.0.1", 7), subprotocols=("chat",)),
)


class Client:
    """One client connection to the gateway's adapter, in memory."""

    def __init__(self, gateway: Gateway, path: str = "/echo", subprotocols: tuple[str, ...] = (), early: bytes = b""):
        self.protocol: Any = gateway.factory.buildProtocol(iosim.FakeAddress())
        self.transport = iosim.FakeTransport(self.protocol, isServer=True)
        self.protocol.makeConnection(self.transport)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path}?x=1 HTTP/1.1", "Host: example.test:8080", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + early)

    def output(self) -> bytes:
        data = b"".join(self.transport.stream)
        self.transport.stream.clear()
        return data

    def status(self) -> int:
        head = self.output().split(b"\r\n", 1)[0]
        return int(head.split()[1])

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def test_unknown_path_is_404_before_connecting(clock: MemoryReactorClock) -> None:
    """A path no route matches is refused with 404 and no target is connected."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway, "/nowhere")
    out = client.output()
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert connectors.pending == []
    assert not gateway.sessions


def test_missing_subprotocol_is_400(clock: MemoryReactorClock) -> None:
    """A client offering none of the route's subprotocols is refused with 400."""
    gateway = Gateway(config(*ROUTES), clock, FakeConnectors())  # type: ignore[arg-type]
    assert Client(gateway, "/chat", ("other",)).status() == 400


@pytest.mark.parametrize("error, status", [
    (TargetError("connection refused"), 502),
    (TargetError("too many programs", status=503), 503),
    (RuntimeError("bug"), 502),
])
def test_target_failure_is_refused_with_its_status(clock: MemoryReactorClock, error: Exception,
                                                   status: int) -> None:
    """A target that cannot be connected refuses the handshake with the error's status (an unexpected error: 502)."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    assert client.output() == b""  # nothing is answered while the target connects
    [(info, connecting)] = connectors.pending
    assert (info.path, info.query, info.server_name, info.server_port) == ("/echo", "x=1", "example.test", 0)
    connecting.errback(error)
    assert client.status() == status
    assert not gateway.sessions


def test_descriptor_guard_refuses_with_503(clock: MemoryReactorClock) -> None:
    """When the open-file guard does not admit a session, the handshake gets 503."""

    class Full:
        def admit(self, cost: int) -> bool:
            return False

    gateway = Gateway(config(*ROUTES), clock, FakeConnectors())  # type: ignore[arg-type]
    gateway.descriptors = Full()  # type: ignore[assignment]
    assert Client(gateway).status() == 503


def test_accepted_session_opens_relays_and_ends(clock: MemoryReactorClock) -> None:
    """A connected target gets a 101 with the chosen subprotocol, a live Session, observers told of open and close."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    gateway.session_prefix = "w3."
    observer = Observer()
    gateway.observe(observer)
    client = Client(gateway, "/chat", ("x", "chat"))
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    out = client.output()
    assert out.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Protocol: chat\r\n" in out
    [session] = gateway.sessions.values()
    assert session.id.startswith("w3.") and session.is_open and link.events == ["start"]
    assert gateway.opened_total == 1 and observer.events == [("opened", session)]
    # A masked binary frame from the client reaches the target.
    client.protocol.dataReceived(b"\x82\x83" + b"\0\0\0\0" + b"abc")
    assert link.written == [b"abc"]
    # The target ends: the client gets the data and a 1000 close; then both sides are done.
    link.receiver.data_received(b"out")
    link.receiver.link_lost(None)
    assert client.output().startswith(b"\x82\x03out\x88")
    client.lose()
    assert session.ended and session.done.called
    assert not gateway.sessions
    assert observer.events == [("opened", session), ("closed", session)]


def test_client_gone_while_connecting_aborts_the_link(clock: MemoryReactorClock) -> None:
    """A client that leaves before its target is connected leaves no session and the new link is aborted."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    client.lose()
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    assert link.events == ["abort"]
    assert not gateway.sessions and gateway.opened_total == 0


def test_handshake_timed_out_while_connecting_aborts_the_link(clock: MemoryReactorClock) -> None:
    """A handshake that times out while its target connects leaves no session, and the link is aborted."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES, handshake_timeout=2.0), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    clock.advance(2.5)  # Autobahn drops the connection; the loss is reported later
    assert client.transport.disconnecting
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    assert link.events == ["abort"]
    assert not gateway.sessions and gateway.opened_total == 0


def test_use_config_applies_to_new_connections_only(clock: MemoryReactorClock) -> None:
    """After use_config, new handshakes see the new routes and limits, while an open session keeps its own."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES, max_message_size=1000), clock, connectors)  # type: ignore[arg-type]
    first = Client(gateway)
    connectors.pending[0][1].callback(FakeLink())
    [old] = gateway.sessions.values()

    gateway.use_config(config(Route("/new", EchoTarget()), max_message_size=50))
    assert Client(gateway, "/echo").status() == 404
    second = Client(gateway, "/new")
    connectors.pending[-1][1].callback(FakeLink())
    assert second.status() == 101
    new = next(s for s in gateway.sessions.values() if s is not old)
    assert (old.limits.max_message_size, new.limits.max_message_size) == (1000, 50)
    assert (first.protocol.maxMessagePayloadSize, second.protocol.maxMessagePayloadSize) == (1000, 50)
    assert second.protocol.allowNullOrigin  # every option set again, not only the changed ones
    assert [limits.max_message_size for limits, _ in connectors.settings] == [50]  # connect timeout, forks


def test_shutdown_refuses_new_and_closes_open_sessions_with_1001(clock: MemoryReactorClock) -> None:
    """shutdown closes open sessions with 1001, refuses new handshakes with 503, and fires once sessions end."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    client.output()
    done = gateway.shutdown()
    assert client.output() == b"\x88\x16\x03\xe9router shutting down"  # close frame, code 1001
    assert not done.called
    assert Client(gateway).status() == 503
    link.receiver.link_lost(None)
    client.lose()
    assert done.called


def test_shutdown_gives_up_after_the_grace_period(clock: MemoryReactorClock) -> None:
    """Sessions that do not end within the shutdown grace are dropped and shutdown's Deferred fires."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES, shutdown_grace=2.0), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    done = gateway.shutdown()
    clock.advance(1.9)
    assert not done.called
    clock.advance(0.2)
    assert done.called
    assert "abort" in link.events and client.transport.disconnecting


def test_synchronous_connector_results(clock: MemoryReactorClock) -> None:
    """A connector answering at once (success or failure) works like one answering later."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    connectors.result = fail(TargetError("no", status=503))
    assert Client(gateway).status() == 503
    connectors.result = succeed(FakeLink())
    assert Client(gateway).status() == 101


def open_client(gateway: Gateway, connectors: FakeConnectors, early: bytes = b"") -> tuple[Client, FakeLink]:
    link = FakeLink()
    connectors.result = succeed(link)
    client = Client(gateway, early=early)
    assert client.output().startswith(b"HTTP/1.1 101 ")
    return client, link


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame with an all-zero mask (the payload as is)."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


@pytest.mark.parametrize("frame, code", [
    pytest.param(masked(0x3, b"no"), 1002, id="reserved-opcode"),
    pytest.param(masked(0x8, (999).to_bytes(2, "big")), 1002, id="bad-close-code"),
    pytest.param(masked(0x8, (1000).to_bytes(2, "big") + b"\xff"), 1007, id="close-reason-not-utf8"),
])
def test_protocol_violation_closes_at_once(clock: MemoryReactorClock, frame: bytes, code: int) -> None:
    """A protocol violation is answered with its close code and the TCP connection closed, no timer waited for."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client, link = open_client(gateway, connectors)
    client.protocol.dataReceived(frame)
    out = client.output()
    assert out[:1] == b"\x88" and int.from_bytes(out[2:4], "big") == code
    assert client.transport.disconnecting
    [session] = gateway.sessions.values()
    assert (session.stats.close_code, session.stats.closed_by) == (code, "router")
    assert link.written == []


def test_frames_sent_with_the_upgrade_request_are_relayed(clock: MemoryReactorClock) -> None:
    """Frames that arrive in the same read as the handshake reach the target once the session opens."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    _, link = open_client(gateway, connectors, early=masked(0x2, b"early") + masked(0x1, b"bird"))
    assert link.written == [b"early", b"bird"]


def test_adapter_does_not_import_the_gateway() -> None:
    """The adapter and the upgrade handover depend on interfaces only: importing them loads no gateway or session."""
    code = ("import sys, wsrouter.ws.adapter, wsrouter.ws.upgrade; "
            "print(sorted(m for m in sys.modules if m in ('wsrouter.gateway', 'wsrouter.session')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(),
                            cwd=REPO, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_shutdown_while_the_target_connects_is_refused_with_503_and_logged(clock: MemoryReactorClock) -> None:
    """A handshake whose target connects after shutdown began gets 503, its link is aborted, and one line says why."""
    from twisted.logger import globalLogPublisher

    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    gateway.shutdown()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        link = FakeLink()
        connectors.pending[0][1].callback(link)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert client.status() == 503 and link.events == ["abort"]
    lines = [e.get("log_format", "") for e in seen if "refused" in e.get("log_format", "")]
    assert len(lines) == 1 and "503 router is shutting down" in lines[0], lines
