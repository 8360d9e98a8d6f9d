"""
Wrapped programs end to end: a real router process starts a real TCP server
under the rebind shim and proxies WebSocket clients to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .other_user import assert_only_the_directory_refuses, needs_root
from .support import REPO, RouterProcess, child_env, connect, free_port, handshake_status, wait_for_port

#: The real interpreter binary: a shell-script wrapper (pyenv) would take
#: the shim for itself and hide it from the server.
PYTHON = os.path.realpath(sys.executable)
TCP_SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")
PROGRAMS = REPO / "tests" / "programs"


def server(port: int, *extra: str, host: str = "0.0.0.0", family: str = "4") -> list[str]:
    return [PYTHON, TCP_SERVER, "--host", host, "--port", str(port), "--family", family, *extra]


def wrapped_router(tmp_path: Path, args: list[str], port: int, name: str = "router.log") -> RouterProcess:
    return RouterProcess(args, port, tmp_path / name)


def first_message(port: int, path: str = "/", timeout: float = 10) -> bytes:
    with connect(f"ws://127.0.0.1:{port}{path}") as ws:
        return ws.recv(timeout=timeout)


def pids_in_log(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)", log)]


def assert_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


@pytest.mark.parametrize("host, family", [("0.0.0.0", "4"), ("127.0.0.1", "4"), ("::", "6"), ("::", "dual")])
def test_wrap_short_form_moves_the_program(tmp_path, host, family):
    """`--wrap respawn PORT -- server PORT`: the router owns PORT and relays to the moved server, any bind family."""
    if family != "4" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    router = wrapped_router(tmp_path, ["--wrap", "respawn", str(port), "--",
                                       *server(port, "--banner", "hi", "--echo", host=host, family=family)], port)
    try:
        def session():
            with connect(f"ws://127.0.0.1:{port}/any") as ws:
                banner = ws.recv(timeout=10)
                ws.send(b"echo me")
                return banner, ws.recv(timeout=10)

        banner, echoed = session()
        assert banner == b"hi\n"
        assert echoed == b"echo me"
        assert f"asked for port {port}; listening on" in router.log()
    finally:
        router.stop()


def test_wrap_without_port_listens_where_the_program_asked(tmp_path):
    """With no listener given, the router listens on the loopback port the wrapped program binds."""
    port = free_port()
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wsrouter", "--wrap", "respawn", "--", *server(port, "--banner", "follow")],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
        )
    try:
        wait_for_port(port)
        assert first_message(port) == b"follow\n"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    for pid in pids_in_log(log_path.read_text()):
        assert_gone(pid)


def test_exit_mode_exits_with_program_status(tmp_path):
    """In exit mode the router exits with the wrapped program's exit status when it ends."""
    port = free_port()
    program = [PYTHON, str(PROGRAMS / "bind_then_exit.py"), str(port), "0.5", "3"]
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wsrouter", "--wrap", "exit", str(port), "--", *program],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
        )
    try:
        assert process.wait(20) == 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert "exited with status 3; the router exits too" in log_path.read_text()


def test_ignore_mode_keeps_serving_a_daemonized_program(tmp_path):
    """In ignore mode a program that forks a server and exits keeps being served, and is stopped with the router."""
    port = free_port()
    program = [PYTHON, str(PROGRAMS / "daemonize.py"), str(port)]
    router = wrapped_router(tmp_path, ["--wrap", "ignore", str(port), "--", *program], port)
    try:
        deadline = time.monotonic() + 10
        while "ignored, as it may have daemonized" not in router.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ignored, as it may have daemonized" in router.log()
        assert first_message(port) == b"daemon\n"
        daemon_pid = int(re.search(r"daemon pid (\d+)", router.log()).group(1))
    finally:
        router.stop()
    assert_gone(daemon_pid)


def test_ignore_mode_answers_502_at_once_when_the_program_is_gone(tmp_path):
    """In ignore mode, once the program has exited and nothing listens, a client gets 502 and why at once."""
    port = free_port()
    program = [PYTHON, str(PROGRAMS / "bind_then_exit.py"), str(port), "0.2", "0"]
    router = wrapped_router(tmp_path, ["--connect-timeout", "40", "--handshake-timeout", "60",
                                       "--wrap", "ignore", str(port), "--", *program], port)
    try:
        deadline = time.monotonic() + 10
        while "ignored, as it may have daemonized" not in router.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        status, body = handshake_status(f"ws://127.0.0.1:{port}/", open_timeout=60)
        waited = time.monotonic() - started
        assert status == 502
        assert b"exited with status 0 and is not restarted (mode ignore)" in body
        assert waited < 20, f"the client waited {waited:.1f} s, as for a restart"
    finally:
        router.stop()


