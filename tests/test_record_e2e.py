"""
Recording end to end: a router in this process with recording on, the
in-process echo target, the independent ``websockets`` client in a thread,
and the files read back with the recording reader.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from websockets.exceptions import ConnectionClosed

from wsrouter.recording import Event, read_recording

from . import rawws
from .support import connect, in_thread, start_router

BIG = bytes(range(256)) * 4096  # 1 MiB


def recordings(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def has_close(path: Path) -> bool:
    _, events = read_recording(path)
    return any(event.kind == "close" for event in events)


@pytest_twisted.inlineCallbacks
def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    """Let the reactor run until C{condition()} is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        yield task.deferLater(reactor, 0.02, lambda: None)


def messages(events: list[Event]) -> list[tuple[str | None, str, bytes]]:
    return [(e.direction, e.kind, e.payload) for e in events if e.kind in ("text", "binary")]


class ErrorLog:
    """Collects the router's error-level log events while in use."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def __enter__(self) -> ErrorLog:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


def echo_session(url: str, **kwargs: Any) -> list[Any]:
    """Text, binary and a 1 MiB message through an echo route; the client closes 1000 'bye'."""
    replies = []
    with connect(url, **kwargs) as ws:
        for message in ("héllo", b"\x00\x01\xff", BIG):
            ws.send(message)
            replies.append(ws.recv())
        ws.close(1000, "bye")
    return replies


@pytest_twisted.inlineCallbacks
def test_echo_session_recorded_exactly(tmp_path):
    """Text, binary and 1 MiB messages both ways and the client's close are recorded exactly, in order."""
    directory = tmp_path / "rec"
    router = start_router(routes=["/echo=echo:"], record=str(directory))
    try:
        replies = yield in_thread(
            echo_session, router.url + "/echo?k=v", additional_headers={"Cookie": "secret=1"})
        assert replies == ["héllo", b"\x00\x01\xff", BIG]
        yield wait_for(lambda: len(recordings(directory)) == 1 and has_close(recordings(directory)[0]))
    finally:
        yield router.stopService()
    [path] = recordings(directory)
    header, events = read_recording(path)
    events = list(events)
    assert (header.format, header.route, header.target, header.path, header.query) == (
        "jsonl", "/echo", "echo:", "/echo", "k=v")
    assert header.peer.startswith("127.0.0.1:")
    assert ("cookie", "[redacted]") in header.headers
    assert messages(events) == [
        ("client", "text", "héllo".encode()), ("target", "text", "héllo".encode()),
        ("client", "binary", b"\x00\x01\xff"), ("target", "binary", b"\x00\x01\xff"),
        ("client", "binary", BIG), ("target", "binary", BIG),
    ]
    assert [(e.kind, e.code, e.reason) for e in events if e.kind not in ("text", "binary")] == [
        ("close", 1000, "bye")]
    offsets = [e.offset for e in events]
    assert offsets == sorted(offsets)
    assert path.name.endswith(f"-echo-127.0.0.1_{header.peer.rsplit(':', 1)[1]}-{header.session_id}.jsonl")


@pytest_twisted.inlineCallbacks
def test_file_and_directory_modes(tmp_path):
    """A missing record directory is created 0700 and each recording is created 0600."""
    directory = tmp_path / "new" / "rec"
    router = start_router(routes=["/echo=echo:"], record=str(directory))
    try:
        yield in_thread(echo_session, router.url + "/echo")
        yield wait_for(lambda: len(recordings(directory)) == 1)
    finally:
        yield router.stopService()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(recordings(directory)[0].stat().st_mode) == 0o600


@pytest_twisted.inlineCallbacks
def test_route_directory_overrides_global(tmp_path):
    """A route's [record=DIR] records there, [record=off] not at all, the others into the global directory."""
    everywhere, own = tmp_path / "all", tmp_path / "own"
    router = start_router(
        routes=[f"/own[record={own}]=echo:", "/off[record=off]=echo:", "/plain=echo:"],
        record=str(everywhere),
    )

    def client():
        for path in ("/own", "/off", "/plain"):
            with connect(router.url + path) as ws:
                ws.send(path)
                ws.recv()

    try:
        yield in_thread(client)
        yield wait_for(lambda: len(recordings(own)) == 1 and len(recordings(everywhere)) == 1
                       and all(has_close(p) for p in recordings(own) + recordings(everywhere)))
    finally:
        yield router.stopService()
    assert [read_recording(p)[0].route for p in recordings(own)] == ["/own"]
    assert [read_recording(p)[0].route for p in recordings(everywhere)] == ["/plain"]


@pytest_twisted.inlineCallbacks
def test_route_records_without_global_directory(tmp_path):
    """With no router-wide directory only the routes naming one are recorded."""
    own = tmp_path / "own"
    router = start_router(routes=[f"/own[record={own}]=echo:", "/plain=echo:"])

    def client():
        for path in ("/plain", "/own"):
            with connect(router.url + path) as ws:
                ws.send(b"x")
                ws.recv()

    try:
        yield in_thread(client)
        yield wait_for(lambda: len(recordings(own)) == 1 and has_close(recordings(own)[0]))
    finally:
        yield router.stopService()
    assert [p.name for p in tmp_path.iterdir()] == ["own"]


