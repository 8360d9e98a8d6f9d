"""
The properties of the PROXY and resolvers atheris targets (fuzz/fuzz_proxy.py,
fuzz/fuzz_resolvers.py) on chosen inputs, and what their runs found.
"""

from __future__ import annotations

import pytest
from fuzz.checks import (
    check_proxy_stream,
    check_redaction,
    check_split_target,
    check_template,
    check_token_lines,
    check_token_of,
    proxy_stream_outcome,
    resolve_request,
)

from wsrouter.config import TcpTarget
from wsrouter.proxyproto import V2_SIGNATURE, build_header
from wsrouter.resolvers.tokenfile import parse_token_lines

V1 = build_header("v1", ("10.0.0.1", 1234), ("10.0.0.2", 80))
V2 = build_header("v2", ("::1", 1234), ("::2", 443))
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("data", [
    pytest.param(V1 + REQUEST, id="v1"), pytest.param(V2 + REQUEST, id="v2"),
    pytest.param(b"PROXY UNKNOWN\r\n" + REQUEST, id="v1-unknown"), pytest.param(V1[:-2], id="v1-unfinished"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n" + REQUEST, id="v1-bad-port"),
    pytest.param(V2_SIGNATURE + b"\x22", id="v2-bad-version"), pytest.param(REQUEST, id="no-header"),
])
def test_proxy_stream_is_the_same_however_cut(data: bytes) -> None:
    """The PROXY reader ends the same whether the bytes come whole, byte by byte or cut anywhere."""
    check_proxy_stream(data, [1, 7, 16, 17, 40])


def test_proxy_stream_outcome_passes_the_rest_and_names_the_client() -> None:
    """After a v1 header the wrapped protocol gets exactly the rest, and the peer is the header's source."""
    aborted, passed, peer, host = proxy_stream_outcome([V1[:5], V1[5:] + REQUEST[:3], REQUEST[3:]])
    assert not aborted and passed == REQUEST
    assert (peer.host, peer.port, host.host, host.port) == ("10.0.0.1", 1234, "10.0.0.2", 80)
    aborted, passed, _, _ = proxy_stream_outcome([REQUEST])
    assert aborted and passed == b""


@pytest.mark.parametrize("value", ["vnc1", "..", "a/b", "a:1", "x" * 65, "%2F", "", "tok en", "-", "0" * 64])
@pytest.mark.parametrize("pattern", ["tcp://10.0.0.{query.n}:5900", "unix:///run/vnc/{token}.sock",
                                     "tcp://{token}:{query.port}", "tcp://[::1]:59{header.x-display}"])
def test_template_result_stays_in_the_pattern(pattern: str, value: str) -> None:
    """A template's target is the pattern with a safe value in each place, or a 400."""
    request = resolve_request([("n", value), ("port", value), ("token", value)], {}, "/" + value, "",
                              [("x-display", value)])
    check_template(pattern, request.with_token(value or None))


@pytest.mark.parametrize("text", ["", "a: 127.0.0.1:5900\n# c\nb: unix_socket:/run/x.sock", "x\0: 1:2",
                                  "a\x0c: 127L>0.0.1:5900\nb\u0487\u044c\x90c\n# co"])
def test_token_lines_any_text(text: str) -> None:
    """Token file text gives targets or skipped lines, and a valid line among them is read (the finding too)."""
    for at in range(3):
        check_token_lines(text, at)


@pytest.mark.parametrize("text", ["", "[::1]:5900", "unix_socket:/run/a:b.sock", "host", ":", "h:99999"])
def test_split_target_and_token_of_and_redaction(text: str) -> None:
    """HOST:PORT text, the token's sources and its redaction hold their properties on chosen text."""
    check_split_target(text)
    check_token_of([("token", text)], {"token": text}, "/" + text, text, False)
    check_token_of([], {}, "/" + text, text, True)
    check_redaction(text or "t", text)


# -- found by fuzz/fuzz_resolvers.py, and fixed in resolvers/tokenfile.py.


def test_a_token_file_line_without_a_token_is_skipped() -> None:
    """A line with no token before ': ' is skipped, not kept under the empty token (no request can name it)."""
    assert parse_token_lines(": 10.0.0.1:5900", "fuzz") == {}


def test_token_file_lines_end_only_at_newlines() -> None:
    """A token file line ends at a newline only, as websockify reads it; a form feed or U+0085 makes no new line."""
    assert parse_token_lines("c\x85d: 10.0.0.1:5900", "fuzz") == {"c\x85d": TcpTarget("10.0.0.1", 5900)}
