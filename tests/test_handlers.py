"""
python: targets (in-process handlers): the config form and start-up loading,
on_connect's decisions, the session's bounded queue and error handling,
in memory; then the example handlers end to end through a real router with
the independent websockets client.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed

from tests.support import REPO, child_env, connect, free_port, handshake_status, in_thread, start_router
from wsrouter.config import ConfigError, Limits, PythonTarget, Route, build_config, route_from_string, to_data
from wsrouter.handlers import Accept, Group, HandlerContext, Refuse, Request, Session, SessionClosed
from wsrouter.handlers.session import HandlerLink
from wsrouter.interfaces import SessionInfo, TargetError
from wsrouter.preflight import preflight
from wsrouter.targets.python import PythonConnector

ECHO = "python:examples.handlers.echo:Echo"
INCREMENT = "python:examples.handlers.increment:DumbIncrement"
CHAT = "python:examples.handlers.chat:Chat"


# -- config and start-up ------------------------------------------------------------------------------


def test_route_string_names_a_python_target() -> None:
    """A python:MODULE:FACTORY route string becomes a PythonTarget and is written back the same way."""
    config = build_config({"routes": [route_from_string(f"/e={ECHO}")]})
    assert config.routes[0].target == PythonTarget("examples.handlers.echo:Echo")
    assert to_data(config)["routes"][0]["target"] == ECHO


@pytest.mark.parametrize("text", ["python:", "python:echo", "python:a.b:", "python::f", "python:a b:c", "python:1a:f"])
def test_malformed_python_target_is_refused_with_its_key_path(text: str) -> None:
    """A python: target that is not MODULE:FACTORY is a config error under routes[N].target."""
    with pytest.raises(ConfigError) as raised:
        build_config({"routes": [{"path": "/", "target": text}]})
    assert raised.value.problems[0][0] == "routes[0].target"
    assert "python:package.module:factory" in raised.value.problems[0][1]


def test_python_target_takes_no_framing() -> None:
    """framing is for stream targets only, python: included."""
    with pytest.raises(ConfigError, match="framing"):
        build_config({"routes": [{"path": "/", "target": ECHO, "framing": "line"}]})


def test_factory_object_must_be_callable() -> None:
    """From Python a factory object is accepted only if it can be called."""
    with pytest.raises(ConfigError, match="must be callable"):
        PythonTarget(factory=42)  # type: ignore[arg-type]
    assert PythonTarget(factory=_Recorder).describe() == "python:tests.test_handlers:_Recorder"


def test_start_up_reports_factories_that_do_not_load() -> None:
    """A missing module, a missing attribute or a module that raises is a start-up problem with its key path."""
    config = build_config({"routes": [route_from_string(r) for r in (
        f"/ok={ECHO}", "/a=python:no_such_module_xyz:F", "/b=python:examples.handlers.echo:Nope",
        "/c=python:tests.handler_that_raises:F")]})
    found = dict(preflight(config))
    assert sorted(found) == ["routes[1].target", "routes[2].target", "routes[3].target"]
    assert "cannot import 'no_such_module_xyz'" in found["routes[1].target"]
    assert "has no attribute 'Nope'" in found["routes[2].target"]
    assert "RuntimeError: broken on purpose" in found["routes[3].target"]


def test_cli_refuses_to_start_with_a_missing_handler(tmp_path: Any) -> None:
    """The router process exits at start-up, naming the route's key path, when a handler module is missing."""
    result = subprocess.run(
        [sys.executable, "-m", "wsrouter", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
         "--route", "/x=python:no_such_module_xyz:Handler"],
        capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "routes[0].target" in output and "no_such_module_xyz" in output


# -- on_connect, in memory ------------------------------------------------------------------------------


class _Recorder:
    """A handler that records what it is told and answers on_connect with C{answer}."""

    answer: Any = None

    def __init__(self, context: HandlerContext):
        self.context = context
        self.events: list[tuple[Any, ...]] = []

    def on_connect(self, request: Request) -> Any:
        self.events.append(("connect", request.path, request.protocols, request.param("name")))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def on_open(self, session: Session) -> None:
        self.events.append(("open", session.subprotocol))

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> Any:
        self.events.append(("message", payload, is_binary))
        if payload == b"boom":
            raise RuntimeError("handler bug")
        return None

    def on_close(self, session: Session, code: int, reason: str) -> None:
        self.events.append(("close", code, reason))


def _info(target: PythonTarget, protocols: str = "", subprotocols: tuple[str, ...] = ()) -> SessionInfo:
    route = Route("/h", target, subprotocols=subprotocols)
    headers = (("sec-websocket-protocol", protocols),) if protocols else ()
    chosen = next((p.strip() for p in protocols.split(",") if p.strip() in subprotocols), None)
    return SessionInfo(session_id="s1", peer_host="127.0.0.1", peer_port=5, server_name="", server_port=1,
                       secure=False, path="/h", route_path="/h", query="name=ann", headers=headers,
                       subprotocol=chosen, route=route)


def _connect(answer: Any, protocols: str = "", subprotocols: tuple[str, ...] = (),
             clock: Clock | None = None) -> tuple[Deferred[Any], list[_Recorder]]:
    made: list[_Recorder] = []

    def factory(context: HandlerContext) -> _Recorder:
        handler = _Recorder(context)
        handler.answer = answer
        made.append(handler)
        return handler

    connector = PythonConnector(clock or Clock(), Limits(connect_timeout=2))
    return connector.connect(_info(PythonTarget(factory=factory), protocols, subprotocols)), made


def _status(result: Deferred[Any]) -> tuple[int, str]:
    failures: list[Any] = []
    result.addErrback(failures.append)
    error = failures[0].value
    assert isinstance(error, TargetError)
    return error.status, error.reason


@pytest.mark.parametrize(("answer", "status"), [
    (Refuse(401, "who are you?"), 401), (False, 403), (Refuse(302, "elsewhere"), 500),
    (RuntimeError("bug"), 500), (Accept("chat"), 500), (object(), 500),
])
def test_on_connect_refusals_are_http_statuses(answer: Any, status: int) -> None:
    """A refusal gives its status (400-599); errors, bad answers and unoffered subprotocols give 500."""
    result, made = _connect(answer)
    assert _status(result)[0] == status
    assert made[0].events == [("connect", "/h", (), "ann")]


def test_refusal_reason_is_kept_to_one_line() -> None:
    """A handler's reason goes into the HTTP status line, so control characters are removed."""
    result, _ = _connect(Refuse(400, "bad\r\nInjected: header"))
    assert _status(result) == (400, "bad Injected: header")


def test_on_connect_may_choose_an_offered_subprotocol() -> None:
    """Accept(name) or a plain name picks a subprotocol the client offered; None takes the route's choice."""
    for answer, subprotocols, expected in [(Accept("b"), (), "b"), ("a", (), "a"), (None, (), None),
                                           (None, ("b",), "b"), (True, (), None)]:
        result, _ = _connect(answer, "a, b", subprotocols)
        links: list[HandlerLink] = []
        result.addCallback(links.append)
        assert links[0].subprotocol == expected, answer


def test_on_connect_deferred_is_time_limited() -> None:
    """An on_connect Deferred that never fires is a 503 after limits.connect_timeout, and is cancelled."""
    clock = Clock()
    pending: Deferred[Any] = Deferred()
    result, _ = _connect(pending, clock=clock)
    assert not result.called
    clock.advance(2.5)
    assert pending.called
    assert _status(result) == (503, "the handler did not answer within 2 s")


def test_on_connect_deferred_refusal() -> None:
    """A Deferred that fires later with a Refuse refuses with its status."""
    pending: Deferred[Any] = Deferred()
    result, _ = _connect(pending)
    pending.callback(Refuse(429, "slow down"))
    assert _status(result) == (429, "slow down")


def test_factory_is_called_once_per_route() -> None:
    """Two sessions on one route share one handler (and its group); a failing factory is a 500."""
    calls: list[HandlerContext] = []

    def factory(context: HandlerContext) -> _Recorder:
        calls.append(context)
        return _Recorder(context)

    connector = PythonConnector(Clock(), Limits())
    info = _info(PythonTarget(factory=factory))
    connector.connect(info)
    connector.connect(info)
    assert len(calls) == 1

    def broken(context: HandlerContext) -> None:
        raise ValueError("no")

    with pytest.raises(TargetError) as raised:
        connector.connect(_info(PythonTarget(factory=broken)))
    assert raised.value.status == 500


# -- the session and its link, in memory ---------------------------------------------------------------------


class _Bridge:
    """What the link reports to the bridge."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.closed: list[tuple[int, str]] = []

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append((payload, is_binary))

    def link_closed(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def data_received(self, data: bytes) -> None:
        raise AssertionError("a handler link sends whole messages")

    def eof_received(self) -> None:
        raise AssertionError("unexpected")

    def link_lost(self, error: str | None) -> None:
        self.closed.append((1006, error or ""))


class _Client:
    """The client's transport as a producer the link pauses."""

    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def _opened(handler: Any = None, group: Group | None = None) -> tuple[HandlerLink, _Bridge, Any]:
    handler = handler or _Recorder(HandlerContext(reactor=Clock()))
    request = Request(path="/h", route_path="/h", query="", headers=(), protocols=(), peer_host="::1",
                      peer_port=1, session_id="s1")
    link = HandlerLink(handler, request, None, group if group is not None else Group())
    bridge = _Bridge()
    link.registerProducer(_Client(), True)
    link.start(bridge)
    return link, bridge, handler


def test_messages_reach_the_handler_and_sends_reach_the_client() -> None:
    """on_message gets each message with its type; send turns str into text and bytes into binary."""
    link, bridge, handler = _opened()
    link.write_message(b"hi", False)
    link.write_message(b"", True)
    session = link.session
    assert session.send("t\u00e9") and session.send(b"\x00") and session.send(b"x", False)
    assert handler.events[1:] == [("message", b"hi", False), ("message", b"", True)]
    assert bridge.sent == [("t\u00e9".encode(), False), (b"\x00", True), (b"x", False)]


def test_paused_client_queues_then_drains_and_wakes_writable() -> None:
    """While the client's writer is paused, send queues and says so; on resume the queue goes out in order."""
    link, bridge, _ = _opened()
    session = link.session
    link.pauseProducing()
    waiting = session.writable()
    assert session.send("a") is False and session.send("b") is False
    assert bridge.sent == [] and session.queued == (2, 2) and not waiting.called
    link.resumeProducing()
    assert [p for p, _ in bridge.sent] == [b"a", b"b"] and waiting.called and not session.paused


def test_queue_past_its_bound_closes_the_session_with_1008() -> None:
    """A client that stops reading is closed with 1008 once max_queue messages wait; the queue is dropped."""
    link, bridge, handler = _opened()
    session = link.session
    session.max_queue = 3
    link.pauseProducing()
    for n in range(4):
        session.send(str(n))
    assert bridge.closed == [(1008, "client too slow: more than 3 messages waiting")]
    assert session.closed and session.queued == (0, 0) and bridge.sent == []
    assert handler.events[-1] == ("close", 1008, "client too slow: more than 3 messages waiting")
    assert session.send("more") is False


def test_queue_bytes_bound_lets_one_large_message_wait() -> None:
    """One message over max_queue_bytes may wait alone; a second past the byte bound closes with 1008."""
    link, bridge, _ = _opened()
    session = link.session
    session.max_queue_bytes = 10
    link.pauseProducing()
    session.send(b"x" * 50)
    assert not session.closed
    session.send(b"y")
    assert bridge.closed and bridge.closed[0][0] == 1008


def test_handler_error_closes_only_that_session_with_1011() -> None:
    """An exception in on_message closes the session with 1011 and tells on_close once; later messages are ignored."""
    link, bridge, handler = _opened()
    link.write_message(b"boom", True)
    link.write_message(b"after", True)
    link.close_with(1000, "bye")
    assert bridge.closed == [(1011, "internal error in the handler")]
    assert [e for e in handler.events if e[0] == "close"] == [("close", 1011, "internal error in the handler")]
    assert ("message", b"after", True) not in handler.events


def test_client_close_tells_the_handler_once() -> None:
    """The client's close code reaches on_close once, and the session leaves the route's group."""
    group = Group()
    link, _bridge, handler = _opened(group=group)
    assert link.session in group and len(group) == 1
    link.close_with(None, "")
    link.abort()
    assert handler.events[-1] == ("close", 1005, "") and len([e for e in handler.events if e[0] == "close"]) == 1
    assert len(group) == 0
    failed: list[Any] = []
    link.session.writable().addErrback(failed.append)
    assert failed[0].check(SessionClosed)


def test_closed_sessions_leave_every_group() -> None:
    """A group the handler made itself forgets a session once it has closed."""
    room = Group()
    link, _, _ = _opened()
    room.add(link.session)
    assert len(room) == 1 and link.session in room
    link.close_with(1000, "")
    assert len(room) == 0 and link.session not in room and list(room) == [] and room.broadcast("x") == 0


def test_on_open_error_closes_with_1011() -> None:
    """A handler whose on_open raises gets its session closed with 1011 at once."""

    class Broken(_Recorder):
        def on_open(self, session: Session) -> None:
            raise KeyError("missing")

    _, bridge, handler = _opened(Broken(HandlerContext(reactor=Clock())))
    assert bridge.closed == [(1011, "internal error in the handler")]
    assert handler.events == [("close", 1011, "internal error in the handler")]


def test_link_aborted_before_open_never_calls_the_handler() -> None:
    """A handshake that never finishes gives no on_open and no on_close."""
    handler = _Recorder(HandlerContext(reactor=Clock()))
    request = Request(path="/", route_path="/", query="", headers=(), protocols=(), peer_host="h", peer_port=1)
    link = HandlerLink(handler, request, None, Group())
    link.abort()
    assert handler.events == []


def test_handler_close_sends_queued_messages_first() -> None:
    """session.close sends what is queued, then closes with the handler's code; bad codes are refused."""
    link, bridge, _ = _opened()
    session = link.session
    with pytest.raises(ValueError, match="close code"):
        session.close(1006)
    link.pauseProducing()
    session.send("last")
    session.close(4001, "done")
    assert bridge.sent == [(b"last", False)] and bridge.closed == [(4001, "done")]


def test_deferred_from_on_message_pauses_reading_from_the_client() -> None:
    """While on_message's Deferred is pending the client's transport is paused; it resumes when it fires."""
    pending: Deferred[None] = Deferred()

    class Slow(_Recorder):
        def on_message(self, session: Session, payload: bytes, is_binary: bool) -> Any:
            return pending

    link, _, _ = _opened(Slow(HandlerContext(reactor=Clock())))
    client = link._client
    link.write_message(b"x", True)
    assert client.paused
    pending.callback(None)
    assert not client.paused


def test_messages_wait_while_on_message_deferred_is_pending() -> None:
    """Messages that arrive while on_message's Deferred is pending are handed over in order once it fires."""
    pendings: list[Deferred[None]] = []

    class Slow(_Recorder):
        def on_message(self, session: Session, payload: bytes, is_binary: bool) -> Any:
            self.events.append(("message", payload, is_binary))
            pendings.append(Deferred())
            return pendings[-1]

    link, _, handler = _opened(Slow(HandlerContext(reactor=Clock())))
    for payload in (b"1", b"2", b"3"):
        link.write_message(payload, True)
    assert [e[1] for e in handler.events if e[0] == "message"] == [b"1"]
    pendings[0].callback(None)
    assert [e[1] for e in handler.events if e[0] == "message"] == [b"1", b"2"] and link._client.paused
    pendings[1].callback(None)
    pendings[2].callback(None)
    assert [e[1] for e in handler.events if e[0] == "message"] == [b"1", b"2", b"3"] and not link._client.paused


def test_broadcast_never_waits_for_a_slow_member() -> None:
    """A member whose client stopped reading is closed at its bound while the others get every message."""
    group = Group()
    fast = [_opened(group=group) for _ in range(2)]
    slow_link, slow_bridge, _ = _opened(group=group)
    slow_link.session.max_queue = 5
    slow_link.pauseProducing()
    for n in range(20):
        group.broadcast(f"m{n}")
    for _, bridge, _ in fast:
        assert [p for p, _ in bridge.sent] == [f"m{n}".encode() for n in range(20)]
    assert slow_bridge.closed[0][0] == 1008 and slow_link.session not in group and len(group) == 2


# -- end to end, through a real router ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_echo_example_keeps_types_and_fragments() -> Any:
    """examples.handlers.echo:Echo returns each message whole with its type, empty and fragmented ones too."""
    router = start_router(routes=[f"/e={ECHO}"])

    def exchange() -> list[Any]:
        replies = []
        with connect(router.url + "/e") as ws:
            for message in ["h\u00e9llo", b"\x00\xff", "", b"", "x" * 70000, ["fr", "ag"], [b"a", b"b"]]:
                ws.send(message)
                replies.append(ws.recv(timeout=10))
        return replies

    try:
        replies = yield in_thread(exchange)
        assert replies == ["h\u00e9llo", b"\x00\xff", "", b"", "x" * 70000, "frag", b"ab"]
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_echo_example_stops_reading_a_client_that_does_not_read() -> Any:
    """A client that floods the echo without reading its replies is stalled far from done; all arrive once it reads."""
    chunk, total = 64 * 1024, 48 * 1024 * 1024
    router = start_router(routes=[f"/e={ECHO}"])
    sent = [0]
    may_read = threading.Event()

    async def flood() -> int:
        # asyncio, not the sync client: its send holds a lock its reader needs, so it cannot read while blocked.
        async with async_connect(router.url + "/e", max_queue=4, max_size=None) as ws:
            async def send_all() -> None:
                while sent[0] < total:
                    await ws.send(b"\x01" * chunk)
                    sent[0] += chunk

            sender = asyncio.create_task(send_all())
            await asyncio.get_running_loop().run_in_executor(None, may_read.wait, 120)
            received = 0
            while received < total:
                received += len(await asyncio.wait_for(ws.recv(), 30))
            await sender
            return received

    try:
        done = in_thread(asyncio.run, flood())
        steady, last = 0, -1
        for _ in range(150):
            yield deferLater(reactor, 0.2, lambda: None)
            steady, last = (steady + 1, last) if sent[0] == last else (0, sent[0])
            if steady == 5:
                break
        assert steady == 5 and 0 < sent[0] < total // 2, (steady, sent[0])
        may_read.set()
        assert (yield done) == total
    finally:
        may_read.set()
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_echo_example_keeps_up_with_many_small_pipelined_messages() -> Any:
    """Tens of thousands of small messages sent without waiting all come back: messages one read holds
    wait for the echo's Deferred instead of overflowing the client's queue (which closed it with 1008)."""
    count, padding = 50000, b"." * 192
    router = start_router(routes=[f"/e={ECHO}"])

    async def pipeline() -> int:
        async with async_connect(router.url + "/e", max_size=None) as ws:
            async def send_all() -> None:
                for n in range(count):
                    await ws.send(b"%08d" % n + padding)

            sender = asyncio.create_task(send_all())
            await asyncio.sleep(1)  # read late, so the router's writes to this client pause
            expected = 0
            while expected < count:
                assert await asyncio.wait_for(ws.recv(), 30) == b"%08d" % expected + padding
                expected += 1
            await sender
            return expected

    try:
        assert (yield in_thread(asyncio.run, pipeline())) == count
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_dumb_increment_counts_and_resets() -> Any:
    """examples.handlers.increment counts up as text, speaks its subprotocol, and starts again at 0 on reset."""
    router = start_router(routes=[f"/inc={INCREMENT}"])

    def count() -> tuple[str | None, list[str], list[str]]:
        with connect(router.url + "/inc", subprotocols=["dumb-increment-protocol"]) as ws:
            first = [ws.recv(timeout=10) for _ in range(8)]
            ws.send("reset")
            after = [ws.recv(timeout=10) for _ in range(12)]
            return ws.subprotocol, first, after

    try:
        subprotocol, first, after = yield in_thread(count)
        assert subprotocol == "dumb-increment-protocol"
        assert first == [str(n) for n in range(8)]
        numbers = [int(n) for n in after]
        restart = numbers.index(0)  # ticks already on their way may come before the reset
        assert numbers[:restart] == list(range(8, 8 + restart))
        assert numbers[restart:] == list(range(len(numbers) - restart))
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_chat_slow_member_is_closed_and_never_stalls_the_others() -> Any:
    """In examples.handlers.chat everyone gets every message while a member that stopped reading is closed
    with 1008 once its queue is full."""
    router = start_router(routes=[f"/chat={CHAT}"], shutdown_grace=30)
    count, size = 400, 64 * 1024
    slow_ready, may_read = threading.Event(), threading.Event()

    def slow() -> tuple[int, int | None, str | None]:
        received = 0
        with connect(router.url + "/chat", max_queue=1) as ws:
            slow_ready.set()
            may_read.wait(120)
            try:
                while True:
                    message = ws.recv(timeout=30)
                    received += isinstance(message, bytes)
            except ConnectionClosed:
                return received, ws.close_code, ws.close_reason
        return received, None, None

    def fast() -> list[int]:
        got: list[int] = []
        with connect(router.url + "/chat") as talker, connect(router.url + "/chat") as listener:
            slow_ready.wait(30)
            for n in range(count):
                talker.send(n.to_bytes(4, "big") + b"\x00" * (size - 4))
                for ws in (talker, listener):
                    while True:
                        message = ws.recv(timeout=30)
                        if isinstance(message, bytes):
                            break
                got.append(int.from_bytes(message[:4], "big"))
        return got

    try:
        reading = in_thread(slow)
        got = yield in_thread(fast)
        assert got == list(range(count))
        may_read.set()
        received, code, reason = yield reading
        assert code == 1008 and reason is not None and "too slow" in reason
        assert received < count
    finally:
        may_read.set()
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_refusal_timeout_and_errors_over_real_handshakes() -> Any:
    """Refuse gives its HTTP status, a silent on_connect 503, a failing on_message 1011 -- and the router goes on."""

    class Gatekeeper:
        def __init__(self, context: HandlerContext):
            self.context = context

        def on_connect(self, request: Request) -> Any:
            who = request.param("who")
            if who == "wait":
                return Deferred()
            if who != "friend":
                raise Refuse(403, f"not a friend: {who}")
            return None

        def on_message(self, session: Session, payload: bytes, is_binary: bool) -> None:
            if payload == b"crash":
                raise ZeroDivisionError("handler bug")
            session.send(payload, is_binary)

    router = start_router(routes=[{"path": "/g", "target": PythonTarget(factory=Gatekeeper)}], connect_timeout=0.5)

    def use() -> tuple[Any, ...]:
        refused = handshake_status(router.url + "/g?who=stranger")
        silent = handshake_status(router.url + "/g?who=wait")
        with connect(router.url + "/g?who=friend") as ws:
            ws.send("crash")
            with contextlib.suppress(ConnectionClosed):
                ws.recv(timeout=10)
            crashed = ws.close_code
        with connect(router.url + "/g?who=friend") as ws:
            ws.send("still here")
            after = ws.recv(timeout=10)
        return refused, silent, crashed, after

    try:
        refused, silent, crashed, after = yield in_thread(use)
        assert refused[0] == 403 and b"not a friend: stranger" in refused[1]
        assert silent[0] == 503
        assert crashed == 1011
        assert after == "still here"
    finally:
        yield router.stopService()


def test_router_process_serves_the_example_handlers(tmp_path: Any) -> None:
    """`python -m wsrouter --route /e=python:examples.handlers.echo:Echo` serves the example from the checkout."""
    from tests.support import router_process

    with router_process(tmp_path, "--route", f"/e={ECHO}", "--route", f"/chat={CHAT}") as router, \
            connect(router.url + "/e") as ws:
        ws.send(b"\x00bin")
        assert ws.recv(timeout=10) == b"\x00bin"
        with connect(router.url + "/chat") as a:
            a.send("hello room")
            assert a.recv(timeout=10) == "hello room"


class _Greeter:
    """The docs/handlers.md example: refuses without ?name=, broadcasts 'name: text'."""

    def __init__(self, context: HandlerContext):
        self.group = context.group

    def on_connect(self, request: Request) -> None:
        if request.param("name") is None:
            raise Refuse(400, "say ?name=")

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> None:
        self.group.broadcast(f"{session.request.param('name')}: {payload.decode()}")


@pytest_twisted.inlineCallbacks
def test_handler_object_mounted_with_build_resource() -> Any:
    """A PythonTarget built around a factory object serves through build_resource mounted in a twisted.web Site."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from wsrouter import build_resource

    config = build_config({"routes": [{"path": "/greet", "target": PythonTarget(factory=_Greeter)}]})
    root = Resource()
    resource = build_resource(config, reactor)
    root.putChild(b"ws", resource)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    url = f"ws://127.0.0.1:{port.getHost().port}/ws/greet"

    def use() -> tuple[Any, ...]:
        refused = handshake_status(url)
        with connect(url + "?name=ann") as ann, connect(url + "?name=bob") as bob:
            ann.send("hi")
            return refused, ann.recv(timeout=10), bob.recv(timeout=10)

    try:
        refused, to_ann, to_bob = yield in_thread(use)
        assert refused[0] == 400 and to_ann == to_bob == "ann: hi"
    finally:
        yield resource.gateway.shutdown()
        yield port.stopListening()


def test_unhashable_factory_object_still_serves() -> None:
    """A factory object that cannot be hashed (it defines __eq__ only) is called once for its route all the same."""

    class Factory:  # noqa: PLW1641  (unhashable on purpose)
        calls = 0

        def __eq__(self, other: object) -> bool:
            return self is other

        def __call__(self, context: HandlerContext) -> _Recorder:
            Factory.calls += 1
            return _Recorder(context)

    connector = PythonConnector(Clock(), Limits())
    info = _info(PythonTarget(factory=Factory()))
    links: list[Any] = []
    connector.connect(info).addCallback(links.append)
    connector.connect(info).addCallback(links.append)
    assert len(links) == 2 and Factory.calls == 1


class _Stoppable:
    """Echoes, and notes each on_close and the on_shutdown in order."""

    events: list[str]

    def __init__(self, context: HandlerContext):
        self.events = _Stoppable.events

    def on_open(self, session: Session) -> None:
        self.events.append("open")

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> None:
        session.send(payload, is_binary)

    def on_close(self, session: Session, code: int, reason: str) -> None:
        self.events.append(f"close {code}")

    def on_shutdown(self) -> Deferred[None]:
        self.events.append("shutdown")
        return deferLater(reactor, 0.05, lambda: self.events.append("shutdown done"))


@pytest_twisted.inlineCallbacks
def test_router_shutdown_closes_sessions_with_1001_then_calls_on_shutdown() -> Any:
    """Stopping the router closes each client with 1001, runs on_close, then on_shutdown once, and waits for it."""
    _Stoppable.events = []
    router = start_router(routes=[{"path": "/s", "target": PythonTarget(factory=_Stoppable)}])
    opened = threading.Event()

    def client() -> int | None:
        with connect(router.url + "/s") as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            opened.set()
            with contextlib.suppress(ConnectionClosed):
                ws.recv(timeout=20)
            return ws.close_code  # type: ignore[no-any-return]

    using = in_thread(client)
    for _ in range(200):
        if opened.is_set():
            break
        yield deferLater(reactor, 0.05, lambda: None)
    yield router.stopService()
    assert (yield using) == 1001
    assert _Stoppable.events == ["open", "close 1001", "shutdown", "shutdown done"]


def test_on_shutdown_errors_and_silence_do_not_hold_the_stop() -> None:
    """An on_shutdown that raises is logged, one that never answers is cancelled after the timeout; others still run."""
    clock = Clock()
    connector = PythonConnector(clock, Limits())
    called: list[str] = []

    class Raises:
        def __init__(self, context: HandlerContext):
            pass

        def on_shutdown(self) -> None:
            called.append("raises")
            raise RuntimeError("shutdown bug")

    class Silent(Raises):
        def on_shutdown(self) -> Deferred[None]:  # type: ignore[override]
            called.append("silent")
            return Deferred()

    from twisted.logger import globalLogPublisher

    logged: list[dict[str, Any]] = []
    for factory, path in ((Raises, "/a"), (Silent, "/b"), (_Recorder, "/c")):
        connector.handler_for(Route(path, PythonTarget(factory=factory)))
    globalLogPublisher.addObserver(logged.append)
    try:
        stopping = connector.shutdown(5.0)
        assert sorted(called) == ["raises", "silent"] and not stopping.called
        clock.advance(5.0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert stopping.called
    failures = [event["log_failure"].value for event in logged if "log_failure" in event]
    assert [type(error).__name__ for error in failures] == ["RuntimeError", "TimeoutError"]
    assert connector.shutdown(5.0).called  # handlers are forgotten: nothing to call twice



def test_embed_example_serves_a_python_handler_and_resolver_and_shuts_down_in_order() -> None:
    """examples/embed.py, as a process: its handler and resolver answer, and SIGTERM gives 1001, then on_shutdown."""
    import signal
    import socket
    import urllib.request

    from tests.support import PYTHON, wait_for_port

    backend = socket.create_server(("127.0.0.1", 0))
    serving = threading.Thread(target=_echo_once, args=(backend,), daemon=True)
    serving.start()
    port = free_port()
    app = subprocess.Popen([PYTHON, str(REPO / "examples" / "embed.py"), str(port),
                            f"127.0.0.1:{backend.getsockname()[1]}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        wait_for_port(port)
        assert b"my app" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
        with connect(url + "/room?room=echo") as ws:
            ws.send("in the echo room")
            assert ws.recv(timeout=10) == "in the echo room"
        with connect(url + "/room?room=backend") as ws:
            ws.send(b"to the backend")
            assert ws.recv(timeout=10) == b"to the backend"
        assert handshake_status(url + "/room?room=cellar")[0] == 404
        with connect(url + "/upper") as ws:
            ws.send("shout")
            assert ws.recv(timeout=10) == "SHOUT"
            app.send_signal(signal.SIGTERM)
            with contextlib.suppress(ConnectionClosed):
                ws.recv(timeout=20)
            assert ws.close_code == 1001
        output, _ = app.communicate(timeout=30)
        assert b"upper: shut down" in output, output
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(10)
        backend.close()


def _echo_once(server: Any) -> None:
    """Serve one TCP connection: everything back until it closes."""
    with contextlib.suppress(OSError):
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def test_queue_past_its_byte_bound_names_the_byte_limit() -> None:
    """A client closed because queued bytes passed max_queue_bytes is told that limit, not a message count."""
    link, bridge, handler = _opened()
    session = link.session
    session.max_queue, session.max_queue_bytes = 64, 100
    link.pauseProducing()
    for _ in range(3):
        session.send("x" * 60)
    assert bridge.closed == [(1008, "client too slow: more than 100 bytes waiting")]
    assert handler.events[-1] == ("close", 1008, "client too slow: more than 100 bytes waiting")


def test_resolvers_refuse_is_the_handlers_refuse() -> None:
    """One Refuse class: the one imported from wsrouter.resolvers refuses a handler's handshake with its status."""
    from wsrouter import resolvers
    from wsrouter.refusal import Refuse as TheRefuse

    assert resolvers.Refuse is Refuse is TheRefuse
    result, _ = _connect(resolvers.Refuse(401, "who are you?"))
    assert _status(result) == (401, "who are you?")


def test_both_requests_answer_to_the_shared_names() -> None:
    """A handler's Request and a resolver's ResolveRequest answer to the same names (param, header, peer_host, ...)."""
    from wsrouter.config import ResolverTarget, Route
    from wsrouter.resolvers import ResolveRequest

    handler_request = Request(path="/h", route_path="/h", query="a=1&a=2", headers=(("x-y", "z"),), protocols=("p",),
                              peer_host="::1", peer_port=7)
    resolver_request = ResolveRequest(path="/h", route=Route("/h", ResolverTarget("r")), query=(("a", "1"), ("a", "2")),
                                      headers=(("x-y", "z"),), subprotocols=("p",), peer=("::1", 7))
    for made in (handler_request, resolver_request):
        assert (made.param("a"), made.param("b", "none"), made.params) == ("1", "none", {"a": ["1", "2"]})
        assert (made.header("X-Y"), made.header("w", "-")) == ("z", "-")
        assert (made.subprotocols, made.protocols, made.peer_host, made.peer_port, made.peer) == (
            ("p",), ("p",), "::1", 7, ("::1", 7))
        assert made.query_value("a") == "1"
