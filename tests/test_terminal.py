"""
Commands on a pty (C{exec:} routes with C{pty = true}): the control message
and the configuration as pure functions; then a real shell behind a router
in this process, driven by the independent ``websockets`` client in a
thread; flow control against a router process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed

from wsrouter.cli.lower import options_to_raw
from wsrouter.config import ConfigError, ExecTarget, build_config, default_framing, to_data
from wsrouter.config.spec import parse_route, route_from_string
from wsrouter.querytoken import query_token, with_query_token, without_query_token
from wsrouter.targets.exec import describe_exit
from wsrouter.targets.terminal import (
    PtyLink,
    open_pty,
    open_terminal_routes,
    parse_control,
    session_members,
    window_size,
)

from . import rawws
from .support import PYTHON, connect, handshake_status, in_thread, router_process, start_router
from .test_exec import exec_route, wait_gone

SHELL = shutil.which("bash") or shutil.which("sh")
MiB = 1024 * 1024


# -- pure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"columns": 120, "rows": 40}', (120, 40)),
    (b'{"rows":1,"columns":10000}', (10000, 1)),
    (b'{"columns": 0, "rows": 40}', "columns and rows must be whole numbers from 1 to 10000"),
    (b'{"columns": 80.5, "rows": 40}', "columns and rows must be whole numbers from 1 to 10000"),
    (b'{"columns": true, "rows": 40}', "columns and rows must be whole numbers from 1 to 10000"),
    (b'{"columns": 80}', 'not {"columns": C, "rows": R}'),
    (b'{"columns": 80, "rows": 24, "x": 1}', 'not {"columns": C, "rows": R}'),
    (b"[80, 24]", 'not {"columns": C, "rows": R}'),
    (b"ls\r", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b" " * 2000, "longer than 1024 bytes"),
])
def test_parse_control(payload, expected):
    """A control message gives the new size, or says what is wrong with it."""
    assert parse_control(payload) == expected


def test_open_pty_sets_the_size():
    """A new pty has the size asked for."""
    master, slave, name = open_pty((132, 43))
    try:
        assert window_size(slave) == (132, 43)
        assert name.startswith("/dev/")
    finally:
        os.close(master)
        os.close(slave)


def test_session_members_lists_this_process():
    """The process table scan finds this process in its own session, and nothing for a session that does not exist."""
    assert os.getpid() in (session_members(os.getsid(0)) or [])
    assert session_members(2 ** 22 + 12345) == []


def test_route_option_and_key():
    """pty is a route option and a file key that lands on the exec target, and round-trips through to_data."""
    route = parse_route("/sh[pty=true]=exec:bash -l")
    assert route.target == ExecTarget(("bash", "-l"), pty=True)
    assert route_from_string("/sh[pty=false]=exec:sh")["pty"] is False
    config = build_config({"routes": [{"path": "/sh", "target": "exec:bash -l", "pty": True, "auth": "off"}]})
    assert to_data(config)["routes"][0]["pty"] is True
    assert build_config(to_data(config)) == config
    assert default_framing(config.routes[0].target) == "binary"
    assert default_framing(ExecTarget(("cat",))) == "line"


def test_open_terminal_routes_are_named(tmp_path):
    """pty routes without credentials are named for the start-up warning; ones with auth, or plain exec, are not."""
    config = build_config({
        "auth": {"t": {"tokens": str(tmp_path / "tokens")}},
        "routes": [{"path": "/open", "target": "exec:sh", "pty": True, "auth": "off"},
                   {"path": "/shut", "target": "exec:sh", "pty": True, "auth": "t"},
                   {"path": "/plain", "target": "exec:cat"}],
    })
    assert open_terminal_routes(config) == ["/open"]


def test_pty_route_without_credentials_is_refused(tmp_path):
    """A pty route with no auth (nor security.auth) is a config error; auth = "off" or security.auth lets it start."""
    with pytest.raises(ConfigError) as info:
        build_config({"routes": [{"path": "/e", "target": "echo:"}, {"path": "/sh", "target": "exec:sh", "pty": True}]})
    assert 'routes[1].auth: a pty route hands out a terminal: name an [auth.NAME] here (or set security.auth), ' \
           'or write auth = "off"' in str(info.value)
    with pytest.raises(ConfigError, match=r"routes\[0\]\.auth: a pty route hands out a terminal"):
        build_config({"routes": ["/sh[pty=true]=exec:sh"]})
    assert build_config({"routes": ["/sh[pty=true;auth=off]=exec:sh"]}).routes[0].auth == "off"
    tokens = tmp_path / "tokens"
    build_config({"auth": {"t": {"tokens": str(tokens)}}, "security": {"auth": "t"},
                  "routes": [{"path": "/sh", "target": "exec:sh", "pty": True}]})
    build_config({"routes": [{"path": "/sh", "target": "exec:sh"}]})  # no pty: a plain exec route is not a terminal


@pytest.mark.parametrize(("raw", "problem"), [
    ({"path": "/e", "target": "echo:", "pty": True}, "routes[0].pty: is only for exec: targets"),
    ({"path": "/e", "target": "exec:sh", "pty": "yes"}, "routes[0].pty: must be true or false, not 'yes'"),
])
def test_bad_pty_key(raw, problem):
    """pty on a target that is not exec:, or not a boolean, is refused with its key path."""
    with pytest.raises(ConfigError) as info:
        build_config({"routes": [raw]})
    assert problem in str(info.value)


# -- the link's ending, with a fake process and a Clock ---------------------------------------


class FakePty:
    """The parts of Twisted's PTYProcess the link uses, recording what it is asked."""

    def __init__(self, pid: int = 4242):
        self.pid = pid
        self.paused = False
        self.written = bytearray()
        self.lost = False

    def fileno(self) -> int:
        return -1

    def write(self, data: bytes) -> None:
        self.written += data

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def loseConnection(self) -> None:
        self.lost = True


