"""
Unit tests for L{wsrouter.policy} (client counts, origins, credentials: plain
data in, decisions out) and for
L{wsrouter.web.channel.LimitedChannel} on an in-memory transport and clock,
fed one byte at a time as well as all at once.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from wsrouter.config import ConfigError, Limits, Route, Security, build_config, to_data
from wsrouter.config.model import EchoTarget
from wsrouter.policy import (
    UNKNOWN_USER_HASH,
    Accepted,
    ClientCounts,
    Credentials,
    PasswordCheck,
    Refusal,
    authenticate,
    origin_policy_problem,
    origin_problem,
    parse_htpasswd,
    parse_tokens,
    token_known,
)
from wsrouter.web.channel import LimitedChannel, limit_requests

# -- ClientCounts -----------------------------------------------------------------------


def test_total_limit_is_503_and_per_client_limit_is_429() -> None:
    """The total is checked first (503 for everyone); a full address gets 429 while another address still gets in."""
    counts = ClientCounts(max_connections=3, max_per_client=2, max_handshakes=100)
    assert counts.admit("a", 0) is None
    assert counts.admit("a", 0) is None
    refusal = counts.admit("a", 0)
    assert refusal is not None and (refusal.status, refusal.retry_after) == (429, 5)
    assert counts.admit("b", 0) is None
    refusal = counts.admit("c", 0)
    assert refusal is not None and refusal.status == 503
    assert counts.total == 3 and counts.open == {"a": 2, "b": 1}


def test_release_frees_the_address_and_forgets_it_at_zero() -> None:
    """Each release gives one count back; an address with none open leaves the table."""
    counts = ClientCounts(10, 1, 100)
    assert counts.admit("a", 0) is None
    assert counts.admit("a", 0) is not None
    counts.release("a")
    assert counts.open == {} and counts.total == 0
    assert counts.admit("a", 0) is None


def test_handshake_rate_is_a_burst_then_refills_evenly() -> None:
    """N handshakes per minute: a burst of N, then one more every 60/N seconds, with Retry-After saying when."""
    counts = ClientCounts(100, 100, max_handshakes=3)
    for _ in range(3):
        assert counts.admit("a", 100.0) is None
        counts.release("a")
    refusal = counts.admit("a", 100.0)
    assert refusal is not None and refusal.status == 429 and refusal.retry_after == 20
    refusal = counts.admit("a", 115.0)
    assert refusal is not None and refusal.retry_after == 5
    assert counts.admit("a", 120.0) is None
    assert counts.admit("b", 120.0) is None  # other addresses have their own bucket


def test_new_limits_apply_to_the_next_handshake() -> None:
    """set_limits (a reload) keeps the counts and judges the next handshake by the new limits."""
    counts = ClientCounts(10, 1, 100)
    assert counts.admit("a", 0) is None
    counts.set_limits(10, 2, 100)
    assert counts.admit("a", 0) is None
    assert counts.total == 2


def test_idle_addresses_are_pruned() -> None:
    """The bucket table stays bounded: addresses with nothing open and a full bucket are forgotten."""
    counts = ClientCounts(10**6, 10, 60)
    for i in range(5000):
        assert counts.admit(f"10.0.{i // 256}.{i % 256}", float(i)) is None
        counts.release(f"10.0.{i // 256}.{i % 256}")
    assert len(counts._buckets) <= 4097


# -- origin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "origin", "host", "secure", "allowed"), [
    ("same", None, "h:8080", False, True),
    ("same", "http://h:8080", "h:8080", False, True),
    ("same", "http://H:8080", "h:8080", False, True),
    ("same", "http://h", "h:80", False, True),
    ("same", "https://h", "h", True, True),
    ("same", "http://h", "h", True, False),
    ("same", "https://h:8080", "h:8080", False, False),
    ("same", "http://h:8081", "h:8080", False, False),
    ("same", "http://evil.example", "h", False, False),
    ("same", "null", "h", False, False),
    ("same", "http://h", None, False, False),
    ("off", "http://evil.example", "h", False, True),
    (("https://a.example",), "https://a.example", "h", False, True),
    (("https://a.example",), "https://a.example:443", "h", False, True),
    (("https://a.example",), "http://a.example", "h", False, False),
    (("https://a.example",), "https://a.example:8443", "h", False, False),
    (("https://*.b.example",), "https://x.b.example", "h", False, True),
    (("https://*.b.example",), "https://y.x.b.example", "h", False, True),
    (("https://*.b.example",), "https://b.example", "h", False, False),
    (("https://*.b.example",), "https://xb.example", "h", False, False),
    (("https://*.b.example:8443",), "https://x.b.example:8443", "h", False, True),
    (("https://a.example", "https://*.b.example"), "null", "h", False, False),
])
def test_origin_policy(policy: Any, origin: str | None, host: str | None, secure: bool, allowed: bool) -> None:
    """same compares scheme, host and port with the connection; a list matches exactly or by '*.'; off allows all."""
    assert (origin_problem(policy, origin, host, secure) is None) is allowed


@pytest.mark.parametrize("policy", ["sane", (), ("a.example",), ("https://a.example/path",), ("https://a*.example",),
                                    ("ftp://a.example",), (5,)])
def test_bad_origin_policies_are_named(policy: Any) -> None:
    """A policy that is neither a word nor a list of SCHEME://HOST[:PORT] origins is a problem with a reason."""
    assert origin_policy_problem(policy)


