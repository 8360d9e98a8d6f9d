"""
ws:// and wss:// targets, end to end on loopback: the router in this
process, the independent ``websockets`` library both as the client and as
the upstream server (its sync server in a thread) -- message types, empty
messages, subprotocol negotiation, close codes both ways, 502s, wss with a
test CA, and a slow reader's backpressure; plus the config forms.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from wsrouter.config import ConfigError, WebSocketTarget, build_config, to_data
from wsrouter.config.spec import parse_target
from wsrouter.preflight import preflight

from .support import connect, free_port, handshake_status, in_thread, nested_schema, start_router
from .tlscerts import Pair, make_ca, make_server, needs_openssl


class Upstream:
    """A ``websockets`` sync server on loopback, served from its own thread."""

    def __init__(self, handler: Callable[[ServerConnection], None], **kwargs: Any):
        kwargs.setdefault("max_size", None)
        self.server: Server = serve(handler, "127.0.0.1", 0, **kwargs)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/up", scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def echo_handler(connection: ServerConnection) -> None:
    """Echo every message with its type."""
    try:
        for message in connection:
            connection.send(message)
    except ConnectionClosed:
        pass


def route(target: str, path: str = "/u", **options: Any) -> dict[str, Any]:
    return {"path": path, "target": target, **options}


# -- configuration --------------------------------------------------------------------------


def test_route_language_and_file_forms() -> None:
    """ws:// and wss:// parse with host, port and path (default /), describe themselves and round-trip."""
    assert parse_target("ws://127.0.0.1:9000/chat?room=1") == WebSocketTarget(False, "127.0.0.1", 9000, "/chat?room=1")
    assert parse_target("wss://[::1]:443") == WebSocketTarget(True, "::1", 443, "/")
    assert parse_target("wss://[::1]:443/a").describe() == "wss://[::1]:443/a"
    config = build_config(nested_schema({"routes": [route("wss://example.test:443/x", tls_pin="AB" * 32)]}))
    target = config.routes[0].target
    assert isinstance(target, WebSocketTarget) and target.pin == "ab" * 32 and target.secure
    assert build_config(to_data(config)) == config


def test_route_strings_with_tls_options() -> None:
    """Route strings carry ws/wss targets, paths with queries, and the tls-* options for wss."""
    config = build_config({"routes": [
        "/a=ws://127.0.0.1:9000/feed?x=1",
        "/b[tls-ca=ca.pem]=wss://db.example:443/ws",
        "/c[tls-verify=false]=wss://127.0.0.1:8443",
    ]})
    assert [route.target for route in config.routes] == [
        WebSocketTarget(False, "127.0.0.1", 9000, "/feed?x=1"),
        WebSocketTarget(True, "db.example", 443, "/ws", "ca.pem"),
        WebSocketTarget(True, "127.0.0.1", 8443, verify=False)]
    assert build_config(to_data(config)) == config


def test_tls_keys_refused_for_plain_ws() -> None:
    """tls_ca on a ws:// route is refused with its key path; a bad port is named too."""
    with pytest.raises(ConfigError) as caught:
        build_config(nested_schema({"routes": [route("ws://127.0.0.1:9000/x", tls_ca="ca.pem")]}))
    assert "routes[0].tls_ca: is only for tls:// and wss:// targets" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        build_config(nested_schema({"routes": [route("ws://127.0.0.1:0/x")]}))
    assert "routes[0].target" in str(caught.value) and "port" in str(caught.value)


# -- relaying --------------------------------------------------------------------------------


def exchange(url: str, messages: list[str | bytes], **kwargs: Any) -> list[str | bytes]:
    with connect(url, **kwargs) as ws:
        answers = []
        for message in messages:
            ws.send(message)
            answers.append(ws.recv(timeout=10))
        return answers