def test_respawn_backs_off_and_recovers(tmp_path):
    """A program that dies right after starting is restarted with a doubling delay, and serves after each restart."""
    port = free_port()
    program = [PYTHON, str(PROGRAMS / "bind_then_exit.py"), str(port), "0", "1"]
    router = wrapped_router(tmp_path, ["--wrap", "respawn", str(port), "--", *program], port)
    try:
        deadline = time.monotonic() + 15
        while router.log().count("restarting in") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        delays = [float(d) for d in re.findall(r"restarting in ([\d.]+) s", router.log())]
        assert delays[:3] == [1.0, 2.0, 4.0]
    finally:
        router.stop()
    for pid in pids_in_log(router.log()):
        assert_gone(pid)


def test_readiness_wait_and_503(tmp_path):
    """A client arriving before the program binds waits for it; if it never binds, the client gets 503."""
    port = free_port()
    late = [PYTHON, str(PROGRAMS / "late_server.py"), str(port), "1.5", "late"]
    router = wrapped_router(tmp_path, ["--wrap", "respawn", str(port), "--", *late], port)
    try:
        assert first_message(port) == b"late\n"
    finally:
        router.stop()

    port = free_port()
    never = [PYTHON, str(PROGRAMS / "late_server.py"), str(port), "600", "never"]
    router = wrapped_router(tmp_path, ["--connect-timeout", "1", "--wrap", "respawn", str(port), "--", *never],
                            port, "router2.log")
    try:
        status, body = handshake_status(f"ws://127.0.0.1:{port}/")
        assert status == 503
        assert b"has not bound its port" in body
    finally:
        router.stop()
    for pid in pids_in_log(router.log()):
        assert_gone(pid)


def test_shutdown_kills_the_whole_process_group(tmp_path):
    """On router shutdown the wrapped program and a child it started are both gone."""
    port = free_port()
    program = [PYTHON, str(PROGRAMS / "server_with_child.py"), str(port)]
    router = wrapped_router(tmp_path, ["--wrap", "respawn", str(port), "--", *program], port)
    try:
        assert first_message(port) == b"parent\n"
        child_pid = int(re.search(r"child pid (\d+)", router.log()).group(1))
        program_pid = pids_in_log(router.log())[0]
        os.kill(child_pid, 0)
    finally:
        assert router.stop() == 0
    assert_gone(program_pid)
    assert_gone(child_pid)


def test_two_wrapped_programs_on_routes(tmp_path):
    """Two wrapped programs binding the same port are each served on their own route of one listener."""
    program_port = free_port()
    port = free_port()
    routes = []
    for name in ("alpha", "beta"):
        command = shlex.join(server(program_port, "--banner", name, host="127.0.0.1"))
        routes += ["--route", f"/{name}=wrap:respawn:{command}"]
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", *routes], port, tmp_path / "router.log")
    try:
        assert first_message(port, "/alpha") == b"alpha\n"
        assert first_message(port, "/beta") == b"beta\n"
    finally:
        router.stop()
    assert len(pids_in_log(router.log())) == 2
    for pid in pids_in_log(router.log()):
        assert_gone(pid)


def test_wrapped_output_goes_to_the_log(tmp_path):
    """The wrapped program's stdout and stderr lines appear in the router's log, prefixed with its name."""
    port = free_port()
    router = wrapped_router(tmp_path, ["--wrap", "respawn", str(port), "--", *server(port, "--banner", "x")], port)
    try:
        first_message(port)
        assert re.search(r"\[python[\d.]*\] listening " + str(port), router.log())
    finally:
        router.stop()


def test_missing_program_is_a_clear_error():
    """A wrapped program that does not exist stops the router at once with a message naming it."""
    result = subprocess.run([sys.executable, "-m", "wsrouter", "--wrap", "respawn", "--", "no-such-program-xyz"],
                            check=False, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=30)
    assert result.returncode == 2  # a start-up check (preflight), like every config problem
    assert "'no-such-program-xyz' not found" in result.stderr
    assert "Traceback" not in result.stderr


# -- the private socket ------------------------------------------------------------


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process C{pid} listens on, from /proc (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def router_in(tmpdir: Path, log_path: Path, args: list[str], port: int):
    """A router process whose TMPDIR (where private socket directories go) is C{tmpdir}."""
    env = child_env(TMPDIR=str(tmpdir))
    env.pop("XDG_RUNTIME_DIR", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "wsrouter", *args], stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=REPO)
    try:
        wait_for_port(port)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(15)


