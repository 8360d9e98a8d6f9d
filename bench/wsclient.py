"""A lean RFC 6455 client for benchmarks: raw sockets, pre-built frames, minimal parsing.

The load client must not be the bottleneck, so it does as little as a correct client
can:

* Frames are built once and reused.  Client frames must be masked, but a mask key of
  four zero bytes is valid (RFC 6455 5.3 only asks that it be unpredictable to defeat
  proxy cache poisoning, which does not apply to a loopback benchmark); XOR with zero is
  a no-op, so a frame's bytes are simply ``header + zero key + payload``.
* Incoming frames are parsed incrementally by :class:`FrameParser`, which counts data
  payload bytes as they stream in and keeps payloads only when asked to.
* No extensions (no permessage-deflate), no fragmentation on send.
* websockify's ``base64`` subprotocol (text frames carrying base64) is supported for
  the benchmark's base64 variant: :func:`data_frame` encodes, and a parser made with
  ``base64_mode=True`` counts decoded bytes as each data frame completes (decoding
  it too when payloads are kept; see :class:`FrameParser`).

:class:`FrameParser` also understands masked frames, so the benchmark's own minimal
WebSocket server (``targets.py``, used for the "direct" ceiling) shares it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import socket
import ssl
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
ZERO_MASK = b"\x00\x00\x00\x00"
MAX_HEADER_BYTES = 16384


class HandshakeError(Exception):
    """The server did not answer the upgrade with a valid 101 response."""


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, mask: bytes | None = ZERO_MASK, fin: bool = True) -> bytes:
    """Encode one frame; ``mask=None`` gives an unmasked (server) frame.

    A non-zero mask is applied to the payload; the zero mask leaves it unchanged.
    """
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


def data_frame(payload: bytes, base64_mode: bool = False) -> bytes:
    """A client data frame: binary, or base64 in a text frame for the ``base64`` subprotocol."""
    if base64_mode:
        return frame(OP_TEXT, base64.b64encode(payload))
    return frame(OP_BINARY, payload)


def close_payload(code: int = 1000, reason: bytes = b"") -> bytes:
    """Payload of a Close frame: 2-byte big-endian code then UTF-8 reason."""
    return struct.pack("!H", code) + reason


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask`` (its own inverse)."""
    if mask == ZERO_MASK or not data:
        return bytes(data)
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _header_length(hdr: bytearray) -> int:
    """Total header length implied by the bytes seen so far (at least 2)."""
    if len(hdr) < 2:
        return 2
    plen = hdr[1] & 0x7F
    ext = 2 if plen == 126 else 8 if plen == 127 else 0
    return 2 + ext + (4 if hdr[1] & 0x80 else 0)


