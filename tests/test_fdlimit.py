"""
Running out of file descriptors: the pure thresholds, the guard on a fake
clock and counter, and a real router process under a lowered limit that
refuses with 503, keeps its sessions, recovers, and survives a flood of
connections that never handshake.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from wsrouter.config import EchoTarget, ExecTarget, Route, TcpTarget, build_config, route_from_string
from wsrouter.descriptors import (
    RECOUNT_INTERVAL,
    RESUME_CHECK_INTERVAL,
    STALE_AFTER,
    DescriptorGuard,
    OpenFileLimit,
    accept_pause_level,
    accept_resume_level,
    count_open_descriptors,
    has_room,
    reserve_for,
    session_cost,
    sessions_that_fit,
)

from .support import PYTHON, REPO, child_env, connect, free_port, handshake_status, wait_for_port

# -- pure decisions ----------------------------------------------------------------


@pytest.mark.parametrize("limit, reserve", [(64, 32), (1024, 32), (1600, 32), (1700, 34), (100_000, 2000)])
def test_reserve_is_32_or_two_percent(limit, reserve):
    """The reserve is 32 descriptors or 2 % of the limit, whichever is more."""
    assert reserve_for(limit) == reserve


@pytest.mark.parametrize("open_now, needed, room", [(30, 2, True), (31, 1, True), (31, 2, False), (40, 0, False)])
def test_has_room_keeps_the_reserve_free(open_now, needed, room):
    """A session fits only if the reserve stays free afterwards (limit 64, reserve 32)."""
    assert has_room(open_now, needed, 64, 32) is room


def test_accepting_pauses_inside_the_reserve_and_resumes_below():
    """Accepting pauses when half the reserve is gone and resumes some way below, above the session threshold."""
    limit, reserve = 64, 32
    assert limit - reserve < accept_resume_level(limit, reserve) < accept_pause_level(limit, reserve) < limit
    assert accept_pause_level(limit, reserve) == 48


def test_session_cost_per_target_kind():
    """A session costs its target's descriptors, plus one for a recording."""
    config = build_config({"routes": [route_from_string("/a=echo:")]})
    assert session_cost(Route("/", TcpTarget("127.0.0.1", 1)), config) == 1
    assert session_cost(Route("/", EchoTarget()), config) == 0
    assert session_cost(Route("/", ExecTarget(("cat",))), config) == 6
    assert session_cost(Route("/", TcpTarget("127.0.0.1", 1), record="/tmp/x"), config) == 2


def test_sessions_that_fit():
    """What is left after the reserve and what is open, divided by a session's descriptors."""
    assert sessions_that_fit(1024, 32, 12, 2) == 490
    assert sessions_that_fit(64, 32, 40, 2) == 0


def test_open_file_limit_description():
    """The start-up line says the limit and what raising it did."""
    assert OpenFileLimit(1024, 4096, 4096).describe() == "open-file limit 4096 (raised from 1024)"
    assert OpenFileLimit(4096, 4096, 4096).describe() == "open-file limit 4096 (the hard limit)"
    assert "could not raise" in OpenFileLimit(1024, 1024, 4096, error="nope").describe()


# -- the guard, on a fake clock and counter ---------------------------------------------


class FakePort:
    def __init__(self) -> None:
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Counter:
    def __init__(self, value: int):
        self.value = value
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


def test_guard_counts_only_when_the_estimate_comes_close():
    """Far from the limit no descriptors are counted; near it they are, at most every RECOUNT_INTERVAL."""
    clock, counter = Clock(), Counter(10)
    guard = DescriptorGuard(clock, 1000, count=counter)
    counter.calls = 0
    clock.advance(1)
    for _ in range(400):
        assert guard.admit(2)
    assert counter.calls == 0  # 10 + 800 is still under 1000 - 32
    assert guard.admit(2) and counter.calls == 0
    counter.value = 900
    results = [guard.admit(2) for _ in range(200)]
    assert counter.calls == 1  # once, on coming close; then trusted within the interval
    assert results[-1] is False
    clock.advance(RECOUNT_INTERVAL)
    counter.value = 20
    assert guard.admit(2)
    assert counter.calls == 2


def test_guard_recounts_stale_estimates():
    """An estimate older than STALE_AFTER is recounted even when far from the limit."""
    clock, counter = Clock(), Counter(10)
    guard = DescriptorGuard(clock, 1000, count=counter)
    clock.advance(STALE_AFTER)
    guard.admit(1)
    assert counter.calls == 2


def test_guard_refuses_near_the_limit_and_admits_again_after_closes():
    """Sessions are refused once they would eat into the reserve and admitted again once descriptors are free."""
    clock, counter = Clock(), Counter(20)
    guard = DescriptorGuard(clock, 64, count=counter)
    admitted = 0
    while guard.admit(2):
        admitted += 1
        counter.value += 2
    assert admitted == 6 and guard.refusing  # 20 + 12 = 32 = 64 - 32
    counter.value = 24
    assert not guard.admit(2)  # within the recount interval the estimate stands
    clock.advance(RECOUNT_INTERVAL)
    assert guard.admit(2) and not guard.refusing


