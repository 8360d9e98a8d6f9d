"""
Property tests of what wsrouter adds to the handshake: PROXY protocol
headers (L{wsrouter.proxyproto}), the Origin policy and credentials
(L{wsrouter.policy}) and the Host name (L{wsrouter.routing.host_name}).
Any input gives a decision or the documented error, never another exception.
"""

from __future__ import annotations

import base64
from typing import Any

from fuzz.checks import (
    check_authenticate,
    check_host_name,
    check_http_head,
    check_origin,
    check_proxy_header,
    check_proxy_round_trip,
    check_route_select,
)
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import budget
from wsrouter.config.spec import parse_route
from wsrouter.policy import Credentials
from wsrouter.proxyproto import V2_SIGNATURE

v1 = st.builds("PROXY {} {} {} {} {}\r\n".format, st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "UDP4", ""]),
               st.ip_addresses().map(str) | st.text(max_size=8), st.ip_addresses().map(str),
               st.integers(min_value=-1, max_value=70000).map(str) | st.sampled_from(["01", "", "٣"]),
               st.integers(min_value=0, max_value=65535).map(str)).map(lambda s: s.encode("utf-8"))
v2 = st.builds(lambda command, family, length, body: V2_SIGNATURE + bytes([command, family])
               + length.to_bytes(2, "big") + body,
               st.sampled_from([0x20, 0x21, 0x22, 0x11]), st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x41]),
               st.integers(min_value=0, max_value=5000), st.binary(max_size=300))
headers = st.tuples(v1 | v2 | st.binary(max_size=120), st.binary(max_size=20)).map(lambda t: t[0] + t[1])


@budget(250)
@given(data=headers)
@example(data=b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(data=V2_SIGNATURE)
@example(data=b"\r")
def test_any_proxy_header_bytes_parse_or_are_refused(data: bytes) -> None:
    """Any first bytes give a header, a need for more, or ProxyHeaderError; a header's prefixes need more."""
    check_proxy_header(data)


endpoints = st.tuples(st.ip_addresses().map(str), st.integers(min_value=0, max_value=65535))


@budget(200)
@given(version=st.sampled_from(["v1", "v2"]), source=endpoints, destination=endpoints, tail=st.binary(max_size=30))
def test_built_proxy_headers_parse_back(version: str, source: tuple[str, int], destination: tuple[str, int],
                                        tail: bytes) -> None:
    """A header the router sends to a target parses back to its addresses, whatever follows it."""
    check_proxy_round_trip(version, source, destination, tail)


origins = st.sampled_from(["https://a.example", "http://a.example:80", "null", "https://a.example:99999",
                           "https://user@a.example", "https://[::1]", "https://a.example/x", "file://"]) \
    | st.text(max_size=30) | st.none()
policies = st.sampled_from(["same", "off"]) | st.lists(
    st.sampled_from(["https://*.example", "http://a.example:8080", "https://*.", "https://a.example"]),
    min_size=1, max_size=3).map(tuple)


@budget(400)
@given(policy=policies, origin=origins, host=st.text(max_size=30) | st.none() | st.just("a.example:443"),
       secure=st.booleans())
@example(policy="same", origin="http://[", host="[", secure=False)
@example(policy="same", origin="http://a", host="b\x7f", secure=False)  # was quoted raw into the reason
def test_any_origin_and_host_give_a_decision(policy: str | tuple[str, ...], origin: str | None, host: str | None,
                                             secure: bool) -> None:
    """Any Origin and Host headers under any policy give allowed or a one-line reason."""
    check_origin(policy, origin, host, secure)


CREDENTIALS = Credentials(
    realm='r"x', users={"alice": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}, tokens=(b"secret-token-1234",),
    forward_header="X-Forwarded-User", forward_from=("10.0.0.0/8",),
)
authorizations = st.builds("{} {}".format, st.sampled_from(["Basic", "basic", "Bearer", "Digest", ""]),
                           st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=40))


