"""
wsrouter's reactor (wsrouter/reactor.py): Twisted's epoll reactor without the
per-event log context, installed by `wsrouter serve` and the --workers
children, with Twisted's default kept where it cannot or should not be used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import PYTHON, REPO, RouterProcess, child_env, connect, free_port, wait_for_port
from wsrouter.ws.internals import PRIVATE_ATTRIBUTES

# `wsrouter serve` in a process that reports which reactor it installed (a spy on wsrouter.reactor.install).
SPY_SERVE = """
import sys
import wsrouter.reactor as chosen
install = chosen.install
def spy():
    reactor = install()
    print("installed", type(reactor).__name__, flush=True)
    return reactor
chosen.install = spy
from wsrouter.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

# A protocol that raises in dataReceived on "boom", echoing otherwise; the reactor named by argv[1].
BOOM = r"""
import socket, sys
if sys.argv[1] == "wsrouter":
    from wsrouter.reactor import install
    install()
from twisted.internet import protocol, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
print("reactor", type(reactor).__name__)

class Boom(protocol.Protocol):
    def dataReceived(self, data):
        if b"boom" in data:
            raise ValueError("boom in dataReceived")
        self.transport.write(data)

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Boom), interface="127.0.0.1")

def clients():
    address = ("127.0.0.1", port.getHost().port)
    broken, healthy = socket.create_connection(address), socket.create_connection(address)
    broken.sendall(b"boom")
    reactor.callLater(0.2, check, broken, healthy)

def check(broken, healthy):
    healthy.sendall(b"still here")
    reactor.callLater(0.2, read, broken, healthy)

def read(broken, healthy):
    healthy.settimeout(10)
    broken.settimeout(10)
    print("healthy got", healthy.recv(100))
    print("broken got", broken.recv(100))
    reactor.stop()

reactor.callWhenRunning(clients)
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def _run(code: str, *args: str) -> str:
    done = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, env=child_env(),
                          cwd=REPO, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_private_names_relied_on_still_exist() -> None:
    """Twisted's epoll reactor still has the private names wsrouter/reactor.py uses, as it did."""
    from twisted.internet import posixbase
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    try:
        for key, obj in (("twisted.internet.epollreactor.EPollReactor", reactor),
                         ("twisted.internet.posixbase", posixbase)):
            missing = [name for name in PRIVATE_ATTRIBUTES[key] if not hasattr(obj, name)]
            assert missing == [], f"{key} changed: update wsrouter/reactor.py"
        assert isinstance(reactor._selectables, dict) and isinstance(reactor._reads, set)
    finally:
        reactor._poller.close()


def test_serve_installs_it_and_relays_end_to_end(tmp_path: Path) -> None:
    """`wsrouter serve` runs on DirectEPollReactor, and a WebSocket echo goes through it over real sockets."""
    port = free_port()
    log = tmp_path / "router.log"
    with open(log, "wb") as out:
        router = subprocess.Popen(
            [PYTHON, "-c", SPY_SERVE, "serve", "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/*=echo:"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    try:
        wait_for_port(port)
        with connect(f"ws://127.0.0.1:{port}/x") as ws:
            for size in (1, 1000, 200_000):
                ws.send(b"m" * size)
                assert ws.recv(timeout=10) == b"m" * size
    finally:
        router.terminate()
        router.wait(15)
    text = log.read_text()
    assert "installed DirectEPollReactor" in text, text
    assert re.search(r"session [0-9a-f]{8} closed: .* close 1000", text), text
    assert "Traceback" not in text and router.returncode == 0


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and "worker_process" in (entry / "cmdline").read_text(errors="replace"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(shutil.which("py-spy", path=os.path.dirname(PYTHON)) is None, reason="needs py-spy")
def test_worker_children_run_on_it(tmp_path: Path) -> None:
    """Each --workers child serves on DirectEPollReactor (its poll loop, as py-spy sees it, is wsrouter's)."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                            "--route", "/*=echo:"], port, tmp_path / "router.log")
    spy = shutil.which("py-spy", path=os.path.dirname(PYTHON))
    try:
        pids: list[int] = []
        for _ in range(100):  # up to 10 s for both workers to start
            pids = _worker_pids(router.pid)
            if len(pids) == 2 and router.log().count("room for about") == 2:
                break
            time.sleep(0.1)
        assert len(pids) == 2, router.log()
        with connect(f"ws://127.0.0.1:{port}/x") as ws:
            ws.send(b"through a worker")
            assert ws.recv(timeout=10) == b"through a worker"
        for pid in pids:
            stacks = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True,
                                    timeout=60, check=False)
            if stacks.returncode != 0 and "ermission" in stacks.stderr:
                pytest.skip("py-spy may not read other processes here")
            assert "(wsrouter/reactor.py" in stacks.stdout, stacks.stdout + stacks.stderr
    finally:
        router.stop()


def test_an_error_in_data_received_drops_that_connection_only_and_logs_as_before() -> None:
    """A protocol raising in dataReceived loses only its connection; the error line reads as on Twisted's own."""
    ours = _run(BOOM, "wsrouter")
    twisted = _run(BOOM, "twisted")
    assert "reactor DirectEPollReactor" in ours and "reactor EPollReactor" in twisted
    for out in (ours, twisted):
        assert "healthy got b'still here'" in out and "broken got b''" in out, out
        assert "builtins.ValueError: boom in dataReceived" in out, out

    def error_line(out: str) -> str:
        return next(line.split(" ", 1)[1] for line in out.splitlines() if "Unhandled Error" in line)

    assert error_line(ours) == error_line(twisted) == "[Boom,0,127.0.0.1] Unhandled Error"


def test_falls_back_when_a_reactor_is_installed_already() -> None:
    """install_default leaves an already installed reactor alone (embedders, twistd) and says so."""
    out = _run("from twisted.internet import reactor\n"
               "from wsrouter.reactor import install_default\n"
               "print(install_default(), type(reactor).__name__)")
    assert out.split() == ["False", "EPollReactor"]


def test_falls_back_without_epoll() -> None:
    """Without epoll, install_default installs nothing and Twisted's default reactor runs the router."""
    out = _run("import select\n"
               "del select.epoll\n"
               "from wsrouter.reactor import install_default\n"
               "print(install_default())\n"
               "from twisted.internet import reactor\n"
               "print(type(reactor).__name__)")
    assert out.split() == ["False", "PollReactor"]


TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def test_twistd_runs_the_router_on_it_with_reactor_wsrouter(tmp_path: Path) -> None:
    """`twistd --reactor wsrouter -n wsrouter ...` installs DirectEPollReactor (the plugin) and relays an echo."""
    port = free_port()
    log = tmp_path / "twistd.log"
    with open(log, "wb") as out:
        twistd = subprocess.Popen(
            [PYTHON, "-c", TWISTD, "--reactor", "wsrouter", "--pidfile", "", "-n", "wsrouter",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/*=echo:"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp_path)
    try:
        wait_for_port(port)
        with connect(f"ws://127.0.0.1:{port}/x") as ws:
            ws.send(b"via twistd")
            assert ws.recv(timeout=10) == b"via twistd"
    finally:
        twistd.terminate()
        twistd.wait(15)
    text = log.read_text()
    assert "reactor class: wsrouter.reactor.DirectEPollReactor" in text, text
