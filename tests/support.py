"""
Shared test helpers: routers in-process and as real processes, loopback
target servers, and a blocking WebSocket client from the independent
``websockets`` library, run in a thread so the reactor keeps running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect as ws_connect
from zope.interface import implementer

from wsrouter.config import build_config, route_from_string
from wsrouter.service.single import build_service

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tests only: racy by nature)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def child_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WSROUTER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# -- routers ---------------------------------------------------------------------


_LIMIT_KEYS = {"max_message_size", "ping_interval", "ping_timeout", "idle_timeout", "session_idle_timeout",
               "handshake_timeout", "connect_timeout", "shutdown_grace", "max_forks"}


def nested_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """Keyword shorthands (route strings, limit names, record, web) as the nested config schema."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "routes":
            nested["routes"] = [route_from_string(r) if isinstance(r, str) else r for r in value]
        elif key in _LIMIT_KEYS:
            name = "session_idle_timeout" if key == "idle_timeout" else key
            nested.setdefault("limits", {})[name] = value
        elif key in ("record", "record_format", "record_max_bytes"):
            name = {"record": "directory", "record_format": "format", "record_max_bytes": "max_bytes"}[key]
            nested.setdefault("recording", {})[name] = str(value) if key == "record" else value
        elif key == "web":
            nested["web"] = {"root": str(value), **raw.get("web_settings", {})}
        elif key == "web_settings":
            continue
        else:
            nested[key] = value
    return nested


def start_router(**raw: Any) -> Any:
    """Start a router in this process on a system-chosen loopback port; stop it with stopService."""
    raw.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
    service = build_service(build_config(nested_schema(raw)), reactor)
    service.startService()
    port = getattr(service.ports()[0].getHost(), "port", 0)
    service.url = f"ws://127.0.0.1:{port}"
    service.http = f"http://127.0.0.1:{port}"
    service.port_number = port
    return service


class RouterProcess:
    """A router run as a real process (`python -m wsrouter ...`)."""

    def __init__(self, args: list[str], port: int, log_path: Path):
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (the router writes to it until stop() closes it)
        self.process = subprocess.Popen(
            [PYTHON, "-m", "wsrouter", *args], stdout=self._log, stderr=subprocess.STDOUT,
            env=child_env(), cwd=REPO,
        )
        try:
            wait_for_port(port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"router did not start:\n{self.log()}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self, field: str) -> int:
        """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@contextmanager
def router_process(tmp_path: Path, *args: str) -> Iterator[RouterProcess]:
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", *args], port, tmp_path / "router.log")
    try:
        yield router
    finally:
        router.stop()


# -- target servers (Twisted, in-process) -------------------------------------------


@implementer(IHalfCloseableProtocol)
class RecordingTarget(protocol.Protocol):
    """Keeps what it receives and notes end of input; optionally echoes."""

    def __init__(self, echo: bool = False, greeting: bytes = b"", close_after_greeting: bool = False):
        self.echo = echo
        self.greeting = greeting
        self.close_after_greeting = close_after_greeting
        self.received = bytearray()
        self.eof = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.factory.connected.callback(self) if not self.factory.connected.called else None
        if self.greeting:
            self.transport.write(self.greeting)
        if self.close_after_greeting:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.eof.callback(bytes(self.received))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if not self.eof.called:
            self.eof.callback(bytes(self.received))
        self.lost.callback(bytes(self.received))


class TargetFactory(protocol.Factory):
    noisy = False

    def __init__(self, make: Callable[[], protocol.Protocol]):
        self.make = make
        self.connections: list[Any] = []
        self.connected: defer.Deferred[Any] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        p = self.make()
        p.factory = self
        return p


def listen_target(make: Callable[[], protocol.Protocol]) -> tuple[Any, TargetFactory]:
    factory = TargetFactory(make)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, factory


# -- the independent client -----------------------------------------------------------


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """Run blocking client code off the reactor thread."""
    return deferToThread(function, *args, **kwargs)


def connect(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 10)
    kwargs.setdefault("max_size", None)
    return ws_connect(url, **kwargs)


def handshake_status(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """The HTTP status and body of a refused handshake."""
    from websockets.exceptions import InvalidStatus

    try:
        with connect(url, **kwargs):
            return 101, b""
    except InvalidStatus as e:
        return e.response.status_code, e.response.body or b""


def raw_upgrade(sock: socket.socket, port: int, path: str = "/e", version: str = "13", extra: str = "") -> bytes:
    """Send a handshake by hand (C{extra}: more header lines, each ending in CRLF) and read what comes
    back up to the end of the answer's head; the bytes read past the head come after a blank line."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
                 f"{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