@budget(400)
@given(authorization=authorizations | st.text(max_size=40), forwarded=st.none() | st.text(max_size=10),
       peer=st.ip_addresses().map(str) | st.just("unix"))
@example(authorization="Basic " + base64.b64encode(b"alice:password1234").decode(), forwarded=None, peer="unix")
@example(authorization="\x1b[2J\r 0", forwarded=None, peer="unix")  # was quoted into the reason and log line
@example(authorization="s3cr3t-t0ken-without-a-scheme", forwarded=None, peer="unix")  # was quoted: a bare secret
def test_any_credentials_give_a_decision_without_quoting_them(authorization: str, forwarded: str | None,
                                                              peer: str) -> None:
    """Any Authorization and forward headers give an acceptance, a password check or a 401 naming no secret."""
    request = {"authorization": authorization}
    if forwarded is not None:
        request["x-forwarded-user"] = forwarded
    check_authenticate(CREDENTIALS, request, peer)


@budget(300)
@given(header=st.text(max_size=40) | st.none() | st.sampled_from(["[::1]:80", "A.Example.:8080", "[", ":", "a:b:c"]))
def test_any_host_header_gives_a_name_or_none(header: str | None) -> None:
    """Any Host header gives a lower-case name or None."""
    check_host_name(header)


request_lines = st.sampled_from([b"GET / HTTP/1.1", b"GET /x HTTP/1.0", b"POST / HTTP/1.1", b"GET", b"", b"\x00 / H"])
header_lines = st.lists(st.builds(b"%s: %s".__mod__, st.tuples(
    st.sampled_from([b"Host", b"Upgrade", b"Content-Length", b"Transfer-Encoding", b"X", b""]),
    st.binary(max_size=60) | st.sampled_from([b"websocket", b"chunked", b"5", b"-1", b"x" * 300]))), max_size=8)
requests = st.builds(lambda line, headers, body: b"\r\n".join([line, *headers]) + b"\r\n\r\n" + body,
                     request_lines, header_lines, st.binary(max_size=20))


@budget(200)
@given(data=requests | st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
       max_header_bytes=st.sampled_from([64, 200, 8192]))
def test_any_request_head_is_answered_the_same_however_cut(data: bytes, cuts: list[int],
                                                           max_header_bytes: int) -> None:
    """Any request bytes get the same HTTP answer whole or cut; a head over the limit gets 431."""
    check_http_head(data, cuts, max_header_bytes)


ROUTES = [parse_route(text) for text in (
    "/=echo:", "/x@chat,superchat=echo:", "/x/*=tcp://127.0.0.1:1", "/v[host=a.example]=echo:",
    "/w[host=*.b.example]@binary=echo:",
)]
segments = st.sampled_from(["", "x", "v", "w", "y", "..", "%2F", "é", "\x1b"]) | st.text(max_size=4)
paths = st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(parts)) | st.text(max_size=20)
offers = st.lists(st.sampled_from(["chat", "superchat", "binary", "base64", "", "\x1b[31m"]) | st.text(max_size=6),
                  max_size=4)


@budget(300)
@given(routes=st.lists(st.sampled_from(ROUTES), min_size=1, max_size=5, unique=True), path=paths, offered=offers,
       host=st.none() | st.sampled_from(["a.example", "c.b.example", "A.EXAMPLE:80", "[::1]:1", "x\x1b"])
       | st.text(max_size=12), unknown_host=st.sampled_from(["default", "421"]))
@example(routes=[ROUTES[1]], path="/x", offered=["\x1b[31m"], host=None, unknown_host="default")
@example(routes=[ROUTES[3]], path="/v", offered=[], host="x\x1b", unknown_host="421")  # was quoted raw
def test_any_path_subprotocols_and_host_get_a_route_or_a_4xx(routes: list[Any], path: str, offered: list[str],
                                                               host: str | None, unknown_host: str) -> None:
    """The gateway's route decision gives a route serving the request or 400/404/421 with a printable reason."""
    check_route_select(routes, path, offered, host, unknown_host)
