"""
The fault matrix (docs/faults.md): each fault end to end, with a real peer
on loopback (a router in this process or as its own process, real target
sockets and programs, the ``websockets`` client or the raw one of
L{tests.rawws}).  Faults already covered elsewhere are listed in
docs/faults.md with their tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from websockets.exceptions import ConnectionClosed

from . import rawws
from .support import (
    REPO,
    RecordingTarget,
    RouterProcess,
    connect,
    free_port,
    handshake_status,
    in_thread,
    listen_target,
    router_process,
    start_router,
)

PROGRAMS = REPO / "tests" / "programs"
MiB = 1024 * 1024


def reset(sock: socket.socket) -> None:
    """Close C{sock} with a TCP RST (SO_LINGER on, timeout 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def until(condition: Any, timeout: float = 15.0) -> defer.Deferred[None]:
    """Fires once C{condition()} is true, polling on the reactor; fails after C{timeout} seconds."""
    @defer.inlineCallbacks
    def poll() -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout} s")
            yield task.deferLater(reactor, 0.02, lambda: None)
    return poll()


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    return rawws.frame_header(len(payload), opcode) + payload


# -- target faults ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_target_that_resets_after_accepting_closes_the_client_1011():
    """A target that accepts, reads, then resets the connection (RST) gets the client a 1011 close with a reason."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    got = []

    def serve() -> None:
        conn, _ = listener.accept()
        got.append(conn.recv(100))
        reset(conn)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{listener.getsockname()[1]}"])

    def client() -> tuple[int, str]:
        with connect(router.url + "/") as ws:
            ws.send(b"hello")
            try:
                ws.recv(timeout=15)
            except ConnectionClosed as e:
                assert e.rcvd is not None
                return e.rcvd.code, e.rcvd.reason
        raise AssertionError("the session stayed open")

    try:
        code, reason = yield in_thread(client)
        assert got == [b"hello"]
        assert code == 1011 and reason, (code, reason)
        yield until(lambda: not router.gateway.sessions)
    finally:
        yield router.stopService()
        server.join(5)
        listener.close()


class SlowAnswer(protocol.Protocol):
    """Answers each read after a second, in three pieces a fifth of a second apart."""

    def dataReceived(self, data: bytes) -> None:
        for index, piece in enumerate((data[:1], data[1:2], data[2:])):
            reactor.callLater(1.0 + 0.2 * index, self.transport.write, piece.upper())


@pytest_twisted.inlineCallbacks
def test_target_that_answers_slowly_is_waited_for():
    """A target that answers each message late and in pieces keeps the session open and every byte arrives."""
    port, _ = listen_target(SlowAnswer)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])

    def client() -> bytes:
        got = b""
        with connect(router.url + "/") as ws:
            for word in (b"one", b"two", b"three"):
                ws.send(word)
                wanted = len(got) + len(word)
                while len(got) < wanted:
                    got += ws.recv(timeout=15)
        return got

    try:
        assert (yield in_thread(client)) == b"ONETWOTHREE"
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_target_that_half_closes_ends_the_session_1000_after_its_data():
    """A target that shuts its write side (still reading) gets its data to the client, then 1000, then is closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    seen = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            conn.sendall(b"goodbye" * 10000)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                seen.append(chunk)
            seen.append(b"<eof>")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{listener.getsockname()[1]}"])

    def client() -> tuple[bytes, int | None]:
        got = b""
        with connect(router.url + "/") as ws:
            try:
                while True:
                    got += ws.recv(timeout=15)
            except ConnectionClosed as e:
                return got, e.rcvd.code if e.rcvd else None

    try:
        got, code = yield in_thread(client)
        yield in_thread(server.join, 20)
        assert got == b"goodbye" * 10000
        assert code == 1000
        assert seen[-1:] == [b"<eof>"], "the router left the target's connection open"
    finally:
        yield router.stopService()
        listener.close()


@pytest_twisted.inlineCallbacks
def test_unresolvable_target_name_is_refused_with_502():
    """A route whose target host does not resolve (a .invalid name) is refused with 502 naming it."""
    router = start_router(routes=["/*=tcp://no-such-target.invalid:5900"])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/")
        assert status == 502
        assert b"no-such-target.invalid" in body, body
        assert not router.gateway.sessions
    finally:
        yield router.stopService()