@pytest.fixture
def short_tmp():
    """A short temporary directory (pytest's are too long for Unix socket names), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="wsr-wrap-"))
    path.chmod(0o711)  # like /tmp, others may pass: only the program's own directory keeps them out
    try:
        yield path
    finally:
        shutil.rmtree(path)


def private_socket_in(log: str) -> Path:
    found = re.search(r"listening on the private socket (\S+) instead", log)
    assert found is not None, log
    return Path(found.group(1))


def test_wrapped_program_gets_a_private_socket_by_default(tmp_path, short_tmp):
    """
    By default the program listens on no TCP port but on a Unix socket in a 0700 directory of its own, a WebSocket
    client reaches it through the router, and stopping the router removes the socket and its directory.
    """
    port = free_port()
    log_path = tmp_path / "router.log"
    args = ["--wrap", "respawn", str(port), "--", *server(port, "--banner", "hi", "--echo")]
    with router_in(short_tmp, log_path, args, port) as router:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.recv(timeout=10) == b"hi\n"
            ws.send(b"through the router")
            assert ws.recv(timeout=10) == b"through the router"
        log = log_path.read_text()
        sock = private_socket_in(log)
        directory = sock.parent
        assert directory.parent == short_tmp
        info = directory.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        assert [entry.name for entry in directory.iterdir()] == [sock.name] and sock.is_socket()
        (program_pid,) = pids_in_log(log)
        assert listening_tcp_ports(program_pid) == set()
        assert listening_tcp_ports(router.pid) == {port}
        router.send_signal(signal.SIGTERM)
        assert router.wait(15) == 0
    assert_gone(program_pid)
    assert list(short_tmp.iterdir()) == []


@needs_root
def test_another_user_cannot_reach_the_wrapped_program(tmp_path, short_tmp):
    """A process of another uid gets EACCES connecting to the wrapped program's socket, while the router serves."""
    port = free_port()
    log_path = tmp_path / "router.log"
    args = ["--wrap", "respawn", str(port), "--", *server(port, "--banner", "hi")]
    with router_in(short_tmp, log_path, args, port):
        assert first_message(port) == b"hi\n"
        sock = private_socket_in(log_path.read_text())
        assert_only_the_directory_refuses(str(sock))
        assert first_message(port) == b"hi\n"


def test_a_restarted_program_leaves_no_old_socket(tmp_path, short_tmp):
    """When a respawned program is killed, its socket file goes; the next run's is the only one, and is served."""
    port = free_port()
    log_path = tmp_path / "router.log"
    args = ["--wrap", "respawn", str(port), "--", *server(port, "--banner", "again")]
    with router_in(short_tmp, log_path, args, port):
        assert first_message(port) == b"again\n"
        first = private_socket_in(log_path.read_text())
        (pid,) = pids_in_log(log_path.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(pids_in_log(log_path.read_text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first_message(port) == b"again\n"
        sockets = list(first.parent.iterdir())
        assert len(sockets) == 1 and sockets[0] != first
    assert list(short_tmp.iterdir()) == []


def test_wrap_socket_loopback_keeps_the_loopback_port(tmp_path, short_tmp):
    """`--wrap-socket loopback` moves the program to a loopback TCP port as before, with no private directory."""
    port = free_port()
    log_path = tmp_path / "router.log"
    args = ["--wrap", "respawn", "--wrap-socket", "loopback", str(port), "--", *server(port, "--banner", "lo")]
    with router_in(short_tmp, log_path, args, port):
        assert first_message(port) == b"lo\n"
        log = log_path.read_text()
        moved = re.search(rf"asked for port {port}; listening on 127\.0\.0\.1:(\d+) instead", log)
        assert moved is not None, log
        (program_pid,) = pids_in_log(log)
        assert listening_tcp_ports(program_pid) == {int(moved.group(1))}
        assert list(short_tmp.iterdir()) == []


def test_the_program_sees_the_websocket_client(tmp_path, short_tmp):
    """On a private socket, the program's accept() and getpeername() show the WebSocket client's address and port."""
    port = free_port()
    log_path = tmp_path / "router.log"
    args = ["--wrap", "respawn", str(port), "--", *server(port, "--tell-peer")]
    with router_in(short_tmp, log_path, args, port):
        # Our own socket, so its port is known before the program answers and closes.
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        client_port = sock.getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}/", sock=sock) as ws:
            assert ws.recv(timeout=10) == f"peer 127.0.0.1 {client_port} 127.0.0.1 {client_port}\n".encode()
