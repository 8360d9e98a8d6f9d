"""
Exec targets (C{exec:}): the CGI environment and command lookup as pure
functions; the link's ending and flow-control rules with a fake process and
a Clock; then real commands from C{tests/programs} behind a router in this
process (and, for memory bounds, a router process), with the independent
``websockets`` client in a thread.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed

from wsrouter import __version__
from wsrouter.config import ExecTarget, Limits, Route
from wsrouter.interfaces import SessionInfo, TargetError
from wsrouter.targets.exec import (
    DEFAULT_PATH,
    CommandLink,
    ExecConnector,
    StderrLines,
    cgi_environment,
    describe_exit,
    python_launcher,
    resolve_command,
)

from . import rawws
from .support import PYTHON, connect, handshake_status, in_thread, router_process, start_router

PROGRAMS = Path(__file__).resolve().parent / "programs"
MiB = 1024 * 1024


def exec_route(path: str, script: str, *args: str, options: str = "") -> str:
    """A route string running a test script as its command, with this interpreter."""
    argv = [PYTHON, str(PROGRAMS / script), *args]
    return f"{path}{f'[{options}]' if options else ''}=exec:{shlex.join(argv)}"


def make_session(route: Route | None = None, **changes: Any) -> SessionInfo:
    """A session on a prefix route /app, with C{changes} applied."""
    route = route or Route(path="/app", prefix=True, target=ExecTarget(("prog",)))
    fields: dict[str, Any] = dict(
        session_id="s1d", peer_host="192.0.2.7", peer_port=50123, server_name="example.test",
        server_port=8080, secure=False, path="/app/sub/x", route_path="/app/sub/x", query="a=1&b=2",
        headers=(("host", "example.test:8080"), ("x-thing", "v1"), ("user-agent", "t")),
        subprotocol=None, route=route, script_name="/app",
    )
    fields.update(changes)
    return SessionInfo(**fields)


# -- the environment (pure) -------------------------------------------------------------


def test_cgi_environment_is_complete_and_nothing_else():
    """A session gives exactly the CGI variables, one HTTP_* per header and the default PATH."""
    env = cgi_environment(make_session(), (), {"SECRET": "x", "PATH": "/router/bin", "HOME": "/root"})
    assert env == {
        "GATEWAY_INTERFACE": "websocketd-CGI/0.1",
        "SERVER_SOFTWARE": f"wsrouter/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "example.test",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "192.0.2.7",
        "REMOTE_HOST": "192.0.2.7",
        "REMOTE_PORT": "50123",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/sub/x",
        "QUERY_STRING": "a=1&b=2",
        "REQUEST_URI": "/app/sub/x?a=1&b=2",
        "UNIQUE_ID": "s1d",
        "HTTP_HOST": "example.test:8080",
        "HTTP_X_THING": "v1",
        "HTTP_USER_AGENT": "t",
        "PATH": DEFAULT_PATH,
    }


def test_cgi_environment_https_only_when_secure():
    """HTTPS=on is set for a secure session and absent otherwise, like websocketd."""
    assert cgi_environment(make_session(secure=True), (), {})["HTTPS"] == "on"
    assert "HTTPS" not in cgi_environment(make_session(), (), {})


def test_cgi_environment_pass_env_and_route_env():
    """pass_env copies only the named variables (PATH replacing the default); the route's env comes last."""
    route = Route(path="/app", prefix=True, target=ExecTarget(("prog",)), env=(("MODE", "fast"), ("LANG", "C")))
    environ = {"PATH": "/router/bin", "LANG": "de_DE.UTF-8", "KEEP": "k", "SECRET": "s"}
    env = cgi_environment(make_session(route), ("PATH", "LANG", "KEEP", "ABSENT"), environ)
    assert (env["PATH"], env["KEEP"], env["MODE"], env["LANG"]) == ("/router/bin", "k", "fast", "C")
    assert "SECRET" not in env and "ABSENT" not in env


@pytest.mark.parametrize(
    "headers, expected",
    [
        ((("x-a", "1"), ("x-a", "2")), {"HTTP_X_A": "1, 2"}),
        ((("x-multi", "a\r\n b\0c"),), {"HTTP_X_MULTI": "a   b c"}),
        ((("x_under", "spoof"),), {}),
        ((("proxy", "http://evil"),), {}),
        ((("x.dot", "1"), ("X-Upper", "u")), {"HTTP_X_UPPER": "u"}),
    ],
)
def test_header_variables(headers, expected):
    """Headers become HTTP_* names; repeats join, line breaks go, underscore/odd names and Proxy are dropped."""
    env = cgi_environment(make_session(headers=headers), (), {})
    assert {k: v for k, v in env.items() if k.startswith("HTTP_")} == expected


