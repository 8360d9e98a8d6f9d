"""
Hot reload of the services: routes, listeners and wrapped programs brought
to a new configuration by difference, with open sessions kept -- in one
process and with real worker processes under an in-process supervisor.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from websockets.exceptions import InvalidStatus

from wsrouter.config import build_config
from wsrouter.service.single import CannotStart
from wsrouter.service.workers import WorkerSupervisor

from .support import (
    REPO,
    RecordingTarget,
    child_env,
    connect,
    free_port,
    handshake_status,
    in_thread,
    listen_target,
    nested_schema,
    start_router,
    wait_for_port,
)

#: The real interpreter binary for wrapped programs (a wrapper script would take the shim for itself).
PYTHON = os.path.realpath(sys.executable)
TCP_SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")


def config_of(raw: dict[str, Any]) -> Any:
    """A config from the test shorthands (route strings) in the nested schema."""
    return build_config(nested_schema(raw))


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def listen_of(service: Any) -> list[str]:
    return [listener.description for listener in service.listeners]


def echo_once(url: str, payload: bytes = b"ping") -> bytes:
    with connect(url) as ws:
        ws.send(payload)
        return ws.recv(timeout=10)


def wrap_route(path: str, banner: str) -> str:
    command = shlex.join([PYTHON, TCP_SERVER, "--host", "127.0.0.1", "--port", str(free_port()),
                          "--banner", banner])
    return f"{path}=wrap:respawn:{command}"


def banner_of(url: str) -> bytes:
    """The first message of a session; a refusal's status and body in the error."""
    try:
        with connect(url) as ws:
            return ws.recv(timeout=10)
    except InvalidStatus as e:
        raise AssertionError(f"{url}: {e.response.status_code} {e.response.body!r}") from None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest_twisted.inlineCallbacks