@pytest_twisted.inlineCallbacks
def test_messages_keep_their_types_and_empty_ones() -> Any:
    """Text stays text and binary stays binary through an echoing upstream, empty messages of both kinds included."""
    upstream = Upstream(echo_handler)
    service = start_router(routes=[route(upstream.url())])
    messages: list[str | bytes] = ["héllo", b"\x00\xff", "", b"", "x" * 200_000, bytes(range(256)) * 1000]
    try:
        answers = yield in_thread(exchange, service.url + "/u", messages)
        assert answers == messages
        assert [type(a) for a in answers] == [type(m) for m in messages]
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_upstream_chooses_the_subprotocol() -> Any:
    """The client's offer goes upstream and the upstream's choice is the client's; an upstream choosing none (though
    websockify's "binary" was offered, which the router itself would take for other targets) gives none."""
    seen: queue.Queue[str | None] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        seen.put(connection.subprotocol)
        echo_handler(connection)

    upstream = Upstream(handler, subprotocols=["chat.v2"])  # type: ignore[list-item]
    plain = Upstream(handler)
    service = start_router(routes=[route(upstream.url()), route(plain.url(), "/plain")])

    def chosen(offer: list[str], path: str = "/u") -> str | None:
        with connect(service.url + path, subprotocols=offer) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"
            return ws.subprotocol  # type: ignore[no-any-return]

    try:
        assert (yield in_thread(chosen, ["chat.v1", "chat.v2"])) == "chat.v2"
        assert seen.get(timeout=10) == "chat.v2"
        assert (yield in_thread(chosen, ["binary"], "/plain")) is None
        assert seen.get(timeout=10) is None
    finally:
        yield service.stopService()
        upstream.close()
        plain.close()


@pytest_twisted.inlineCallbacks
def test_route_subprotocols_filter_what_goes_upstream() -> Any:
    """A route naming subprotocols sends upstream only those of the client's offer; none in common is 400 at once."""
    offers: queue.Queue[str | None] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        offers.put(connection.request.headers.get("Sec-WebSocket-Protocol") if connection.request else None)
        echo_handler(connection)

    upstream = Upstream(handler, subprotocols=["chat.v2", "chat.v1"])  # type: ignore[list-item]
    service = start_router(routes=[route(upstream.url(), subprotocols=["chat.v1"])])

    def chosen() -> str | None:
        with connect(service.url + "/u", subprotocols=["chat.v2", "chat.v1"]) as ws:
            return ws.subprotocol  # type: ignore[no-any-return]

    try:
        assert (yield in_thread(chosen)) == "chat.v1"
        assert offers.get(timeout=10) == "chat.v1"
        status, _ = yield in_thread(handshake_status, service.url + "/u", subprotocols=["chat.v2"])
        assert status == 400 and offers.empty()
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_pings_are_answered_per_hop() -> Any:
    """The upstream's ping is answered by the router and the client's ping too, each on its own hop."""
    def handler(connection: ServerConnection) -> None:
        connection.recv()
        answered = connection.ping(b"up").wait(10)
        connection.send(f"upstream ping answered: {answered}")
        echo_handler(connection)

    upstream = Upstream(handler)
    service = start_router(routes=[route(upstream.url())])

    def client() -> tuple[Any, bool]:
        with connect(service.url + "/u") as ws:
            ws.send("go")
            said = ws.recv(timeout=10)
            return said, ws.ping(b"down").wait(10)

    try:
        assert (yield in_thread(client)) == ("upstream ping answered: True", True)
    finally:
        yield service.stopService()
        upstream.close()


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4000, "bye")])
@pytest_twisted.inlineCallbacks
def test_client_close_code_reaches_upstream(code: int, reason: str) -> Any:
    """The client's close code and reason are what the upstream receives."""
    closes: queue.Queue[tuple[int | None, str | None]] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        echo_handler(connection)
        closes.put((connection.close_code, connection.close_reason))

    upstream = Upstream(handler)
    service = start_router(routes=[route(upstream.url())])

    def client() -> None:
        with connect(service.url + "/u") as ws:
            ws.send("x")
            ws.recv(timeout=10)
            ws.close(code, reason)

    try:
        yield in_thread(client)
        assert (yield in_thread(closes.get, timeout=10)) == (code, reason)
    finally:
        yield service.stopService()
        upstream.close()