def test_configured_names_win_over_headers():
    """A client header cannot replace a variable the operator passed (httpoxy-style)."""
    route = Route(path="/app", target=ExecTarget(("prog",)), env=(("HTTP_X_ROLE", "operator"),))
    env = cgi_environment(make_session(route, headers=(("x-role", "admin"),)), (), {})
    assert env["HTTP_X_ROLE"] == "operator"


# -- finding the command (pure) -----------------------------------------------------------


def test_resolve_command(tmp_path):
    """Commands are found on the given PATH or by path; each failure is a 502 saying what to fix."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("data")
    assert resolve_command("tool", str(tmp_path)) == str(tool)
    assert resolve_command(str(tool), "") == str(tool)
    problems = {
        "tool": (DEFAULT_PATH, "not found"),
        str(tmp_path / "absent"): ("", "does not exist"),
        str(tmp_path): ("", "is a directory"),
        str(plain): ("", "chmod +x"),
    }
    for name, (path, words) in problems.items():
        with pytest.raises(TargetError) as caught:
            resolve_command(name, path)
        reason = caught.value.reason
        assert caught.value.status == 502 and words in reason and reason.startswith("command "), reason


def test_describe_exit():
    """Exit status 0 is clean; other statuses and signals are named."""
    assert describe_exit(Failure(ProcessDone(0))) is None
    assert describe_exit(Failure(ProcessTerminated(exitCode=3))) == "command exited with status 3"
    assert describe_exit(Failure(ProcessTerminated(signal=9))) == "command killed by signal 9 (SIGKILL)"


# -- stderr lines (pure) --------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_stderr_lines_are_bounded(chunked):
    """Stderr is logged line by line, long lines cut at the limit, the rest of them dropped, fed whole or bytewise."""
    lines: list[str] = []
    splitter = StderrLines(lines.append, max_line=8)
    data = b"one\r\n" + b"x" * 20 + b"\ntwo\n" + b"y" * 30 + b"\npart"
    for chunk in ([data[i:i + 1] for i in range(len(data))] if chunked else [data]):
        splitter.feed(chunk)
    splitter.flush()
    cut = " [line cut at 8 bytes]"
    assert lines == ["one", "xxxxxxxx" + cut, "two", "yyyyyyyy" + cut, "part"]


# -- the link, with a fake process and a Clock -------------------------------------------------


class FakeProcess:
    """The process transport as the link uses it; records what is done to it."""

    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.paused = False
        self.written: list[bytes] = []
        self.closed: set[int] = set()
        self.producer: Any = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def closeStdin(self) -> None:
        self.closed.add(0)

    def closeStdout(self) -> None:
        self.closed.add(1)

    def closeStderr(self) -> None:
        self.closed.add(2)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class Receiver:
    """The bridge's side of a link: records what the link tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> None:
        self.events.append(("eof",))

    def link_lost(self, error: str | None) -> None:
        self.events.append(("lost", error))


class Signals:
    """Records signals; says the group exists while C{group} is true."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bool]] = []
        self.group = True

    def __call__(self, pid: int, signum: int, leader_alive: bool) -> bool:
        if signum:
            self.sent.append((pid, signum, leader_alive))
        return self.group


def make_link(grace: float = 2.0) -> tuple[CommandLink, FakeProcess, Clock, Signals]:
    clock, signals, process = Clock(), Signals(), FakeProcess()
    link = CommandLink(clock, "prog[s1]", grace=grace, signaller=signals)
    link.makeConnection(process)
    return link, process, clock, signals


def test_link_paused_until_start():
    """The command's output is not read before start, and anything read early is delivered first."""
    link, process, _, _ = make_link()
    assert process.paused
    link.outReceived(b"early")
    receiver = Receiver()
    link.start(receiver)
    assert not process.paused
    link.outReceived(b"late")
    assert receiver.events == [("data", b"early"), ("data", b"late")]


