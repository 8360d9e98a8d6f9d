"""
Closing under pressure: slow readers keep their data, peers that stop
reading do not hold connections forever, and broken close frames get the
right codes.  A router in this process, raw sockets in threads.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest_twisted

from . import rawws
from .support import in_thread, start_router


def _serve_once(handler):
    """A one-connection TCP target in a thread; returns (port, deferred result)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)

    def run():
        conn, _ = listener.accept()
        conn.settimeout(30)
        try:
            return handler(conn)
        finally:
            conn.close()
            listener.close()

    return listener.getsockname()[1], in_thread(run)


@pytest_twisted.inlineCallbacks
def test_slow_client_gets_everything_before_the_close():
    """A client reading slowly for longer than the close timeout still gets all the target sent, then 1000."""
    total = 8 * 1024 * 1024

    def burst(conn):
        conn.sendall(b"z" * total)

    port, served = _serve_once(burst)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port}"], shutdown_grace=1)

    def slow_client():
        s = rawws.upgrade(router.port_number, "/")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        reader = rawws.FrameReader(s)
        deadline = time.monotonic() + 60
        while reader.received < total and time.monotonic() < deadline:
            time.sleep(0.05)  # about 3 s of reading in all: longer than the 1 s close timeout
            before = reader.received
            while reader.received - before < 128 * 1024 and reader.read_frame():
                pass
        reader.read_to_close()
        s.close()
        return reader.received, reader.close_code

    try:
        received, code = yield in_thread(slow_client)
        yield served
        assert (received, code) == (total, 1000)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_client_that_closes_and_stops_reading_is_dropped():
    """A client that sends its close and never reads again is disconnected, and the target with it."""
    def flood(conn):
        try:
            while True:
                conn.sendall(b"x" * 65536)
        except OSError:
            return "target connection closed"

    port, served = _serve_once(flood)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port}"], shutdown_grace=1)

    def stuck_client():
        s = rawws.upgrade(router.port_number, "/")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(1)
        s.sendall(rawws.close_frame())
        s.settimeout(20)
        started = time.monotonic()
        time.sleep(4)  # never read while the router should give up on us
        try:
            while s.recv(1 << 20):
                pass
        except OSError:
            pass
        s.close()
        return time.monotonic() - started

    try:
        waited = yield in_thread(stuck_client)
        assert (yield served) == "target connection closed"
        assert waited < 15
        assert not router.gateway.sessions
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_target_that_stops_reading_is_closed_after_the_client_leaves():
    """
    When the client is gone and the target will not read what is queued for
    it, the target is closed anyway.  (While the target is full, reading from
    the client is paused, so its leaving is noticed by the keepalive ping.)
    """
    def never_read(conn):
        deadline = time.monotonic() + 20
        time.sleep(1)
        conn.setblocking(False)
        while time.monotonic() < deadline:  # still not reading: only notice the end
            try:
                conn.send(b"")
                data = conn.recv(1, socket.MSG_PEEK)
                if data == b"":
                    return "closed"
            except BlockingIOError:
                pass
            except OSError:
                return "closed"
            time.sleep(0.2)
        return "still open"

    port, served = _serve_once(never_read)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port}"], shutdown_grace=1, ping_interval=1)

    def client():
        s = rawws.upgrade(router.port_number, "/")
        block = b"y" * (1024 * 1024)
        s.settimeout(5)
        try:
            for _ in range(16):
                s.sendall(rawws.frame_header(len(block)) + block)
        except OSError:
            pass
        s.close()

    try:
        yield in_thread(client)
        assert (yield served) == "closed"
    finally:
        yield router.stopService()


def _close_reply(port, payload):
    s = rawws.upgrade(port, "/e")
    s.sendall(rawws.frame_header(len(payload), opcode=0x8) + payload)
    reader = rawws.FrameReader(s)
    started = time.monotonic()
    reader.read_to_close()
    try:
        rest = s.recv(100)
    except OSError:
        rest = None
    s.close()
    return reader.close_code, rest, time.monotonic() - started


@pytest_twisted.inlineCallbacks
def test_bad_close_frames_get_1002_and_1007():
    """A close with a reserved code is answered with 1002, one with a non-UTF-8 reason with 1007, then TCP closes."""
    router = start_router(routes=["/e=echo:"])
    try:
        code, rest, _ = yield in_thread(_close_reply, router.port_number, struct.pack("!H", 999))
        assert (code, rest) == (1002, b"")
        code, rest, _ = yield in_thread(_close_reply, router.port_number, struct.pack("!H", 1000) + b"\xff\xfe")
        assert (code, rest) == (1007, b"")
        code, rest, _ = yield in_thread(_close_reply, router.port_number, struct.pack("!H", 4000) + b"ok")
        assert (code, rest) == (1000, b"")  # a valid close is answered normally
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_protocol_error_closes_promptly():
    """After a protocol violation the router sends its close code and closes TCP without waiting for a reply."""
    router = start_router(routes=["/e=echo:"])

    def violate():
        s = rawws.upgrade(router.port_number, "/e")
        s.sendall(rawws.frame_header(2, opcode=0x3) + b"no")  # reserved opcode
        reader = rawws.FrameReader(s)
        started = time.monotonic()
        reader.read_to_close()
        s.settimeout(10)
        rest = s.recv(100)
        s.close()
        return reader.close_code, rest, time.monotonic() - started

    try:
        code, rest, waited = yield in_thread(violate)
        assert (code, rest) == (1002, b"")
        assert waited < 4.5  # not the 5 s close timeout (tests/test_gateway.py checks it without a clock)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_frame_sent_with_the_upgrade_request_is_not_lost():
    """A frame that arrives in the same packet as the handshake request is relayed."""
    router = start_router(routes=["/e=echo:"])

    def eager():
        s = socket.create_connection(("127.0.0.1", router.port_number), timeout=10)
        request = (b"GET /e HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        s.sendall(request + rawws.frame_header(5) + b"early")
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(1)
        reader = rawws.FrameReader(s)
        reader.read_frame()
        s.close()
        return response.split(b" ")[1], reader.received

    try:
        status, received = yield in_thread(eager)
        assert (status, received) == (b"101", 5)
    finally:
        yield router.stopService()
