"""
The TLS listener's protocol (wsrouter.tlswrites) against the stdlib ``ssl``
module as an independent client, in memory: the server side writes into a
StringTransport, the client is an ``ssl.SSLObject`` on memory BIOs, and the
test moves the bytes between them.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import TlsSettings
from wsrouter.tls import ServerTls
from wsrouter.tlswrites import RECORD_PAYLOAD, WRITE_SLICE, TlsServerProtocol

from .tlscerts import Pair, make_server, needs_openssl


@pytest.fixture(scope="module")
def server_cert(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A self-signed certificate for the server side."""
    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    return make_server(tmp_path_factory.mktemp("certs"), "server", None)


class CountingTransport(StringTransport):
    """A StringTransport that also counts the writes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class App(Protocol):
    """The application above TLS: keeps what it receives, piece by piece."""

    def __init__(self, early: bytes = b"") -> None:
        self.pieces: list[bytes] = []
        self.early = early
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.early:
            self.transport.write(self.early)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = Failure(Exception("unset"))) -> None:  # noqa: B008
        self.lost = reason


class Pair_:
    """One server-side TlsServerProtocol and one stdlib client, wired by hand."""

    def __init__(self, cert: Pair, app: App):
        self.app = app
        factory = TLSMemoryBIOFactory(ServerTls(TlsSettings(cert=str(cert.cert), key=str(cert.key))), False,
                                      Factory.forProtocol(Protocol))
        self.server = TlsServerProtocol(factory, app)
        self.wire = CountingTransport()
        self.server.makeConnection(self.wire)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.incoming, self.outgoing)

    def to_server(self, one_byte_at_a_time: bool = False) -> None:
        data = self.outgoing.read()
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.server.dataReceived(data[i:i + 1])
        elif data:
            self.server.dataReceived(data)

    def to_client(self) -> bytes:
        data = self.wire.value()
        self.wire.clear()
        self.incoming.write(data)
        return data

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self.to_server()
            self.to_client()
        self.to_server()  # the client's Finished
        self.to_client()  # session tickets, queued early writes
        self.wire.writes = 0

    def client_reads(self) -> bytes:
        got = b""
        self.closed = False
        while True:
            try:
                piece = self.client.read(1 << 20)
            except ssl.SSLWantReadError:
                return got
            if not piece:  # the server's close_notify
                self.closed = True
                return got
            got += piece


def records(wire: bytes) -> list[int]:
    """The lengths of the TLS records in C{wire}."""
    lengths, at = [], 0
    while at + 5 <= len(wire):
        length = int.from_bytes(wire[at + 3:at + 5], "big")
        lengths.append(length)
        at += 5 + length
    assert at == len(wire)
    return lengths


def test_a_large_write_reaches_the_socket_in_few_writes(server_cert: Pair) -> None:
    """A 256 KiB write reaches the socket as one write, 1 MiB as four, not one per 16 KiB record."""
    pair = Pair_(server_cert, App())
    pair.handshake()
    pair.server.write(b"s" * WRITE_SLICE)
    assert pair.wire.writes == 1
    assert pair.to_client() and pair.client_reads() == b"s" * WRITE_SLICE
    pair.wire.writes = 0
    data = bytes(range(256)) * 4096
    pair.server.write(data)
    assert pair.wire.writes == len(data) // WRITE_SLICE
    wire = pair.to_client()
    assert len(records(wire)) == len(data) // RECORD_PAYLOAD
    assert pair.client_reads() == data


@pytest.mark.parametrize("head_size,body_size", [(2, 0), (2, 100), (10, RECORD_PAYLOAD - 10),
                                                 (10, RECORD_PAYLOAD - 9), (14, 300_000), (14, 600_000),
                                                 (RECORD_PAYLOAD, 5)])
def test_header_and_payload_arrive_in_order_in_full_records(server_cert: Pair, head_size: int,
                                                              body_size: int) -> None:
    """A header and payload written as a sequence arrive intact, in as few records as their joined bytes need."""
    pair = Pair_(server_cert, App())
    pair.handshake()
    head, body = b"H" * head_size, bytes(i % 251 for i in range(body_size))
    pair.server.writeSequence((head, body))
    wire = pair.to_client()
    total = head_size + body_size
    assert len(records(wire)) == -(-total // RECORD_PAYLOAD)
    assert pair.client_reads() == head + body


def test_the_records_of_one_socket_read_reach_the_protocol_as_one_piece(server_cert: Pair) -> None:
    """Seven records arriving in one read are delivered as one piece, not seven."""
    app = App()
    pair = Pair_(server_cert, app)
    pair.handshake()
    data = bytes(range(256)) * 400  # 100 KiB: 7 records
    pair.client.write(data)
    pair.to_server()
    assert app.pieces == [data]


def test_records_fed_one_byte_at_a_time_arrive_whole(server_cert: Pair) -> None:
    """The handshake and 40 KiB of data fed to the server one byte at a time still arrive intact."""
    app = App()
    pair = Pair_(server_cert, app)
    for _ in range(10):
        try:
            pair.client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        pair.to_server(one_byte_at_a_time=True)
        pair.to_client()
    data = bytes(range(256)) * 160
    pair.client.write(data)
    pair.to_server(one_byte_at_a_time=True)
    assert b"".join(app.pieces) == data


def test_writes_before_the_handshake_wait_and_keep_their_order(server_cert: Pair) -> None:
    """What the protocol writes before the handshake is done goes out after it, before later writes."""
    big = bytes(i % 253 for i in range(600_000))
    pair = Pair_(server_cert, App(early=b"first "))
    pair.server.write(b"second ")
    pair.server.writeSequence((b"th", b"ird"))
    pair.server.writeSequence((b"big:", big))
    pair.handshake()
    pair.server.write(b" fourth")
    pair.to_client()
    assert pair.client_reads() == b"first second third" + b"big:" + big + b" fourth"


@implementer(IHandshakeListener)
class ListeningApp(App):
    """An application that writes as soon as the handshake completes."""

    def handshakeCompleted(self) -> None:
        self.transport.write(b" at handshake")  # type: ignore[union-attr]


def test_a_write_at_handshake_completion_goes_after_the_earlier_ones(server_cert: Pair) -> None:
    """A write made when the handshake completes goes out after the writes queued before it."""
    pair = Pair_(server_cert, ListeningApp(early=b"early"))
    pair.handshake()
    pair.to_client()
    assert pair.client_reads() == b"early at handshake"


def test_empty_writes_send_nothing(server_cert: Pair) -> None:
    """An empty write or sequence puts nothing on the wire."""
    pair = Pair_(server_cert, App())
    pair.handshake()
    pair.server.write(b"")
    pair.server.writeSequence((b"", b""))
    assert pair.wire.value() == b""


def test_lose_connection_sends_data_then_close_notify(server_cert: Pair) -> None:
    """After loseConnection the client reads the data written, then close_notify; its answer closes the socket."""
    pair = Pair_(server_cert, App())
    pair.handshake()
    pair.server.write(b"x" * 50_000)
    pair.server.loseConnection()
    pair.to_client()
    assert pair.client_reads() == b"x" * 50_000
    assert pair.closed  # the read after the data saw close_notify
    assert not pair.wire.disconnecting  # Twisted waits for the client's close_notify...
    pair.client.unwrap()
    pair.to_server()
    assert pair.wire.disconnecting  # ...then closes the socket


def test_the_clients_close_notify_ends_the_connection_cleanly(server_cert: Pair) -> None:
    """Data sent just before the client's close_notify is delivered, then the protocol's connectionLost is clean."""
    app = App()
    pair = Pair_(server_cert, app)
    pair.handshake()
    pair.client.write(b"last words")
    with contextlib.suppress(ssl.SSLWantReadError):  # the server's answer is not in yet
        pair.client.unwrap()
    pair.to_server()
    assert b"".join(app.pieces) == b"last words"
    pair.to_client()
    pair.server.connectionLost(Failure(Exception("the socket closed")))
    assert app.lost is not None


def test_a_larger_read_size_reaches_the_socket(server_cert: Pair) -> None:
    """A protocol setting its transport's bufferSize (larger reads) sets the socket transport's."""
    pair = Pair_(server_cert, App())
    transport: Any = pair.server
    transport.bufferSize = 256 * 1024
    assert getattr(pair.wire, "bufferSize", None) == 256 * 1024
    assert transport.bufferSize == 256 * 1024


def test_protocol_is_what_the_listener_builds(server_cert: Pair, tmp_path: Path) -> None:
    """The TLS/plain detector hands TLS connections to TlsServerProtocol."""
    from twisted.internet.task import Clock

    from wsrouter.tlsport import DetectingFactory

    site = Factory.forProtocol(App)
    detecting = DetectingFactory(site, ServerTls(TlsSettings(cert=str(server_cert.cert), key=str(server_cert.key))),
                                 Clock(), 10.0)
    detector = detecting.buildProtocol(None)
    assert detector is not None
    detector.makeConnection(StringTransport())
    detector.dataReceived(b"\x16\x03\x01\x00\x05hello")
    assert isinstance(detector._inner, TlsServerProtocol)


def test_the_private_names_relied_on_still_exist(server_cert: Pair) -> None:
    """Twisted's TLS protocol and pyOpenSSL still have what tlswrites and ws/internals.py use, as they were."""
    from OpenSSL._util import lib

    from wsrouter.ws.internals import PRIVATE_ATTRIBUTES

    pair = Pair_(server_cert, App())
    pair.handshake()
    for key, obj in (("twisted.protocols.tls.TLSMemoryBIOProtocol", pair.server),
                     ("OpenSSL.SSL.Connection", pair.server._tlsConnection)):
        missing = [name for name in PRIVATE_ATTRIBUTES[key] if not hasattr(obj, name)]
        assert missing == [], f"{key} changed: update wsrouter/tlswrites.py and wsrouter/ws/internals.py"
    assert all(hasattr(lib, name) for name in ("SSL_clear_mode", "SSL_MODE_ENABLE_PARTIAL_WRITE", "BIO_read"))
    assert isinstance(pair.server._appSendBuffer, list) and pair.server._lostTLSConnection is False