@pytest.mark.parametrize("exit_first", [True, False])
@pytest.mark.parametrize(
    "reason, error",
    [(ProcessDone(0), None), (ProcessTerminated(exitCode=3), "command exited with status 3")],
)
def test_exit_reported_after_last_output(exit_first, reason, error):
    """The exit is reported after the end of stdout, whichever Twisted reports first, with its status."""
    link, _process, _, signals = make_link()
    receiver = Receiver()
    link.start(receiver)
    signals.group = False
    if exit_first:
        link.processExited(Failure(reason))
    link.outReceived(b"last")
    link.childConnectionLost(1)
    if not exit_first:
        link.processExited(Failure(reason))
    assert receiver.events == [("data", b"last"), ("lost", error)]


def test_closed_stdout_but_running_ends_session_after_grace():
    """A command that closes stdout and keeps running ends the session (eof) after the grace period."""
    link, _, clock, _ = make_link()
    receiver = Receiver()
    link.start(receiver)
    link.childConnectionLost(1)
    clock.advance(1.9)
    assert receiver.events == []
    clock.advance(0.2)
    assert receiver.events == [("eof",)]
    link.processExited(Failure(ProcessTerminated(signal=15)))
    assert receiver.events[-1] == ("lost", "command killed by signal 15 (SIGTERM)")


def test_exit_with_output_held_stops_group_then_closes_pipes():
    """When the command exits with stdout still held, its group gets SIGTERM, SIGKILL, and quiet pipes are closed."""
    link, process, clock, signals = make_link()
    receiver = Receiver()
    link.start(receiver)
    link.processExited(Failure(ProcessDone(0)))
    assert signals.sent == [(4242, signal.SIGTERM, False)]
    clock.advance(2.0)
    assert signals.sent[-1] == (4242, signal.SIGKILL, False)
    signals.group = False
    clock.advance(1.0)
    link.outReceived(b"still talking")  # activity postpones closing
    clock.advance(1.0)
    assert process.closed == {0}
    link.producer.pauseProducing()  # nor while the client is not reading
    clock.advance(4.0)
    assert process.closed == {0}
    link.producer.resumeProducing()
    clock.advance(2.0)
    assert {1, 2} <= process.closed
    link.childConnectionLost(1)
    assert receiver.events == [("data", b"still talking"), ("lost", None)]


def test_close_terminates_then_kills():
    """close() shuts stdin, sends SIGTERM to the command and its group, then SIGKILL after the grace period."""
    link, process, clock, signals = make_link()
    link.start(Receiver())
    link.close()
    assert process.closed == {0}
    assert signals.sent == [(4242, signal.SIGTERM, True)]
    clock.advance(2.0)
    assert signals.sent[-1] == (4242, signal.SIGKILL, True)


def test_close_drains_output_of_a_paused_client():
    """After close() the output is read (and dropped) even if the client had paused it, so the pipes can end."""
    link, process, _, _ = make_link()
    receiver = Receiver()
    link.start(receiver)
    link.producer.pauseProducing()
    assert process.paused
    link.close()
    assert not process.paused
    link.outReceived(b"nobody listens")
    assert receiver.events == []


def test_abort_kills_now():
    """abort() sends SIGKILL at once, without a grace period."""
    link, _, _, signals = make_link()
    link.abort()
    assert signals.sent == [(4242, signal.SIGKILL, True)]


def test_stdin_closing_resumes_a_paused_client_without_stopping_it():
    """When the command's stdin closes, a client paused by it is resumed, never stopped (that would drop it)."""
    link, process, _, _ = make_link()
    calls: list[str] = []

    class ClientTransport:
        def pauseProducing(self) -> None:
            calls.append("pause")

        def resumeProducing(self) -> None:
            calls.append("resume")

        def stopProducing(self) -> None:
            calls.append("stop")

    link.consumer.registerProducer(ClientTransport(), True)
    process.producer.pauseProducing()  # the stdin buffer is full
    process.producer.stopProducing()  # Twisted, as the pipe closes
    link.childConnectionLost(0)
    assert calls == ["pause", "resume"]
    link.write(b"dropped")
    assert process.written == []


