"""A refused handshake is logged once, by wsrouter; Autobahn's own handshake failures keep their lines."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.support import handshake_status, in_thread, raw_upgrade, start_router


def _lines_during(router: Any, action: Any) -> Any:
    """The log lines at info or above emitted while C{action} runs in a thread and the reactor settles."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.info:
            lines.append(f"{level.name} {event.get('log_namespace')}: {formatEvent(event)}")

    globalLogPublisher.addObserver(observe)

    @pytest_twisted.inlineCallbacks
    def run() -> Any:
        try:
            result = yield in_thread(action)
            yield deferLater(reactor, 0.2, lambda: None)  # the connection's teardown
        finally:
            globalLogPublisher.removeObserver(observe)
        return result, lines

    return run()


@pytest_twisted.inlineCallbacks
def test_refusal_logs_one_line() -> Any:
    """A 404 refusal logs exactly one line (wsrouter's), not Autobahn's 'failing' and 'dropping' lines too."""
    router = start_router(routes=["/e=echo:"])
    try:
        (code, _), lines = yield _lines_during(router, lambda: handshake_status(router.url + "/nowhere"))
        assert code == 404
        assert len(lines) == 1, lines
        assert lines[0].startswith("info wsrouter: refused 127.0.0.1:") and " 404 " in lines[0], lines
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_refusal_with_headers_not_logged_by_autobahn() -> Any:
    """A 403 origin refusal keeps its status and gets no Autobahn line (the gateway logs it)."""
    router = start_router(routes=["/e=echo:"], security={"origin": "http://here.example"})
    try:
        (code, _), lines = yield _lines_during(
            router, lambda: handshake_status(router.url + "/e", origin="http://elsewhere.example"))
        assert code == 403
        assert lines and not [line for line in lines if "autobahn" in line], lines
    finally:
        yield router.stopService()


def _bad_version(port: int) -> bytes:
    """A handshake Autobahn itself refuses (an unknown protocol version); the answer's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return raw_upgrade(s, port, version="99").split(b"\r\n", 1)[0]


@pytest_twisted.inlineCallbacks
def test_autobahn_refusal_still_logged() -> Any:
    """A handshake Autobahn refuses on its own (wsrouter logs nothing) still gets Autobahn's log line."""
    router = start_router(routes=["/e=echo:"])
    try:
        status, lines = yield _lines_during(router, lambda: _bad_version(router.port_number))
        assert status.startswith(b"HTTP/1.1 400"), status
        assert any("failing WebSocket opening handshake" in line for line in lines), lines
    finally:
        yield router.stopService()