@pytest.mark.parametrize("how", ["drop", "idle"])
@pytest_twisted.inlineCallbacks
def test_dropped_or_idle_client_closes_upstream_with_its_code(how: str) -> Any:
    """A client that drops its TCP connection gives the upstream 1001; the router's idle timeout gives it 1000 "idle
    timeout", the same close the client gets."""
    closes: queue.Queue[tuple[int | None, str | None]] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        echo_handler(connection)
        closes.put((connection.close_code, connection.close_reason))

    upstream = Upstream(handler)
    limits = {"session_idle_timeout": 1} if how == "idle" else {}
    service = start_router(routes=[route(upstream.url())], limits=limits)

    def client() -> tuple[int | None, str | None]:
        with connect(service.url + "/u") as ws:
            ws.send("x")
            ws.recv(timeout=10)
            if how == "drop":
                ws.socket.shutdown(socket.SHUT_RDWR)
                return None, None
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return ws.close_code, ws.close_reason

    try:
        got = yield in_thread(client)
        expected = (1001, "client went away") if how == "drop" else (1000, "idle timeout")
        assert (yield in_thread(closes.get, timeout=10)) == expected
        if how == "idle":
            assert got == expected
    finally:
        yield service.stopService()
        upstream.close()


@pytest.mark.parametrize(("code", "reason"), [(1011, "boom"), (4001, "nope")])
@pytest_twisted.inlineCallbacks
def test_upstream_close_code_reaches_client(code: int, reason: str) -> Any:
    """The upstream's close code and reason are what the client receives, after the messages before it."""
    def handler(connection: ServerConnection) -> None:
        message = connection.recv()
        connection.send(message)
        connection.close(code, reason)

    upstream = Upstream(handler)
    service = start_router(routes=[route(upstream.url())])

    def client() -> tuple[Any, int | None, str | None]:
        with connect(service.url + "/u") as ws:
            ws.send("last")
            got = ws.recv(timeout=10)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return got, ws.close_code, ws.close_reason

    try:
        assert (yield in_thread(client)) == ("last", code, reason)
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_unreachable_or_refusing_upstream_is_502() -> Any:
    """Nothing listening, and an upstream refusing the handshake with 403, are each a 502 naming why."""
    def refuse(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "not you\n")

    upstream = Upstream(echo_handler, process_request=refuse)
    service = start_router(routes=[route(f"ws://127.0.0.1:{free_port()}/x", "/down"), route(upstream.url(), "/no")])
    try:
        status, body = yield in_thread(handshake_status, service.url + "/down")
        assert status == 502 and b"connection refused" in body, body
        status, body = yield in_thread(handshake_status, service.url + "/no")
        assert status == 502 and b"403" in body, body
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_silent_upstream_is_502_after_the_connect_timeout() -> Any:
    """An upstream that accepts TCP but never answers the WebSocket handshake is a 502 saying it timed out."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    service = start_router(routes=[route(f"ws://127.0.0.1:{silent.getsockname()[1]}/x")],
                           limits={"connect_timeout": 1})
    try:
        status, body = yield in_thread(handshake_status, service.url + "/u")
        assert status == 502 and b"timed out" in body, body
    finally:
        yield service.stopService()
        silent.close()


# -- wss -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A test CA, a server certificate for 127.0.0.1 and localhost it signs, and a self-signed one."""
    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return {"ca": ca, "server": make_server(directory, "server", ca),
            "selfsigned": make_server(directory, "self", None)}


