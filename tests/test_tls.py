"""
TLS, end to end on loopback with certificates made by the openssl command
and the independent ``websockets`` client: wss listeners ([tls] and ssl:
endpoint strings), same-port detection, ssl_only, minimum version, reload
of the certificate under a live session, and tls:// targets (CA, name,
pin, no verification) -- plus the config, command line and start-up checks.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet import ssl as tssl
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from websockets.exceptions import ConnectionClosed
from zope.interface import implementer

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.config import ConfigError, TlsSettings, TlsTarget, build_config, to_data
from wsrouter.preflight import preflight
from wsrouter.service.single import CannotStart
from wsrouter.tlsport import REFUSAL, DetectingFactory

from .support import (
    RecordingTarget,
    TargetFactory,
    connect,
    handshake_status,
    in_thread,
    nested_schema,
    router_process,
    start_router,
)
from .tlscerts import Pair, client_context, make_ca, make_client, make_server, needs_openssl


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A CA, two server certificates it signs, one for another name, and a self-signed one."""
    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return {
        "ca": ca,
        "server": make_server(directory, "server", ca),
        "renewed": make_server(directory, "renewed", ca),
        "elsewhere": make_server(directory, "elsewhere", ca, alt="DNS:elsewhere.example"),
        "selfsigned": make_server(directory, "selfsigned", None),
        "vhosts": make_server(directory, "vhosts", ca, alt="DNS:other.test,DNS:*.wild.test"),
        "alice": make_client(directory, "alice", ca),
        "mallory": make_client(directory, "mallory", None),
    }


def wss_url(service: Any, path: str = "/echo") -> str:
    return f"wss://127.0.0.1:{service.port_number}{path}"


def echo(url: str, context: ssl.SSLContext | None = None, payload: bytes = b"hello") -> bytes:
    with connect(url, ssl=context) as ws:
        ws.send(payload)
        return bytes(ws.recv(timeout=10))


def peer_common_name(url: str, context: ssl.SSLContext) -> str:
    """The CN of the certificate the router presents to a new wss connection."""
    with connect(url, ssl=context) as ws:
        cert = ws.socket.getpeercert()
    return dict(item[0] for item in cert["subject"])["commonName"]


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send C{data} on a plain socket and read until the router closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- configuration ---------------------------------------------------------------------------


def test_tls_table_builds_and_round_trips() -> None:
    """A [tls] table becomes TlsSettings (websockify's tlsv1_3 accepted) and to_data gives it back."""
    config = build_config({"routes": [{"path": "/", "target": "echo:"}],
                           "tls": {"cert": "c.pem", "key": "k.pem", "min_version": "tlsv1_3", "ssl_only": True}})
    assert config.tls == TlsSettings("c.pem", "k.pem", "1.3", None, True)
    assert build_config(to_data(config)) == config


def test_tls_table_problems_have_key_paths() -> None:
    """A [tls] table without cert, or with a bad version, is refused naming the key."""
    with pytest.raises(ConfigError) as missing:
        build_config({"routes": [{"path": "/", "target": "echo:"}], "tls": {"key": "k.pem"}})
    assert "tls.cert: required" in str(missing.value)
    with pytest.raises(ConfigError) as version:
        build_config({"routes": [{"path": "/", "target": "echo:"}], "tls": {"cert": "c", "min_version": "1.0"}})
    assert "tls.min_version: must be 1.2 or 1.3, not '1.0'" in str(version.value)


def test_tls_target_options_in_file_and_route_language() -> None:
    """tls_ca, tls_pin and tls_verify set the tls:// target, from a table or a route string, and round-trip."""
    pin = "AB:" * 31 + "AB"
    config = build_config({"routes": [
        {"path": "/a", "target": "tls://db.example:443", "tls_ca": "ca.pem"},
        f"/b[tls-pin=sha256:{pin}]=tls://127.0.0.1:8443",
        "/c[tls-verify=false]=tls://127.0.0.1:8443",
    ]})
    targets = [route.target for route in config.routes]
    assert targets == [TlsTarget("db.example", 443, ca="ca.pem"), TlsTarget("127.0.0.1", 8443, pin="ab" * 32),
                       TlsTarget("127.0.0.1", 8443, verify=False)]
    assert build_config(to_data(config)) == config