def test_guard_pauses_accepting_then_resumes():
    """Accepted connections that eat half the reserve pause the listeners until a check finds room."""
    clock, counter, port = Clock(), Counter(40), FakePort()
    guard = DescriptorGuard(clock, 64, count=counter, ports=lambda: [port])
    clock.advance(1)
    for _ in range(7):
        counter.value += 1  # the accepted socket is open when the guard hears of it
        assert guard.accepted()
    assert port.reading
    counter.value += 1
    assert guard.accepted()  # the 8th: 48 open, half the reserve gone
    assert not port.reading and guard.accept_paused
    clock.advance(RESUME_CHECK_INTERVAL)
    assert not port.reading  # still 48 open
    counter.value = 30
    clock.advance(RESUME_CHECK_INTERVAL)
    assert port.reading and not guard.accept_paused


def test_guard_closes_a_connection_at_the_very_edge():
    """With almost nothing left, an accepted connection is not kept."""
    clock = Clock()
    guard = DescriptorGuard(clock, 64, count=Counter(62), ports=lambda: [])
    clock.advance(1)
    assert not guard.accepted()
    guard.stop()


def test_guard_off_without_a_limit_or_a_count():
    """An unlimited limit or an uncountable process means no accounting: everything is admitted."""
    assert DescriptorGuard(Clock(), None).admit(10**9)
    assert DescriptorGuard(Clock(), 64, count=lambda: None).admit(10**9)


def test_count_open_descriptors_sees_new_ones():
    """Opening a descriptor raises the count by one."""
    before = count_open_descriptors()
    with open(__file__, "rb"):
        assert count_open_descriptors() == before + 1


def test_raising_the_soft_limit_to_the_hard_one():
    """raise_open_file_limit lifts the soft limit to the hard limit and reports both."""
    code = ("import resource; from wsrouter.descriptors import raise_open_file_limit as r; o = r(); "
            "print(o.before, o.now, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    result = subprocess.run([*_limit_descriptors(50, 90), PYTHON, "-c", code], capture_output=True, text=True,
                            env=child_env(), cwd=REPO, timeout=30, check=False)
    assert result.stdout.split() == ["50", "90", "90"], result.stderr


# -- a real router under a lowered limit -------------------------------------------------


def _limit_descriptors(soft: int, hard: int) -> list[str]:
    """
    A command prefix that lowers the open-file limit, then runs the rest of
    the command; unlike preexec_fn, safe while this process has threads.
    """
    code = ("import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
            "os.execv(sys.argv[3], sys.argv[3:])")
    return [PYTHON, "-c", code, str(soft), str(hard)]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(60)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


@contextmanager
def echo_server() -> Iterator[int]:
    """A threaded TCP echo server on loopback (independent of the reactor)."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def limited_router(
    tmp_path: Path, soft: int, hard: int, target_port: int
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        command = [PYTHON, "-m", "wsrouter", f"127.0.0.1:{port}", f"127.0.0.1:{target_port}"]
        router = subprocess.Popen(
            [*_limit_descriptors(soft, hard), *command],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
        )
    try:
        wait_for_port(port)
        yield router, port, log_path
    finally:
        if router.poll() is None:
            router.terminate()
            try:
                router.wait(15)
            except subprocess.TimeoutExpired:
                router.kill()
                router.wait(5)


def _echoes(ws, payload: bytes) -> bool:
    ws.send(payload)
    return ws.recv(timeout=10) == payload


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def test_lowered_limit_refuses_with_503_keeps_sessions_and_recovers(tmp_path):
    """
    Under a limit of 80, sessions beyond the room left are refused with 503; open ones go on; closing some lets new
    ones in.
    """
    with echo_server() as target_port, limited_router(tmp_path, 40, 80, target_port) as (router, port, log_path):
        url = f"ws://127.0.0.1:{port}/"
        with ExitStack() as stack:
            sessions = []
            refused = None
            for _ in range(60):
                try:
                    ws = stack.enter_context(connect(url))
                except Exception:
                    refused = handshake_status(url)
                    break
                assert _echoes(ws, b"hello %d" % len(sessions))
                sessions.append(ws)
            assert refused == (503, b"too many open connections\n"), refused
            assert 10 <= len(sessions) <= 24, len(sessions)
            assert all(_echoes(ws, b"still here") for ws in sessions)
            for ws in sessions[:3]:
                ws.close()
            time.sleep(0.5)
            with connect(url) as again:
                assert _echoes(again, b"room again")
            assert all(_echoes(ws, b"and still") for ws in sessions[3:])
        assert router.poll() is None
    text = log_path.read_text()
    assert "open-file limit 80 (raised from 40): room for about" in text
    assert "refusing new sessions with 503 'too many open connections'" in text
    assert "503 too many open connections (retry later)" in text
    assert "descriptors available again" in text
    assert "Traceback" not in text and "EMFILE" not in text


def test_connection_flood_pauses_accepting_without_busy_looping(tmp_path):
    """
    Connections that never handshake make the router stop accepting (no crash, no spinning) and resume once they
    close.
    """
    with echo_server() as target_port, limited_router(tmp_path, 64, 64, target_port) as (router, port, log_path):
        flood = []
        try:
            for _ in range(120):
                s = socket.socket()
                s.settimeout(0.5)
                try:
                    s.connect(("127.0.0.1", port))
                except OSError:
                    s.close()
                    break
                flood.append(s)
            time.sleep(0.5)
            before = _cpu_seconds(router.pid)
            time.sleep(1.0)
            assert _cpu_seconds(router.pid) - before < 0.3
            assert router.poll() is None
        finally:
            for s in flood:
                s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with connect(f"ws://127.0.0.1:{port}/") as ws:
                    assert _echoes(ws, b"after the flood")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert router.poll() is None
    text = log_path.read_text()
    assert "not accepting new connections until some close" in text
    assert "accepting new connections again" in text
    assert "Traceback" not in text