def test_reload_adds_and_removes_routes_keeping_open_sessions():
    """A reload adds a route (new connections get it) and removes one (404 for new ones); its open session goes on."""
    listen = ["tcp:0:interface=127.0.0.1"]
    router = start_router(listen=listen, routes=["/a=echo:"])
    try:
        assert (yield in_thread(handshake_status, router.url + "/b"))[0] == 404
        yield router.reload(config_of({"listen": listen, "routes": ["/a=echo:", "/b=echo:"]}))
        assert (yield in_thread(echo_once, router.url + "/b")) == b"ping"

        opened, reloaded = threading.Event(), threading.Event()

        def held_session() -> list[bytes]:
            with connect(router.url + "/b") as ws:
                ws.send(b"before")
                echoes = [ws.recv(timeout=10)]
                opened.set()
                if not reloaded.wait(30):
                    raise AssertionError("no reload")
                ws.send(b"after")
                echoes.append(ws.recv(timeout=10))
                return echoes

        held = in_thread(held_session)
        yield in_thread(opened.wait, 30)
        yield router.reload(config_of({"listen": listen, "routes": ["/a=echo:"]}))
        status, _body = yield in_thread(handshake_status, router.url + "/b")
        assert status == 404
        reloaded.set()
        assert (yield held) == [b"before", b"after"]
        assert (yield in_thread(echo_once, router.url + "/a")) == b"ping"
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_reload_adds_and_removes_listeners():
    """A reload opens a new listener that serves at once and closes a removed one."""
    first, second = free_port(), free_port()
    old = [f"tcp:{first}:interface=127.0.0.1"]
    new = [f"tcp:{second}:interface=127.0.0.1"]
    router = start_router(listen=old, routes=["/*=echo:"])
    try:
        yield router.reload(config_of({"listen": old + new, "routes": ["/*=echo:"]}))
        assert listen_of(router) == old + new
        assert (yield in_thread(echo_once, f"ws://127.0.0.1:{second}/x")) == b"ping"
        yield router.reload(config_of({"listen": new, "routes": ["/*=echo:"]}))
        assert listen_of(router) == new
        assert (yield in_thread(echo_once, f"ws://127.0.0.1:{second}/x")) == b"ping"
        with pytest.raises(OSError):
            yield in_thread(echo_once, f"ws://127.0.0.1:{first}/x")
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_reload_restarts_a_changed_program_and_leaves_an_unchanged_one():
    """A changed wrapped program is replaced, an unchanged one keeps its PID, and a removed one is stopped."""
    listen = ["tcp:0:interface=127.0.0.1"]
    keep, change, drop = wrap_route("/keep", "keep"), wrap_route("/change", "old"), wrap_route("/drop", "drop")
    router = start_router(listen=listen, routes=[keep, change, drop])
    try:
        assert (yield in_thread(banner_of, router.url + "/change")) == b"old\n"
        assert (yield in_thread(banner_of, router.url + "/drop")) == b"drop\n"
        before = {program.target: program.pid for program in router.programs.values()}
        changed = wrap_route("/change", "new")
        yield router.reload(config_of({"listen": listen, "routes": [keep, changed]}))
        after = {program.target: program.pid for program in router.programs.values()}
        assert len(after) == 2
        kept = config_of({"routes": [keep]}).routes[0].target
        assert after[kept] == before[kept] and alive(after[kept])
        for target, pid in before.items():
            if target != kept:
                assert target not in after and not alive(pid)
        assert (yield in_thread(banner_of, router.url + "/change")) == b"new\n"
        assert (yield in_thread(banner_of, router.url + "/keep")) == b"keep\n"
        assert (yield in_thread(handshake_status, router.url + "/drop"))[0] == 404
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_reload_reports_what_could_not_start_and_applies_the_rest():
    """A reload with a missing program and a busy port fails naming both, yet its other changes are in force."""
    listen = ["tcp:0:interface=127.0.0.1"]
    router = start_router(listen=listen, routes=["/a=echo:"])
    busy = listen_target(RecordingTarget)[0]
    try:
        taken = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        config = config_of({"listen": [*listen, taken],
                               "routes": ["/a=echo:", "/b=echo:", "/w=wrap:respawn:no-such-program-xyz"]})
        with pytest.raises(CannotStart) as error:
            yield router.reload(config)
        assert "'no-such-program-xyz' not found" in str(error.value)
        assert f"cannot listen on {taken}" in str(error.value)
        assert (yield in_thread(echo_once, router.url + "/b")) == b"ping"
    finally:
        yield router.stopService()
        yield busy.stopListening()


# -- live traffic ---------------------------------------------------------------------------


class Streams:
    """Client sessions that stream numbered messages and check each echo, until told to stop."""

    def __init__(self, url: str, count: int, max_messages: int = 100000):
        self.url = url
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.sent = [0] * count
        self._max = max_messages
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]
        self.started = threading.Barrier(count + 1)

    def _run(self, n: int) -> None:
        try:
            with connect(self.url) as ws:
                self.started.wait(20)
                deadline = time.monotonic() + 90
                while self.sent[n] < self._max and time.monotonic() < deadline:
                    payload = b"%d:%d:" % (n, self.sent[n]) + bytes(range(256)) * 4
                    ws.send(payload)
                    if ws.recv(timeout=10) != payload:
                        raise AssertionError(f"session {n}: message {self.sent[n]} came back different")
                    self.sent[n] += 1
                    if self.stop.is_set():
                        break
        except BaseException as e:
            self.errors.append(e)
            self.started.abort()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self.started.wait(20)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def configs(listen: list[str], target: str, rounds: int) -> list[Any]:
    """Alternating configurations that keep the streamed route and change everything else."""
    result = []
    for n in range(rounds):
        extra = [f"/extra{n}=echo:"] if n % 2 else ["/other=echo:", f"/more{n}=echo:"]
        result.append(config_of({"listen": listen, "routes": [f"/stream={target}", *extra]}))
    return result


