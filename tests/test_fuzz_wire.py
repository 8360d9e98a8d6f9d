"""
The handshake on the wire: generated upgrade requests (any method, path,
header set and values, permessage-deflate offers) sent to a real router
process over loopback each get an HTTP answer, never a 5xx for a client
mistake nor a silent drop, and the router keeps serving.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import budget

from .support import free_port, router_process

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One router process for all examples: echo routes, a subprotocol route, an unreachable target."""
    down = free_port()
    with router_process(tmp_path_factory.mktemp("wire"), "--permessage-deflate", "--max-header-bytes", "2048",
                        "--route", "/=echo:", "--route", "/x@chat,superchat=echo:",
                        "--route", f"/down=tcp://127.0.0.1:{down}") as process:
        yield process.port
        assert process.process.poll() is None, process.log()[-3000:]


def declares_body(request: bytes) -> bool:
    return b"Content-Length: " in request or b"Transfer-Encoding: " in request


def exchange(port: int, request: bytes) -> bytes | None:
    """
    Send C{request}; return the response head (or what came before the
    router closed), or C{None} if a request declaring a body is (rightly)
    still waiting for it after 3 s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=3 if declares_body(request) else 15) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            except TimeoutError:
                if declares_body(request) and not answer:
                    return None
                raise
            if not chunk:
                break
            answer += chunk
        return answer


values = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
headers = st.fixed_dictionaries({}, optional={
    b"Host": st.sampled_from([b"127.0.0.1", b"a.example:80", b"", b"[::1"]) | values,
    b"Upgrade": st.sampled_from([b"websocket", b"WebSocket", b"h2c", b""]) | values,
    b"Connection": st.sampled_from([b"Upgrade", b"keep-alive, upgrade", b"close"]) | values,
    b"Sec-WebSocket-Key": st.sampled_from([KEY, b"short", b""]) | values,
    b"Sec-WebSocket-Version": st.sampled_from([b"13", b"8", b"13, 8", b""]) | values,
    b"Sec-WebSocket-Protocol": st.sampled_from([b"chat", b"superchat, chat", b"binary", b",,", b""]) | values,
    b"Sec-WebSocket-Extensions": st.sampled_from([
        b"permessage-deflate", b"permessage-deflate; client_max_window_bits",
        b"permessage-deflate; server_max_window_bits=8", b"permessage-deflate; server_max_window_bits=99",
        b"permessage-deflate; client_max_window_bits=abc", b"permessage-deflate; unknown=1",
        b"x-webkit-deflate-frame", b"permessage-deflate;;", b""]) | values,
    b"Origin": st.sampled_from([b"http://127.0.0.1", b"null", b""]) | values,
    b"Content-Length": st.sampled_from([b"0", b"5", b"-1", b"x"]),
    b"Transfer-Encoding": st.sampled_from([b"chunked", b"gzip"]),
})
requests = st.builds(
    lambda method, path, version, fields, tail: method + b" " + path + b" " + version + b"\r\n"
    + b"".join(name + b": " + value + b"\r\n" for name, value in fields.items()) + b"\r\n" + tail,
    st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS", b"get", b"\x00"]),
    st.sampled_from([b"/", b"/x", b"/down", b"/nowhere", b"/x?q=1", b"//x", b"/%00", b"*", b"/\xff"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x"]),
    headers, st.sampled_from([b"", b"\x81\x80\0\0\0\0", b"hello"]),
)


@budget(40)
@given(request=requests)
@example(request=b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
def test_any_upgrade_request_gets_an_answer(router: int, request: bytes) -> None:
    """Any upgrade request gets a status line, not a 5xx (but 502 for the unreachable target); a body may be awaited."""
    answer = exchange(router, request)
    if answer is None:
        return  # waiting for the body the request announced: right
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), (request, answer[:200])
    status = int(status_line.split()[1])
    assert status < 500 or (status == 502 and b" /down " in request), (request, answer[:300])


def test_the_router_still_serves_after_the_examples(router: int, tmp_path: Path) -> None:
    """After every generated request, an ordinary WebSocket client still gets its echo."""
    from .support import connect

    with connect(f"ws://127.0.0.1:{router}/") as ws:
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