def tls_upstream(pair: Pair, handler: Callable[[ServerConnection], None] = echo_handler) -> Upstream:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return Upstream(handler, ssl=context)


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_wss_upstream_verified_with_test_ca(certs: dict[str, Pair]) -> Any:
    """A wss:// upstream whose certificate tls_ca vouches for relays; with system trust only it is a 502 naming why."""
    upstream = tls_upstream(certs["server"])
    service = start_router(routes=[route(upstream.url(scheme="wss"), tls_ca=str(certs["ca"].cert)),
                                   route(upstream.url(scheme="wss"), "/untrusted")])
    try:
        assert (yield in_thread(exchange, service.url + "/u", ["secret", b""])) == ["secret", b""]
        status, body = yield in_thread(handshake_status, service.url + "/untrusted")
        assert status == 502 and b"certificate verify failed" in body, body
    finally:
        yield service.stopService()
        upstream.close()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_wss_upstream_pinned_certificate(certs: dict[str, Pair]) -> Any:
    """A pinned self-signed upstream relays; a wrong pin is a 502 naming both and the upstream never hears a request."""
    pair = certs["selfsigned"]
    handled: list[str] = []

    def handler(connection: ServerConnection) -> None:
        handled.append(connection.request.path if connection.request else "")
        echo_handler(connection)

    upstream = tls_upstream(pair, handler)
    wrong = "0" * 64
    service = start_router(routes=[route(upstream.url("/ok", "wss"), tls_pin=pair.fingerprint()),
                                   route(upstream.url("/wrong", "wss"), "/w", tls_pin=wrong)])
    try:
        assert (yield in_thread(exchange, service.url + "/u", [b"pinned"])) == [b"pinned"]
        status, body = yield in_thread(handshake_status, service.url + "/w")
        assert status == 502 and f"{pair.fingerprint()} is not the pinned {wrong}".encode() in body, body
        assert handled == ["/ok"]
    finally:
        yield service.stopService()
        upstream.close()


def test_preflight_reports_unreadable_wss_ca(tmp_path: Path) -> None:
    """A wss:// route's unreadable tls_ca file is a start-up problem under its key path."""
    config = build_config({"routes": [route("wss://127.0.0.1:1/x", tls_ca=str(tmp_path / "none.pem"))]})
    assert "cannot read the CA file" in dict(preflight(config))["routes[0].tls_ca"]


