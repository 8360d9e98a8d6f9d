"""
Balanced routes end to end: the ``websockets`` client connects through the
router to several real loopback TCP servers, each greeting with its name.
"""

from __future__ import annotations

import collections
from contextlib import ExitStack
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from wsrouter.balancing import Balancing

from .support import RecordingTarget, connect, free_port, handshake_status, in_thread, listen_target, start_router


def servers(*names: str) -> list[tuple[Any, Any]]:
    """One listening TCP server per name; each greets a new connection with its name."""
    return [listen_target(lambda name=name: RecordingTarget(greeting=name.encode())) for name in names]


def address(server: tuple[Any, Any]) -> str:
    return f"tcp://127.0.0.1:{server[0].getHost().port}"


def greeting(url: str) -> str:
    """Connect, read the target's greeting, close."""
    with connect(url) as ws:
        message = ws.recv(timeout=10)
    return message if isinstance(message, str) else message.decode()


def greetings(url: str, count: int, query: str = "") -> list[str]:
    return [greeting(url + query) for _ in range(count)]


@pytest_twisted.inlineCallbacks
def test_round_robin_spreads_over_real_servers() -> None:
    """A route string with three targets and round-robin reaches each server in turn."""
    three = servers("A", "B", "C")
    router = start_router(routes=[f"/b[balance=round-robin]={','.join(address(s) for s in three)}"])
    try:
        got = yield in_thread(greetings, router.url + "/b", 6)
    finally:
        yield router.stopService()
        for port, _ in three:
            yield port.stopListening()
    assert got == ["A", "B", "C", "A", "B", "C"]


def open_session(stack: ExitStack, url: str) -> Any:
    """A session kept open until C{stack} closes; its greeting is read."""
    ws = stack.enter_context(connect(url))
    ws.recv(timeout=10)
    return ws


@pytest_twisted.inlineCallbacks
def test_least_connections_goes_where_fewest_sessions_are_open() -> None:
    """With sessions held on A and C, least-connections sends the next one to B, where round-robin would pick A."""
    three = servers("A", "B", "C")
    router = start_router(routes=[{"path": "/b", "targets": [address(s) for s in three],
                                   "balance": "least-connections"}])
    stack = ExitStack()
    try:
        held = []
        for _ in range(3):
            held.append((yield in_thread(open_session, stack, router.url + "/b")))
        yield in_thread(held[1].close)
        balancer = router.gateway.balancing.balancer(router.gateway.config.routes[0])
        for _ in range(200):
            if balancer.open == [1, 0, 1]:
                break
            yield deferLater(0.02)
        got = yield in_thread(greeting, router.url + "/b")
    finally:
        yield in_thread(stack.close)
        yield router.stopService()
        for port, _ in three:
            yield port.stopListening()
    assert got == "B"


@pytest_twisted.inlineCallbacks
def test_hash_token_is_sticky_per_token() -> None:
    """With hash-token one token always reaches the same server, and different tokens reach every server."""
    two = servers("A", "B")
    router = start_router(routes=[{"path": "/b", "targets": [address(s) for s in two], "balance": "hash-token"}])
    try:
        same = yield in_thread(greetings, router.url + "/b", 4, "?token=alpha")
        spread = []
        for n in range(12):
            spread += yield in_thread(greetings, router.url + "/b", 1, f"?token=t{n}")
    finally:
        yield router.stopService()
        for port, _ in two:
            yield port.stopListening()
    assert len(set(same)) == 1
    assert set(spread) == {"A", "B"}


@pytest_twisted.inlineCallbacks
def test_hash_token_reads_path_and_cookie_tokens_like_the_resolvers() -> None:
    """On a prefix route hash-token keeps /b/TOKEN, and a token cookie, on one server; many path tokens reach both."""
    two = servers("A", "B")
    router = start_router(routes=[{"path": "/b/*", "targets": [address(s) for s in two], "balance": "hash-token"}])

    def by_cookie(token: str) -> list[str]:
        found = []
        for _ in range(4):
            with connect(router.url + "/b/", additional_headers={"Cookie": f"token={token}"}) as ws:
                message = ws.recv(timeout=10)
            found.append(message if isinstance(message, str) else message.decode())
        return found

    try:
        same_path = yield in_thread(greetings, router.url + "/b/alpha", 4)
        same_cookie = yield in_thread(by_cookie, "beta")
        spread = []
        for n in range(12):
            spread += yield in_thread(greetings, router.url + f"/b/t{n}", 1)
    finally:
        yield router.stopService()
        for port, _ in two:
            yield port.stopListening()
    assert len(set(same_path)) == 1 and len(set(same_cookie)) == 1
    assert set(spread) == {"A", "B"}