class Receiver:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[str | None] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def link_lost(self, error: str | None) -> None:
        self.lost.append(error)


def fake_link(alive: list[bool]) -> tuple[Any, Clock, list[tuple[int, tuple[int, ...], bool]], FakePty]:
    """A PtyLink on a FakePty whose signaller records calls and says the session is alive while C{alive[0]}."""
    clock = Clock()
    sent: list[tuple[int, tuple[int, ...], bool]] = []

    def signaller(pid: int, signums: tuple[int, ...], leader: bool) -> bool:
        sent.append((pid, signums, leader))
        return alive[0]

    link = PtyLink(clock, "sh[s1]", grace=2.0, signaller=signaller, describe_exit=describe_exit)
    pty = FakePty()
    link.makeConnection(pty)
    return link, clock, sent, pty


def test_link_paused_until_start_then_delivers_early_output():
    """The pty is not read before start; output read before it is delivered first, in order."""
    link, _, _, pty = fake_link([True])
    assert pty.paused
    link.childDataReceived(1, b"early")
    receiver = Receiver()
    link.start(receiver)
    link.childDataReceived(1, b"later")
    assert receiver.data == [b"early", b"later"]
    assert not pty.paused


def test_close_hangs_up_then_terminates_then_kills_then_closes_the_pty():
    """A client close: SIGHUP+SIGCONT now, SIGTERM at half the grace, SIGKILL at the grace, then the pty is closed."""
    import signal as sig

    alive = [True]
    link, clock, sent, pty = fake_link(alive)
    link.start(Receiver())
    link.close()
    assert sent == [(4242, (sig.SIGHUP, sig.SIGCONT), True)]
    clock.advance(1.0)
    assert sent[-1] == (4242, (sig.SIGTERM,), True)
    clock.advance(1.0)
    assert sent[-1] == (4242, (sig.SIGKILL,), True)
    link.processExited(Failure(ProcessTerminated(signal=9)))
    assert not pty.lost
    clock.advance(2.0)
    assert pty.lost


def test_exit_with_a_stubborn_job_ends_after_the_grace():
    """The command exits, its session lives on: hang-up, SIGTERM, SIGKILL; the exit is reported once the pty ends."""
    import signal as sig

    alive = [True]
    link, clock, sent, _pty = fake_link(alive)
    receiver = Receiver()
    link.start(receiver)
    link.processExited(Failure(ProcessDone(0)))
    assert sent == [(4242, (sig.SIGHUP, sig.SIGCONT), False)]
    clock.advance(1.0)
    clock.advance(1.0)
    assert [signums for _, signums, _ in sent] == [(sig.SIGHUP, sig.SIGCONT), (sig.SIGTERM,), (sig.SIGKILL,)]
    assert receiver.lost == []
    link.processEnded(Failure(ProcessDone(0)))
    assert receiver.lost == [None]
    assert link.ended.called


def test_exit_status_reported_as_error():
    """A command exiting with status 3 is reported to the bridge with the status."""
    link, _, _, _ = fake_link([False])
    receiver = Receiver()
    link.start(receiver)
    link.processExited(Failure(ProcessTerminated(exitCode=3)))
    link.processEnded(Failure(ProcessTerminated(exitCode=3)))
    assert receiver.lost == ["command exited with status 3"]


