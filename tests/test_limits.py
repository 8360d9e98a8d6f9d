"""
Who may connect, end to end: a real router process on loopback, asked with
raw sockets (so a request can be trickled or oversized exactly) and with
the independent ``websockets`` client.  Each refusal is checked for its
exact status, its one-line reason and the router's log line.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.support import connect, free_port, router_process

UPGRADE = ("GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def read_answer(sock: socket.socket) -> bytes:
    """Everything the router sends until it closes (bounded by the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for_log(router: object, text: str, timeout: float = 10.0) -> str:
    """The router's log once it contains C{text} (polled; the router writes it asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log: str = router.log()  # type: ignore[attr-defined]
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{router.log()}")  # type: ignore[attr-defined]


def refusal(url: str, **kwargs: object) -> InvalidStatus:
    """The refused handshake's response (fails if the handshake succeeds)."""
    with pytest.raises(InvalidStatus) as caught, connect(url, **kwargs):
        pass
    return caught.value


# -- the request head ---------------------------------------------------------------


def test_refusal_lingers_for_a_client_that_keeps_sending(tmp_path: Path) -> None:
    """After a 408 the router half-closes and keeps reading, so a client still sending is not reset (no lost answer)."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--handshake-timeout", "1") as router, \
            socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert read_answer(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")  # up to the router's FIN
        for _ in range(20):  # a socket closed with unread input would answer these with a reset
            sock.sendall(b"a" * 1024)
            time.sleep(0.02)


def test_slowloris_is_cut_at_the_handshake_timeout(tmp_path: Path) -> None:
    """A client trickling header bytes (faster than any idle timer) is answered 408 once the head deadline passes."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--handshake-timeout", "1") as router, \
            socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sent = 0
        answer = b""
        for _ in range(200):  # 200 bytes at 0.05 s: ten times the limit, were it never cut
            try:
                sock.sendall(b"a")
                sent += 1
            except OSError:
                break
            time.sleep(0.05)
            sock.setblocking(False)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                continue
            finally:
                sock.setblocking(True)
            break
        elapsed = time.monotonic() - started
        answer += read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert answer.endswith(b"the request head was not complete after 1 s\n")
        assert elapsed >= 1.0  # not before the limit
        assert sent < 200  # cut while still trickling
        wait_for_log(router, "408 the request head was not complete after 1 s")


def test_a_slow_complete_request_within_the_limit_is_served(tmp_path: Path) -> None:
    """A handshake sent a few bytes at a time but finished before the deadline is accepted (101)."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--handshake-timeout", "10") as router, \
            socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        request = (UPGRADE + "\r\n").encode()
        for start in range(0, len(request), 16):
            sock.sendall(request[start:start + 16])
            time.sleep(0.01)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 101 "), head


@pytest.mark.parametrize("shape", ["one-huge-header", "many-headers"])
def test_oversize_headers_get_431(tmp_path: Path, shape: str) -> None:
    """A 256 KiB request head (one long line, or many lines) is answered 431 with a reason, not dropped."""
    if shape == "one-huge-header":
        extra = "X-Big: " + "a" * (256 * 1024) + "\r\n"
    else:
        extra = "".join(f"X-H{i}: {'b' * 200}\r\n" for i in range(1300))
    with router_process(tmp_path, "--route", "/echo=echo:") as router, \
            socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        with suppress(OSError):  # the router may close before it has read everything: the answer is sent
            sock.sendall((UPGRADE + extra + "\r\n").encode())
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
        assert answer.endswith(b"the request line and headers exceed 65536 bytes\n")
        wait_for_log(router, "431 the request line and headers exceed 65536 bytes")


def test_header_limit_is_configurable_and_exact(tmp_path: Path) -> None:
    """With --max-header-bytes, a head just under the limit passes and one just over gets 431."""
    base = len(UPGRADE) + 2  # the final empty line
    with router_process(tmp_path, "--route", "/echo=echo:", "--max-header-bytes", "600") as router:
        for size, expected in [(600, b"HTTP/1.1 101 "), (601, b"HTTP/1.1 431 ")]:
            pad = "X-Pad: " + "p" * (size - base - len("X-Pad: \r\n")) + "\r\n"
            request = UPGRADE + pad + "\r\n"
            assert len(request) == size
            with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
                sock.sendall(request.encode())
                assert sock.recv(65536).startswith(expected), size


def test_the_web_root_is_guarded_too(tmp_path: Path) -> None:
    """A plain HTTP request for a static file gets 431 too when its headers are too large."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello")
    with router_process(tmp_path, "--web", str(www), "--max-header-bytes", "1024") as router, \
            socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 2000 + b"\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 431 ")


# -- connections and handshakes per client, and in total ----------------------------------------