class FakeReactor(Clock):
    """A Clock that 'spawns' fake processes and records the spawn arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, ...]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str],
                     path: Any = None, usePTY: bool = False) -> FakeProcess:
        self.spawned.append((executable, args, env, usePTY))
        process = FakeProcess(pid=1000 + len(self.spawned))
        protocol.makeConnection(process)
        return process


@pytest.mark.parametrize("where", ["route", "router"])
def test_connector_fork_limit_and_spawn_arguments(where):
    """Over the fork limit the connector fails with 503; a command's exit frees its place; spawns get the CGI env."""
    command = ExecTarget((PYTHON, "prog.py"))
    route = Route(path="/p", target=command, max_forks=1 if where == "route" else None)
    fake = FakeReactor()
    limits = Limits(max_forks=1 if where == "router" else None)
    connector = ExecConnector(fake, limits, launcher=("launch",), environ={"SECRET": "s"})
    links, failures = [], []
    for _ in range(2):
        connector.connect(make_session(route)).addCallbacks(links.append, failures.append)
    assert len(links) == 1 and failures[0].value.status == 503
    executable, args, env, use_pty = fake.spawned[0]
    assert (executable, args, use_pty) == ("launch", ["launch", PYTHON, "prog.py"], False)
    assert env == cgi_environment(make_session(route), (), {})
    links[0].processExited(Failure(ProcessDone(0)))
    connector.connect(make_session(route)).addCallbacks(links.append, failures.append)
    assert len(links) == 2 and connector.running(route) == 1


def test_connector_missing_command_is_502():
    """A command that cannot be found fails the connect with 502 and starts nothing."""
    fake = FakeReactor()
    connector = ExecConnector(fake, Limits(), launcher=("launch",))
    session = make_session(Route(path="/p", target=ExecTarget(("no-such-command-here",))))
    failures: list[Failure] = []
    connector.connect(session).addErrback(failures.append)
    assert failures[0].value.status == 502 and fake.spawned == []


# -- real commands, end to end --------------------------------------------------------------------


def receive_all(ws: Any, limit: int = 10000) -> tuple[list[Any], int | None, str]:
    """Messages until the router closes, with its close code and reason."""
    messages: list[Any] = []
    for _ in range(limit):
        try:
            messages.append(ws.recv(timeout=15))
        except ConnectionClosed as e:
            return messages, e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else ""
    raise AssertionError(f"more than {limit} messages")


def process_gone(pid: int) -> bool:
    """True once C{pid} no longer runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Wait (bounded) for the processes to end; return those still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not process_gone(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


@pytest_twisted.inlineCallbacks
def test_line_framing_text_messages():
    """By default each line the command writes is one text message, and each message reaches its stdin."""
    router = start_router(routes=[exec_route("/up", "upper_echo.py")])

    def client():
        with connect(router.url + "/up") as ws:
            ws.send("hello\n")
            ws.send(b"two lines\nin one message\n")
            return [ws.recv(timeout=10) for _ in range(3)]

    try:
        assert (yield in_thread(client)) == ["HELLO", "TWO LINES", "IN ONE MESSAGE"]
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_binary_separator_and_fixed_framing():
    """Route options pick binary, separator and fixed framing for the command's output; exit 0 closes 1000."""
    router = start_router(routes=[
        exec_route("/bin", "emit.py", "00ff", "0102", options="framing=binary"),
        exec_route("/sep", "emit.py", "61620063", "640065", options="framing=separator:\\0"),
        exec_route("/fix", "emit.py", "61626364", "656667", "68", options="framing=fixed:3"),
    ])

    def client(path):
        with connect(router.url + path) as ws:
            return receive_all(ws)

    try:
        messages, code, _ = yield in_thread(client, "/bin")
        assert b"".join(messages) == b"\x00\xff\x01\x02" and all(isinstance(m, bytes) for m in messages)
        assert code == 1000
        assert (yield in_thread(client, "/sep"))[:2] == (["ab", "cd", "e"], 1000)
        assert (yield in_thread(client, "/fix"))[:2] == ([b"abc", b"def", b"gh"], 1000)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_command_sees_cgi_environment_only(monkeypatch):
    """
    The command gets every CGI variable and HTTP_* header, the route's env and pass_env, and no other router
    variable.
    """
    monkeypatch.setenv("WSROUTER_TEST_SECRET", "must not leak")
    monkeypatch.setenv("WSROUTER_TEST_PASSED", "passed on")
    router = start_router(
        routes=[exec_route("/env/*", "env_json.py", options="env=ROUTE_VAR:route value")],
        pass_env=["WSROUTER_TEST_PASSED"],
    )

    def client():
        headers = {"X-Custom-Thing": "v1", "X_Under": "spoof", "Proxy": "http://evil.example"}
        with connect(router.url + "/env/sub/path?a=1&b=2", additional_headers=headers) as ws:
            env = json.loads(ws.recv(timeout=10))
            return env, ws.local_address[1], receive_all(ws)[1:]

    try:
        env, client_port, (code, _) = yield in_thread(client)
    finally:
        yield router.stopService()
    port = router.port_number
    expected = {
        "GATEWAY_INTERFACE": "websocketd-CGI/0.1", "SERVER_SOFTWARE": f"wsrouter/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port),
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_HOST": "127.0.0.1", "REMOTE_PORT": str(client_port),
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "/env", "PATH_INFO": "/sub/path",
        "QUERY_STRING": "a=1&b=2", "REQUEST_URI": "/env/sub/path?a=1&b=2",
        "PATH": DEFAULT_PATH, "ROUTE_VAR": "route value", "WSROUTER_TEST_PASSED": "passed on",
        "HTTP_HOST": f"127.0.0.1:{port}", "HTTP_X_CUSTOM_THING": "v1", "HTTP_UPGRADE": "websocket",
    }
    assert {key: env.get(key) for key in expected} == expected
    assert len(env["UNIQUE_ID"]) > 0 and "HTTPS" not in env
    assert "WSROUTER_TEST_SECRET" not in env and "HTTP_X_UNDER" not in env and "HTTP_PROXY" not in env
    others = {key for key in env if not key.startswith("HTTP_")} - set(expected) - {"UNIQUE_ID"}
    assert others <= {"LC_CTYPE"}, others  # Python's own locale coercion may add LC_CTYPE
    assert code == 1000


