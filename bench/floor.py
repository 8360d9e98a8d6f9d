"""
The least a Twisted relay can do for the benchmark's workloads: the floor.

A WebSocket-to-TCP relay with nothing but the work every relay must do --
accept, read the request head, connect the target, answer 101, unmask the
client's frames and frame the target's bytes, pass flow control both ways,
close -- on the reactor wsrouter runs on, with wsrouter's frame codec and
its writes that skip a reactor turn when the socket is idle.
It checks nothing (no limits, no origin, no routes, no UTF-8, no timers),
logs nothing and keeps nothing per connection beyond the two protocols.

It is not a product and never serves anyone: ``bench/run.py`` runs it as
the ``floor`` variant, so a run shows how far each of wsrouter's figures is
above what Python and Twisted cost at all for the same work, beside
lighttpd's.  A target that is below the floor cannot be met by trimming
wsrouter; see docs/performance.md.

    python bench/floor.py LISTEN_PORT TARGET_PORT   (127.0.0.1 only)
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wsrouter.reactor import install  # before twisted.internet.reactor is imported

install()

from twisted.internet import protocol, reactor  # noqa: E402

from wsrouter.ws import codec  # noqa: E402
from wsrouter.ws.writes import write_sequence_through, write_through  # noqa: E402

HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 8192


def frame_header(opcode: int, length: int) -> bytes:
    """An unmasked server frame's header (FIN set)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def upgrade_key(head: bytes) -> bytes | None:
    """The Sec-WebSocket-Key of a request head, or None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return value.strip()
    return None


class TargetSide(protocol.Protocol):
    """The target's connection: every read goes to the client as one binary frame."""

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.target_ready(self)

    def dataReceived(self, data: bytes) -> None:
        write_sequence_through(self.client.transport, (frame_header(2, len(data)), data))

    def connectionLost(self, reason: Any = None) -> None:
        self.client.target_lost()


class TargetFactory(protocol.ClientFactory):
    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> TargetSide:
        return TargetSide(self.client)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.client.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        self.client.transport.loseConnection()


class ClientSide(protocol.Protocol):
    """The WebSocket client's connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.buffer = b""
        self.target: TargetSide | None = None
        self.opened = False
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.loseConnection()
                return
            if self.target is None:
                self.key = upgrade_key(self.buffer[:end])
                self.head_end = end + 4
                self.transport.pauseProducing()
                reactor.connectTCP(HOST, self.target_port, TargetFactory(self))
            return
        self.relay()

    def target_ready(self, target: TargetSide) -> None:
        self.target = target
        accept = base64.b64encode(hashlib.sha1((self.key or b"") + GUID).digest())
        write_through(self.transport, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.opened = True
        self.buffer = self.buffer[self.head_end:]
        # Flow control both ways: a full write buffer pauses the other side's reads.
        self.transport.registerProducer(target.transport, True)
        target.transport.registerProducer(self.transport, True)
        self.transport.resumeProducing()
        self.relay()

    def relay(self) -> None:
        data = self.buffer
        payloads, position = codec.scan_binary(data, 0, 0)
        if payloads:
            write_through(self.target.transport, b"".join(payloads))  # type: ignore[union-attr]
        end = len(data)
        while end - position >= 2:
            first, second = data[position], data[position + 1]
            length, start = second & 0x7F, position + 2
            if length == 126:
                if end < position + 4:
                    break
                length, start = int.from_bytes(data[position + 2:position + 4], "big"), position + 4
            elif length == 127:
                if end < position + 10:
                    break
                length, start = int.from_bytes(data[position + 2:position + 10], "big"), position + 10
            if end < start + 4 + length:
                break
            payload = codec.unmask(data[start + 4:start + 4 + length], data[start:start + 4])
            position = start + 4 + length
            opcode = first & 0x0F
            if opcode == 8:
                self.close(payload[:2] or b"\x03\xe8")
                return
            if opcode == 9:
                write_sequence_through(self.transport, (frame_header(10, len(payload)), payload))
            elif opcode in (0, 1, 2):
                write_through(self.target.transport, payload)  # type: ignore[union-attr]
        self.buffer = data[position:]

    def close(self, code: bytes) -> None:
        if not self.closing:
            self.closing = True
            write_sequence_through(self.transport, (frame_header(8, len(code)), code))
            self.transport.loseConnection()
        if self.target is not None:
            self.target.transport.loseConnection()

    def target_lost(self) -> None:
        self.close(b"\x03\xe8")

    def connectionLost(self, reason: Any = None) -> None:
        self.closing = True
        if self.target is not None:
            self.target.transport.loseConnection()
            self.target.client = _GONE  # no reference cycle left behind


class _Nowhere:
    """A transport that drops what it is given."""

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Any) -> None:
        pass


class _Gone:
    """Stands in for a client whose connection is lost."""

    transport: Any = _Nowhere()

    def target_ready(self, target: TargetSide) -> None:
        target.transport.loseConnection()

    def target_lost(self) -> None:
        pass


_GONE: Any = _Gone()


class ClientFactory(protocol.Factory):
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port

    def buildProtocol(self, addr: Any) -> ClientSide:
        return ClientSide(self.target_port)


def main(argv: list[str]) -> int:
    listen_port, target_port = int(argv[0]), int(argv[1])
    reactor.listenTCP(listen_port, ClientFactory(target_port), backlog=1024, interface=HOST)  # as wsrouter's
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