def test_with_partial_writes_on_a_large_write_still_arrives_whole(server_cert: Pair) -> None:
    """Were partial writes ever left on (a record per send), every byte of a large write still goes out, in order."""
    from OpenSSL._util import lib

    pair = Pair_(server_cert, App())
    pair.handshake()
    lib.SSL_set_mode(pair.server._tlsConnection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    data = bytes(range(256)) * 1000
    pair.server.writeSequence((b"head", data))
    pair.to_client()
    assert pair.client_reads() == b"head" + data


@pytest_twisted.inlineCallbacks
def test_over_a_real_socket_a_reader_that_waits_gets_every_byte(server_cert: Pair) -> Any:
    """Over loopback, 8 MiB written at once to a client that reads only later arrive whole and in order."""
    data = bytes(i % 251 for i in range(1 << 20)) * 8

    class Burst(Protocol):
        def dataReceived(self, received: bytes) -> None:  # the client's "go": write everything at once
            for at in range(0, len(data), 300_000):
                self.transport.write(data[at:at + 300_000])  # type: ignore[union-attr]

    class Factory_(TLSMemoryBIOFactory):
        protocol = TlsServerProtocol

    factory = Factory_(ServerTls(TlsSettings(cert=str(server_cert.cert), key=str(server_cert.key))), False,
                       Factory.forProtocol(Burst))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def client() -> bytes:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"go")
            time.sleep(0.3)  # let the server's socket buffer fill and Twisted queue the rest
            got = bytearray()
            while len(got) < len(data):
                piece = tls.recv(1 << 20)
                if not piece:
                    break
                got += piece
            return bytes(got)

    try:
        got = yield threads.deferToThread(client)
    finally:
        yield port.stopListening()
    assert len(got) == len(data) and got == data