@pytest_twisted.inlineCallbacks
def test_sessions_stream_through_reloads_single_process():
    """Sessions streaming through several reloads of one router process lose no byte and are not closed."""
    port, _factory = listen_target(lambda: RecordingTarget(echo=True))
    target = f"tcp://127.0.0.1:{port.getHost().port}"
    listen = ["tcp:0:interface=127.0.0.1"]
    router = start_router(listen=listen, routes=[f"/stream={target}"])
    streams = Streams(router.url + "/stream", 4)
    try:
        yield in_thread(streams.start)
        for config in configs(listen, target, 5):
            yield router.reload(config)
            yield sleep(0.2)
        yield in_thread(streams.finish)
        assert not streams.errors, streams.errors[:3]
        assert all(sent > 0 for sent in streams.sent), streams.sent
        print("messages echoed per session:", streams.sent)
    finally:
        streams.finish()
        yield router.stopService()
        yield port.stopListening()


# -- with workers ---------------------------------------------------------------------------


@pytest.fixture
def supervisor_log():
    """Log events of the in-process supervisor (and the worker lines it relays), as text."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def start_supervisor(raw: dict[str, Any]) -> WorkerSupervisor:
    supervisor = WorkerSupervisor(config_of(raw), reactor, environ=child_env())
    supervisor.startService()
    return supervisor


@defer.inlineCallbacks
def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        yield sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reloads_seen(lines: list[str], count: int) -> bool:
    return sum("configuration reloaded" in line for line in lines) >= count


def listening_workers(lines: list[str]) -> int:
    return sum(1 for line in lines if "room for about" in line)


def worker_pids(lines: list[str]) -> list[int]:
    return [int(pid) for line in lines for pid in re.findall(r"started worker \d+ \(pid (\d+)\)", line)]


@pytest_twisted.inlineCallbacks
def test_workers_reload_routes_and_keep_streaming_sessions(supervisor_log):
    """With two workers, reloads add and remove routes in every worker while streaming sessions lose no byte."""
    port, _factory = listen_target(lambda: RecordingTarget(echo=True))
    target = f"tcp://127.0.0.1:{port.getHost().port}"
    number = free_port()
    listen = [f"tcp:{number}:interface=127.0.0.1"]
    url = f"ws://127.0.0.1:{number}"
    supervisor = start_supervisor({"listen": listen, "workers": 2, "routes": [f"/stream={target}"]})
    streams = Streams(url + "/stream", 6)
    try:
        yield wait_until(lambda: listening_workers(supervisor_log) == 2, "two workers listening")
        pids = worker_pids(supervisor_log)
        yield in_thread(streams.start)
        for done, config in enumerate(configs(listen, target, 4), start=1):
            yield supervisor.reload(config)
            yield wait_until(partial(reloads_seen, supervisor_log, 2 * done), "both workers reloaded")
        yield in_thread(streams.finish)
        assert not streams.errors, streams.errors[:3]
        assert all(sent > 0 for sent in streams.sent), streams.sent
        print("messages echoed per session:", streams.sent)
        # The last configuration has /extra3 and not /other: every worker serves it.
        for _ in range(6):
            assert (yield in_thread(echo_once, url + "/extra3")) == b"ping"
            assert (yield in_thread(handshake_status, url + "/other"))[0] == 404
        assert worker_pids(supervisor_log) == pids, "routes alone restart no worker"
    finally:
        streams.finish()
        yield supervisor.stopService()
        yield port.stopListening()
    assert not any(alive(pid) for pid in pids)


@pytest_twisted.inlineCallbacks
def test_workers_reload_a_listener_change_restarts_workers_one_by_one(supervisor_log):
    """With workers, a new listener is served after the workers are restarted one by one on the new set."""
    first, second = free_port(), free_port()
    old = [f"tcp:{first}:interface=127.0.0.1"]
    new = [*old, f"tcp:{second}:interface=127.0.0.1"]
    supervisor = start_supervisor({"listen": old, "workers": 2, "routes": ["/*=echo:"]})
    try:
        yield wait_until(lambda: listening_workers(supervisor_log) == 2, "two workers listening")
        pids = worker_pids(supervisor_log)
        yield supervisor.reload(config_of({"listen": new, "workers": 2, "routes": ["/*=echo:"]}))
        yield in_thread(wait_for_port, second)
        yield wait_until(lambda: listening_workers(supervisor_log) == 4, "restarted workers listening")
        for _ in range(4):
            assert (yield in_thread(echo_once, f"ws://127.0.0.1:{second}/x")) == b"ping"
            assert (yield in_thread(echo_once, f"ws://127.0.0.1:{first}/x")) == b"ping"
        assert len(worker_pids(supervisor_log)) == 4 and not any(alive(pid) for pid in pids)
    finally:
        yield supervisor.stopService()


@pytest_twisted.inlineCallbacks
def test_workers_reload_keeps_an_unchanged_program_and_restarts_a_changed_one(supervisor_log):
    """With workers, a reload keeps an unchanged program (same PID), replaces a changed one; workers reach both."""
    number = free_port()
    listen = [f"tcp:{number}:interface=127.0.0.1"]
    url = f"ws://127.0.0.1:{number}"
    keep, change = wrap_route("/keep", "keep"), wrap_route("/change", "old")
    # Inline programs are named by their place among the routes: keep's stays first.
    supervisor = start_supervisor({"listen": listen, "workers": 2, "routes": [keep, change]})
    try:
        yield wait_until(lambda: listening_workers(supervisor_log) == 2, "two workers listening")
        assert (yield in_thread(banner_of, url + "/change")) == b"old\n"
        kept_pid, old_pid = supervisor.programs[0].pid, supervisor.programs[1].pid
        yield supervisor.reload(config_of({"listen": listen, "workers": 2,
                                              "routes": [keep, wrap_route("/change", "new")]}))
        assert supervisor.programs[0].pid == kept_pid and alive(kept_pid) and not alive(old_pid)
        for _ in range(4):
            assert (yield in_thread(banner_of, url + "/change")) == b"new\n"
            assert (yield in_thread(banner_of, url + "/keep")) == b"keep\n"
    finally:
        yield supervisor.stopService()


# -- the whole path: config file, SIGHUP, real router process ------------------------------------


def write_config(path: Path, port: int, workers: int, routes: dict[str, str]) -> None:
    lines = [f'listen = ["tcp:{port}:interface=127.0.0.1"]', f"workers = {workers}", ""]
    for route, target in routes.items():
        lines += ["[[routes]]", f'path = "{route}"', f'target = "{target}"', ""]
    path.write_text("\n".join(lines))


def poll(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_config_file_keeping_open_sessions(tmp_path, workers):
    """SIGHUP to a router run with --config serves the edited file's routes while a session opened before goes on."""
    port = free_port()
    config = tmp_path / "wsrouter.toml"
    write_config(config, port, workers, {"/a": "echo:", "/gone": "echo:"})
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "wsrouter", "--config", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT, env=child_env(XDG_RUNTIME_DIR=str(tmp_path)), cwd=REPO)
    try:
        wait_for_port(port)
        url = f"ws://127.0.0.1:{port}"
        poll(lambda: log_path.read_text().count("room for about") >= workers, "the router listening")
        assert handshake_status(url + "/b")[0] == 404
        with connect(url + "/gone") as held:
            held.send(b"before")
            assert held.recv(timeout=10) == b"before"
            write_config(config, port, workers, {"/a": "echo:", "/b": "echo:"})
            process.send_signal(signal.SIGHUP)
            poll(lambda: all(handshake_status(url + "/b")[0] == 101 for _ in range(4)), "the new route")
            assert all(handshake_status(url + "/gone")[0] == 404 for _ in range(4))
            held.send(b"after")
            assert held.recv(timeout=10) == b"after"
        assert echo_once(url + "/a") == b"ping"
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, log_path.read_text()