def test_origin_in_the_config_schema() -> None:
    """Route and [security] origins are read from files and command-line strings, checked, and written back."""
    config = build_config({"security": {"origin": "https://a.example https://*.b.example"}, "routes": [
        {"path": "/x", "target": "echo:", "origin": "off"},
        "/y[origin=https://c.example]=echo:",
        {"path": "/z", "target": "echo:"},
    ]})
    assert config.security == Security(("https://a.example", "https://*.b.example"))
    assert [config.origin_policy(route) for route in config.routes] == [
        "off", ("https://c.example",), ("https://a.example", "https://*.b.example")]
    assert build_config(to_data(config)) == config
    with pytest.raises(ConfigError) as caught:
        build_config({"security": {"origin": "same-site"}, "routes": [{"path": "/x", "target": "echo:",
                                                                       "origin": ["a.example"]}]})
    assert [key for key, _ in caught.value.problems] == ["security.origin", "routes[0].origin"]
    with pytest.raises(ConfigError):
        Route("/x", EchoTarget(), origin=("nope",))


def test_limits_check_themselves() -> None:
    """The new limits must be whole numbers greater than 0."""
    with pytest.raises(ConfigError) as caught:
        Limits(max_header_bytes=0, max_connections=-1, max_connections_per_client=1.5,
               max_handshakes_per_client="x")  # type: ignore[arg-type]
    assert [key for key, _ in caught.value.problems] == [
        "max_header_bytes", "max_connections", "max_connections_per_client", "max_handshakes_per_client"]


# -- LimitedChannel ----------------------------------------------------------------------------


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


def channel(limits: Limits) -> tuple[LimitedChannel, StringTransport, Clock]:
    """A LimitedChannel of a Site serving 'hello', on an in-memory transport and clock."""
    site = Site(Hello())
    clock = Clock()
    site.reactor = clock  # type: ignore[assignment]
    limit_requests(site, lambda: limits)
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert isinstance(protocol, LimitedChannel)
    return protocol, transport, clock


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("step", [1, len(REQUEST)])
def test_complete_request_in_time_is_served(step: int) -> None:
    """A request sent whole or byte by byte before the deadline is served, and no timer is left behind."""
    protocol, transport, clock = channel(Limits(handshake_timeout=2))
    for start in range(0, len(REQUEST), step):
        protocol.dataReceived(REQUEST[start:start + step])
        clock.advance(0.01)
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert transport.value().endswith(b"hello")
    assert [call for call in clock.getDelayedCalls() if call.func == protocol._too_slow] == []


def test_trickled_head_gets_408_at_the_deadline_not_before() -> None:
    """A byte every half second keeps an idle timer alive but not the head deadline: 408 at the limit, then closed."""
    protocol, transport, clock = channel(Limits(handshake_timeout=2))
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    for _ in range(3):
        clock.advance(0.5)
        protocol.dataReceived(b"X")
    assert transport.value() == b""
    clock.advance(0.5)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.value().endswith(b"the request head was not complete after 2 s\n")
    assert transport.disconnecting


def test_silent_connection_gets_408() -> None:
    """A connection that sends nothing is cut at the same deadline, counted from the accept."""
    _, transport, clock = channel(Limits(handshake_timeout=2))
    clock.advance(2)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_kept_alive_connection_gets_a_new_deadline_per_request() -> None:
    """On a kept-alive connection the next request's deadline counts from its first byte."""
    protocol, transport, clock = channel(Limits(handshake_timeout=2))
    protocol.dataReceived(REQUEST)
    clock.advance(5)
    assert b" 408 " not in transport.value()
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    clock.advance(1.9)
    assert b" 408 " not in transport.value()
    clock.advance(0.2)
    assert b" 408 " in transport.value()