# -- flow control ----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_slow_client_stalls_a_flooding_upstream() -> Any:
    """A client that does not read makes the router stop reading the upstream, which stalls far from done;
    everything arrives once the client reads."""
    chunk, total = 64 * 1024, 48 * 1024 * 1024
    sent = [0]

    def flood(connection: ServerConnection) -> None:
        payload = b"\x01" * chunk
        try:
            while sent[0] < total:
                connection.send(payload)
                sent[0] += chunk
            connection.close(1000, "done")
        except ConnectionClosed:
            pass

    upstream = Upstream(flood)
    service = start_router(routes=[route(upstream.url())])
    may_read = threading.Event()
    opened = threading.Event()

    def slow_client() -> tuple[int, int | None]:
        received = 0
        with connect(service.url + "/u", max_queue=4) as ws:
            opened.set()
            may_read.wait(60)
            try:
                while True:
                    received += len(ws.recv(timeout=30))
            except ConnectionClosed:
                return received, ws.close_code

    try:
        reading = in_thread(slow_client)
        assert (yield in_thread(opened.wait, 30))
        steady, last = 0, -1
        for _ in range(150):
            yield deferLater(reactor, 0.2, lambda: None)
            steady, last = (steady + 1, last) if sent[0] == last else (0, sent[0])
            if steady == 5:
                break
        assert steady == 5 and sent[0] < total // 2, (steady, sent[0])
        may_read.set()
        assert (yield reading) == (total, 1000)
    finally:
        may_read.set()
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_slow_upstream_stalls_a_flooding_client() -> Any:
    """An upstream that does not read makes the router stop reading the client, whose sending stalls far from
    done; everything arrives once the upstream reads."""
    chunk, total = 64 * 1024, 48 * 1024 * 1024
    may_read = threading.Event()
    received: queue.Queue[int] = queue.Queue()
    sent = [0]

    def slow(connection: ServerConnection) -> None:
        may_read.wait(60)
        count = 0
        try:
            for message in connection:
                count += len(message)
        except ConnectionClosed:
            pass
        received.put(count)

    upstream = Upstream(slow, max_queue=4)
    service = start_router(routes=[route(upstream.url())])

    def flooding_client() -> None:
        payload = b"\x02" * chunk
        with connect(service.url + "/u") as ws:
            while sent[0] < total:
                ws.send(payload)
                sent[0] += chunk

    try:
        sending = in_thread(flooding_client)
        steady, last = 0, -1
        for _ in range(150):
            yield deferLater(reactor, 0.2, lambda: None)
            steady, last = (steady + 1, last) if sent[0] == last and last > 0 else (0, sent[0])
            if steady == 5:
                break
        assert steady == 5 and sent[0] < total // 2, (steady, sent[0])
        may_read.set()
        yield sending
        assert (yield in_thread(received.get, timeout=60)) == total
    finally:
        may_read.set()
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_max_message_size_applies_to_upstream_messages() -> Any:
    """An upstream message over max_message_size is refused: the upstream gets 1009, the client 1011 saying why."""
    closes: queue.Queue[int | None] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        connection.recv()
        connection.send(b"y" * 500)
        try:
            connection.send(b"z" * 5000)
            connection.recv()
        except ConnectionClosed:
            pass
        closes.put(connection.close_code)

    upstream = Upstream(handler)
    service = start_router(routes=[route(upstream.url())], limits={"max_message_size": 1000})

    def client() -> tuple[Any, int | None, str | None]:
        with connect(service.url + "/u") as ws:
            ws.send("go")
            got = ws.recv(timeout=10)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return len(got), ws.close_code, ws.close_reason

    try:
        size, code, reason = yield in_thread(client)
        assert (size, code) == (500, 1011) and "1009" in (reason or ""), reason
        assert (yield in_thread(closes.get, timeout=10)) == 1009
    finally:
        yield service.stopService()
        upstream.close()


def late_reader_gets(chunk_size: int, grace: float) -> Any:
    """
    A client sends four messages of C{chunk_size} bytes and closes 1000; the
    upstream reads nothing for 3 s (its reader thread stops after one
    message, too), then everything.  Fires with what it read and the close
    code it got, for a router with C{grace} as its shutdown grace.
    """
    got: queue.Queue[tuple[int, int | None]] = queue.Queue()

    def late_reader(connection: ServerConnection) -> None:
        time.sleep(3.0)
        total = 0
        try:
            for message in connection:
                total += len(message)
        except ConnectionClosed:
            pass
        got.put((total, connection.close_code))

    upstream = Upstream(late_reader, max_queue=1)
    service = start_router(routes=[route(upstream.url())], shutdown_grace=grace)
    chunk = b"x" * chunk_size

    def client() -> None:
        with connect(service.url + "/u") as ws:
            for _ in range(4):
                ws.send(chunk)
            ws.close(1000)

    @defer.inlineCallbacks
    def run() -> Any:
        try:
            yield in_thread(client)
            return (yield in_thread(got.get, timeout=30))
        finally:
            yield service.stopService()
            upstream.close()

    return run()


@pytest_twisted.inlineCallbacks
def test_client_close_waits_for_a_slow_upstream_to_read_everything() -> Any:
    """Messages accepted from a client that then closes all reach an upstream that starts reading late."""
    # 32 MiB: more than the socket buffers hold, so the router's queue is not empty while the
    # upstream sleeps; 3 s is longer than the grace, shorter than the stall (twice the grace)
    # after which a peer that reads nothing is given up.
    chunk_size = 8 * 1024 * 1024
    assert (yield late_reader_gets(chunk_size, grace=2.0)) == (4 * chunk_size, 1000)


