"""
websockify users switching: each websockify option either does the same in
wsrouter (lowered into the config schema, then run for real) or stops with
an error that says what to write instead.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.cli.tap import NOT_YET, ServeOptions
from wsrouter.config import load_config
from wsrouter.lifetime import LifetimeService

from .rawws import upgrade
from .support import PYTHON, REPO, RouterProcess, child_env, connect, free_port

TCP_SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")


def parsed(*argv: str) -> ServeOptions:
    options = ServeOptions()
    options.parseOptions(list(argv))
    return options


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "wsrouter", *args], capture_output=True, check=False, text=True,
                          env=child_env(), cwd=REPO, timeout=timeout)


# -- lowering, as data ------------------------------------------------------------------


def test_websockify_options_lower_into_the_schema():
    """Every websockify option wsrouter has lands on its schema key."""
    raw = parsed("--heartbeat", "7", "--run-once", "--timeout", "5", "--idle-timeout", "9",
                 "--session-idle-timeout", "30", "--log-file", "w.log", "--traffic",
                 "--web", ".", "--record", "rec", "8080", "127.0.0.1:5900")["raw"]
    assert raw == {
        "listen": ["tcp:8080:interface=127.0.0.1:backlog=1024"],
        "routes": [{"path": "/*", "target": "127.0.0.1:5900"}],
        "limits": {"ping_interval": "7", "session_idle_timeout": "30"},
        "recording": {"directory": "rec"},
        "web": {"root": "."},
        "lifetime": {"run_once": True, "start_timeout": "5", "idle_exit": "9"},
        "log": {"file": "w.log", "level": "debug", "traffic": True},
    }


def test_wrap_mode_lowers_to_a_program_table_and_route():
    """`--wrap-mode MODE PORT -- PROGRAM` is a [programs.NAME] table and the route /* -> program:NAME."""
    raw = parsed("--wrap-mode", "exit", "2023", "--", "/usr/sbin/in.telnetd", "-debug", "2023")["raw"]
    assert raw["programs"] == {"in.telnetd": {"mode": "exit", "command": ["/usr/sbin/in.telnetd", "-debug", "2023"],
                                              "ports": "2023", "keep_env": False}}
    assert raw["routes"] == [{"path": "/*", "target": "program:in.telnetd"}]
    assert raw["listen"] == ["tcp:2023:interface=127.0.0.1:backlog=1024"]


def test_wrap_without_port_follows_the_program():
    """With no listening port the router takes the port the program asks for."""
    raw = options_to_raw({"wrap": "respawn", "program": ["srv"]})
    assert raw["follow_program_port"] is True
    assert "listen" not in raw


def test_unix_target_lowers_to_a_unix_route():
    """`--unix-target PATH PORT` listens on PORT and routes /* to unix:///PATH (made absolute)."""
    raw = options_to_raw({"unix-target": "app.sock", "short_form": ("8080",)})
    assert raw["routes"] == [{"path": "/*", "target": "unix://" + os.path.abspath("app.sock")}]


@pytest.mark.parametrize("options, message", [
    ({"unix-target": "/a.sock", "short_form": ("8080", "h:1")}, "--unix-target PATH takes the listening"),
    ({"program": ["srv"]}, "needs --wrap MODE (websockify: --wrap-mode MODE)"),
    ({"wrap": "exit"}, "--wrap needs the program after --"),
    ({"short_form": ("8080",)}, "expected [HOST:]PORT TARGET_HOST:TARGET_PORT"),
])
def test_lowering_refuses_what_the_schema_cannot_say(options, message):
    """Half-given forms stop with a message saying what to write."""
    with pytest.raises(LoweringError, match=re.escape(message)):
        options_to_raw(options)


def test_lowered_command_line_builds_the_config():
    """The lowered command line builds the config: renamed limit, wrapped program on a /* route."""
    config = load_config(None, parsed("--session-idle-timeout", "3", "--wrap", "respawn", "2023",
                                      "--", "srv", "-p")["raw"])
    assert config.limits.session_idle_timeout == 3.0
    (route,) = config.routes
    assert route.target.argv == ("srv", "-p") and route.target.ports == "2023" and route.prefix
    assert config.programs == (route.target,)


def test_config_file_combined_with_the_command_line(tmp_path):
    """--config FILE is read and the command line's values win over the file's."""
    path = tmp_path / "router.toml"
    path.write_text('[limits]\nping_interval = 9\nconnect_timeout = 4\n[[routes]]\npath = "/"\ntarget = "echo:"\n')
    options = parsed("--config", str(path), "--ping", "5")
    assert options["config-file"] == str(path)
    assert options["config"].limits.ping_interval == 5.0
    assert options["config"].limits.connect_timeout == 4.0


def test_log_file_under_twistd_points_to_twistds_option():
    """Under twistd, --log-file says to use twistd's --logfile instead of being ignored."""
    from wsrouter.cli.tap import Options

    with pytest.raises(usage.UsageError, match="twistd's own --logfile"):
        Options().parseOptions(["--log-file", "x.log", "--route", "/=echo:"])


@pytest.mark.parametrize("argv, expected", [
    ([], ["serve"]),
    (["8080", "h:1"], ["serve", "8080", "h:1"]),
    (["--listen", "tcp:1"], ["serve", "--listen", "tcp:1"]),
    (["reload", "--pid", "3"], ["reload", "--pid", "3"]),
    (["--version"], ["--version"]),
])
def test_serve_is_the_default_command(argv, expected):
    """Arguments that do not start with a command name are serve's."""
    from wsrouter.cli.main import with_command

    assert with_command(argv) == expected


def test_wrap_and_wrap_mode_conflict():
    """--wrap-mode is --wrap's websockify name; two different modes are an error."""
    with pytest.raises(usage.UsageError, match="same option"):
        parsed("--wrap", "exit", "--wrap-mode", "respawn", "--", "srv")


# -- lifetime rules on a fake clock ------------------------------------------------------


class FakeGateway:
    def __init__(self) -> None:
        self.observers: list[object] = []

    def observe(self, observer: object) -> None:
        self.observers.append(observer)


def lifetime(**rules: object) -> tuple[LifetimeService, Clock, list[str]]:
    clock = Clock()
    stops: list[str] = []
    service = LifetimeService(clock, stops.append, **rules)  # type: ignore[arg-type]
    gateway = FakeGateway()
    service.watch(gateway)
    assert gateway.observers == [service]
    service.startService()
    return service, clock, stops


def test_run_once_stops_when_the_first_session_ends():
    """run_once stops at the first session's end, not at its start, and only once."""
    service, _clock, stops = lifetime(run_once=True)
    service.session_opened("a")
    service.session_opened("b")
    assert stops == []
    service.session_closed("a")
    service.session_closed("b")
    assert len(stops) == 1 and "--run-once" in stops[0]


def test_start_timeout_stops_without_a_client():
    """start_timeout stops the router when no session opened in time."""
    _service, clock, stops = lifetime(start_timeout=5)
    clock.advance(4.9)
    assert stops == []
    clock.advance(0.2)
    assert stops == ["--timeout: no client connected within 5 s"]


def test_start_timeout_is_cancelled_by_a_client():
    """A session opened in time cancels start_timeout for good, even after it ends."""
    service, clock, stops = lifetime(start_timeout=5)
    clock.advance(1)
    service.session_opened("a")
    service.session_closed("a")
    clock.advance(100)
    assert stops == [] and clock.getDelayedCalls() == []


def test_idle_exit_counts_from_the_last_session():
    """idle_exit runs only while no session is open, restarting when the last one ends."""
    service, clock, stops = lifetime(idle_exit=3)
    clock.advance(2)
    service.session_opened("a")
    clock.advance(10)
    assert stops == []
    service.session_closed("a")
    clock.advance(2.9)
    assert stops == []
    clock.advance(0.2)
    assert stops == ["--idle-timeout: no session open for 3 s"]


def test_idle_exit_from_start():
    """With no session at all, idle_exit counts from start-up."""
    _service, clock, stops = lifetime(idle_exit=2)
    clock.advance(2.1)
    assert len(stops) == 1


def test_stopping_the_service_cancels_timers():
    """stopService leaves no timer behind."""
    service, clock, stops = lifetime(idle_exit=2, start_timeout=1)
    service.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert stops == []


def test_lifetime_values_must_be_seconds():
    """--timeout and --idle-timeout must be positive numbers, said as options."""
    with pytest.raises(usage.UsageError, match=r"lifetime\.idle_exit"):
        parsed("--idle-timeout", "soon", "--route", "/=echo:")


def test_lifetime_refused_with_workers():
    """Lifetime rules need one router process; with --workers they are refused, not ignored."""
    with pytest.raises(usage.UsageError, match="drop --workers"):
        parsed("--run-once", "--workers", "2", "--route", "/=echo:")


# -- errors instead of something else ---------------------------------------------------


@pytest.mark.parametrize("option", sorted(NOT_YET))
def test_websockify_options_not_there_yet_say_so(option):
    """Each websockify option wsrouter lacks stops with exit 2 and what to do instead, no traceback."""
    result = run([f"--{option}=x", "8080", "127.0.0.1:9"], timeout=30)
    assert result.returncode == 2
    assert f"--{option}: not supported yet: {NOT_YET[option]}" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_points_to_twistd():
    """`wsrouter -D` does not silently stay in the foreground: it says to use twistd."""
    result = run(["-D", "8080", "127.0.0.1:9"], timeout=30)
    assert result.returncode == 2
    assert "-D/--daemon: use twistd wsrouter" in result.stderr


def test_daemon_under_twistd_says_twistd_daemonizes():
    """Under twistd, -D is refused with the note that twistd daemonizes by itself."""
    from wsrouter.cli.tap import Options

    with pytest.raises(usage.UsageError, match="twistd daemonizes by itself"):
        Options().parseOptions(["-D", "--route", "/=echo:"])


def test_timeout_under_twistd(tmp_path):
    """`twistd -n wsrouter --timeout 1` exits by itself, like `wsrouter --timeout 1`."""
    twistd = str(Path(PYTHON).parent / "twistd")
    result = subprocess.run([twistd, "--nodaemon", "--pidfile=", "wsrouter", "--timeout", "1", "--listen",
                             f"tcp:{free_port()}:interface=127.0.0.1", "--route", "/=echo:"],
                            capture_output=True, check=False, text=True, env=child_env(), cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--timeout: no client connected within 1 s" in result.stdout + result.stderr


def test_record_prefix_that_is_a_file_is_refused(tmp_path):
    """websockify's --record FILE prefix (an existing file) is refused with what to write."""
    prefix = tmp_path / "session"
    prefix.write_text("")
    result = run(["--record", str(prefix), "--route", "/=echo:", "--listen", f"tcp:{free_port()}"])
    assert result.returncode == 2
    assert "exists and is not a directory" in result.stderr and "write a directory" in result.stderr


# -- run for real -----------------------------------------------------------------------


def test_wrap_mode_runs_the_trailing_program(tmp_path):
    """`--wrap-mode respawn PORT -- server` relays to the wrapped program."""
    port = free_port()
    proc = RouterProcess(["--wrap-mode", "respawn", str(port), "--", PYTHON, TCP_SERVER, "--host", "127.0.0.1",
                          "--port", str(port), "--echo"], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"wrapped")
            assert ws.recv(timeout=10) == b"wrapped"
    finally:
        proc.stop()


def test_unix_target_relays_to_the_socket(tmp_path):
    """`--unix-target PATH PORT` relays every path to the Unix socket."""
    path = str(tmp_path / "echo.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.settimeout(20)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(100))

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    port = free_port()
    proc = RouterProcess(["--unix-target", path, str(port)], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/any") as ws:
            ws.send(b"over unix")
            assert ws.recv(timeout=10) == b"over unix"
    finally:
        proc.stop()
        server.close()


def test_heartbeat_sends_pings(tmp_path):
    """`--heartbeat 0.3` makes the router ping an open session."""
    port = free_port()
    proc = RouterProcess(["--heartbeat", "0.3", "--listen", f"tcp:{port}:interface=127.0.0.1",
                          "--route", "/=echo:"], port, tmp_path / "router.log")
    try:
        sock = upgrade(port, "/", timeout=10)
        with sock:
            first = sock.recv(2)
        assert first[0] == 0x89  # FIN + ping
    finally:
        proc.stop()


def wait_exit(proc: RouterProcess, timeout: float = 30) -> int:
    status = proc.process.wait(timeout)
    proc.stop()
    return status


def test_run_once_exits_after_the_first_session(tmp_path):
    """`--run-once` serves one session, then the router exits 0."""
    port = free_port()
    proc = RouterProcess(["--run-once", "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/=echo:"],
                         port, tmp_path / "router.log")
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        ws.send(b"once")
        assert ws.recv(timeout=10) == b"once"
    assert wait_exit(proc) == 0
    assert "--run-once: the first session has ended" in proc.log()


def test_timeout_exits_when_no_client_comes(tmp_path):
    """websockify's `--timeout 1` exits the router when no client connected within 1 s."""
    port = free_port()
    proc = RouterProcess(["--timeout", "1", "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/=echo:"],
                         port, tmp_path / "router.log")
    assert wait_exit(proc) == 0
    assert "--timeout: no client connected within 1 s" in proc.log()


def test_idle_timeout_exits_after_the_last_session(tmp_path):
    """websockify's `--idle-timeout 1` exits once no session has been open for 1 s, not during a session."""
    port = free_port()
    proc = RouterProcess(["--idle-timeout", "1", "--listen", f"tcp:{port}:interface=127.0.0.1",
                          "--route", "/=echo:"], port, tmp_path / "router.log")
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        for _ in range(3):  # longer than the idle time, with a session open
            time.sleep(0.6)
            ws.send(b"x")
            assert ws.recv(timeout=10) == b"x"
    assert proc.process.poll() is None
    assert wait_exit(proc) == 0
    assert "--idle-timeout: no session open for 1 s" in proc.log()


def test_log_file_and_verbose(tmp_path):
    """`--log-file FILE --verbose` writes the router's log, debug lines included, to FILE."""
    port = free_port()
    log_file = tmp_path / "w.log"
    proc = RouterProcess(["--log-file", str(log_file), "--verbose", "--listen",
                          f"tcp:{port}:interface=127.0.0.1", "--route", "/=echo:"], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"logged")
            ws.recv(timeout=10)
    finally:
        proc.stop()
    text = log_file.read_text()
    assert f"listening on tcp:{port}" in text and "session" in text
    assert "listening on" not in proc.log()


def test_traffic_logs_each_message(tmp_path):
    """`--traffic` logs one line per message relayed, each way, with its size."""
    port = free_port()
    proc = RouterProcess(["--traffic", "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/=echo:"],
                         port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"12345")
            assert ws.recv(timeout=10) == b"12345"
            ws.send("abc")
            assert ws.recv(timeout=10) == "abc"  # echo: answers with the message's own type
    finally:
        proc.stop()
    log = proc.log()
    assert "traffic: client -> target 5 bytes (binary)" in log
    assert "traffic: target -> client 5 bytes (binary)" in log
    assert "traffic: client -> target 3 bytes (text)" in log


def test_without_traffic_no_message_lines(tmp_path):
    """Without --traffic (or --verbose) no per-message line is logged."""
    port = free_port()
    proc = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/=echo:"],
                         port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"12345")
            assert ws.recv(timeout=10) == b"12345"
    finally:
        proc.stop()
    assert "session" in proc.log() and "traffic:" not in proc.log()


def test_web_serves_the_directory(tmp_path):
    """`--web DIR` serves static files beside the routes."""
    (tmp_path / "index.html").write_text("hello web")
    port = free_port()
    proc = RouterProcess(["--web", str(tmp_path), "--listen", f"tcp:{port}:interface=127.0.0.1",
                          "--route", "/ws=echo:"], port, tmp_path / "router.log")
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == b"hello web"
    finally:
        proc.stop()


def test_record_directory_records_sessions(tmp_path):
    """`--record DIR` (created if missing) records each session into DIR."""
    directory = tmp_path / "rec" / "new"
    port = free_port()
    proc = RouterProcess(["--record", str(directory), "--listen", f"tcp:{port}:interface=127.0.0.1",
                          "--route", "/=echo:"], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"rec")
            ws.recv(timeout=10)
    finally:
        proc.stop()
    assert len(list(directory.iterdir())) == 1