class FrameParser:
    """Incremental frame parser that counts data bytes and optionally keeps payloads.

    ``data_bytes`` grows as data-frame payload arrives, even mid-frame, so a caller
    streaming large frames never waits for a whole frame.  Control frames (close, ping,
    pong) are always kept, in ``control`` as ``(opcode, payload)``.  With
    ``keep_data=True`` each completed data frame's unmasked payload is appended to
    ``messages`` as ``(opcode, payload)``.

    With ``base64_mode=True`` (the ``base64`` subprotocol) ``data_bytes`` grows by the
    *decoded* length of each data frame when the frame completes.  With ``keep_data``
    the frame is decoded (strictly) and ``messages`` holds decoded payloads.  Without
    it, the decoded length is computed from the text's length and ``=`` padding and
    only the shape is checked (a multiple of 4 characters): CPython decodes base64 at
    roughly 150 MB/s, so decoding 256 MiB downstream would make the client, not the
    relay, the limit.  Malformed base64 raises :class:`ValueError`.
    """

    def __init__(self, keep_data: bool = False, base64_mode: bool = False) -> None:
        self.keep_data = keep_data
        self.base64_mode = base64_mode
        self.data_bytes = 0
        self.data_frames = 0
        self.messages: list[tuple[int, bytes]] = []
        self.control: list[tuple[int, bytes]] = []
        self.masked_frames = 0
        self._hdr = bytearray()
        self._remaining = 0
        self._in_payload = False
        self._opcode = 0
        self._mask = ZERO_MASK
        self._parts: list[bytes] = []
        self._frame_len = 0
        self._tail = b""  # last two payload bytes of the current frame (base64 padding)

    @property
    def close_code(self) -> int | None:
        """Code of the first Close frame received (1005 if it had none), else None."""
        for op, payload in self.control:
            if op == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def feed(self, data: bytes | memoryview) -> None:
        """Consume bytes received from the peer."""
        pos, end = 0, len(data)
        skim = not (self.keep_data or self.base64_mode)
        while pos < end:
            if self._in_payload:
                pos = self._take_payload(data, pos, end)
            else:
                if skim and not self._hdr:
                    pos = self._skim(data, pos, end)
                    if pos == end:
                        break
                pos = self._take_header(data, pos, end)

    def _skim(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """Count whole small unmasked data frames at ``pos`` without the general path.

        The load client's fast path for many small echoes (pipelined, fan-in): stops at
        the first frame that is a control frame, masked, 126 bytes or longer, or
        incomplete, and returns its position.
        """
        count = nbytes = 0
        while end - pos >= 2:
            b1 = data[pos + 1]
            if b1 >= 126 or data[pos] & 0x0F >= 0x8 or pos + 2 + b1 > end:
                break
            count += 1
            nbytes += b1
            pos += 2 + b1
        self.data_frames += count
        self.data_bytes += nbytes
        return pos

    def _take_header(self, data: bytes | memoryview, pos: int, end: int) -> int:
        hdr = self._hdr
        need = _header_length(hdr)
        while len(hdr) < need and pos < end:
            take = min(need - len(hdr), end - pos)
            hdr += data[pos : pos + take]
            pos += take
            need = _header_length(hdr)
        if len(hdr) == need:
            self._start_frame()
        return pos

    def _start_frame(self) -> None:
        hdr = self._hdr
        self._opcode = hdr[0] & 0x0F
        plen = hdr[1] & 0x7F
        off = 2
        if plen == 126:
            plen = struct.unpack_from("!H", hdr, 2)[0]
            off = 4
        elif plen == 127:
            plen = struct.unpack_from("!Q", hdr, 2)[0]
            off = 10
        if hdr[1] & 0x80:
            self._mask = bytes(hdr[off : off + 4])
            self.masked_frames += 1
        else:
            self._mask = ZERO_MASK
        hdr.clear()
        self._remaining = self._frame_len = plen
        self._in_payload = True
        self._parts = []
        if plen == 0:
            self._end_frame()

    def _take_payload(self, data: bytes | memoryview, pos: int, end: int) -> int:
        take = min(self._remaining, end - pos)
        is_data = self._opcode < 0x8
        if self.base64_mode and not self.keep_data:
            self._tail = (self._tail + bytes(data[max(pos, pos + take - 2) : pos + take]))[-2:]
        if is_data and not self.base64_mode:
            self.data_bytes += take
        if self.keep_data or not is_data:
            self._parts.append(bytes(data[pos : pos + take]))
        self._remaining -= take
        if self._remaining == 0:
            self._end_frame()
        return pos + take

    def _end_frame(self) -> None:
        self._in_payload = False
        op = self._opcode
        if op < 0x8:
            self.data_frames += 1
            if self.base64_mode:
                self._end_base64_frame(op)
            elif self.keep_data:
                self.messages.append((op, unmask(b"".join(self._parts), self._mask)))
        else:
            self.control.append((op, unmask(b"".join(self._parts), self._mask)))
        self._parts = []
        self._tail = b""

    def _end_base64_frame(self, op: int) -> None:
        if self.keep_data:
            payload = binascii.a2b_base64(unmask(b"".join(self._parts), self._mask), strict_mode=True)
            self.messages.append((op, payload))
            self.data_bytes += len(payload)
            return
        n = self._frame_len
        if n % 4:
            raise ValueError(f"base64 frame of {n} characters (not a multiple of 4)")
        self.data_bytes += n // 4 * 3 - self._tail.count(b"=")


class WSConn:
    """One client WebSocket over a plain socket, after a completed upgrade.

    ``sock`` is exposed on purpose: benchmark loops call ``sendall``/``recv_into`` on it
    directly and feed ``parser`` themselves.  Bytes that arrived together with the
    101 response are already fed to ``parser``.
    """

    def __init__(self, sock: socket.socket, parser: FrameParser, subprotocol: str | None) -> None:
        self.sock = sock
        self.parser = parser
        self.subprotocol = subprotocol
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)

    def recv_some(self) -> int:
        """Receive once into the parser; return the byte count (0 means EOF)."""
        n = self.sock.recv_into(self._buf)
        if n:
            self.parser.feed(self._view[:n])
        return n

    def close(self, code: int = 1000, wait_s: float = 5.0) -> tuple[int | None, bool]:
        """Send Close, read until the peer's Close or EOF (bounded), close the socket.

        Returns ``(close code received or None, saw EOF)``.  Data arriving meanwhile is
        still counted by the parser.
        """
        try:
            self.sock.setblocking(True)
            self.sock.sendall(frame(OP_CLOSE, close_payload(code)))
        except OSError:
            pass
        eof = self.drain_until_close(wait_s)
        self.sock.close()
        return self.parser.close_code, eof

    def drain_until_close(self, wait_s: float) -> bool:
        """Read until a Close frame or EOF arrives or ``wait_s`` passes; True on EOF."""
        deadline = time.monotonic() + wait_s
        while self.parser.close_code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if self.recv_some() == 0:
                    return True
            except (TimeoutError, OSError):
                return False
        return False