# -- fragmentation -------------------------------------------------------------------------


#: Messages as their frames; ``websockets`` sends an iterable as one frame per item then an empty
#: final frame, and its ``recv_streaming`` yields one chunk per frame received.
FRAGMENTED: list[list[str] | list[bytes]] = [["ab", "cd", "ef"], [b"\x01", b"", b"\x02\x03"], ["whole"],
                                              ["x" * 70_000, "y" * 10, "z" * 200_000]]


@pytest_twisted.inlineCallbacks
def test_fragmentation_is_kept_both_ways() -> Any:
    """A fragmented message keeps its frame boundaries and type from client to upstream and back."""
    seen: queue.Queue[list[str | bytes]] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        try:
            for _ in FRAGMENTED:
                fragments = list(connection.recv_streaming())
                seen.put(fragments)
                connection.send(fragments)  # an iterable: one frame per item
            connection.recv()
        except ConnectionClosed:
            pass

    upstream = Upstream(handler, compression=None)
    service = start_router(routes=[route(upstream.url())])

    def client() -> list[list[str | bytes]]:
        answers = []
        with connect(service.url + "/u", compression=None) as ws:
            for message in FRAGMENTED:
                ws.send(message)
                answers.append(list(ws.recv_streaming()))
        return answers

    try:
        answers = yield in_thread(client)
        upstream_saw = [seen.get(timeout=10) for _ in FRAGMENTED]  # all put before the answers came
        empty = [message[0][:0] for message in FRAGMENTED]  # the final frame websockets adds, per hop
        assert upstream_saw == [[*message, end] for message, end in zip(FRAGMENTED, empty, strict=True)]
        assert answers == [[*message, end, end] for message, end in zip(FRAGMENTED, empty, strict=True)]
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_max_message_size_counts_the_whole_fragmented_message() -> Any:
    """Fragments each under max_message_size but together over it are refused with 1009, on either hop."""
    closes: queue.Queue[int | None] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        try:
            if connection.recv() == "flood":
                connection.send([b"y" * 400] * 3)
            connection.recv()
        except ConnectionClosed:
            pass
        closes.put(connection.close_code)

    upstream = Upstream(handler, compression=None)
    service = start_router(routes=[route(upstream.url())], limits={"max_message_size": 1000})

    def client(first: str | list[bytes]) -> int | None:
        with connect(service.url + "/u", compression=None) as ws:
            ws.send(first)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return ws.close_code

    try:
        assert (yield in_thread(client, "flood")) == 1011
        assert (yield in_thread(closes.get, timeout=10)) == 1009
        assert (yield in_thread(client, [b"x" * 400] * 3)) == 1009
    finally:
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_fragmented_messages_with_permessage_deflate_on_the_client_hop() -> Any:
    """With permessage-deflate to the client, fragmented messages keep their content both ways (one frame to it)."""
    seen: queue.Queue[str] = queue.Queue()

    def handler(connection: ServerConnection) -> None:
        try:
            fragments = list(connection.recv_streaming())
            seen.put("".join(str(fragment) for fragment in fragments))
            connection.send(["ab", "cd", "ef"])
            connection.recv()
        except ConnectionClosed:
            pass

    upstream = Upstream(handler, compression=None)
    service = start_router(routes=[route(upstream.url())], compression={"permessage_deflate": True})

    def client() -> tuple[list[str | bytes], Any]:
        with connect(service.url + "/u", compression="deflate") as ws:
            ws.send(["hello ", "fragmented ", "world"])
            return list(ws.recv_streaming()), ws.response.headers.get("Sec-WebSocket-Extensions")

    try:
        answer, extensions = yield in_thread(client)
        assert "permessage-deflate" in (extensions or "")
        assert seen.get(timeout=10) == "hello fragmented world"
        assert answer == ["abcdef"]
    finally:
        yield service.stopService()
        upstream.close()


