"""
End-to-end relaying over real loopback sockets: a router in this process,
real target servers, and the independent ``websockets`` client in a thread.
"""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from websockets.exceptions import ConnectionClosed

from . import rawws
from .support import (
    RecordingTarget,
    connect,
    free_port,
    handshake_status,
    in_thread,
    listen_target,
    start_router,
)


@pytest_twisted.inlineCallbacks
def test_tcp_echo_binary_and_text():
    """Binary and text messages reach a TCP target as bytes and its replies come back as binary."""
    port, _ = listen_target(lambda: RecordingTarget(echo=True))
    router = start_router(routes=[f"/echo=tcp://127.0.0.1:{port.getHost().port}"])

    def client():
        with connect(router.url + "/echo", subprotocols=["binary"]) as ws:
            ws.send(b"\x00\x01binary")
            first = ws.recv()
            ws.send("héllo")
            second = ws.recv()
            return ws.subprotocol, first, second

    try:
        subprotocol, first, second = yield in_thread(client)
        assert subprotocol == "binary"
        assert first == b"\x00\x01binary"
        assert second == "héllo".encode()
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_base64_subprotocol_both_ways():
    """A client offering only base64 gets base64 text frames, decoded toward the target and encoded back."""
    port, factory = listen_target(lambda: RecordingTarget(greeting=b"\xffhello"))
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])

    def client():
        with connect(router.url + "/x", subprotocols=["base64"]) as ws:
            greeting = ws.recv()
            ws.send(base64.b64encode(b"\x00raw\xfe").decode())
            ws.send(base64.b64encode(b"more").decode())
            return ws.subprotocol, greeting

    try:
        subprotocol, greeting = yield in_thread(client)
        assert subprotocol == "base64"
        assert greeting == base64.b64encode(b"\xffhello").decode()
        received = yield factory.connections[0].eof
        assert received == b"\x00raw\xfemore"
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_refusals_have_http_status():
    """No route gives 404, no acceptable subprotocol 400, an unreachable target 502, each with a reason."""
    dead = free_port()
    router = start_router(routes=[
        "/only@chat=echo:",
        f"/dead=tcp://127.0.0.1:{dead}",
    ])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/nowhere")
        assert (status, b"no route" in body) == (404, True)
        status, body = yield in_thread(handshake_status, router.url + "/only", subprotocols=["other"])
        assert (status, b"chat" in body) == (400, True)
        status, body = yield in_thread(handshake_status, router.url + "/dead")
        assert (status, b"connection refused" in body) == (502, True)
        status, _ = yield in_thread(handshake_status, router.url + "/only", subprotocols=["chat"])
        assert status == 101
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_plain_http_on_websocket_path_is_426():
    """A plain GET on a WebSocket route without a web root gets 426, an unknown path 404."""
    import urllib.error
    import urllib.request

    router = start_router(routes=["/ws=echo:"])

    def get(path):
        try:
            return urllib.request.urlopen(router.http + path, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert (yield in_thread(get, "/ws")) == 426
        assert (yield in_thread(get, "/other")) == 404
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_unix_stream_target(tmp_path):
    """A unix:// target is relayed like TCP, including the target's half-close."""
    factory_holder = []

    def make():
        p = RecordingTarget(echo=True)
        return p

    from .support import TargetFactory

    factory = TargetFactory(make)
    path = str(tmp_path / "target.sock")
    unix_port = reactor.listenUNIX(path, factory)
    factory_holder.append(factory)
    router = start_router(routes=[f"/u=unix://{path}"])

    def client():
        with connect(router.url + "/u") as ws:
            ws.send(b"over unix")
            return ws.recv()

    try:
        assert (yield in_thread(client)) == b"over unix"
    finally:
        yield router.stopService()
        yield unix_port.stopListening()


class _UdpEcho(DatagramProtocol):
    def __init__(self):
        self.datagrams = []

    def datagramReceived(self, data, addr):
        self.datagrams.append(data)
        self.transport.write(b"re:" + data, addr)


@pytest_twisted.inlineCallbacks
def test_udp_target_one_datagram_per_message():
    """Each message, even one sent in several frames, is one UDP datagram, and each reply one message."""
    echo = _UdpEcho()
    udp = reactor.listenUDP(0, echo, interface="127.0.0.1")
    router = start_router(routes=[f"/u=udp://127.0.0.1:{udp.getHost().port}"])

    def client():
        with connect(router.url + "/u") as ws:
            ws.send(b"one")
            first = ws.recv()
            ws.send([b"fragmented ", b"message"])
            second = ws.recv()
            return first, second

    try:
        first, second = yield in_thread(client)
        assert (first, second) == (b"re:one", b"re:fragmented message")
        assert echo.datagrams == [b"one", b"fragmented message"]
    finally:
        yield router.stopService()
        yield udp.stopListening()


@pytest_twisted.inlineCallbacks
def test_unix_datagram_target(tmp_path):
    """A unix-dgram:// target exchanges one datagram per message."""
    path = str(tmp_path / "dgram.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(10)

    def serve_one():
        data, addr = server.recvfrom(65536)
        server.sendto(data[::-1], addr)
        return data

    router = start_router(routes=[f"/d=unix-dgram://{path}"])

    def client():
        with connect(router.url + "/d") as ws:
            ws.send(b"abc")
            return ws.recv()

    try:
        served = in_thread(serve_one)
        reply = yield in_thread(client)
        assert (yield served) == b"abc"
        assert reply == b"cba"
    finally:
        yield router.stopService()
        server.close()


@pytest_twisted.inlineCallbacks
def test_unix_datagram_missing_socket_is_502(tmp_path):
    """A unix-dgram target whose socket does not exist refuses the handshake with 502."""
    router = start_router(routes=[f"/d=unix-dgram://{tmp_path}/absent.sock"])
    try:
        status, _ = yield in_thread(handshake_status, router.url + "/d")
        assert status == 502
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_target_eof_delivers_everything_then_1000():
    """When the target sends data and closes, the client gets all of it, then close code 1000."""
    payload = bytes(range(256)) * 4096
    port, _ = listen_target(lambda: RecordingTarget(greeting=payload, close_after_greeting=True))
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])

    def client():
        got = bytearray()
        with connect(router.url + "/") as ws:
            try:
                while True:
                    got += ws.recv(timeout=10)
            except ConnectionClosed as e:
                return bytes(got), e.rcvd.code if e.rcvd else None

    try:
        got, code = yield in_thread(client)
        assert got == payload
        assert code == 1000
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_target_reset_closes_with_1011():
    """A target that resets the connection makes the router close the client with 1011 and a reason."""
    from twisted.internet.protocol import Protocol

    class Resetter(Protocol):
        def dataReceived(self, data):
            self.transport.abortConnection()

    port, _ = listen_target(Resetter)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])

    def client():
        with connect(router.url + "/") as ws:
            ws.send(b"boom")
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                return e.rcvd.code, e.rcvd.reason

    try:
        code, reason = yield in_thread(client)
        assert code == 1011
        assert "target error" in reason
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_client_close_half_closes_target_after_data():
    """When the client closes, the target receives everything sent, then end of input."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])
    chunks = [bytes([i]) * 70000 for i in range(20)]

    def client():
        with connect(router.url + "/") as ws:
            for chunk in chunks:
                ws.send(chunk)

    try:
        yield in_thread(client)
        received = yield factory.connections[0].eof
        assert received == b"".join(chunks)
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_message_over_limit_closes_1009():
    """A message larger than --max-message-size closes the session with 1009."""
    router = start_router(routes=["/e=echo:"], max_message_size=1000)

    def client():
        with connect(router.url + "/e") as ws:
            ws.send(b"x" * 1000)
            ok = ws.recv(timeout=10)
            ws.send(b"x" * 1001)
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                return len(ok), e.rcvd.code

    try:
        assert (yield in_thread(client)) == (1000, 1009)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_idle_timeout_closes_quiet_session():
    """A session with no traffic for --idle-timeout seconds is closed with 1000 'idle timeout'."""
    router = start_router(routes=["/e=echo:"], idle_timeout=0.5)

    def client():
        with connect(router.url + "/e") as ws:
            ws.send(b"ping")
            ws.recv(timeout=5)
            started = time.monotonic()
            try:
                ws.recv(timeout=30)
            except ConnectionClosed as e:
                return e.rcvd.code, e.rcvd.reason, time.monotonic() - started

    try:
        code, reason, waited = yield in_thread(client)
        assert (code, reason) == (1000, "idle timeout")
        assert waited < 20  # closed by the router, not by our 30 s receive timeout
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_ping_drops_silent_peer():
    """With --ping, a client that never answers pings is disconnected."""
    router = start_router(routes=["/e=echo:"], ping_interval=0.3, ping_timeout=0.3)

    def silent_client():
        s = rawws.upgrade(router.port_number, "/e", timeout=10)
        s.settimeout(30)
        seen = b""
        started = time.monotonic()
        try:
            while True:  # read pings, never answer; ends when the router drops us
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            s.close()
        return seen, time.monotonic() - started

    try:
        seen, waited = yield in_thread(silent_client)
        assert waited < 20  # dropped by the router, not by our 30 s socket timeout
        assert _only_pings(seen)  # nothing but pings was sent (a reset may discard some or all)

        def answering_client():
            with connect(router.url + "/e") as ws:  # websockets answers pings itself
                time.sleep(1.5)
                ws.send(b"still here")
                return ws.recv(timeout=5)

        assert (yield in_thread(answering_client)) == b"still here"
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_router_stop_sends_1001_after_pending_data():
    """Stopping the router delivers data already received from the target, then closes with 1001."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])
    opened = threading.Event()

    def client():
        with connect(router.url + "/") as ws:
            ws.send(b"hi")
            opened.set()
            got = bytearray()
            try:
                while True:
                    got += ws.recv(timeout=10)
            except ConnectionClosed as e:
                return bytes(got), e.rcvd.code

    try:
        result = in_thread(client)
        yield factory.connected
        yield in_thread(opened.wait, 10)
        factory.connections[0].transport.write(b"last words")
        yield deferLater(0.2)
        yield router.stopService()
        got, code = yield result
        assert (got, code) == (b"last words", 1001)
    finally:
        yield port.stopListening()