def test_connections_per_client_get_429_and_free_up(tmp_path: Path) -> None:
    """Past max_connections_per_client a client gets 429 with Retry-After; closing one lets the next in."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--max-connections-per-client", "2") as router, \
            ExitStack() as stack:
        first = stack.enter_context(connect(router.url + "/echo"))
        stack.enter_context(connect(router.url + "/echo"))
        refused = refusal(router.url + "/echo")
        assert refused.response.status_code == 429
        assert refused.response.headers["Retry-After"] == "5"
        assert refused.response.body == b"too many connections from 127.0.0.1 (2 open)\n"
        wait_for_log(router, "429 too many connections from 127.0.0.1 (2 open)")
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the router counts the session out when it has ended on its side
            try:
                with connect(router.url + "/echo") as again:
                    again.send("still here")
                    assert again.recv() == "still here"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the closed session was never counted out"
                time.sleep(0.05)


def test_total_connections_get_503(tmp_path: Path) -> None:
    """Past max_connections every client gets 503 with Retry-After."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--max-connections", "2") as router, \
            ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(connect(router.url + "/echo"))
        refused = refusal(router.url + "/echo")
        assert refused.response.status_code == 503
        assert "Retry-After" in refused.response.headers
        assert refused.response.body == b"too many connections (2 open)\n"


def test_handshake_rate_per_client_gets_429(tmp_path: Path) -> None:
    """Past max_handshakes_per_client handshakes in a minute, the next gets 429 with a Retry-After in seconds."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--max-handshakes-per-client", "3") as router:
        for _ in range(3):
            with connect(router.url + "/echo"):
                pass
        refused = refusal(router.url + "/echo")
        assert refused.response.status_code == 429
        assert 1 <= int(refused.response.headers["Retry-After"]) <= 20
        assert refused.response.body == b"too many handshakes from 127.0.0.1 (more than 3 per 60 s)\n"


def test_refused_handshakes_are_not_left_counted(tmp_path: Path) -> None:
    """Handshakes refused after admission (404, 403, 502) give their count back, so they never fill a quota."""
    closed = free_port()
    with router_process(tmp_path, "--route", "/echo=echo:", "--route", f"/down=tcp://127.0.0.1:{closed}",
                        "--max-connections-per-client", "1") as router:
        for _ in range(3):
            assert refusal(router.url + "/nowhere").response.status_code == 404
            assert refusal(router.url + "/echo", origin="http://evil.example").response.status_code == 403
            assert refusal(router.url + "/down").response.status_code == 502
        with connect(router.url + "/echo") as ws:
            ws.send("in")
            assert ws.recv() == "in"


# -- origin policy ------------------------------------------------------------------------


def test_origin_policy_per_route(tmp_path: Path) -> None:
    """same by default, a trusted list with wildcards, off; no Origin is always allowed; refusals are 403 and logged."""
    with router_process(
            tmp_path, "--route", "/same=echo:", "--route", "/off[origin=off]=echo:",
            "--route", "/list[origin=https://a.example https://*.b.example]=echo:") as router:
        here = f"http://127.0.0.1:{router.port}"
        allowed = [("/same", here), ("/same", None), ("/off", "http://evil.example"),
                   ("/list", "https://a.example"), ("/list", "https://x.y.b.example"), ("/list", None)]
        for path, origin in allowed:
            with connect(router.url + path, origin=origin):
                pass
        refused = [("/same", "http://evil.example"), ("/same", f"https://127.0.0.1:{router.port}"),
                   ("/list", "https://b.example"), ("/list", "http://a.example"), ("/list", "https://a.example:8443"),
                   ("/list", "null")]
        for path, origin in refused:
            response = refusal(router.url + path, origin=origin).response
            assert response.status_code == 403, (path, origin)
            assert response.body.startswith(f"origin {origin} not allowed: ".encode()), response.body
            wait_for_log(router, f"{path}: 403 origin {origin} not allowed")
        lines = [line for line in router.log().splitlines() if "origin" in line and "refused" in line]
        assert len(lines) == len(refused), lines  # one line per refusal


def test_router_wide_origin_policy_and_websockify_expect_origin(tmp_path: Path) -> None:
    """websockify's --auth-plugin ExpectOrigin --auth-source sets the router-wide trusted origins; a route's wins."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--route", "/open[origin=off]=echo:", "--auth-plugin",
                        "ExpectOrigin", "--auth-source", "https://a.example https://b.example") as router:
        with connect(router.url + "/echo", origin="https://b.example"):
            pass
        assert refusal(router.url + "/echo", origin=f"http://127.0.0.1:{router.port}").response.status_code == 403
        with connect(router.url + "/open", origin="http://evil.example"):
            pass
