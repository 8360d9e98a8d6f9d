"""Writing through to the socket: everything arrives, in order, whatever the kernel takes."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.threads import deferToThread

from wsrouter.ws.writes import _after, write_sequence_through, write_through


def test_after_splits_parts_at_any_point():
    """What is left after a partial send is exactly the unsent tail of the parts."""
    parts = [b"abc", b"", b"defg", b"h"]
    whole = b"".join(parts)
    for sent in range(len(whole) + 1):
        assert b"".join(_after(parts, sent)) == whole[sent:]


class _Collect(protocol.Protocol):
    def connectionMade(self):
        self.factory.ready.callback(self)


@pytest_twisted.inlineCallbacks
def test_large_writes_through_a_full_socket_arrive_in_order():
    """When the kernel takes only part, the rest is queued and all 64 MiB arrive in order, mixed with plain writes."""
    factory = protocol.ClientFactory()
    factory.protocol = _Collect
    factory.ready = defer.Deferred()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    reactor.connectTCP("127.0.0.1", server.getsockname()[1], factory)
    server.settimeout(10)
    conn, _ = yield deferToThread(server.accept)
    client = yield factory.ready
    chunks = [bytes([i % 251]) * 1_000_003 for i in range(64)]
    for i, chunk in enumerate(chunks):
        if i % 3 == 0:
            write_through(client.transport, chunk)
        elif i % 3 == 1:
            write_sequence_through(client.transport, [chunk[:10], chunk[10:]])
        else:
            client.transport.write(chunk)
    client.transport.loseConnection()

    def drain():
        got = bytearray()
        conn.settimeout(30)
        while True:
            data = conn.recv(1 << 20)
            if not data:
                return bytes(got)
            got += data

    got = yield deferToThread(drain)
    conn.close()
    server.close()
    assert got == b"".join(chunks)
