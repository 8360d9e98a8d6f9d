"""
The frame codec end to end: a router in this process relays a client's
pipelined binary frames (random masks, every length form, control and text
frames between them) to a real TCP echo, with the compiled codec and with
the pure-Python one, with and without an idle timeout (the session counts
a run as traffic once).
"""

from __future__ import annotations

import hashlib
import random

import pytest
import pytest_twisted

from wsrouter.bridge import Bridge
from wsrouter.ws import codec
from wsrouter.ws import parser as parser_module

from . import rawws
from .support import RecordingTarget, in_thread, listen_target, start_router
from .test_frames import frame

BUILDS = ["pure", pytest.param("compiled", marks=pytest.mark.skipif(
    not codec.COMPILED, reason="wsrouter.ws._frames not built (make install builds it)"))]


def _stream(seed: int) -> tuple[bytes, bytes]:
    """Client frames in one burst, and the payload bytes the target must receive."""
    rng = random.Random(seed)
    frames, payload = [], []
    for _ in range(300):
        kind = rng.randrange(10)
        data = rng.randbytes(rng.choice((0, 1, 31, 32, 125, 126, 1000, 70000)) if kind else 5)
        if kind == 0:
            frames.append(frame(9, data))  # a ping between the runs
            continue
        if kind == 1:
            frames.append(frame(2, data[:40], fin=False, mask=rng.randbytes(4)) + frame(0, data[40:]))
        else:
            frames.append(frame(2, data, mask=rng.randbytes(4)))
        payload.append(data)
    return b"".join(frames), b"".join(payload)


@pytest.mark.parametrize("idle_timeout", [None, 60], ids=["no-idle-timeout", "idle-timeout"])
@pytest.mark.parametrize("build", BUILDS)
@pytest_twisted.inlineCallbacks
def test_pipelined_frames_reach_the_target_intact(build, idle_timeout, monkeypatch):
    """Hundreds of frames written at once reach a TCP echo byte for byte and come back, with either codec."""
    if build == "pure":
        monkeypatch.setattr(parser_module, "_scan_binary", codec.py_scan_binary)
        monkeypatch.setattr(parser_module, "unmask", codec.py_unmask)
    runs = []
    original = Bridge.binary_messages

    def counted(self, payloads):
        runs.append(len(payloads))
        original(self, payloads)

    monkeypatch.setattr(Bridge, "binary_messages", counted)
    port, factory = listen_target(lambda: RecordingTarget(echo=True))
    options = {} if idle_timeout is None else {"idle_timeout": idle_timeout}
    router = start_router(routes=[f"/echo=tcp://127.0.0.1:{port.getHost().port}"], **options)
    burst, expected = _stream(14)

    def client():
        sock = rawws.upgrade(router.port_number, "/echo")
        try:
            sock.sendall(burst)
            reader = rawws.FrameReader(sock)
            reader.read_until(len(expected))
            return reader.received, reader.sha.hexdigest()
        finally:
            sock.close()

    try:
        received, digest = yield in_thread(client)
        assert bytes(factory.connections[0].received) == expected
        assert (received, digest) == (len(expected), hashlib.sha256(expected).hexdigest())
        assert max(runs) > 1, "the runs went message by message"
    finally:
        yield router.stopService()
        yield port.stopListening()