@pytest_twisted.inlineCallbacks
def test_hash_address_is_sticky() -> None:
    """With hash-address every session from one client address reaches the same server."""
    three = servers("A", "B", "C")
    router = start_router(routes=[{"path": "/b", "targets": [address(s) for s in three], "balance": "hash-address"}])
    try:
        got = yield in_thread(greetings, router.url + "/b", 5)
    finally:
        yield router.stopService()
        for port, _ in three:
            yield port.stopListening()
    assert len(set(got)) == 1


@pytest_twisted.inlineCallbacks
def test_random_reaches_every_server() -> None:
    """Random balancing over two servers reaches both within a few dozen sessions."""
    two = servers("A", "B")
    router = start_router(routes=[{"path": "/b", "targets": [address(s) for s in two], "balance": "random"}])
    try:
        got = yield in_thread(greetings, router.url + "/b", 30)
    finally:
        yield router.stopService()
        for port, _ in two:
            yield port.stopListening()
    assert set(got) == {"A", "B"}


@pytest_twisted.inlineCallbacks
def test_stopped_server_is_failed_over_then_used_again_after_down_for() -> None:
    """A stopped server is skipped (no failed handshake), stays skipped while down, and is used after down_for."""
    three = servers("A", "B", "C")
    port_a = three[0][0].getHost().port
    targets = [address(s) for s in three]
    yield three[0][0].stopListening()
    router = start_router(routes=[{"path": "/b", "targets": targets, "down_for": 60}])
    clock = Clock()
    router.gateway.balancing = Balancing(clock)
    restarted = None
    try:
        before = yield in_thread(greetings, router.url + "/b", 4)
        restarted = reactor.listenTCP(port_a, three[0][1], interface="127.0.0.1")
        still_down = yield in_thread(greetings, router.url + "/b", 3)
        clock.advance(61)
        after = yield in_thread(greetings, router.url + "/b", 3)
        state = router.gateway.balancing._balancers
    finally:
        yield router.stopService()
        for port, _ in three[1:]:
            yield port.stopListening()
        if restarted is not None:
            yield restarted.stopListening()
    assert set(before) == {"B", "C"}
    assert "A" not in still_down
    assert "A" in after
    assert state


@pytest_twisted.inlineCallbacks
def test_all_targets_down_is_refused_with_502_and_reasons() -> None:
    """When no target of a balanced route answers, the handshake is refused with 502 naming each failure."""
    ports = [free_port(), free_port()]
    router = start_router(routes=[{"path": "/b", "targets": [f"tcp://127.0.0.1:{p}" for p in ports]}])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/b")
    finally:
        yield router.stopService()
    assert status == 502
    assert b"all targets down" in body
    assert body.count(b"connection refused") == 2


@pytest_twisted.inlineCallbacks
def test_session_counts_return_to_zero() -> None:
    """Once every session has ended, the balancer counts no open session on any target."""
    two = servers("A", "B")
    router = start_router(routes=[{"path": "/b", "targets": [address(s) for s in two],
                                   "balance": "least-connections"}])
    try:
        yield in_thread(greetings, router.url + "/b", 4)
        for _ in range(50):
            if not router.gateway.sessions:
                break
            yield deferLater(0.05)
        counts = collections.Counter()
        for balancer in router.gateway.balancing._balancers.values():
            for target in balancer.state():
                counts[target["target"]] += target["open"]
    finally:
        yield router.stopService()
        for port, _ in two:
            yield port.stopListening()
    assert not router.gateway.sessions
    assert sum(counts.values()) == 0


def deferLater(seconds: float) -> Any:
    from twisted.internet.task import deferLater as later
    return later(reactor, seconds, lambda: None)