def test_tls_target_options_refused_elsewhere() -> None:
    """tls_* keys on a non-TLS target, a bad pin, or verify=false with a CA are each reported."""
    with pytest.raises(ConfigError) as e:
        build_config({"routes": [
            {"path": "/a", "target": "tcp://127.0.0.1:1", "tls_ca": "ca.pem"},
            {"path": "/b", "target": "tls://127.0.0.1:1", "tls_pin": "abc"},
            {"path": "/c", "target": "tls://127.0.0.1:1", "tls_ca": "ca.pem", "tls_verify": False},
        ]})
    text = str(e.value)
    assert "routes[0].tls_ca: is only for tls:// and wss:// targets" in text
    assert "routes[1].tls_pin: must be a SHA-256 fingerprint" in text
    assert "routes[2].tls_verify: false turns off" in text


def test_websockify_tls_options_lower_into_the_schema() -> None:
    """--cert, --key, --ssl-only, --ssl-version, --ssl-ciphers and --ssl-target lower as websockify means them."""
    raw = options_to_raw({"cert": "self.pem", "key": "k.pem", "ssl-only": 1, "ssl-version": "tlsv1_3",
                          "ssl-ciphers": "ECDHE+AESGCM", "ssl-target": 1,
                          "short_form": ("8443", "127.0.0.1:5900")})
    assert raw["tls"] == {"cert": "self.pem", "key": "k.pem", "min_version": "tlsv1_3",
                          "ciphers": "ECDHE+AESGCM", "ssl_only": True}
    assert raw["routes"] == [{"path": "/*", "target": "tls://127.0.0.1:5900"}]
    with pytest.raises(LoweringError, match="--ssl-target applies to the short form"):
        options_to_raw({"ssl-target": 1, "routes": ["/x=tcp://127.0.0.1:1"]})


def test_command_line_accepts_cert_and_refuses_ssl_only_alone() -> None:
    """The serve options take --cert now; --ssl-only without --cert says tls.cert is required."""
    from twisted.python import usage

    from wsrouter.cli.tap import ServeOptions

    options = ServeOptions()
    options.parseOptions(["--cert", "server.pem", "--ssl-only", "8443", "127.0.0.1:5900"])
    assert options["config"].tls == TlsSettings("server.pem", ssl_only=True)
    with pytest.raises(usage.UsageError, match=r"tls\.cert: required"):
        ServeOptions().parseOptions(["--ssl-only", "8443", "127.0.0.1:5900"])


@needs_openssl
def test_preflight_reports_unusable_certificates(certs: dict[str, Pair], tmp_path: Path) -> None:
    """A missing certificate, a key that does not fit, a bad cipher string, an unreadable CA: start-up problems."""
    base = {"routes": [{"path": "/", "target": "tls://127.0.0.1:1", "tls_ca": str(tmp_path / "none.pem")}]}
    problems = dict(preflight(build_config({**base, "tls": {"cert": str(tmp_path / "missing.pem")}})))
    assert "cannot read the certificate file" in problems["tls"]
    assert "cannot read the CA file" in problems["routes[0].tls_ca"]
    mismatch = {"cert": str(certs["server"].cert), "key": str(certs["renewed"].key)}
    assert "does not fit" in dict(preflight(build_config({**base, "tls": mismatch})))["tls"]
    no_key = {"cert": str(certs["server"].cert)}
    assert "no PEM private key" in dict(preflight(build_config({**base, "tls": no_key})))["tls"]
    ciphers = {"cert": str(certs["server"].combined), "ciphers": "NO-SUCH-CIPHER"}
    assert "selects no cipher" in dict(preflight(build_config({**base, "tls": ciphers})))["tls"]
    unix_only = {**base, "listen": [f"unix:{tmp_path / 's'}"], "tls": {"cert": str(certs["server"].combined)}}
    assert "no tcp: listener" in dict(preflight(build_config(unix_only)))["tls"]
    ssl_listener = {**base, "listen": [f"ssl:0:privateKey={tmp_path / 'missing.key'}"]}
    assert "cannot load the certificate of" in dict(preflight(build_config(ssl_listener)))["listen[0]"]


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _FakeTls:
    ssl_only = False

    def getContext(self) -> Any:
        from OpenSSL import SSL

        return SSL.Context(SSL.TLS_METHOD)