def test_target_that_stops_reading_fills_the_clients_send_buffer(tmp_path: Path):
    """A target that never reads pauses the client: its sends stop being taken, and the router stays small."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    held = []
    server = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    server.start()
    with router_process(tmp_path, "--max-message-size", str(1024 * MiB),
                        "--route", f"/*=tcp://127.0.0.1:{listener.getsockname()[1]}") as router:
        baseline = router.status("VmRSS")
        sock = rawws.upgrade(router.port, "/")
        sock.sendall(rawws.frame_header(512 * MiB))  # one streamed message, far more than any buffer
        sock.setblocking(False)
        block, sent, stalled_since = b"\0" * 65536, 0, None
        while sent < 512 * MiB:
            try:
                sent += sock.send(block)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2:
                    break
                time.sleep(0.01)
        growth = router.status("VmHWM") - baseline
        reset(sock)
    server.join(5)
    for conn in held:
        conn.close()
    listener.close()
    print(f"client handed over {sent / MiB:.1f} MiB before stalling; router grew {growth} KiB")
    assert sent < 64 * MiB, f"the client could send {sent // MiB} MiB to a target that reads nothing"
    assert growth < 32 * 1024, f"the router grew by {growth} KiB"


# -- client faults ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_client_that_vanishes_without_a_close_frame_ends_the_target_connection():
    """A client gone without a close frame (FIN, then RST): the target gets its data, then is closed."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])
    try:
        for index, vanish in enumerate((socket.socket.close, reset)):
            def client(vanish: Any = vanish) -> None:
                sock = rawws.upgrade(router.port_number, "/")
                sock.sendall(frame(b"last words"))
                time.sleep(0.2)
                vanish(sock)

            yield in_thread(client)
            yield until(lambda index=index: len(factory.connections) > index)
            received = yield factory.connections[index].lost
            assert received == b"last words"
            yield until(lambda: not router.gateway.sessions)
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_client_that_keeps_sending_after_its_close_frame_is_not_relayed():
    """Frames a client sends after its close frame never reach the target; the router answers the close."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"])

    def client() -> int | None:
        sock = rawws.upgrade(router.port_number, "/")
        sock.sendall(frame(b"before") + rawws.close_frame(1000) + frame(b"after") * 50)
        reader = rawws.FrameReader(sock)
        reader.read_to_close()
        with contextlib.suppress(OSError):  # the router may already have closed: also fine
            sock.sendall(frame(b"later") * 50)
        sock.close()
        return reader.close_code

    try:
        code = yield in_thread(client)
        assert code == 1000
        received = yield factory.connections[0].lost
        assert received == b"before"
    finally:
        yield router.stopService()
        yield port.stopListening()


def test_client_that_stops_reading_during_shutdown_does_not_hold_it_up(tmp_path: Path):
    """A client that reads nothing while the target floods it: SIGTERM still ends the router after the grace."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    stop = threading.Event()

    def flood() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(0.5)
            while not stop.is_set():
                try:
                    conn.sendall(b"x" * 65536)
                except TimeoutError:
                    continue
                except OSError:
                    return

    server = threading.Thread(target=flood, daemon=True)
    server.start()
    grace = 2
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--shutdown-grace", str(grace),
                            "--route", f"/*=tcp://127.0.0.1:{listener.getsockname()[1]}"], port, tmp_path / "log")
    try:
        sock = rawws.upgrade(port, "/")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(1)  # buffers fill: the router is now paused on this client
        router.process.send_signal(signal.SIGTERM)
        status = router.process.wait(grace + 30)
        assert status == 0, router.log()
    finally:
        router.stop()
        stop.set()
        server.join(5)
        listener.close()
    sock.close()