@pytest.mark.parametrize("step", [1, 4096, 10**6])
@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Small: bbbbbbbb\r\n" * 200 + b"\r\n",
    b"GET /" + b"p" * 3000 + b" HTTP/1.1\r\n\r\n",
])
def test_oversize_head_gets_431(step: int, head: bytes) -> None:
    """A head over max_header_bytes (one long line, many lines, a long URL) gets 431, whole or byte by byte."""
    protocol, transport, _ = channel(Limits(max_header_bytes=1024))
    for start in range(0, len(head), step):
        protocol.dataReceived(head[start:start + step])
    assert transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert transport.value().endswith(b"the request line and headers exceed 1024 bytes\n")
    assert transport.value().count(b"HTTP/1.1") == 1


def test_head_of_exactly_the_limit_passes() -> None:
    """The limit counts the request line and headers with their line ends: exactly at it is served."""
    pad = 1024 - len(REQUEST) - len(b"X: \r\n")
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * pad + b"\r\n\r\n"
    assert len(request) == 1024
    protocol, transport, _ = channel(Limits(max_header_bytes=1024))
    protocol.dataReceived(request)
    assert transport.value().startswith(b"HTTP/1.1 200 OK")


# -- credentials --------------------------------------------------------------------------------


CREDENTIALS = Credentials("r", {"alice": "$2y$05$hash"}, (b"tok-1", b"tok-2"), "X-User", ("10.0.0.0/8",))


def _basic(text: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(text.encode()).decode()}


@pytest.mark.parametrize(("headers", "peer", "expected"), [
    ({"x-user": "carol"}, "10.1.2.3", Accepted("carol", "forward")),
    ({"x-user": "carol", "authorization": "Bearer tok-1"}, "127.0.0.1",
     Refusal(401, "X-User from 127.0.0.1, which is not a trusted proxy")),
    ({"authorization": "Bearer tok-2"}, "127.0.0.1", Accepted("token", "token")),
    ({"authorization": "bearer  tok-1 "}, "127.0.0.1", Accepted("token", "token")),
    ({"authorization": "Bearer tok-3"}, "127.0.0.1", Refusal(401, "unknown bearer token")),
    ({"authorization": "Bearer tok-"}, "127.0.0.1", Refusal(401, "unknown bearer token")),
    (_basic("alice:pw:with:colons"), "127.0.0.1", PasswordCheck("alice", b"pw:with:colons", b"$2y$05$hash")),
    (_basic("bob:pw"), "127.0.0.1", PasswordCheck("bob", b"pw", UNKNOWN_USER_HASH, known=False)),
    (_basic("no-colon"), "127.0.0.1", Refusal(401, "malformed Basic credentials")),
    ({"authorization": "Basic %%%"}, "127.0.0.1", Refusal(401, "malformed Basic credentials")),
    ({"authorization": "Digest x"}, "127.0.0.1", Refusal(401, "credentials of an unaccepted kind (digest)")),
    ({}, "127.0.0.1", Refusal(401, "credentials required")),
    ({"x-user": "carol"}, "unix", Refusal(401, "X-User from unix, which is not a trusted proxy")),
])
def test_authenticate(headers: dict[str, str], peer: str, expected: object) -> None:
    """Forward auth only from trusted proxies, then bearer tokens, then Basic (left to the caller's bcrypt check)."""
    assert authenticate(CREDENTIALS, headers, peer) == expected


def test_token_comparison_checks_every_token() -> None:
    """token_known matches exactly (not by prefix) and looks at the whole list whatever matches first."""
    assert token_known(b"a", [b"a", b"b"]) and token_known(b"b", [b"a", b"b"])
    assert not token_known(b"", [b"a"]) and not token_known(b"ab", [b"a"]) and not token_known(b"a", [])


def test_challenge_names_the_methods_a_client_can_answer() -> None:
    """A 401 offers Basic when there are users and Bearer when there are tokens, with the realm."""
    assert CREDENTIALS.challenge() == [("WWW-Authenticate", 'Basic realm="r", charset="UTF-8"'),
                                       ("WWW-Authenticate", 'Bearer realm="r"')]
    assert Credentials("r", {}, (), "X-User", ("10.0.0.0/8",)).challenge() == []


def test_htpasswd_and_token_files() -> None:
    """htpasswd files keep accepted lines and name a refused one; token files skip blanks and comments."""
    assert parse_htpasswd("# c\n\nalice:$2y$05$abc\nbob:{SHA}xyz=\n") == {"alice": "$2y$05$abc", "bob": "{SHA}xyz="}
    with pytest.raises(ValueError, match=r"line 2: user 'bob': refused: plain text .* `htpasswd -B"):
        parse_htpasswd("alice:$2y$05$abc\nbob:secret\n")
    assert parse_tokens("# c\n a \n\nb\n") == (b"a", b"b")