def test_pty_closing_resumes_a_paused_client_without_stopping_it():
    """When the pty closes, a client paused by its full input buffer is resumed, never stopped (that would drop it)."""
    link, _, _, pty = fake_link([False])
    registered: list[Any] = []
    pty.registerProducer = lambda producer, streaming: registered.append(producer)  # type: ignore[method-assign]
    calls: list[str] = []

    class ClientTransport:
        def pauseProducing(self) -> None:
            calls.append("pause")

        def resumeProducing(self) -> None:
            calls.append("resume")

        def stopProducing(self) -> None:
            calls.append("stop")

    link.start(Receiver())
    link.consumer.registerProducer(ClientTransport(), True)
    registered[0].pauseProducing()  # the pty's input buffer is full
    registered[0].stopProducing()  # Twisted, as the pty closes
    link.processEnded(Failure(ProcessDone(0)))
    assert calls == ["pause", "resume"]


def test_abort_kills_the_session_and_closes_the_pty_now():
    """abort() sends SIGKILL at once and, the command being reaped, closes the pty without a grace period."""
    import signal as sig

    link, _, sent, pty = fake_link([True])
    link.start(Receiver())
    link.processExited(Failure(ProcessTerminated(signal=9)))
    link.abort()
    assert sent[-1] == (4242, (sig.SIGKILL,), False)
    assert pty.lost


def test_exit_described_without_being_told_how():
    """A PtyLink built without describe_exit still reports a failed command's status (the exec links' wording)."""
    link = PtyLink(Clock(), "sh[s1]", signaller=lambda pid, signums, leader: False)
    link.makeConnection(FakePty())
    receiver = Receiver()
    link.start(receiver)
    link.processExited(Failure(ProcessTerminated(exitCode=3)))
    link.processEnded(Failure(ProcessTerminated(exitCode=3)))
    assert receiver.lost == ["command exited with status 3"]


def test_messages_text_is_input_binary_is_control():
    """Text messages are written to the pty as they are; a binary message never is."""
    link, _, _, pty = fake_link([True])
    link.start(Receiver())
    link.write_message(b'{"columns": 1, "rows": 1}', False)
    link.write_message(b"\x03ls\r", False)
    link.write_message(b"ls\r", True)
    assert bytes(pty.written) == b'{"columns": 1, "rows": 1}\x03ls\r'


# -- a real shell ----------------------------------------------------------------------------


def shell_route(path: str = "/sh") -> dict[str, Any]:
    assert SHELL is not None
    return {"path": path, "target": f"exec:{SHELL}", "pty": True, "auth": "off", "env": {"PS1": "$ "}}


