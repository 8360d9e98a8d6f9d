"""
Real client addresses: PROXY protocol headers read on listeners and written
to targets, X-Forwarded-For / Forwarded from trusted proxies, and the real
address where exec targets (REMOTE_ADDR) and logs see it.
"""

from __future__ import annotations

import json
import shlex
import socket
import struct
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from wsrouter.cli.lower import options_to_raw
from wsrouter.clientaddr import forwarded_hops, is_trusted, parse_host, real_client
from wsrouter.config import ConfigError, build_config
from wsrouter.config.load import load_config
from wsrouter.proxyproto import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderFactory,
    build_header,
    parse_header,
)

from .support import RecordingTarget, RouterProcess, connect, free_port, in_thread, listen_target, start_router

PROGRAMS = Path(__file__).parent / "programs"
ENV_JSON = shlex.join([sys.executable, str(PROGRAMS / "env_json.py")])


# -- the header codec ------------------------------------------------------------------


V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 40001 8080\r\n"
V2 = (V2_SIGNATURE + b"\x21\x11\x00\x0c" + socket.inet_aton("203.0.113.9") + socket.inet_aton("127.0.0.1")
      + struct.pack("!HH", 40001, 8080))
CLIENT = ProxyHeader(("203.0.113.9", 40001), ("127.0.0.1", 8080))


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_header_parsed_whole_and_byte_by_byte(header):
    """A v1 or v2 header is recognised whole, and fed one byte at a time it asks for more until complete."""
    assert parse_header(header + b"GET /") == (CLIENT, len(header))
    for end in range(1, len(header)):
        assert parse_header(header[:end]) is None, end


def test_v6_and_local_headers():
    """IPv6 addresses round-trip in both versions; v1 UNKNOWN and v2 LOCAL (health checks) name no client."""
    six = (("2001:db8::1", 5), ("::1", 80))
    for version in ("v1", "v2"):
        header = build_header(version, *six)
        assert parse_header(header) == (ProxyHeader(*six), len(header))
    assert parse_header(b"PROXY UNKNOWN\r\n") == (ProxyHeader(None, None), 15)
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_header(local) == (ProxyHeader(None, None), 16)
    assert build_header("v2", None, None) == local and build_header("v1", None, None) == b"PROXY UNKNOWN\r\n"


def test_build_matches_hand_written_headers():
    """The headers written to targets are byte for byte the ones the specification gives."""
    assert build_header("v1", CLIENT.source, CLIENT.destination) == V1
    assert build_header("v2", CLIENT.source, CLIENT.destination) == V2


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"PROXY TCP4 1.2.3.4\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n", b"PROXY " + b"x" * 120, V2_SIGNATURE + b"\x31\x11\x00\x0c",
    V2_SIGNATURE + b"\x21\x11\xff\xff",
])
def test_bad_headers_refused(data):
    """Anything but a well-formed header (plain HTTP, wrong field count, bad port or family, too long) is an error."""
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


# -- forwarding headers ----------------------------------------------------------------


TRUSTED = ("127.0.0.1/32", "10.0.0.0/8")


