"""
Message-preserving framings end to end: the independent ``websockets``
client talks through the router to a real TCP echo server (a separate
process), and gets back exactly the messages it sent.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed

from .support import RecordingTarget, child_env, connect, in_thread, listen_target, start_router

TCP_SERVER = Path(__file__).parent / "programs" / "tcp_server.py"


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A real TCP echo server process on a loopback port it chose; ended by its PID."""
    process = subprocess.Popen([sys.executable, str(TCP_SERVER), "--host", "127.0.0.1", "--port", "0", "--echo"],
                               stdout=subprocess.PIPE, env=child_env())
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("listening "), line
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


MESSAGES: list[Any] = [
    "hello", b"\x00\xff\x80binary", "", b"", "\u20ac\U0001f600 multi-byte", b"valid UTF-8 but binary",
    "\u00e9" * 40000, bytes(range(256)) * 400, ["frag", "mented ", "text"], [b"frag", b"", b"mented"],
]


def expected(message: Any) -> Any:
    """What the client should get back: fragments come back as one message."""
    if isinstance(message, list):
        return type(message[0])().join(message)
    return message


def exchange(url: str, messages: list[Any]) -> list[Any]:
    """Send each message and read one message back for each."""
    got = []
    with connect(url) as ws:
        for message in messages:
            ws.send(message)
            got.append(ws.recv(timeout=10))
    return got


@pytest_twisted.inlineCallbacks
def test_length_typed_framing_keeps_messages_through_a_tcp_echo(echo_port: int) -> None:
    """Through a TCP echo with length:u32:typed framing, every message comes back whole, same type, empty ones too."""
    router = start_router(routes=[f"/framed[framing=length:u32:typed]=tcp://127.0.0.1:{echo_port}"])
    try:
        got = yield in_thread(exchange, router.url + "/framed", MESSAGES)
    finally:
        yield router.stopService()
    assert got == [expected(message) for message in MESSAGES]
    assert [type(message) for message in got] == [type(expected(message)) for message in MESSAGES]


@pytest.mark.parametrize(("framing", "messages"), [
    ("line", ["one", "", "caf\u00e9"]),
    ("line:crlf", ["one", "two"]),
    ("json", ['{"a": [1, "}"]}', "[]", '"s"', "42"]),
    ("length:u16", ["text", b"\xff\xfebinary"]),
    ("separator:\\0", ["a", "b"]),
])
@pytest_twisted.inlineCallbacks
def test_framings_keep_text_messages_through_a_tcp_echo(echo_port: int, framing: str, messages: list[Any]) -> None:
    """Line, CRLF, JSON, untyped length and separator framings give each message back, one for one."""
    router = start_router(routes=[f"/f[framing={framing}]=tcp://127.0.0.1:{echo_port}"])
    try:
        got = yield in_thread(exchange, router.url + "/f", messages)
    finally:
        yield router.stopService()
    assert got == messages


def send_and_close_code(url: str, message: Any) -> int | None:
    """Send C{message}, then read until the router closes; return its close code."""
    with connect(url) as ws:
        if message is not None:
            ws.send(message)
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


@pytest_twisted.inlineCallbacks
def test_client_message_too_big_for_u16_closes_1009(echo_port: int) -> None:
    """A client message longer than a 2-byte prefix can say closes the session with 1009."""
    router = start_router(routes=[f"/f[framing=length:u16]=tcp://127.0.0.1:{echo_port}"])
    try:
        code = yield in_thread(send_and_close_code, router.url + "/f", b"x" * 70000)
    finally:
        yield router.stopService()
    assert code == 1009


@pytest_twisted.inlineCallbacks
def test_target_frame_over_the_limit_closes_1009() -> None:
    """A target frame announcing more than max_message_size closes the client with 1009, before it is read."""
    port, _factory = listen_target(lambda: RecordingTarget(greeting=b"\x00\x00\x10\x00" + b"x" * 10))
    router = start_router(routes=[f"/f[framing=length:u32]=tcp://127.0.0.1:{port.getHost().port}"],
                          max_message_size=1000)
    try:
        code = yield in_thread(send_and_close_code, router.url + "/f", None)
    finally:
        yield router.stopService()
        yield port.stopListening()
    assert code == 1009


@pytest_twisted.inlineCallbacks
def test_auto_framing_sends_text_and_binary_through_a_tcp_echo(echo_port: int) -> None:
    """With auto framing, echoed UTF-8 comes back as text and other bytes as binary."""
    router = start_router(routes=[f"/a[framing=auto]=tcp://127.0.0.1:{echo_port}"])
    try:
        got = yield in_thread(exchange, router.url + "/a", [b"caf\xc3\xa9", b"\xff\x00"])
    finally:
        yield router.stopService()
    assert got == ["caf\u00e9", b"\xff\x00"]


@pytest.mark.parametrize("framing", ["line", "length:u16:typed", "json"])
@pytest_twisted.inlineCallbacks
def test_framings_keep_messages_through_an_exec_cat(framing: str) -> None:
    """An exec: route running cat with a message framing gives each message back whole, both ways."""
    messages = ['{"n": 1}', '["two"]'] if framing == "json" else ["one", "two", "three"]
    router = start_router(routes=[f"/c[framing={framing}]=exec:cat"])
    try:
        got = yield in_thread(exchange, router.url + "/c", messages)
    finally:
        yield router.stopService()
    assert got == messages