class FragmentSocket:
    """A client side that takes fragments (as the Autobahn adapter does), logging everything."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.events.append(("send", payload, is_binary))

    def send_fragment(self, payload: bytes, is_binary: bool, first: bool, fin: bool) -> None:
        self.events.append(("fragment", payload, is_binary, first, fin))

    def close(self, code: int, reason: str) -> None:
        self.events.append(("close", code))

    def attach_producer(self, producer: Any) -> None:
        """Flow control is not under test here."""

    def consumer_producer(self) -> Any:
        return None


class FakeUpstream:
    """The Autobahn client protocol as a L{WebSocketLink} uses it, logging the frames and messages sent."""

    state = 3  # WebSocketClientProtocol.STATE_OPEN
    transport = None

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def sendFrame(self, opcode: int, payload: bytes, fin: bool) -> None:
        self.sent.append(("frame", opcode, payload, fin))

    def sendMessage(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append(("message", payload, is_binary))

    def report_close(self) -> bool:
        return False


def test_bridge_and_link_pass_fragments_and_hold_injected_messages() -> None:
    """Client fragments go upstream frame by frame, a watcher's message waits for the fragmented one to end."""
    from wsrouter.bridge import Bridge
    from wsrouter.framing import BinaryFramer
    from wsrouter.targets.websocket import WebSocketClientProtocol, WebSocketLink

    assert FakeUpstream.state == WebSocketClientProtocol.STATE_OPEN
    upstream = FakeUpstream()
    link = WebSocketLink(upstream, None)  # type: ignore[arg-type]
    bridge = Bridge(FragmentSocket(), link, BinaryFramer())  # type: ignore[arg-type]
    bridge.start()
    bridge.message_begin(False)
    bridge.frame_data(b"ab")
    bridge.frame_data(b"c")  # two reads of one frame
    bridge.fragment_end()
    assert bridge.inject(b"watcher", True)
    bridge.frame_data(b"d")
    bridge.message_end()
    bridge.message_begin(True)
    bridge.frame_data(b"whole")
    bridge.message_end()
    assert upstream.sent == [("frame", 1, b"abc", False), ("frame", 0, b"d", True),
                             ("message", b"watcher", True), ("message", b"whole", True)]


def test_bridge_sends_target_fragments_on_or_gathers_them_when_recording() -> None:
    """Target fragments go to the client as fragments; a recorded session gets and records them as one message."""
    from wsrouter.bridge import Bridge
    from wsrouter.framing import BinaryFramer

    for recorder in (None, RecorderStub()):
        socket = FragmentSocket()
        bridge = Bridge(socket, LinkStub(), BinaryFramer(), recorder=recorder)  # type: ignore[arg-type]
        bridge.fragment_received(b"a", False, True, False)
        bridge.fragment_received(b"b", False, False, False)
        bridge.fragment_received(b"", False, False, True)
        bridge.fragment_received(b"one", True, True, True)
        if recorder is None:
            assert socket.events == [("fragment", b"a", False, True, False), ("fragment", b"b", False, False, False),
                                     ("fragment", b"", False, False, True), ("send", b"one", True)]
        else:
            assert socket.events == [("send", b"ab", False), ("send", b"one", True)]
            assert recorder.target == [(b"ab", False), (b"one", True)]
        assert (bridge.stats.messages_to_client, bridge.stats.bytes_to_client) == (2, 5)


class RecorderStub:
    """Keeps the target messages it is told of."""

    def __init__(self) -> None:
        self.target: list[tuple[bytes, bool]] = []

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        """Not under test."""

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        self.target.append((payload, is_binary))

    def closed(self, code: int | None, reason: str) -> None:
        """Not under test."""


class LinkStub:
    """A message link that is never written to here."""

    message_oriented = True
    producer = None
    consumer = None