@pytest_twisted.inlineCallbacks
def test_exit_status_3_closes_1011_after_output():
    """A command that prints a line and exits with status 3 delivers the line, then closes 1011 saying so."""
    router = start_router(routes=[exec_route("/x", "emit.py", "--status", "3", "6279650a")])

    def client():
        with connect(router.url + "/x") as ws:
            return receive_all(ws)

    try:
        messages, code, reason = yield in_thread(client)
        assert (messages, code) == (["bye"], 1011)
        assert "command exited with status 3" in reason
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("launcher", ["default", "trampoline"])
def test_client_close_kills_command_and_grandchild(launcher):
    """When the client closes, the command and a grandchild it started are gone, with either launcher."""
    router = start_router(routes=[exec_route("/s", "sleeper.py", "--grandchild")])
    if launcher == "trampoline":
        router.gateway.connectors.register(ExecTarget, ExecConnector(
            reactor, Limits(), launcher=python_launcher(),
        ))

    def client():
        with connect(router.url + "/s") as ws:
            info = json.loads(ws.recv(timeout=10))
        return info, wait_gone([info["pid"], info["grandchild"]])

    try:
        info, alive = yield in_thread(client)
        assert info["pgid"] == info["sid"] == info["pid"]  # its own session and group
        assert alive == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_command_closing_stdout_but_running_ends_session():
    """A command that closes stdout and keeps running ends the session with 1000, and is then stopped."""
    router = start_router(routes=[exec_route("/c", "sleeper.py", "--close-stdout")])

    def client():
        with connect(router.url + "/c") as ws:
            messages, code, _ = receive_all(ws)
        info = json.loads(messages[0])
        return messages, code, wait_gone([info["pid"]])

    try:
        messages, code, alive = yield in_thread(client)
        assert (len(messages), code, alive) == (1, 1000, [])
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_command_exiting_while_grandchild_holds_stdout():
    """
    A command that exits while a grandchild holds its stdout ends the session with 1000; the grandchild is stopped.
    """
    router = start_router(routes=[exec_route("/g", "sleeper.py", "--grandchild", "--exit")])

    def client():
        started = time.monotonic()
        with connect(router.url + "/g") as ws:
            messages, code, _ = receive_all(ws)
        info = json.loads(messages[0])
        return code, time.monotonic() - started, wait_gone([info["pid"], info["grandchild"]])

    try:
        code, took, alive = yield in_thread(client)
        assert (code, alive) == (1000, [])
        assert took < 10  # not the grandchild's 60 s
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_fork_limit_refuses_with_503_until_a_command_ends():
    """With max-forks=2, a third connection gets 503 until one of the two closes and its command ends."""
    router = start_router(routes=[exec_route("/s", "sleeper.py", options="max-forks=2")])

    def client():
        with connect(router.url + "/s") as first, connect(router.url + "/s") as second:
            pids = [json.loads(ws.recv(timeout=10))["pid"] for ws in (first, second)]
            refused = handshake_status(router.url + "/s")
            first.close()
            status, deadline = 0, time.monotonic() + 15
            while time.monotonic() < deadline:
                status, _ = handshake_status(router.url + "/s")
                if status == 101:
                    break
                time.sleep(0.1)
        return refused, status, wait_gone(pids)

    try:
        (status, body), last, alive = yield in_thread(client)
        assert status == 503 and b"max-forks" in body
        assert last == 101 and alive == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_missing_or_unusable_command_is_502(tmp_path):
    """A command that does not exist, or is not executable, refuses the handshake with 502 and a reason."""
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    router = start_router(routes=[
        "/missing=exec:no-such-command-wsrouter --flag",
        f"/plain=exec:{plain}",
    ])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/missing")
        assert (status, b"not found" in body) == (502, True)
        status, body = yield in_thread(handshake_status, router.url + "/plain")
        assert (status, b"not executable" in body) == (502, True)
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_stderr_goes_to_the_log_with_command_and_session():
    """Each stderr line is logged with the command name and session id, long lines cut."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "wsrouter.exec":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    router = start_router(routes=[exec_route("/e", "stderr_lines.py")])

    def client():
        with connect(router.url + "/e") as ws:
            return receive_all(ws)

    try:
        messages, code, _ = yield in_thread(client)
        assert (messages, code) == (["done"], 1000)
        deadline = time.monotonic() + 10
        while len(events) < 3 and time.monotonic() < deadline:  # stderr may end after stdout
            yield in_thread(time.sleep, 0.05)
    finally:
        globalLogPublisher.removeObserver(observer)
        yield router.stopService()
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 3, lines
    assert lines[0].startswith(os.path.basename(PYTHON) + "[") and lines[0].endswith("] stderr: first problem")
    assert lines[1].endswith("y" * 1024 + " [line cut at 1024 bytes]")
    assert lines[2].endswith("stderr: unfinished")


# -- memory bounds, with the router as a process of its own ----------------------------------------


def read_message(s: socket.socket) -> bytes:
    """One small unfragmented server message from a raw socket."""

    def need(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    _first, second = need(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", need(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", need(8))[0]
    return need(length)


@pytest.mark.slow
def test_command_not_reading_stdin_pauses_client(tmp_path):
    """A client sending 256 MiB to a command that never reads blocks early, and the router grows by < 64 MiB."""
    # A paused transport reads nothing, not even the end of the connection:
    # the keepalive ping is what notices the client has gone.
    # The first ping (10 s) comes after the measurement.
    with router_process(tmp_path, "--ping", "10", "--ping-timeout", "5",
                        "--route", exec_route("/*", "sleeper.py")) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        pid = json.loads(read_message(s))["pid"]
        block = rawws.frame_header(MiB) + os.urandom(MiB)
        s.settimeout(5)
        sent, blocked = 0, False
        try:
            while sent < 256 * MiB:
                s.sendall(block)
                sent += MiB
        except TimeoutError:
            blocked = True
        growth = router.status("VmHWM") - baseline
        s.close()
        alive = wait_gone([pid], timeout=40)
        assert blocked, "the client could send everything: nothing paused it"
        assert sent < 64 * MiB, f"{sent // MiB} MiB accepted before the client was paused"
        assert growth < 64 * 1024, f"router grew by {growth} KiB"
        assert alive == []


@pytest.mark.slow
def test_command_flooding_slow_client_bounds_memory(tmp_path):
    """A command writing 256 MiB of lines to a client that stops reading for a while grows the router by < 64 MiB."""
    total_mib, line = 256, 8192
    with router_process(tmp_path, "--route", exec_route("/*", "flood.py", str(total_mib), str(line))) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        reader = rawws.read_late_and_slowly(s)
        s.close()
        growth = router.status("VmHWM") - baseline
        lines = total_mib * MiB // line
        assert (reader.received, reader.messages) == (lines * (line - 1), lines)
        assert reader.close_code == 1000
        assert growth < 64 * 1024, f"router grew by {growth} KiB"