# -- shutdown under live traffic -----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_shutdown_under_live_traffic_delivers_every_message_the_client_sent_before_the_close():
    """Stopping the router mid-stream: the target gets, in order and whole, every message sent before the close came."""
    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/*=tcp://127.0.0.1:{port.getHost().port}"], shutdown_grace=10)
    size = 1000

    def message(n: int) -> bytes:
        return n.to_bytes(4, "big") * (size // 4)

    def client() -> tuple[int, int | None]:
        sent = 0
        with connect(router.url + "/") as ws:
            try:
                while sent < 200_000:
                    ws.send(message(sent))
                    sent += 1
            except ConnectionClosed as e:
                return sent, e.rcvd.code if e.rcvd else None
        return sent, None

    try:
        sending = in_thread(client)
        yield until(lambda: factory.connections and len(factory.connections[0].received) > 2 * MiB)
        yield router.stopService()
        sent, code = yield sending
        received = yield factory.connections[0].lost
    finally:
        yield port.stopListening()
    print(f"{sent} messages of {size} bytes sent before the close, {len(received) // size} delivered")
    assert code == 1001
    assert len(received) % size == 0, "a message was cut"
    assert received == b"".join(message(n) for n in range(len(received) // size)), "messages lost or reordered"
    assert len(received) // size == sent, f"{sent} messages sent before the close, {len(received) // size} delivered"


# -- wrapped programs ----------------------------------------------------------------------


def test_wrapped_program_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path):
    """On shutdown a wrapped program that ignores SIGTERM gets SIGKILL once the grace period is over."""
    port = free_port()
    program = [sys.executable, str(PROGRAMS / "ignore_term.py"), str(port)]
    router = RouterProcess(["--shutdown-grace", "1", "--wrap", "respawn", str(port), "--", *program],
                           port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.recv(timeout=15) == b"stubborn\n"
        pid = int(re.findall(r"ignoring SIGTERM, pid (\d+)", router.log())[0])
    finally:
        assert router.stop(timeout=30) == 0
    log = router.log()
    assert "did not stop within the grace period; sending SIGKILL" in log, log
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"program {pid} outlived the router")


# -- recordings ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_recording_directory_that_becomes_unwritable_leaves_sessions_working(tmp_path: Path):
    """Once the record directory is replaced by a file, new sessions go on unrecorded and the router logs it."""
    from .test_record_e2e import ErrorLog

    directory = tmp_path / "rec"
    router = start_router(routes=["/echo=echo:"], record=str(directory))

    def session() -> bytes:
        with connect(router.url + "/echo") as ws:
            ws.send(b"ping")
            return ws.recv(timeout=10)

    try:
        assert (yield in_thread(session)) == b"ping"
        yield until(lambda: not router.gateway.sessions)
        assert len(list(directory.iterdir())) == 1
        directory.rename(tmp_path / "moved")
        directory.write_bytes(b"")  # a file where the directory was: not even root can write there
        with ErrorLog() as errors:
            assert (yield in_thread(session)) == b"ping"
            yield until(lambda: not router.gateway.sessions)
    finally:
        yield router.stopService()
    texts = errors.texts()
    assert len(texts) == 1 and str(directory) in texts[0], texts


@pytest_twisted.inlineCallbacks
def test_recording_failures_are_counted_in_metrics(tmp_path: Path):
    """Sessions whose recording could not be written are counted as wsrouter_recording_errors_total."""
    from .test_ops import get, sample
    from .test_record_e2e import ErrorLog

    directory = tmp_path / "a-file" / "rec"
    directory.parent.write_bytes(b"")  # the directory can never be made
    router = start_router(routes=["/echo=echo:"], record=str(directory), ops={"metrics": "/metrics"})

    def session() -> bytes:
        with connect(router.url + "/echo") as ws:
            ws.send(b"ping")
            return ws.recv(timeout=10)

    try:
        with ErrorLog():
            for _ in range(2):
                assert (yield in_thread(session)) == b"ping"
                yield until(lambda: not router.gateway.sessions)
        status, text = yield in_thread(get, router.http + "/metrics")
    finally:
        yield router.stopService()
    assert status == 200
    assert sample(text, "wsrouter_recording_errors_total") == 2


def test_the_fault_table_names_only_tests_that_exist():
    """Every C{file.py::test} that docs/faults.md names is a test function in that file."""
    table = (REPO / "docs" / "faults.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", table)
    assert len(named) > 30
    missing = [f"{module}::{name}" for module, name in named
               if not re.search(rf"^(async )?def {name}\(", (REPO / "tests" / module).read_text(), re.M)]
    assert not missing, missing