def stalls(sent: list[int], total: int) -> Any:
    """Wait until C{sent} stays put for a second; true if it then is far from C{total}."""
    steady, last = 0, -1
    for _ in range(150):
        yield deferLater(reactor, 0.2, lambda: None)
        steady, last = (steady + 1, last) if sent[0] == last and last > 0 else (0, sent[0])
        if steady == 5:
            break
    return steady == 5 and sent[0] < total // 2


BIG_CHUNK, BIG_TOTAL = 64 * 1024, 48 * 1024 * 1024


def counted_fragments(sent: list[int], fill: bytes) -> Any:
    """One big message's fragments, counting what was handed to the sender."""
    while sent[0] < BIG_TOTAL:
        yield fill * BIG_CHUNK
        sent[0] += BIG_CHUNK


@pytest_twisted.inlineCallbacks
def test_slow_client_stalls_one_big_fragmented_upstream_message() -> Any:
    """A client that does not read stalls an upstream sending one huge fragmented message midway (nothing is
    gathered); all of it arrives, frame by frame, once the client reads."""
    sent = [0]

    def flood(connection: ServerConnection) -> None:
        try:
            connection.send(counted_fragments(sent, b"\x01"))
            connection.close(1000, "done")
        except ConnectionClosed:
            pass

    upstream = Upstream(flood, compression=None)
    service = start_router(routes=[route(upstream.url())], limits={"max_message_size": 2 * BIG_TOTAL})
    may_read = threading.Event()

    def slow_client() -> tuple[int, int, int | None]:
        with connect(service.url + "/u", max_queue=4, compression=None) as ws:
            may_read.wait(60)
            sizes = [len(fragment) for fragment in ws.recv_streaming()]
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            return sum(sizes), max(sizes), ws.close_code

    try:
        reading = in_thread(slow_client)
        assert (yield from stalls(sent, BIG_TOTAL)), sent[0]
        may_read.set()
        assert (yield reading) == (BIG_TOTAL, BIG_CHUNK, 1000)
    finally:
        may_read.set()
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_slow_upstream_stalls_one_big_fragmented_client_message() -> Any:
    """An upstream that does not read stalls a client sending one huge fragmented message midway; all of it
    arrives, frame by frame, once the upstream reads."""
    may_read = threading.Event()
    received: queue.Queue[tuple[int, int]] = queue.Queue()
    sent = [0]

    def slow(connection: ServerConnection) -> None:
        may_read.wait(60)
        try:
            sizes = [len(fragment) for fragment in connection.recv_streaming()]
            received.put((sum(sizes), max(sizes)))
            connection.recv()
        except ConnectionClosed:
            pass

    upstream = Upstream(slow, max_queue=4, compression=None)
    service = start_router(routes=[route(upstream.url())], limits={"max_message_size": 2 * BIG_TOTAL})

    def flooding_client() -> None:
        with connect(service.url + "/u", compression=None) as ws:
            ws.send(counted_fragments(sent, b"\x02"))

    try:
        sending = in_thread(flooding_client)
        assert (yield from stalls(sent, BIG_TOTAL)), sent[0]
        may_read.set()
        yield sending
        assert (yield in_thread(received.get, timeout=60)) == (BIG_TOTAL, BIG_CHUNK)
    finally:
        may_read.set()
        yield service.stopService()
        upstream.close()


@pytest_twisted.inlineCallbacks
def test_an_unanswered_close_ends_gracefully_so_the_upstream_still_reads_everything() -> Any:
    """A close the upstream does not answer in time ends with a graceful TCP close, not a reset that would
    destroy what the upstream had received but not read yet (the client's last messages, the close frame)."""
    # 256 KiB in all: it fits in the socket buffers, so the router's queue empties at once and its grace
    # runs out while the upstream still sleeps, with everything unread on its side.
    chunk_size = 64 * 1024
    assert (yield late_reader_gets(chunk_size, grace=0.5)) == (4 * chunk_size, 1000)