def detector(ssl_only: bool = False) -> tuple[Any, StringTransport, Clock, list[_Recorder]]:
    """A same-port detector on a StringTransport, over a site of recording protocols."""
    built: list[_Recorder] = []

    def build() -> _Recorder:
        built.append(_Recorder())
        return built[-1]

    tls = _FakeTls()
    tls.ssl_only = ssl_only
    clock = Clock()
    protocol = DetectingFactory(Factory.forProtocol(build), tls, clock, 10.0).buildProtocol(None)  # type: ignore[arg-type]
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, built


def test_detector_hands_plain_bytes_to_the_site_one_at_a_time() -> None:
    """Plain bytes fed one at a time all reach the site's protocol, the first included."""
    protocol, _, clock, built = detector()
    for byte in b"GET / HTTP/1.1\r\n":
        protocol.dataReceived(bytes([byte]))
    assert built[0].received == b"GET / HTTP/1.1\r\n"
    assert not clock.getDelayedCalls()


def test_detector_refuses_plain_bytes_when_ssl_only() -> None:
    """With ssl_only the first plain byte gets the 403 line and a close; the site sees nothing."""
    protocol, transport, _, built = detector(ssl_only=True)
    protocol.dataReceived(b"G")
    assert transport.value() == REFUSAL and transport.disconnecting
    assert built[0].received == b""


def test_detector_drops_a_silent_connection_after_the_handshake_timeout() -> None:
    """A connection that sends no byte within the handshake timeout is dropped, not kept forever."""
    _, transport, clock, _ = detector()
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_detector_is_refused_when_the_site_refuses() -> None:
    """When the site will not take a connection (descriptor guard), the detecting factory refuses it too."""
    site = Factory()
    site.buildProtocol = lambda addr: None  # type: ignore[method-assign]
    assert DetectingFactory(site, _FakeTls(), Clock(), 1.0).buildProtocol(None) is None  # type: ignore[arg-type]