class Screen:
    """The client side of a terminal session: what came back so far, read until a pattern shows."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.text = ""

    def until(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text)
            if match:
                self.text = self.text[match.end():]
                return match
            left = deadline - time.monotonic()
            try:
                message = self.ws.recv(timeout=max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"{pattern!r} did not appear; the screen ends with {self.text[-500:]!r}") from None
            assert isinstance(message, bytes), "terminal output comes as binary messages"
            self.text += message.decode("utf-8", "replace")

    def type(self, text: str) -> None:
        self.ws.send(text)

    def resize(self, columns: int, rows: int) -> None:
        self.ws.send(json.dumps({"columns": columns, "rows": rows}).encode())


@pytest_twisted.inlineCallbacks
def test_shell_sees_terminal_and_resize():
    """A shell on the pty runs commands, has TERM=xterm-256color, a tty, and stty size follows a resize message."""
    router = start_router(routes=[shell_route()])

    def client():
        with connect(router.url + "/sh") as ws:
            screen = Screen(ws)
            screen.type("echo T=$TERM; tty -s && echo on-a-tty; stty size\r")
            screen.until(r"T=xterm-256color")
            screen.until(r"on-a-tty")
            before = screen.until(r"(\d+) (\d+)\r\n").groups()
            screen.resize(123, 45)
            screen.type("stty size\r")
            after = screen.until(r"(\d+) (\d+)\r\n").groups()
            screen.type("exit 3\r")
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    ws.recv(timeout=10)
            return before, after, ws.close_code, ws.close_reason

    try:
        before, after, code, reason = yield in_thread(client)
        assert before == ("24", "80")
        assert after == ("45", "123")
        assert (code, reason) == (1011, "target error: command exited with status 3")
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_resize_reaches_a_running_program_as_sigwinch():
    """The foreground job of the shell is told of a resize (SIGWINCH) and sees the new size."""
    router = start_router(routes=[shell_route()])
    watcher = ("import signal,os,sys,time;"
               "signal.signal(signal.SIGWINCH, lambda *a: os.write(1, b'WINCH %d %d' % os.get_terminal_size()));"
               "print('REA' + 'DY', flush=True); time.sleep(30)")

    def client():
        with connect(router.url + "/sh") as ws:
            screen = Screen(ws)
            screen.type(f"{PYTHON} -c \"{watcher}\"\r")
            screen.until(r"READY")
            screen.resize(100, 30)
            return screen.until(r"WINCH (\d+) (\d+)").groups()

    try:
        size = yield in_thread(client)
        assert size == ("100", "30")
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_close_ends_shell_and_its_jobs(tmp_path):
    """After the client closes, the foreground job is hung up (SIGHUP), and it, the shell and a background job end."""
    router = start_router(routes=[shell_route()])
    hup = tmp_path / "hup"
    foreground_job = ("import signal,os,pathlib,time; p = pathlib.Path('" + str(hup) + "');"
                      "signal.signal(signal.SIGHUP, lambda *a: (p.write_text('HUP'), os._exit(0)));"
                      "print('FG', os.getpid(), flush=True); time.sleep(300)")

    def client():
        with connect(router.url + "/sh") as ws:
            screen = Screen(ws)
            screen.type("sleep 300 & echo PIDS $$ $!\r")
            shell, background = map(int, screen.until(r"PIDS (\d+) (\d+)").groups())
            screen.type(f"{PYTHON} -c \"{foreground_job}\"\r")
            foreground = int(screen.until(r"FG (\d+)").group(1))
            groups = {os.getpgid(pid) for pid in (shell, background, foreground)}
        return groups, wait_gone([shell, background, foreground])

    try:
        groups, alive = yield in_thread(client)
        assert len(groups) == 3, "job control put each job in a group of its own"
        assert alive == []
        assert hup.read_text() == "HUP"
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_shell_exit_ends_session_despite_a_stubborn_job():
    """A shell exiting with a job on the pty that ignores SIGHUP and SIGTERM ends the session (1000); the job dies."""
    router = start_router(routes=[shell_route()])

    def client():
        with connect(router.url + "/sh") as ws:
            screen = Screen(ws)
            screen.type("(trap '' HUP TERM; exec sleep 300) & echo JOB $!; exit 0\r")
            job = int(screen.until(r"JOB (\d+)").group(1))
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    ws.recv(timeout=20)
            return job, ws.close_code, ws.close_reason

    try:
        job, code, reason = yield in_thread(client)
        assert (code, reason) == (1000, "target closed the connection")
        assert wait_gone([job]) == []
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_text_input_never_taken_for_control():
    """A text message that looks like a control message is typed input, and a bad binary one is ignored."""
    router = start_router(routes=[shell_route()])

    def client():
        with connect(router.url + "/sh") as ws:
            screen = Screen(ws)
            ws.send(b"not a control message")
            screen.type('echo \'{"columns": 50, "rows": 10}\'; stty size\r')
            screen.until(r"\{\"columns\": 50, \"rows\": 10\}\r\n")
            return screen.until(r"(\d+) (\d+)\r\n").groups()

    try:
        size = yield in_thread(client)
        assert size == ("24", "80")
    finally:
        yield router.stopService()


# -- flow control (a router process) --------------------------------------------------------


@pytest.mark.slow
def test_pty_flooding_slow_client_bounds_memory(tmp_path: Path):
    """A command on a pty writing 128 MiB to a client that stops reading for a while grows the router by < 64 MiB."""
    total_mib = 128
    route = exec_route("/*", "flood.py", str(total_mib), "8192", options="pty=true;auth=off")
    with router_process(tmp_path, "--route", route) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        reader = rawws.read_late_and_slowly(s)
        s.close()
        growth = router.status("VmHWM") - baseline
        lines = total_mib * MiB // 8192
        assert reader.received == lines * 8193  # the pty turns each \n into \r\n
        assert reader.close_code == 1000
        assert growth < 64 * 1024, f"router grew by {growth} KiB"


@pytest.mark.slow
def test_pty_command_not_reading_pauses_client(tmp_path: Path):
    """A client typing 256 MiB into a program on a pty that never reads is blocked early; the router grows < 64 MiB."""
    route = exec_route("/*", "sleeper.py", options="pty=true;auth=off")
    with router_process(tmp_path, "--ping", "10", "--ping-timeout", "5", "--route", route) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, "/")
        # Whole lines: in canonical mode the terminal itself discards a line longer than 4 KiB.
        block = rawws.frame_header(MiB, opcode=0x1) + (b"a" * 1023 + b"\n") * 1024
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
        assert blocked, "the client could send everything: nothing paused it"
        assert sent < 64 * MiB, f"{sent // MiB} MiB accepted before the client was paused"
        assert growth < 64 * 1024, f"router grew by {growth} KiB"


# -- tokens in the query (browsers) -------------------------------------------------------------


@pytest.mark.parametrize(("uri", "token", "kept"), [
    ("/sh?access_token=abc", "abc", ""),
    ("/sh?a=1&access_token=a%2Bb&b=2", "a+b", "a=1&b=2"),
    ("/sh?access_token=&x", "", "x"),
    ("/sh?my_access_token=1", None, "my_access_token=1"),
    ("/sh", None, ""),
])
def test_query_token(uri, token, kept):
    """access_token is read from the query and removed from what the router keeps, the rest left as written."""
    assert query_token(uri) == token
    assert without_query_token(uri.partition("?")[2]) == kept


def test_query_token_never_replaces_a_header():
    """A request's own Authorization header wins over a query token."""
    assert with_query_token({"authorization": "Basic eDp5"}, "/?access_token=t") == {"authorization": "Basic eDp5"}
    assert with_query_token({}, "/?access_token=t") == {"authorization": "Bearer t"}