def deferLater(seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_prefix_route_and_longest_match():
    """The longest matching route wins and a prefix route serves paths below it."""
    port_a, _ = listen_target(lambda: RecordingTarget(greeting=b"A", close_after_greeting=True))
    port_b, _ = listen_target(lambda: RecordingTarget(greeting=b"B", close_after_greeting=True))
    router = start_router(routes=[
        f"/*=tcp://127.0.0.1:{port_a.getHost().port}",
        f"/app/*=tcp://127.0.0.1:{port_b.getHost().port}",
    ])

    def first_message(path):
        with connect(router.url + path) as ws:
            return ws.recv(timeout=10)

    try:
        assert (yield in_thread(first_message, "/app/deep/path?x=1")) == b"B"
        assert (yield in_thread(first_message, "/app")) == b"B"
        assert (yield in_thread(first_message, "/apple")) == b"A"
    finally:
        yield router.stopService()
        yield port_a.stopListening()
        yield port_b.stopListening()


@pytest_twisted.inlineCallbacks
def test_web_root_and_routes_share_a_port(tmp_path):
    """Static files and WebSocket routes are served on the same port, and an upgrade on a file's path is routed."""
    import urllib.request

    (tmp_path / "index.html").write_text("<h1>hello</h1>")
    (tmp_path / "app.js").write_text("1;")
    router = start_router(web=str(tmp_path), routes=["/echo=echo:", "/index.html=echo:"])

    def client():
        page = urllib.request.urlopen(router.http + "/", timeout=10)
        script = urllib.request.urlopen(router.http + "/app.js", timeout=10)
        with connect(router.url + "/echo") as ws:
            ws.send(b"same port")
            echoed = ws.recv(timeout=10)
        with connect(router.url + "/index.html") as ws:
            ws.send(b"upgrade wins")
            upgraded = ws.recv(timeout=10)
        return page.read(), script.headers["Content-Type"], echoed, upgraded

    try:
        page, script_type, echoed, upgraded = yield in_thread(client)
        assert page == b"<h1>hello</h1>"
        assert script_type.startswith("text/javascript")
        assert (echoed, upgraded) == (b"same port", b"upgrade wins")
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_unix_socket_listener(tmp_path):
    """A router listening on a Unix socket endpoint serves WebSocket clients there."""
    from websockets.sync.client import unix_connect

    path = str(tmp_path / "router.sock")
    router = start_router(listen=[f"unix:{path}"], routes=["/e=echo:"])

    def client():
        with unix_connect(path, "ws://localhost/e", open_timeout=10) as ws:
            ws.send(b"over a unix listener")
            return ws.recv(timeout=10)

    try:
        assert (yield in_thread(client)) == b"over a unix listener"
    finally:
        yield router.stopService()


def _only_pings(data: bytes) -> bool:
    """Every complete server frame in C{data} is a ping (unmasked, short)."""
    position = 0
    while position + 2 <= len(data):
        if data[position] != 0x89:
            return False
        position += 2 + (data[position + 1] & 0x7F)
    return True