@pytest.mark.parametrize("headers, expected", [
    ([("x-forwarded-for", "198.51.100.1")], ("198.51.100.1", 0)),
    ([("x-forwarded-for", "6.6.6.6, 198.51.100.1, 10.1.2.3")], ("198.51.100.1", 0)),
    ([("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.1")], ("198.51.100.1", 0)),
    ([("forwarded", 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https')], ("2001:db8::7", 4711)),
    ([("forwarded", "for=198.51.100.1:99"), ("x-forwarded-for", "6.6.6.6")], ("198.51.100.1", 99)),
    ([("x-forwarded-for", "10.0.0.1, 10.0.0.2")], ("10.0.0.1", 0)),
    ([("forwarded", "for=unknown")], ("127.0.0.1", 5555)),
    ([], ("127.0.0.1", 5555)),
])
def test_rightmost_untrusted_hop_from_trusted_peer(headers, expected):
    """From a trusted proxy the client is the rightmost hop that is not itself trusted; Forwarded wins over XFF."""
    assert real_client(("127.0.0.1", 5555), headers, TRUSTED) == expected


def test_headers_ignored_from_untrusted_peer_and_by_default():
    """An untrusted peer's forwarding headers are ignored, and with no trusted proxies every peer is untrusted."""
    headers = [("x-forwarded-for", "198.51.100.1")]
    assert real_client(("192.0.2.5", 1), headers, TRUSTED) == ("192.0.2.5", 1)
    assert real_client(("127.0.0.1", 1), headers, ()) == ("127.0.0.1", 1)
    assert is_trusted("::ffff:10.9.9.9", TRUSTED) and not is_trusted("unix", TRUSTED)
    assert forwarded_hops([("x-forwarded-for", "not-an-ip")]) == [("", 0)]


@pytest.mark.parametrize("host, address, local", [
    ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True),
    ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("fe80::1%eth0", "fe80::1", False),
    ("192.0.2.5", "192.0.2.5", False),
    ("unix", None, True),
    ("example.org", None, False),
])
def test_one_address_parser_for_trust_and_locality(host, address, local):
    """parse_host drops the zone and unwraps IPv4-mapped addresses; the ops pages' loopback check uses it."""
    from wsrouter.ops.access import is_local

    parsed = parse_host(host)
    assert (str(parsed) if parsed is not None else None) == address
    assert is_local(host) is local


# -- configuration ---------------------------------------------------------------------


def test_config_problems_named_by_key():
    """A PROXY listener without trusted proxies or not in listen, a bad network, a misplaced route key: errors."""
    cases = [
        ({"listen": ["tcp:1"], "proxy_protocol": ["tcp:1"]}, "proxy_protocol: needs trusted_proxies"),
        ({"listen": ["tcp:1"], "proxy_protocol": ["tcp:2"], "trusted_proxies": ["::1"]},
         "proxy_protocol[0]: 'tcp:2' is not one of the listeners"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies[0]: must be an IP network"),
        ({"routes": [{"path": "/", "target": "echo:", "proxy_protocol": "v2"}]},
         "routes[0].proxy_protocol: is only for tcp and unix stream targets"),
        ({"routes": ["/[proxy-protocol=v3]=127.0.0.1:1"]}, "routes[0].proxy_protocol: must be v1 or v2"),
    ]
    for raw, problem in cases:
        raw.setdefault("routes", ["/=echo:"])
        with pytest.raises(ConfigError) as caught:
            build_config(raw)
        assert problem in str(caught.value), (raw, str(caught.value))


def test_command_line_options_append_to_the_file(tmp_path):
    """--proxy-listen adds a listener named in proxy_protocol, --trusted-proxy adds networks, after the file's."""
    config_file = tmp_path / "wsrouter.toml"
    config_file.write_text('listen = ["tcp:1"]\nproxy_protocol = ["tcp:1"]\ntrusted_proxies = ["10.0.0.1"]\n'
                           'routes = ["/=echo:"]\n')
    raw = options_to_raw({"proxy_listen": ["tcp:2"], "trusted_proxies": ["::1/128"]})
    config = load_config(str(config_file), raw)
    assert config.listeners == ("tcp:1", "tcp:2")
    assert config.proxies.proxy_protocol == ("tcp:1", "tcp:2")
    assert config.proxies.trusted_proxies == ("10.0.0.1", "::1/128")


# -- the listener wrapper, in memory -------------------------------------------------


class Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def wrapped_connection(peer: str, trusted: tuple[str, ...]):
    """A PROXY-reading connection from C{peer} over a StringTransport; (wrapper, inner protocol, transport)."""
    factory = ProxyHeaderFactory(Factory.forProtocol(Received), lambda host: is_trusted(host, trusted))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 5000))
    wrapper = factory.buildProtocol(transport.getPeer())
    wrapper.makeConnection(transport)
    return wrapper, wrapper.wrappedProtocol, transport


def test_wrapper_trickled_header_then_data():
    """Header bytes fed one at a time are held back; then getPeer/getHost are the header's and the rest flows on."""
    wrapper, inner, transport = wrapped_connection("127.0.0.1", TRUSTED)
    for byte in V2 + b"GET":
        wrapper.dataReceived(bytes([byte]))
    wrapper.dataReceived(b" /")
    assert inner.data == b"GET /" and not transport.disconnecting
    assert (wrapper.getPeer().host, wrapper.getPeer().port) == ("203.0.113.9", 40001)
    assert (wrapper.getHost().host, wrapper.getHost().port) == ("127.0.0.1", 8080)


def test_wrapper_drops_untrusted_and_garbage():
    """An untrusted peer is aborted on connect; a trusted one sending no header is aborted and nothing passes on."""
    _, _, untrusted = wrapped_connection("192.0.2.1", TRUSTED)
    assert untrusted.disconnecting
    wrapper, inner, transport = wrapped_connection("127.0.0.1", TRUSTED)
    wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.disconnecting and inner.data == b""


# -- end to end --------------------------------------------------------------------------


def proxied_router(trusted=("127.0.0.1/32",), **raw):
    """A router whose one loopback listener expects PROXY headers."""
    listener = "tcp:0:interface=127.0.0.1"
    return start_router(listen=[listener], proxy_protocol=[listener], trusted_proxies=list(trusted), **raw)


def raw_handshake(port: int, path: str, preface: bytes, one_byte_at_a_time: bool = False) -> socket.socket:
    """Send C{preface} then a WebSocket upgrade on a plain socket; the socket, after the 101."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    request = preface + (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    if one_byte_at_a_time:
        for n in range(len(preface)):
            s.sendall(preface[n:n + 1])
        s.sendall(request[len(preface):])
    else:
        s.sendall(request)
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError(f"closed after {response!r}")
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return s


def read_text_message(s: socket.socket) -> bytes:
    data = b""
    while True:
        data += s.recv(65536) or b""
        if len(data) >= 2:
            length, offset = data[1] & 0x7F, 2
            if length == 126 and len(data) >= 4:
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            if len(data) >= offset + length:
                return data[offset:offset + length]


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("version, bytewise", [("v1", True), ("v2", False)])
def test_exec_sees_proxy_header_client_as_remote_addr(version, bytewise):
    """Behind a PROXY header (even one trickled byte by byte) the exec target's REMOTE_ADDR/PORT are the client's."""
    router = proxied_router(routes=[f"/env=exec:{ENV_JSON}"])
    header = build_header(version, ("203.0.113.9", 40001), ("198.51.100.20", 443))

    def client():
        with raw_handshake(router.port_number, "/env", header, bytewise) as s:
            return json.loads(read_text_message(s))

    try:
        env = yield in_thread(client)
    finally:
        yield router.stopService()
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["SERVER_PORT"]) == ("203.0.113.9", "40001", "443")


@pytest_twisted.inlineCallbacks
def test_untrusted_or_headerless_connections_dropped_and_logged():
    """A PROXY listener drops a peer outside trusted_proxies and a trusted peer without a header, saying why."""
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    untrusting = proxied_router(trusted=("10.0.0.0/8",), routes=["/=echo:"])
    trusting = proxied_router(routes=["/=echo:"])

    def refused(port, preface):
        """What the router answers (nothing, if it drops the connection, even while it is being made)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.sendall(preface + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    try:
        assert (yield in_thread(refused, untrusting.port_number, V1)) == b""
        assert (yield in_thread(refused, trusting.port_number, b"")) == b""
    finally:
        globalLogPublisher.removeObserver(observe)
        yield untrusting.stopService()
        yield trusting.stopService()
    assert any("not a trusted proxy" in line for line in lines), lines
    assert any("does not start with a PROXY protocol header" in line for line in lines), lines


@pytest_twisted.inlineCallbacks
def test_forwarded_for_believed_only_from_trusted_proxies():
    """X-Forwarded-For sets REMOTE_ADDR when the peer is a trusted proxy and is ignored otherwise."""
    trusting = start_router(routes=[f"/env=exec:{ENV_JSON}"], trusted_proxies=["127.0.0.1/32"])
    untrusting = start_router(routes=[f"/env=exec:{ENV_JSON}"])

    def remote(router):
        headers = {"X-Forwarded-For": "6.6.6.6, 198.51.100.77"}
        with connect(router.url + "/env", additional_headers=headers) as ws:
            return json.loads(ws.recv(timeout=10))["REMOTE_ADDR"]

    try:
        assert (yield in_thread(remote, trusting)) == "198.51.100.77"
        assert (yield in_thread(remote, untrusting)) == "127.0.0.1"
    finally:
        yield trusting.stopService()
        yield untrusting.stopService()


def parse_test_header(data: bytes) -> tuple[tuple[str, int], bytes]:
    """An independent reader of the PROXY header a backend receives: (source, rest)."""
    if data.startswith(b"PROXY "):
        line, _, rest = data.partition(b"\r\n")
        fields = line.decode().split(" ")
        return (fields[2], int(fields[4])), rest
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and data[12] == 0x21 and data[13] == 0x11, data[:16]
    length = struct.unpack("!H", data[14:16])[0]
    src, sport = socket.inet_ntoa(data[16:20]), struct.unpack("!H", data[24:26])[0]
    return (src, sport), data[16 + length:]


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tcp_target_receives_proxy_header_first(version):
    """A route with proxy_protocol sends its TCP backend a header naming the client's address and port, then data."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/t[proxy-protocol={version}]=tcp://127.0.0.1:{port.getHost().port}"])

    def client():
        with connect(router.url + "/t") as ws:
            ws.send(b"hello")
            return ws.local_address

    try:
        local = yield in_thread(client)
        target = yield factory.connected
        received = yield target.eof
    finally:
        yield router.stopService()
        yield port.stopListening()
    source, rest = parse_test_header(received)
    assert source == (local[0], local[1]) and rest == b"hello"


def test_workers_read_proxy_headers_too(tmp_path):
    """With --workers 2, each worker process reads the PROXY header on the listener it adopted."""
    port = free_port()
    router = RouterProcess(["--workers", "2", "--proxy-listen", f"tcp:{port}:interface=127.0.0.1",
                            "--trusted-proxy", "127.0.0.0/8", "--route", f"/env=exec:{ENV_JSON}"],
                           port, tmp_path / "router.log")
    try:
        for n in range(4):
            header = build_header("v2", (f"192.0.2.{n + 1}", 1000 + n), ("192.0.2.200", 80))
            with raw_handshake(port, "/env", header) as s:
                env = json.loads(read_text_message(s))
            assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (f"192.0.2.{n + 1}", str(1000 + n))
    finally:
        router.stop()
    assert "open: 192.0.2.4:1003 /env" in router.log()


@pytest_twisted.inlineCallbacks
def test_reload_turns_proxy_protocol_on_for_a_listener_and_changes_trust():
    """A reload that names a kept listener in proxy_protocol reopens it reading PROXY headers; trust follows reloads."""
    port = free_port()
    listener = f"tcp:{port}:interface=127.0.0.1"
    routes = [f"/env=exec:{ENV_JSON}"]
    router = start_router(listen=[listener], routes=routes)

    def remote(preface: bytes) -> str:
        with raw_handshake(port, "/env", preface) as s:
            return json.loads(read_text_message(s))["REMOTE_ADDR"]

    header = build_header("v1", ("198.51.100.3", 7), ("127.0.0.1", port))
    try:
        assert (yield in_thread(remote, b"")) == "127.0.0.1"
        yield router.reload(build_config({"listen": [listener], "routes": routes, "proxy_protocol": [listener],
                                          "trusted_proxies": ["127.0.0.1"]}))
        assert (yield in_thread(remote, header)) == "198.51.100.3"
        yield router.reload(build_config({"listen": [listener], "routes": routes, "proxy_protocol": [listener],
                                          "trusted_proxies": ["10.0.0.0/8"]}))
        with pytest.raises(OSError):
            yield in_thread(remote, header)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_client_from_load_balancer_header_passed_on_to_target():
    """A client named by a PROXY header on the listener is the client the target's own PROXY header names."""
    port, factory = listen_target(RecordingTarget)
    router = proxied_router(routes=[f"/t[proxy-protocol=v1]=tcp://127.0.0.1:{port.getHost().port}"])
    header = build_header("v2", ("203.0.113.9", 40001), ("198.51.100.20", 443))

    def client():
        with raw_handshake(router.port_number, "/t", header) as s:
            s.sendall(b"\x82\x82\x00\x00\x00\x00hi")  # one masked (zero key) binary frame

    try:
        yield in_thread(client)
        target = yield factory.connected
        received = yield target.eof
    finally:
        yield router.stopService()
        yield port.stopListening()
    assert received == b"PROXY TCP4 203.0.113.9 198.51.100.20 40001 443\r\nhi"