@pytest_twisted.inlineCallbacks
def test_query_token_opens_a_token_route_and_is_not_kept(tmp_path):
    """?access_token= opens a tokens route, a wrong one is 401, and the command sees the query without the token."""
    (tmp_path / "tokens").write_text("s3cret-token\n")
    router = start_router(
        routes=[{"path": "/q", "target": f"exec:{PYTHON} -c \"import os; print(os.environ['QUERY_STRING'])\"",
                 "auth": "t"}],
        auth={"t": {"tokens": str(tmp_path / "tokens")}},
    )

    def client():
        refused = handshake_status(router.url + "/q?access_token=wrong")
        with connect(router.url + "/q?x=1&access_token=s3cret-token&y=2") as ws:
            return refused, ws.recv(timeout=10)

    try:
        refused, seen = yield in_thread(client)
        assert refused[0] == 401
        assert seen == "x=1&y=2"
    finally:
        yield router.stopService()


# -- the page's mount ---------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, bytes, str]:
    """A plain GET: status, body and Content-Type."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


@pytest_twisted.inlineCallbacks
def test_terminal_mount_serves_the_page_and_leaves_the_rest(tmp_path):
    """[terminal] mount serves wstelnet.html and xterm.js there with the web root's headers; other paths go on."""
    (tmp_path / "index.html").write_text("own index")
    router = start_router(routes=["/echo=echo:"], web=str(tmp_path), terminal={"mount": "/term/"})

    def fetch():
        return {path: http_get(router.port_number, path) for path in
                ("/term/", "/term/xterm/xterm.js", "/term/xterm/LICENSE", "/", "/term/nothing")}

    try:
        got = yield in_thread(fetch)
        assert got["/term/"][0] == 200 and b"xterm/xterm.js" in got["/term/"][1]
        assert (got["/term/xterm/xterm.js"][0], got["/term/xterm/xterm.js"][2]) == (200, "text/javascript")
        assert b"MIT" in got["/term/xterm/LICENSE"][1] or b"Permission" in got["/term/xterm/LICENSE"][1]
        assert got["/"][:2] == (200, b"own index")
        assert got["/term/nothing"][0] == 404
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_terminal_mount_without_a_web_root():
    """With no web root the page is still served at its mount, and / is 404."""
    router = start_router(routes=["/echo=echo:"], terminal={"mount": "/t/"})

    def fetch():
        return http_get(router.port_number, "/t/wstelnet.html")[0], http_get(router.port_number, "/")[0]

    try:
        assert (yield in_thread(fetch)) == (200, 404)
    finally:
        yield router.stopService()


def test_terminal_command_line_option():
    """--terminal PATH lowers to [terminal] mount."""
    assert options_to_raw({"terminal": "/term/", "routes": ["/e=echo:"]})["terminal"] == {"mount": "/term/"}


def test_demo_config_is_the_headline():
    """examples/demo.toml (make run) serves the page at /term/ and a shell on a pty that asks for the token."""
    from wsrouter.config.load import load_config

    from .support import REPO

    config = load_config(str(REPO / "examples" / "demo.toml"), {"listen": ["tcp:8080:interface=127.0.0.1"]})
    shell = next(route for route in config.routes if route.path == "/shell")
    assert isinstance(shell.target, ExecTarget) and shell.target.pty
    assert open_terminal_routes(config) == []
    auth = config.auth_for(shell)
    assert auth is not None and auth.tokens == ".cache/demo/token"
    assert config.terminal.mount == "/term/"
    assert config.listeners == ("tcp:8080:interface=127.0.0.1",)
