"""
The one-parse upgrade path (L{wsrouter.web.fastupgrade}): which request
heads it takes (unit tests of L{upgrade_target}), that a real router takes
it for a plain upgrade (no twisted.web Request is made) and keeps
twisted.web's path for everything else, and that both paths answer the
same bytes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.protocol import parseHttpHeader
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.fuzzing import budget
from tests.support import connect, in_thread, start_router
from wsrouter.config import Limits
from wsrouter.service.single import build_resource
from wsrouter.web import channel as channel_module
from wsrouter.web.channel import limit_requests
from wsrouter.web.fastupgrade import MAX_HEADERS, upgrade_target
from wsrouter.ws.upgrade import is_websocket_upgrade, raw_request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HEAD = (b"GET /echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
OPS = {"metrics": "/metrics", "status": "/status", "healthz": "/healthz"}


def with_header(line: bytes, head: bytes = HEAD) -> bytes:
    """C{head} with one more header line before the empty line."""
    return head[:-2] + line + b"\r\n\r\n"


# -- which heads ----------------------------------------------------------------------


def test_a_plain_upgrade_head_is_taken() -> None:
    """A whole GET upgrade head gives its request target, whatever follows it (early frames)."""
    assert upgrade_target(HEAD + b"\x81\x80early", 65536) == b"/echo?x=1"


def test_the_head_limit_is_exact() -> None:
    """A head of exactly max_header_bytes is taken, one byte less of limit is not."""
    assert upgrade_target(HEAD, len(HEAD)) == b"/echo?x=1"
    assert upgrade_target(HEAD, len(HEAD) - 1) is None


def test_up_to_twisted_webs_header_count_is_taken() -> None:
    """500 header lines (twisted.web's maximum) are taken; one more is left to twisted.web's 400."""
    lines = HEAD.count(b"\r\n") - 2
    many = HEAD[:-2] + b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADERS - lines)) + b"\r\n"
    assert upgrade_target(many, 65536) == b"/echo?x=1"
    assert upgrade_target(with_header(b"X-Last: a", many), 65536) is None


@pytest.mark.parametrize(("case", "data"), [
    ("partial head", HEAD[:-2]),
    ("not GET", b"POST" + HEAD[3:]),
    ("lower-case method", b"get" + HEAD[3:]),
    ("HTTP/1.0", HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")),
    ("absolute-form target", HEAD.replace(b"GET /echo", b"GET http://127.0.0.1/echo")),
    ("two spaces in the request line", HEAD.replace(b"GET /echo", b"GET  /echo")),
    ("leading empty line", b"\r\n" + HEAD),
    ("no Upgrade", HEAD.replace(b"Upgrade: websocket\r\n", b"")),
    ("Upgrade: h2c", HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c")),
    ("last Upgrade is not websocket", with_header(b"Upgrade: h2c")),
    ("Content-Length", with_header(b"Content-Length: 0")),
    ("Transfer-Encoding", with_header(b"Transfer-Encoding: chunked")),
    ("Expect", with_header(b"Expect: 100-continue")),
    ("folded header", with_header(b" folded")),
    ("space before the colon", with_header(b"X-A : b")),
    ("no colon", with_header(b"X-A")),
    ("NUL in a value", with_header(b"X-A: \x00")),
    ("bare LF", with_header(b"X-A: a\nX-B: b")),
])
def test_other_heads_are_left_to_twisted_web(case: str, data: bytes) -> None:
    """A head twisted.web would not hand on unchanged, or not whole, is not taken."""
    assert upgrade_target(data, 65536) is None, case


def through_twisted_web(data: bytes) -> bytes | None:
    """What twisted.web's path hands to Autobahn for C{data} (L{raw_request}), or C{None} if it hands nothing."""
    handed: list[bytes] = []

    class Upgrade(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            if is_websocket_upgrade(request):
                handed.append(raw_request(request))
            return NOT_DONE_YET

    site = Site(Upgrade())
    site.reactor = Clock()  # type: ignore[assignment]
    limit_requests(site, Limits)
    protocol = site.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(data)
    return handed[0] if handed else None


def as_autobahn_sees_it(data: bytes) -> tuple[Any, bytes]:
    """Autobahn's parse of the head in C{data} (or its error), and the bytes after the head."""
    end = data.find(b"\r\n\r\n") + 4
    try:
        parsed: Any = parseHttpHeader(data[:end])
    except ValueError as e:
        parsed = str(e)
    return parsed, data[end:]


_names = st.sampled_from([b"Host", b"upgrade", b"Connection", b"Sec-WebSocket-Key", b"X-A", b"x_b", b"Origin",
                          b"Sec-WebSocket-Protocol", b"", b"X A", b"X\x80"])
_values = st.lists(st.sampled_from(b"ab \t,;=\x7f\x80\xff\x01\x00\n"), max_size=12).map(bytes)
_line = st.builds(lambda name, value: name + b":" + value, _names, _values)
#: Mostly header lines twisted.web would take, now and then any bytes.
_lines = st.lists(_line | _line | _line | st.binary(max_size=12), max_size=8)
_targets = st.lists(st.sampled_from(b"az%/?=&#\x21\x7f\xb0\xb1 "), max_size=8).map(lambda b: b"/" + bytes(b))


@budget(300)
@given(target=_targets,
       lines=_lines, at=st.integers(min_value=0, max_value=8), early=st.binary(max_size=8))
@example(target=b"/echo", lines=[b"Upgrade:   WebSocket  ", b"X-A:\tb\t"], at=0, early=b"")
def test_what_the_one_parse_path_takes_autobahn_sees_as_through_twisted_web(target: bytes, lines: list[bytes],
                                                                             at: int, early: bytes) -> None:
    """For any head the one-parse path takes, Autobahn sees the same request (and early bytes) as via twisted.web."""
    lines = [*lines[:at], b"Upgrade: websocket", *lines[at:]]
    data = b"GET " + target + b" HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + early
    if upgrade_target(data, 65536) is None:
        return
    handed = through_twisted_web(data)
    assert handed is not None
    assert as_autobahn_sees_it(handed) == as_autobahn_sees_it(data)


def router_channel(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, StringTransport, Clock, list[Any]]:
    """A LimitedChannel of a Site whose root is the router, on an in-memory transport and clock; hand-overs recorded."""
    from tests.support import nested_schema
    from wsrouter.config import build_config

    clock = Clock()
    resource = build_resource(build_config(nested_schema({"routes": ["/echo=echo:"], "handshake_timeout": 2})),
                              clock)
    site = Site(resource)
    site.reactor = clock  # type: ignore[assignment]
    limit_requests(site, lambda: resource.gateway.config.limits)
    handed: list[Any] = []
    monkeypatch.setattr(channel_module, "hand_over", lambda channel, *args, **kwargs: handed.append((args, kwargs)))
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, handed


def test_a_taken_upgrade_is_handed_over_whole_with_its_deadline_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken on the first read: the router's factory gets all the bytes, no mount prefix; the head deadline stops."""
    protocol, transport, clock, handed = router_channel(monkeypatch)
    protocol.dataReceived(HEAD + b"early")
    assert handed == [((protocol.site.resource.gateway.factory, "", HEAD + b"early"), {})]
    assert not any(call.active() and call.func == protocol._too_slow for call in clock.getDelayedCalls())
    assert transport.value() == b""


def test_a_plain_request_is_left_to_twisted_web(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain request in the first read is not handed over: twisted.web answers it (404 here)."""
    protocol, transport, _, handed = router_channel(monkeypatch)
    protocol.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert handed == []
    assert transport.value().startswith(b"HTTP/1.1 404 ")


def test_a_silent_connection_still_gets_408_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends nothing is answered 408 at the head deadline, not before, and closed."""
    protocol, transport, clock, handed = router_channel(monkeypatch)
    clock.advance(1.9)
    assert transport.value() == b""
    clock.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    protocol.connectionLost()
    assert handed == []
    assert [call for call in clock.getDelayedCalls() if call.active()] == []


# -- a real router ----------------------------------------------------------------------


@pytest.fixture
def requests_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every twisted.web Request made by any Site while the test runs."""
    made: list[Any] = []
    original = Request.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Request, "__init__", counting)
    yield made


def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send C{parts} (C{pause} seconds apart) on one connection; what comes back until the router stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for index, part in enumerate(parts):
            if index and pause:
                time.sleep(pause)
            sock.sendall(part)
        sock.settimeout(0.5)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


@pytest_twisted.inlineCallbacks
def test_a_plain_upgrade_makes_no_request(requests_made: list[Any]) -> Any:
    """A client's upgrade goes straight to the WebSocket (no twisted.web Request) and relays as before."""
    router = start_router(routes=["/echo=echo:"], ops=OPS)

    def client() -> bytes:
        with connect(router.url + "/echo") as ws:
            ws.send(b"one")
            return bytes(ws.recv())

    try:
        assert (yield in_thread(client)) == b"one"
        assert requests_made == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_early_frames_after_the_head_reach_the_target(requests_made: list[Any]) -> Any:
    """A frame sent with the head in the same packet, before the 101, is relayed (echoed)."""
    router = start_router(routes=["/echo=echo:"])
    masked = bytes((0x81, 0x83, 1, 2, 3, 4)) + bytes(b ^ m for b, m in zip(b"abc", b"\x01\x02\x03", strict=True))
    try:
        answer = yield in_thread(exchange, router.port_number, HEAD + masked)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert answer.endswith(b"\x81\x03abc")
        assert requests_made == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_a_head_split_over_reads_takes_twisted_webs_path(requests_made: list[Any]) -> Any:
    """An upgrade head whose first read is not whole is served by twisted.web (one Request), 101 all the same."""
    router = start_router(routes=["/echo=echo:"])
    try:
        answer = yield in_thread(exchange, router.port_number, HEAD[:20], HEAD[20:], pause=0.3)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert len(requests_made) == 1
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_the_second_request_of_a_kept_alive_connection_takes_twisted_webs_path(requests_made: list[Any]) -> Any:
    """After a plain request on the connection, an upgrade on it is still served (by twisted.web)."""
    router = start_router(routes=["/echo=echo:"], ops=OPS)
    try:
        answer = yield in_thread(exchange, router.port_number,
                                 b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", HEAD, pause=0.3)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"HTTP/1.1 101 " in answer
        assert len(requests_made) == 2
    finally:
        yield router.stopService()


@pytest.mark.parametrize(("request_head", "status"), [
    (HEAD.replace(b"/echo?x=1", b"/status/live"), b"101"),  # an operator's page's WebSocket
    (HEAD.replace(b"/echo?x=1", b"/metrics"), b"200"),  # an operator's page asked with an upgrade
    (HEAD.replace(b"Upgrade: websocket\r\n", b""), b"426"),  # plain HTTP on a route
    (HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"), b"101"),
    (with_header(b"Content-Length: 0"), b"101"),
])
@pytest_twisted.inlineCallbacks
def test_other_requests_take_twisted_webs_path(requests_made: list[Any], request_head: bytes,
                                              status: bytes) -> Any:
    """Operator's pages, plain HTTP, HTTP/1.0 and heads with a length make a Request and are answered as before."""
    router = start_router(routes=["/echo=echo:"], ops=OPS)
    try:
        answer = yield in_thread(exchange, router.port_number, request_head)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
        assert len(requests_made) == 1
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_a_router_mounted_in_another_tree_takes_twisted_webs_path(requests_made: list[Any]) -> Any:
    """Under someone else's resource tree, the upgrade goes through that tree, its mount prefix removed."""
    from tests.support import nested_schema
    from wsrouter.config import build_config

    resource = build_resource(build_config(nested_schema({"routes": ["/echo=echo:"]})), reactor)
    root = Resource()
    root.putChild(b"ws", resource)
    site = Site(root)
    limit_requests(site, lambda: resource.gateway.config.limits)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    def client() -> bytes:
        with connect(f"ws://127.0.0.1:{port.getHost().port}/ws/echo") as ws:
            ws.send(b"mounted")
            return bytes(ws.recv())

    try:
        assert (yield in_thread(client)) == b"mounted"
        assert len(requests_made) == 1
    finally:
        resource.gateway.shutdown()
        yield port.stopListening()


@pytest.mark.parametrize(("case", "request_head"), [
    ("accepted", HEAD),
    ("no route", HEAD.replace(b"/echo?x=1", b"/nowhere")),
    ("origin refused", with_header(b"Origin: http://elsewhere.example")),
    ("bad version", HEAD.replace(b"Version: 13", b"Version: 12")),
    ("no key", HEAD.replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b"")),
])
@pytest_twisted.inlineCallbacks
def test_both_paths_answer_the_same(monkeypatch: pytest.MonkeyPatch, requests_made: list[Any], case: str,
                                    request_head: bytes) -> Any:
    """The one-parse path and twisted.web's answer a handshake with the same bytes, accepted or refused."""
    router = start_router(routes=["/echo=echo:"])
    try:
        fast = yield in_thread(exchange, router.port_number, request_head)
        assert requests_made == []
        monkeypatch.setattr(channel_module, "upgrade_factory", lambda *args: None)
        slow = yield in_thread(exchange, router.port_number, request_head)
        assert len(requests_made) == 1
        assert fast == slow, case
        assert fast.startswith(b"HTTP/1.1 "), case
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_behind_a_proxy_header_the_one_parse_path_keeps_the_client_address(requests_made: list[Any]) -> Any:
    """A PROXY header and the upgrade in one packet: no Request made, and the target sees the header's client."""
    import json

    from tests.test_proxy_addresses import ENV_JSON, proxied_router, raw_handshake, read_text_message
    from wsrouter.proxyproto import build_header

    router = proxied_router(routes=[f"/env=exec:{ENV_JSON}"])
    header = build_header("v1", ("203.0.113.9", 40001), ("198.51.100.20", 443))

    def client() -> Any:
        with raw_handshake(router.port_number, "/env", header) as sock:
            return json.loads(read_text_message(sock))

    try:
        env = yield in_thread(client)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.9", "40001")
        assert requests_made == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_over_tls_the_one_parse_path_is_taken(tmp_path_factory: pytest.TempPathFactory,
                                               requests_made: list[Any]) -> Any:
    """A wss:// client's upgrade, read from the TLS layer whole, goes straight to the WebSocket too."""
    from tests.test_tls import echo, wss_url
    from tests.tlscerts import client_context, make_ca, make_server, needs_openssl

    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    server = make_server(directory, "server", ca)
    service = start_router(routes=["/echo=echo:"], tls={"cert": str(server.combined)})
    try:
        assert (yield in_thread(echo, wss_url(service), client_context(ca))) == b"hello"
        assert requests_made == []
    finally:
        yield service.stopService()