def _read_response_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """Read until the blank line; return (head, bytes after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > MAX_HEADER_BYTES:
            raise HandshakeError(f"no complete HTTP response head (got {buf[:200]!r})")
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise HandshakeError(f"no complete answer to the upgrade request in time "
                                 f"(got {buf[:200]!r})") from None
        if not chunk:
            raise HandshakeError(f"connection closed during handshake (got {buf[:200]!r})")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _check_response(head: bytes, key: bytes, offered: tuple[str, ...]) -> str | None:
    """Validate a 101 response head; return the chosen subprotocol."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"expected 101, got {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise HandshakeError("bad Sec-WebSocket-Accept")
    chosen = headers.get("sec-websocket-protocol") or None
    if chosen is not None and chosen not in offered:
        raise HandshakeError(f"server chose unoffered subprotocol {chosen!r}")
    return chosen


@functools.cache
def client_tls_context() -> ssl.SSLContext:
    """One client TLS context for the run (TLS 1.2 and up, certificate not checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect(
    host: str,
    port: int,
    path: str = "/",
    subprotocols: tuple[str, ...] = (),
    timeout_s: float = 10.0,
    keep_data: bool = False,
    base64_mode: bool = False,
    tls: bool = False,
) -> WSConn:
    """Open a TCP connection, perform the upgrade and return a blocking :class:`WSConn`.

    With ``tls`` the connection is wss://: a TLS handshake first (the ssl module, no
    certificate check: the benchmark's relays use a throw-away self-signed certificate).

    Raises :class:`HandshakeError` or :class:`OSError`.  TCP_NODELAY is set so small
    messages are not held back by Nagle's algorithm on the client side.  With
    ``base64_mode`` the server must choose the ``base64`` subprotocol, and the parser
    decodes what it receives.
    """
    deadline = time.monotonic() + timeout_s
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = client_tls_context().wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, rest = _read_response_head(sock, deadline)
        chosen = _check_response(head, key, subprotocols)
        if base64_mode and chosen != "base64":
            raise HandshakeError(f"server chose subprotocol {chosen!r}, not 'base64'")
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    parser = FrameParser(keep_data=keep_data, base64_mode=base64_mode)
    if rest:
        parser.feed(rest)
    return WSConn(sock, parser, chosen)
