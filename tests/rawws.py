"""
A minimal blocking WebSocket client on a plain socket, for tests that need
control the ``websockets`` library does not give: not reading at all for a
while (to test flow control), or sending one huge frame as a stream.

Frames are masked with an all-zero key, which RFC 6455 allows; the payload
then goes on the wire unchanged and needs no copying.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Iterable


def upgrade(port: int, path: str = "/", protocols: Iterable[str] = (), timeout: float = 30) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    extra = f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n" if protocols else ""
    s.sendall(
        (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError(f"handshake: connection closed after {response!r}")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {response!r}")
    return s


def frame_header(length: int, opcode: int = 0x2, fin: bool = True) -> bytes:
    """A masked (zero key) client frame header."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0"


def close_frame(code: int = 1000) -> bytes:
    payload = struct.pack("!H", code)
    return frame_header(len(payload), opcode=0x8) + payload


class FrameReader:
    """Reads server frames, hashing data payloads; remembers the close code."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.sha = hashlib.sha256()
        self.received = 0
        self.messages = 0
        self.close_code: int | None = None

    def _need(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_frame(self) -> bool:
        """Read one frame; False at end of stream or after a close frame."""
        if not self._need(2):
            return False
        first, second = self.buffer[0], self.buffer[1]
        length = second & 0x7F
        offset = 2
        if length == 126:
            if not self._need(4):
                return False
            length = struct.unpack_from("!H", self.buffer, 2)[0]
            offset = 4
        elif length == 127:
            if not self._need(10):
                return False
            length = struct.unpack_from("!Q", self.buffer, 2)[0]
            offset = 10
        del self.buffer[:offset]
        opcode = first & 0x0F
        if opcode == 0x8:
            if not self._need(length):
                return False
            self.close_code = struct.unpack_from("!H", self.buffer, 0)[0] if length >= 2 else 1005
            del self.buffer[:length]
            return False
        remaining = length
        while remaining:
            if not self.buffer and not self._need(1):
                return False
            take = min(remaining, len(self.buffer))
            if opcode in (0x0, 0x1, 0x2):
                self.sha.update(memoryview(self.buffer)[:take])
                self.received += take
            del self.buffer[:take]
            remaining -= take
        if opcode in (0x1, 0x2) or (opcode == 0 and first & 0x80):
            self.messages += 1
        return True

    def read_until(self, total: int) -> None:
        while self.received < total and self.read_frame():
            pass

    def read_to_close(self) -> None:
        while self.read_frame():
            pass


def read_late_and_slowly(sock: socket.socket, pause: float = 3.0) -> FrameReader:
    """
    Be a slow reader: read nothing for C{pause} seconds (the sender must be
    paused meanwhile), then 200 frames with short sleeps, then the rest at
    full speed until the close.
    """
    import time

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    time.sleep(pause)
    reader = FrameReader(sock)
    for _ in range(200):
        reader.read_frame()
        time.sleep(0.005)
    reader.read_to_close()
    return reader