@pytest_twisted.inlineCallbacks
def test_asciicast_format(tmp_path):
    """With record_format asciicast the file is asciicast v2: a JSON header, then [time, "i"/"o", text] lines."""
    router = start_router(routes=["/term=echo:"], record=str(tmp_path), record_format="asciicast")

    def client():
        with connect(router.url + "/term") as ws:
            ws.send("ls\r")
            ws.recv()
            ws.send("é".encode())
            ws.recv()

    try:
        yield in_thread(client)
        yield wait_for(lambda: len(recordings(tmp_path)) == 1
                       and len(recordings(tmp_path)[0].read_bytes().splitlines()) >= 5)
    finally:
        yield router.stopService()
    [path] = recordings(tmp_path)
    assert path.suffix == ".cast"
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert (lines[0]["version"], lines[0]["width"], lines[0]["height"]) == (2, 80, 24)
    assert lines[0]["wsrouter"]["route"] == "/term"
    assert [line[1:] for line in lines[1:]] == [["i", "ls\r"], ["o", "ls\r"], ["i", "é"], ["o", "é"]]
    header, events = read_recording(path)
    assert header.format == "asciicast"
    assert [(e.direction, e.payload) for e in events] == [
        ("client", b"ls\r"), ("target", b"ls\r"), ("client", "é".encode()), ("target", "é".encode())]


@pytest_twisted.inlineCallbacks
def test_max_bytes_stops_recording(tmp_path):
    """record_max_bytes ends the recording with the size-limit note; the session itself goes on."""
    router = start_router(routes=["/echo=echo:"], record=str(tmp_path), record_max_bytes=2000)
    try:
        replies = yield in_thread(echo_session, router.url + "/echo")
        assert replies[-1] == BIG
        yield wait_for(lambda: len(recordings(tmp_path)) == 1
                       and b"size limit" in recordings(tmp_path)[0].read_bytes())
    finally:
        yield router.stopService()
    [path] = recordings(tmp_path)
    _, events = read_recording(path)
    kinds = [(e.direction, e.kind) for e in events]
    assert kinds == [("client", "text"), ("target", "text"), ("client", "binary"), ("target", "binary"),
                     (None, "note")]


@pytest_twisted.inlineCallbacks
def test_unwritable_directory_logged_once(tmp_path):
    """A record directory that cannot be created leaves the session working and logs one error naming it."""
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    directory = blocker / "rec"
    router = start_router(routes=["/echo=echo:"], record=str(directory))
    try:
        with ErrorLog() as errors:
            replies = yield in_thread(echo_session, router.url + "/echo")
            yield wait_for(lambda: not router.gateway.sessions)
    finally:
        yield router.stopService()
    assert replies == ["héllo", b"\x00\x01\xff", BIG]
    [text] = errors.texts()
    assert str(directory) in text and "goes on" in text


@pytest_twisted.inlineCallbacks
def test_shutdown_flushes_open_recordings(tmp_path):
    """Stopping the router with a session open closes it 1001, and the close is in the file when stopService fires."""
    router = start_router(routes=["/echo=echo:"], record=str(tmp_path))
    ready = threading.Event()

    def client():
        with connect(router.url + "/echo") as ws:
            ws.send("before shutdown")
            ws.recv()
            ready.set()
            try:
                ws.recv()
            except ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None

    closing = in_thread(client)
    try:
        yield wait_for(ready.is_set)
    finally:
        yield router.stopService()
    [path] = recordings(tmp_path)
    _, events = read_recording(path)
    events = list(events)
    assert messages(events) == [("client", "text", b"before shutdown"), ("target", "text", b"before shutdown")]
    assert (events[-1].kind, events[-1].code, events[-1].reason) == ("close", 1001, "router shutting down")
    assert (yield closing) == 1001


@pytest_twisted.inlineCallbacks
def test_dropped_connection_recorded(tmp_path):
    """A client that drops its TCP connection without a close still gets a finished recording, ending in a close."""
    router = start_router(routes=["/echo=echo:"], record=str(tmp_path))

    def client():
        sock = rawws.upgrade(router.port_number, "/echo")
        sock.sendall(rawws.frame_header(4) + b"ping")
        reader = rawws.FrameReader(sock)
        reader.read_until(4)  # the echo, so the message was recorded before the drop
        sock.close()
        return reader.received

    try:
        assert (yield in_thread(client)) == 4
        yield wait_for(lambda: len(recordings(tmp_path)) == 1 and has_close(recordings(tmp_path)[0]))
    finally:
        yield router.stopService()
    _, events = read_recording(recordings(tmp_path)[0])
    events = list(events)
    assert ("client", "binary", b"ping") in messages(events)
    assert (events[-1].kind, events[-1].code) == ("close", 1006)