# -- wss listeners ----------------------------------------------------------------------------


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_wss_and_plain_ws_share_the_port(certs: dict[str, Pair]) -> Any:
    """With [tls] (cert and key in one file, as websockify's --cert) one port serves wss:// and ws://."""
    service = start_router(routes=["/echo=echo:"], tls={"cert": str(certs["server"].combined)})
    try:
        assert (yield in_thread(echo, wss_url(service), client_context(certs["ca"]))) == b"hello"
        assert (yield in_thread(echo, service.url + "/echo")) == b"hello"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_ssl_only_refuses_plain_connections_with_403(certs: dict[str, Pair]) -> Any:
    """With ssl_only a plain request gets a one-line 403 saying TLS is required; wss still works."""
    tls = {"cert": str(certs["server"].cert), "key": str(certs["server"].key), "ssl_only": True}
    service = start_router(routes=["/echo=echo:"], tls=tls)
    try:
        answer = yield in_thread(raw_exchange, service.port_number, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert answer.endswith(b"\r\n\r\nThis port requires TLS: connect with wss:// or https://\n")
        status, body = yield in_thread(handshake_status, service.url + "/echo")
        assert status == 403 and b"requires TLS" in body
        assert (yield in_thread(echo, wss_url(service), client_context(certs["ca"]))) == b"hello"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_first_byte_alone_decides(certs: dict[str, Pair]) -> Any:
    """A plain request sent one byte at a time is still told from TLS and answered (404 for an unknown path)."""
    service = start_router(routes=["/echo=echo:"], tls={"cert": str(certs["server"].combined)})

    def trickle() -> bytes:
        with socket.create_connection(("127.0.0.1", service.port_number), timeout=10) as sock:
            for byte in b"GET /nowhere HTTP/1.0\r\n\r\n":
                sock.sendall(bytes([byte]))
            return sock.recv(100)

    try:
        assert (yield in_thread(trickle)).startswith(b"HTTP/1.0 404")
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_minimum_version_refuses_older_clients(certs: dict[str, Pair]) -> Any:
    """min_version 1.3 refuses a client capped at TLS 1.2 and serves a TLS 1.3 one."""
    service = start_router(routes=["/echo=echo:"], tls={"cert": str(certs["server"].combined), "min_version": "1.3"})
    try:
        with pytest.raises(ssl.SSLError):
            yield in_thread(echo, wss_url(service), client_context(certs["ca"], ssl.TLSVersion.TLSv1_2))
        assert (yield in_thread(echo, wss_url(service), client_context(certs["ca"]))) == b"hello"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_ssl_endpoint_string_listener(certs: dict[str, Pair]) -> Any:
    """A Twisted ssl: endpoint string is a wss listener of its own, without [tls]."""
    server = certs["server"]
    listen = f"ssl:0:interface=127.0.0.1:privateKey={server.key}:certKey={server.cert}"
    service = start_router(routes=["/echo=echo:"], listen=[listen])
    try:
        assert (yield in_thread(echo, wss_url(service), client_context(certs["ca"]))) == b"hello"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_reload_swaps_the_certificate_under_a_live_session(certs: dict[str, Pair]) -> Any:
    """After a reload new handshakes get the renewed certificate, and a wss session opened before goes on."""
    raw = {"routes": ["/echo=echo:"], "listen": ["tcp:0:interface=127.0.0.1"],
           "tls": {"cert": str(certs["server"].combined)}}
    service = start_router(**raw)
    context = client_context(certs["ca"])
    url = wss_url(service)
    opened, reloaded = threading.Event(), threading.Event()

    def live_session() -> list[bytes]:
        with connect(url, ssl=context) as ws:
            ws.send(b"before")
            answers = [bytes(ws.recv(timeout=10))]
            opened.set()
            reloaded.wait(30)
            ws.send(b"after")
            answers.append(bytes(ws.recv(timeout=10)))
        return answers

    try:
        assert (yield in_thread(peer_common_name, url, context)) == "server"
        session = in_thread(live_session)
        assert (yield in_thread(opened.wait, 30))
        listen = f"tcp:{service.port_number}:interface=127.0.0.1"
        service.listeners[0].description = listen  # the port it has: a reload keeps this listener
        yield service.reload(build_config(nested_schema(
            {**raw, "listen": [listen], "tls": {"cert": str(certs["renewed"].combined)}})))
        assert (yield in_thread(peer_common_name, url, context)) == "renewed"
        reloaded.set()
        assert (yield session) == [b"before", b"after"]
    finally:
        reloaded.set()
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_reload_refuses_turning_tls_off_and_keeps_unusable_certificates_out(certs: dict[str, Pair],
                                                                            tmp_path: Path) -> Any:
    """A reload without [tls], or with a missing certificate, fails saying so and wss goes on as before."""
    raw = {"routes": ["/echo=echo:"], "tls": {"cert": str(certs["server"].combined)}}
    service = start_router(**raw)
    listen = [f"tcp:{service.port_number}:interface=127.0.0.1"]
    service.listeners[0].description = listen[0]
    try:
        with pytest.raises(CannotStart, match=r"turning TLS on or off .* takes a restart"):
            yield service.reload(build_config(nested_schema({"routes": ["/echo=echo:"], "listen": listen})))
        missing = {**raw, "listen": listen, "tls": {"cert": str(tmp_path / "gone.pem")}}
        with pytest.raises(CannotStart, match=r"cannot read the certificate file .* previous certificate stays"):
            yield service.reload(build_config(nested_schema(missing)))
        assert (yield in_thread(peer_common_name, wss_url(service), client_context(certs["ca"]))) == "server"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_sni_picks_the_per_host_certificate(certs: dict[str, Pair]) -> Any:
    """[tls.hosts] certificates are chosen by SNI (exact and *. names); other names get the default one."""
    vhosts = str(certs["vhosts"].combined)
    tls = {"cert": str(certs["server"].combined), "hosts": {"other.test": {"cert": vhosts},
                                                            "*.wild.test": {"cert": vhosts}}}
    service = start_router(routes=["/echo=echo:"], tls=tls)
    context = client_context(certs["ca"])

    def name_for(server_hostname: str | None) -> str:
        with connect(wss_url(service), ssl=context, server_hostname=server_hostname) as ws:
            cert = ws.socket.getpeercert()
        return dict(item[0] for item in cert["subject"])["commonName"]

    try:
        assert (yield in_thread(name_for, "other.test")) == "vhosts"
        assert (yield in_thread(name_for, "a.wild.test")) == "vhosts"
        assert (yield in_thread(name_for, "localhost")) == "server"
        assert (yield in_thread(name_for, None)) == "server"
    finally:
        yield service.stopService()


def test_tls_hosts_and_client_options_in_the_schema() -> None:
    """[tls.hosts."NAME"] tables, verify_client and cafile build, round-trip, and are checked."""
    tls = {"cert": "c.pem", "verify_client": True, "cafile": "ca.pem",
           "hosts": {"a.example": {"cert": "a.pem", "key": "a.key"}, "*.b.example": {"cert": "b.pem"}}}
    config = build_config({"routes": ["/=echo:"], "tls": tls})
    assert config.tls is not None
    assert config.tls.hosts == (("a.example", "a.pem", "a.key"), ("*.b.example", "b.pem", None))
    assert build_config(to_data(config)) == config
    with pytest.raises(ConfigError) as e:
        build_config({"routes": ["/=echo:"], "tls": {"cert": "c", "verify_client": True,
                                                      "hosts": {"a b": {"cert": "x"}, "c.example": {"key": "k"}}}})
    text = str(e.value)
    assert "tls.cafile: required with verify_client" in text
    assert "tls.hosts.a b: must be a host name" in text
    assert "tls.hosts.c.example.cert: required" in text


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_client_certificates_required_and_named(certs: dict[str, Pair]) -> Any:
    """With verify_client a certificate from cafile's CA opens a session whose log names its subject; none,
    one from elsewhere, or a plain connection are refused."""
    from websockets.exceptions import InvalidHandshake

    ca = certs["ca"]
    tls = {"cert": str(certs["server"].combined), "verify_client": True, "cafile": str(ca.cert)}
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    service = start_router(routes=["/echo=echo:"], tls=tls)
    try:
        assert (yield in_thread(echo, wss_url(service), client_context(ca, cert=certs["alice"]))) == b"hello"
        for context in (client_context(ca), client_context(ca, cert=certs["mallory"])):
            with pytest.raises((ssl.SSLError, OSError, InvalidHandshake, ConnectionClosed)):
                yield in_thread(echo, wss_url(service), context)
        assert (yield in_thread(handshake_status, service.url + "/echo"))[0] == 403
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield service.stopService()
    opened = [e for e in events if " open: " in e.get("log_format", "")]
    assert [e.get("client_cert") for e in opened] == ["CN=alice"]
    assert "client certificate {client_cert}" in opened[0]["log_format"]


# -- tls:// targets ------------------------------------------------------------------------------


def tls_backend(pair: Pair) -> tuple[Any, TargetFactory]:
    """A TLS echo server on loopback presenting C{pair}."""
    options = tssl.PrivateCertificate.loadPEM(pair.cert.read_text() + pair.key.read_text()).options()
    factory = TargetFactory(lambda: RecordingTarget(echo=True))
    return reactor.listenTCP(0, _TlsWrapped(options, factory), interface="127.0.0.1"), factory


def _TlsWrapped(options: Any, factory: Any) -> Any:
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(options, False, factory)


def route_to(port: int, host: str = "127.0.0.1", **options: Any) -> dict[str, Any]:
    return {"path": "/t", "target": f"tls://{host}:{port}", **options}


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_verified_with_ca_file(certs: dict[str, Pair]) -> Any:
    """A tls:// target whose certificate the tls_ca file vouches for (by IP and by name) relays both ways."""
    port, _ = tls_backend(certs["server"])
    number = port.getHost().port
    ca = str(certs["ca"].cert)
    service = start_router(routes=[route_to(number, tls_ca=ca), {**route_to(number, "localhost", tls_ca=ca),
                                                                   "path": "/n"}])
    try:
        assert (yield in_thread(echo, service.url + "/t")) == b"hello"
        assert (yield in_thread(echo, service.url + "/n")) == b"hello"
    finally:
        yield service.stopService()
        yield port.stopListening()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_failing_verification_is_502_with_reason(certs: dict[str, Pair]) -> Any:
    """An unknown CA (system trust) and a certificate for another name each refuse the handshake with 502 and why."""
    unknown_ca, factory = tls_backend(certs["server"])
    other_name, other_factory = tls_backend(certs["elsewhere"])
    service = start_router(routes=[route_to(unknown_ca.getHost().port),
                                   {**route_to(other_name.getHost().port, tls_ca=str(certs["ca"].cert)), "path": "/n"}])
    try:
        status, body = yield in_thread(handshake_status, service.url + "/t")
        assert status == 502 and b"certificate verify failed" in body, body
        status, body = yield in_thread(handshake_status, service.url + "/n")
        assert status == 502 and b"certificate is not for 127.0.0.1" in body, body
        assert all(not connection.received for connection in factory.connections + other_factory.connections)
    finally:
        yield service.stopService()
        yield unknown_ca.stopListening()
        yield other_name.stopListening()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_pinned_certificate(certs: dict[str, Pair]) -> Any:
    """A pinned self-signed certificate is accepted; any other fingerprint is 502 naming both."""
    pair = certs["selfsigned"]
    port, _ = tls_backend(pair)
    number = port.getHost().port
    wrong = "0" * 64
    service = start_router(routes=[route_to(number, tls_pin=pair.fingerprint()),
                                   {**route_to(number, tls_pin=wrong), "path": "/w"}])
    try:
        assert (yield in_thread(echo, service.url + "/t")) == b"hello"
        status, body = yield in_thread(handshake_status, service.url + "/w")
        assert status == 502 and f"{pair.fingerprint()} is not the pinned {wrong}".encode() in body
    finally:
        yield service.stopService()
        yield port.stopListening()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_without_verification_is_logged_loudly(certs: dict[str, Pair]) -> Any:
    """tls_verify = false connects to any certificate, with a warning at start-up and one per session."""
    port, _ = tls_backend(certs["selfsigned"])
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    service = start_router(routes=[route_to(port.getHost().port, tls_verify=False)])
    try:
        assert (yield in_thread(echo, service.url + "/t")) == b"hello"
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield service.stopService()
        yield port.stopListening()
    warnings = [e["log_format"] for e in events if e.get("log_namespace") == "wsrouter.tls"]
    assert any("will NOT be verified" in text for text in warnings)
    assert any("is NOT verified" in text and "session" in text for text in warnings)



@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_end_of_data_both_ways(certs: dict[str, Pair]) -> Any:
    """A TLS target's data and close reach the client whole, then 1000; a client's close reaches it after the data."""
    payload = bytes(range(256)) * 4096
    options = tssl.PrivateCertificate.loadPEM(certs["server"].cert.read_text() + certs["server"].key.read_text())
    from twisted.protocols.tls import TLSMemoryBIOFactory

    talker = TargetFactory(lambda: RecordingTarget(greeting=payload, close_after_greeting=True))
    listener = TargetFactory(CloseNoting)
    talking = reactor.listenTCP(0, TLSMemoryBIOFactory(options.options(), False, talker), interface="127.0.0.1")
    listening = reactor.listenTCP(0, TLSMemoryBIOFactory(options.options(), False, listener), interface="127.0.0.1")
    ca = str(certs["ca"].cert)
    service = start_router(routes=[route_to(talking.getHost().port, tls_ca=ca),
                                   {**route_to(listening.getHost().port, tls_ca=ca), "path": "/in"}])
    chunks = [bytes([i]) * 70000 for i in range(20)]

    def read_all() -> tuple[bytes, int | None]:
        got = bytearray()
        with connect(service.url + "/t") as ws:
            try:
                while True:
                    got += ws.recv(timeout=10)
            except ConnectionClosed as e:
                return bytes(got), e.rcvd.code if e.rcvd else None

    def send_all() -> None:
        with connect(service.url + "/in") as ws:
            for chunk in chunks:
                ws.send(chunk)

    try:
        assert (yield in_thread(read_all)) == (payload, 1000)
        yield in_thread(send_all)
        assert (yield listener.connections[0].lost) == b"".join(chunks)
        assert listener.connections[0].reason.check(ConnectionDone)  # close_notify, not a truncated TLS stream
    finally:
        yield service.stopService()
        yield talking.stopListening()
        yield listening.stopListening()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_wss_client_large_messages_both_ways(certs: dict[str, Pair]) -> Any:
    """Over wss, large messages go through the detector and TLS layer intact both ways (TCP echo target)."""
    port, _ = listen_target_echo()
    service = start_router(routes=[f"/e=tcp://127.0.0.1:{port.getHost().port}"],
                           tls={"cert": str(certs["server"].combined)})
    message = bytes(range(256)) * 8192  # 2 MiB

    def exchange() -> int:
        received = 0
        with connect(wss_url(service, "/e"), ssl=client_context(certs["ca"])) as ws:
            for _ in range(3):
                ws.send(message)
            while received < 3 * len(message):
                received += len(ws.recv(timeout=10))
        return received

    try:
        assert (yield in_thread(exchange)) == 3 * len(message)
    finally:
        yield service.stopService()
        yield port.stopListening()


class CloseNoting(RecordingTarget):
    """Notes why its connection ended."""

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        super().connectionLost(reason)


def listen_target_echo() -> tuple[Any, TargetFactory]:
    from .support import listen_target

    return listen_target(lambda: RecordingTarget(echo=True))


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_target_that_never_answers_the_handshake_is_502() -> Any:
    """A target that accepts TCP but never speaks TLS is a 502 once the connect timeout has passed."""
    from twisted.internet.protocol import Protocol as Silent

    port, _ = listen_target_silent(Silent)
    service = start_router(routes=[route_to(port.getHost().port)], connect_timeout=0.5)
    try:
        status, body = yield in_thread(handshake_status, service.url + "/t")
        assert status == 502 and b"the handshake timed out" in body
    finally:
        yield service.stopService()
        yield port.stopListening()


def listen_target_silent(make: Any) -> tuple[Any, TargetFactory]:
    from .support import listen_target

    return listen_target(make)


@implementer(IPushProducer)
class Flooder(Protocol):
    """Writes C{total} bytes as fast as its transport lets it, noting when it is told to pause."""

    chunk = bytes(range(256)) * 4096  # 1 MiB

    def __init__(self, total: int):
        self.total = total
        self.sent = 0
        self.paused = defer.Deferred()
        self._running = False

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._running = False
        if not self.paused.called:
            self.paused.callback(self.sent)

    def resumeProducing(self) -> None:
        self._running = True
        while self._running and self.sent < self.total:
            self.sent += len(self.chunk)
            self.transport.write(self.chunk)
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self._running = False


@needs_openssl
@pytest.mark.parametrize("side", ["tls-target", "wss-client"])
@pytest_twisted.inlineCallbacks
def test_slow_client_stalls_a_flooding_target(certs: dict[str, Pair], side: str) -> Any:
    """A client that does not read makes the router stop reading the target (TLS target, or wss client), which
    stalls far from done; everything arrives once the client reads."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    total = 64 * 1024 * 1024
    factory = TargetFactory(lambda: Flooder(total))
    context = None
    if side == "tls-target":
        options = tssl.PrivateCertificate.loadPEM(certs["server"].cert.read_text() + certs["server"].key.read_text())
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(options.options(), False, factory), interface="127.0.0.1")
        service = start_router(routes=[route_to(port.getHost().port, tls_ca=str(certs["ca"].cert))])
        url = service.url + "/t"
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        service = start_router(routes=[f"/t=tcp://127.0.0.1:{port.getHost().port}"],
                               tls={"cert": str(certs["server"].combined)})
        url, context = wss_url(service, "/t"), client_context(certs["ca"])
    may_read = threading.Event()
    opened = threading.Event()

    def slow_client() -> int:
        received = 0
        with connect(url, ssl=context, max_queue=4) as ws:
            opened.set()
            may_read.wait(60)
            try:
                while True:
                    received += len(ws.recv(timeout=30))
            except ConnectionClosed:
                return received

    try:
        reading = in_thread(slow_client)
        assert (yield in_thread(opened.wait, 30))
        flooder = yield factory.connected.addTimeout(10, reactor)
        yield flooder.paused.addTimeout(10, reactor)
        # Wait until the target stops making progress (bounded), then it must be far from done.
        steady, last = 0, -1
        for _ in range(150):
            yield deferLater(reactor, 0.2, lambda: None)
            steady, last = (steady + 1, last) if flooder.sent == last else (0, flooder.sent)
            if steady == 5:
                break
        assert steady == 5 and flooder.sent < total // 2, (steady, flooder.sent)
        may_read.set()
        assert (yield reading) == total
    finally:
        may_read.set()
        yield service.stopService()
        yield port.stopListening()

# -- the real command ------------------------------------------------------------------------------


def wait_for_log(router: Any, text: str, timeout: float = 20.0) -> str:
    """The router's log once it contains C{text} (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = router.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{router.log()}")


@needs_openssl
def test_command_line_wss_ssl_only_and_sighup_reload(certs: dict[str, Pair], tmp_path: Path) -> None:
    """`wsrouter --cert FILE --ssl-only` serves wss, refuses ws (403); SIGHUP picks up a renewed certificate file."""
    cert = tmp_path / "live.pem"
    cert.write_bytes(certs["server"].combined.read_bytes())
    context = client_context(certs["ca"])
    with router_process(tmp_path, "--cert", str(cert), "--ssl-only", "--route", "/echo=echo:") as router:
        url = f"wss://127.0.0.1:{router.port}/echo"
        assert echo(url, context) == b"hello"
        assert handshake_status(router.url + "/echo")[0] == 403
        with connect(url, ssl=context) as live:
            live.send(b"before")
            assert live.recv(timeout=10) == b"before"
            cert.write_bytes(certs["renewed"].combined.read_bytes())
            os.kill(router.pid, signal.SIGHUP)
            wait_for_log(router, "TLS certificate reloaded")
            assert peer_common_name(url, context) == "renewed"
            live.send(b"after")
            assert live.recv(timeout=10) == b"after"
        assert "refused a plain connection" in router.log()


@needs_openssl
def test_workers_serve_wss(certs: dict[str, Pair], tmp_path: Path) -> None:
    """With --workers 2 the worker processes detect TLS on the shared listener too."""
    with router_process(tmp_path, "--workers", "2", "--cert", str(certs["server"].combined),
                        "--route", "/echo=echo:") as router:
        wait_for_log(router, "listening on")
        for _ in range(4):
            assert echo(f"wss://127.0.0.1:{router.port}/echo", client_context(certs["ca"])) == b"hello"
        assert echo(router.url + "/echo") == b"hello"


@needs_openssl
def test_workers_reload_the_certificate_on_sighup(certs: dict[str, Pair], tmp_path: Path) -> None:
    """With --workers 2, SIGHUP makes every worker pick up a certificate renewed in place."""
    cert = tmp_path / "live.pem"
    cert.write_bytes(certs["server"].combined.read_bytes())
    context = client_context(certs["ca"])
    with router_process(tmp_path, "--workers", "2", "--cert", str(cert), "--route", "/echo=echo:") as router:
        url = f"wss://127.0.0.1:{router.port}/echo"
        wait_for_log(router, "listening on")
        assert peer_common_name(url, context) == "server"
        cert.write_bytes(certs["renewed"].combined.read_bytes())
        os.kill(router.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while router.log().count("TLS certificate reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.log().count("TLS certificate reloaded") >= 2, router.log()
        assert {peer_common_name(url, context) for _ in range(8)} == {"renewed"}


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_proxy_header_before_tls_names_the_client(certs: dict[str, Pair]) -> Any:
    """On a TLS listener that expects PROXY headers, the header comes first, then TLS; exec sees the named client."""
    import json
    import socket
    import sys

    from wsrouter.proxyproto import build_header

    listener = "tcp:0:interface=127.0.0.1"
    script = "import json, os; print(json.dumps({'addr': os.environ['REMOTE_ADDR']}))"
    service = start_router(listen=[listener], proxy_protocol=[listener], trusted_proxies=["127.0.0.1/32"],
                           routes=[f"/env=exec:{sys.executable} -c \"{script}\""],
                           tls={"cert": str(certs["server"].combined)})
    context = client_context(certs["ca"])

    def client() -> dict[str, Any]:
        raw = socket.create_connection(("127.0.0.1", service.port_number), timeout=15)
        raw.sendall(build_header("v2", ("203.0.113.7", 40002), ("198.51.100.1", 443)))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall((f"GET /env HTTP/1.1\r\nHost: localhost:{service.port_number}\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            data = b""
            while b"}" not in data.partition(b"\r\n\r\n")[2]:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            return dict(json.loads(body[2:body.index(b"}") + 1]))

    try:
        env = yield in_thread(client)
    finally:
        yield service.stopService()
    assert env["addr"] == "203.0.113.7"
