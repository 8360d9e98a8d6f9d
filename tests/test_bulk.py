"""
Large transfers through a router process: nothing lost, memory bounded.

The router runs as its own process so that its peak memory (VmHWM) can be
read; targets are plain sockets in threads of this process; the client is
the raw one from L{rawws} (or ``websockets`` for checksummed transfers).
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time

import pytest

from . import rawws
from .support import router_process

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


class ThreadTarget:
    """A one-connection TCP target on loopback, served by a function in a thread."""

    def __init__(self, serve):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(60)
        self.port = self.listener.getsockname()[1]
        self.result = None
        self.error = None
        self._thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self._thread.start()

    def _run(self, serve):
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(60)
            with conn:
                self.result = serve(conn)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout=120):
        self._thread.join(timeout)
        self.listener.close()
        if self._thread.is_alive():
            raise TimeoutError("target thread still running")
        if self.error:
            raise self.error
        return self.result


def random_blocks(total: int, seed: int, block: int = MiB):
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        yield rng.randbytes(n)
        sent += n


def sink(conn: socket.socket, delay: float = 0.0):
    """Hash everything until end of input."""
    time.sleep(delay)
    sha = hashlib.sha256()
    total = 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return total, sha.hexdigest()
        sha.update(chunk)
        total += len(chunk)


def expected_digest(total: int, seed: int) -> str:
    sha = hashlib.sha256()
    for block in random_blocks(total, seed):
        sha.update(block)
    return sha.hexdigest()


def test_upstream_byte_exact(tmp_path):
    """100 MiB of random data from the client arrive at the TCP target complete and in order."""
    total = 100 * MiB
    target = ThreadTarget(sink)
    with router_process(tmp_path, "--route", f"/*=tcp://127.0.0.1:{target.port}") as router:
        s = rawws.upgrade(router.port, "/")
        for block in random_blocks(total, seed=1, block=64 * 1024):
            s.sendall(rawws.frame_header(len(block)) + block)
        s.sendall(rawws.close_frame())
        reader = rawws.FrameReader(s)
        reader.read_to_close()
        s.close()
        assert target.join() == (total, expected_digest(total, 1))
        assert reader.close_code == 1000


def test_downstream_byte_exact(tmp_path):
    """100 MiB of random data from the TCP target arrive at the client complete and in order."""
    total = 100 * MiB

    def source(conn):
        for block in random_blocks(total, seed=2):
            conn.sendall(block)

    target = ThreadTarget(source)
    with router_process(tmp_path, "--route", f"/*=tcp://127.0.0.1:{target.port}") as router:
        s = rawws.upgrade(router.port, "/")
        reader = rawws.FrameReader(s)
        reader.read_to_close()
        s.close()
        target.join()
        assert (reader.received, reader.sha.hexdigest()) == (total, expected_digest(total, 2))
        assert reader.close_code == 1000


def test_both_ways_at_once_byte_exact(tmp_path):
    """100 MiB each way at the same time arrive complete on both sides."""
    total = 100 * MiB

    def both(conn):
        def send():
            for block in random_blocks(total, seed=4):
                conn.sendall(block)
            conn.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        result = sink(conn)
        sender.join(60)
        return result

    target = ThreadTarget(both)
    with router_process(tmp_path, "--route", f"/*=tcp://127.0.0.1:{target.port}") as router:
        s = rawws.upgrade(router.port, "/")
        reader = rawws.FrameReader(s)
        reading = threading.Thread(target=reader.read_to_close, daemon=True)
        reading.start()
        for block in random_blocks(total, seed=3, block=64 * 1024):
            s.sendall(rawws.frame_header(len(block)) + block)
        reading.join(120)
        s.sendall(rawws.close_frame())
        s.close()
        assert target.join() == (total, expected_digest(total, 3))
        assert (reader.received, reader.sha.hexdigest()) == (total, expected_digest(total, 4))


def test_slow_client_bounds_router_memory(tmp_path):
    """A target streaming 512 MiB to a client that stops reading for a while grows the router by < 64 MiB."""
    total = 512 * MiB
    block = os.urandom(MiB)

    def source(conn):
        for _ in range(total // MiB):
            conn.sendall(block)

    target = ThreadTarget(source)
    with router_process(tmp_path, "--route", f"/*=tcp://127.0.0.1:{target.port}") as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        reader = rawws.read_late_and_slowly(s)
        s.close()
        target.join()
        growth = router.status("VmHWM") - baseline
        assert reader.received == total
        assert growth < 64 * 1024, f"router grew by {growth} KiB"


def test_slow_target_bounds_router_memory(tmp_path):
    """A client sending 512 MiB as one streamed message to a target that reads late grows the router by < 64 MiB."""
    total = 512 * MiB
    block = os.urandom(MiB)
    target = ThreadTarget(lambda conn: sink(conn, delay=3))
    with router_process(
        tmp_path, "--max-message-size", str(1024 * MiB), "--route", f"/*=tcp://127.0.0.1:{target.port}",
    ) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        s.sendall(rawws.frame_header(total))  # one frame, one message, streamed
        for _ in range(total // MiB):
            s.sendall(block)
        s.sendall(rawws.close_frame())
        received, _ = target.join()
        s.close()
        growth = router.status("VmHWM") - baseline
        assert received == total
        assert growth < 64 * 1024, f"router grew by {growth} KiB"
