"""
Tests for L{wsrouter.config}: parsing targets, routes and framings, and
building a whole configuration with every problem reported at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from wsrouter.config import (
    ConfigError,
    EchoTarget,
    ExecTarget,
    Framing,
    Route,
    TcpTarget,
    UdpTarget,
    UnixDatagramTarget,
    UnixTarget,
    build_config,
    listener_from_short_form,
    parse_framing,
    parse_route,
    parse_target,
    route_from_string,
)

MiB = 1024 * 1024

# -- parse_target --------------------------------------------------------------

VALID_TARGETS = [
    pytest.param("tcp://example.com:80", TcpTarget("example.com", 80), id="tcp"),
    pytest.param("tcp://127.0.0.1:5900/", TcpTarget("127.0.0.1", 5900), id="tcp-trailing-slash"),
    pytest.param("tcp://[::1]:5900", TcpTarget("::1", 5900), id="tcp-ipv6"),
    pytest.param("localhost:5900", TcpTarget("localhost", 5900), id="bare-host-port"),
    pytest.param("10.0.0.1:65535", TcpTarget("10.0.0.1", 65535), id="bare-highest-port"),
    pytest.param("[::1]:1", TcpTarget("::1", 1), id="bare-ipv6-lowest-port"),
    pytest.param("  tcp://h:22 \n", TcpTarget("h", 22), id="surrounding-whitespace"),
    pytest.param("unix:///run/app.sock", UnixTarget("/run/app.sock"), id="unix"),
    pytest.param("udp://127.0.0.1:53", UdpTarget("127.0.0.1", 53), id="udp"),
    pytest.param("udp://[::1]:53", UdpTarget("::1", 53), id="udp-ipv6"),
    pytest.param("unix-dgram:///run/log.sock", UnixDatagramTarget("/run/log.sock"), id="unix-dgram"),
    pytest.param("echo:", EchoTarget(), id="echo"),
    pytest.param("echo", EchoTarget(), id="echo-without-colon"),
    pytest.param("exec:cat", ExecTarget(("cat",)), id="exec"),
    pytest.param("exec:sh -c 'echo hello world'", ExecTarget(("sh", "-c", "echo hello world")),
                 id="exec-single-quotes"),
    pytest.param('exec:printf "%s\\n" "a b"', ExecTarget(("printf", "%s\\n", "a b")), id="exec-double-quotes"),
    pytest.param("exec:  /bin/echo  a   b ", ExecTarget(("/bin/echo", "a", "b")), id="exec-extra-spaces"),
    pytest.param("exec:env A=B cmd", ExecTarget(("env", "A=B", "cmd")), id="exec-with-equals"),
]


@pytest.mark.parametrize("text, expected", VALID_TARGETS)
def test_parse_target_forms(text: str, expected: Any) -> None:
    """Each documented target form parses to the matching target object."""
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, expected", VALID_TARGETS)
def test_target_description_parses_back(text: str, expected: Any) -> None:
    """A target's describe() text is itself a target string for the same target."""
    assert parse_target(expected.describe()) == expected


@pytest.mark.parametrize("text, fragments", [
    pytest.param("tcp://host:0", ["1 to 65535", "'0'"], id="port-zero"),
    pytest.param("host:70000", ["1 to 65535", "'70000'"], id="port-too-big"),
    pytest.param("udp://host:65536", ["1 to 65535", "'65536'"], id="udp-port-too-big"),
    pytest.param("host:abc", ["port", "'abc'"], id="port-not-a-number"),
    pytest.param("tcp://host", ["HOST:PORT"], id="no-port"),
    pytest.param("tcp://:80", ["HOST:PORT"], id="missing-host"),
    pytest.param(":80", ["HOST:PORT"], id="bare-missing-host"),
    pytest.param("::1:80", ["[ADDR]:PORT"], id="ipv6-without-brackets"),
    pytest.param("", ["HOST:PORT"], id="empty"),
    pytest.param("unix://run/app.sock", ["absolute path", "unix:///"], id="unix-relative"),
    pytest.param("unix-dgram://log.sock", ["absolute path", "unix-dgram:///"], id="unix-dgram-relative"),
    pytest.param("http://example.com:80", ["unknown target", "'http://example.com:80'", "tcp://HOST:PORT",
                                           "unix:///PATH", "exec:COMMAND", "echo:"], id="unknown-scheme"),
    pytest.param("ws://example.com/chat", ["expected HOST:PORT"], id="ws-without-port"),
    pytest.param("exec:", ["needs a command"], id="exec-empty"),
    pytest.param("exec:   ", ["needs a command"], id="exec-blank"),
    pytest.param(
        "exec:sh -c 'oops", ["exec"], id="exec-unbalanced-quote",
    ),
    pytest.param(
        "[example.com]:80", ["IPv6"], id="brackets-around-non-ipv6",
    ),
])
def test_parse_target_errors(text: str, fragments: list[str]) -> None:
    """A bad target string raises ValueError whose message says what is wrong and what is expected."""
    with pytest.raises(ValueError) as caught:
        parse_target(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize("text, path", [
    ("unix:///tmp/app?1.sock", "/tmp/app?1.sock"),
    ("unix-dgram:///tmp/log#2", "/tmp/log#2"),
])
def test_unix_path_kept_whole(text: str, path: str) -> None:
    """A socket path containing '?' or '#' is kept whole, not cut like a URL query or fragment."""
    assert parse_target(text).path == path


# -- parse_route ---------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    pytest.param("/vnc=localhost:5900", Route("/vnc", TcpTarget("localhost", 5900)), id="exact"),
    pytest.param("/a/b/=echo:", Route("/a/b/", EchoTarget()), id="exact-trailing-slash"),
    pytest.param("/x/*=echo:", Route("/x", EchoTarget(), prefix=True), id="prefix"),
    pytest.param("/*=echo:", Route("/", EchoTarget(), prefix=True), id="catch-all"),
    pytest.param("/chat@chat.v1,chat.v2=echo:",
                 Route("/chat", EchoTarget(), subprotocols=("chat.v1", "chat.v2")), id="subprotocols"),
    pytest.param("/x/*@binary=udp://h:9",
                 Route("/x", UdpTarget("h", 9), prefix=True, subprotocols=("binary",)), id="prefix-subprotocol"),
    pytest.param("/run=exec:env A=B cmd", Route("/run", ExecTarget(("env", "A=B", "cmd"))),
                 id="first-equals-splits"),
])
def test_parse_route_forms(text: str, expected: Route) -> None:
    """Route strings give exact, prefix and catch-all routes, with their subprotocols and target."""
    assert parse_route(text) == expected


@pytest.mark.parametrize("text", ["/vnc=echo:", "/x/*=echo:", "/*=echo:", "/chat@a,b=echo:", "/x/*@binary=echo:"])
def test_route_description_parses_back(text: str) -> None:
    """A route's describe() text, given a target again, parses to the same route."""
    route = parse_route(text)
    assert parse_route(route.describe() + "=echo:") == route


@pytest.mark.parametrize("text, fragment", [
    pytest.param("/x", "PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET", id="no-equals"),
    pytest.param("=echo:", "PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET", id="no-path"),
    pytest.param("x=echo:", "must start with '/'", id="no-leading-slash"),
    pytest.param("@chat=echo:", "must start with '/'", id="only-subprotocol"),
    pytest.param("/a/*/b=echo:", "final '/*'", id="star-in-middle"),
    pytest.param("/a*=echo:", "final '/*'", id="star-without-slash"),
    pytest.param("/a/*/*=echo:", "final '/*'", id="two-stars"),
    pytest.param("/x=bogus://y", "unknown target", id="bad-target"),
])
def test_parse_route_errors(text: str, fragment: str) -> None:
    """A bad route string raises ValueError saying which part is wrong."""
    with pytest.raises(ValueError) as caught:
        parse_route(text)
    assert fragment in str(caught.value)


# -- parse_framing -------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("binary", Framing("binary")),
    ("line", Framing("line")),
    ("separator:;", Framing("separator", separator=b";")),
    ("separator:\\0", Framing("separator", separator=b"\0")),
    ("separator:\\r\\n", Framing("separator", separator=b"\r\n")),
    ("separator:<END>", Framing("separator", separator=b"<END>")),
    ("fixed:16", Framing("fixed", length=16)),
    ("auto", Framing("auto")),
    ("text", Framing("text")),
    ("json", Framing("json")),
    ("crlf", Framing("line", separator=b"\r\n")),
    ("line:crlf", Framing("line", separator=b"\r\n")),
    ("length:u16", Framing("length", width=2)),
    ("length:u32:typed", Framing("length", width=4, typed=True)),
])
def test_parse_framing_forms(text: str, expected: Framing) -> None:
    """Each framing form parses, with escapes in separators turned into bytes."""
    assert parse_framing(text) == expected


@pytest.mark.parametrize("text", [
    "", "jsn", "json:1", "length", "length:u8", "length:u16:x", "line:lf",
    "binary:x", "line:1", "separator", "separator:", "fixed", "fixed:", "fixed:0", "fixed:-1", "fixed:abc",
])
def test_parse_framing_errors(text: str) -> None:
    """An unknown framing or a missing or bad argument raises ValueError listing the valid forms."""
    with pytest.raises(ValueError) as caught:
        parse_framing(text)
    assert "binary, line, line:crlf, separator:SEP, fixed:N, auto, text, json, length:u16" in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["separator:\\x", "separator:\\", "separator:\\u20ac"])
def test_parse_framing_bad_escape(text: str) -> None:
    """A separator with a broken or non-byte escape is refused with a message naming the separator."""
    with pytest.raises(ValueError) as caught:
        parse_framing(text)
    assert "separator" in str(caught.value)


# -- build_config --------------------------------------------------------------

ECHO = {"path": "/", "target": "echo:"}


def problem_keys(raw: dict[str, Any]) -> list[str]:
    """The key paths of the problems build_config reports for C{raw}."""
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    return [key for key, _ in caught.value.problems]


def routes(*texts: str) -> list[dict[str, Any]]:
    """Command-line route strings as routes[] entries."""
    return [route_from_string(text) for text in texts]


def test_defaults() -> None:
    """With only a route given, the router listens on loopback port 8080 with a 16 MiB limit and no timers."""
    config = build_config({"routes": [ECHO]})
    assert config.listeners == ("tcp:8080:interface=127.0.0.1:backlog=1024",)
    assert config.routes == (Route("/", EchoTarget()),)
    assert config.web is None
    assert config.limits.max_message_size == 16 * MiB
    assert config.limits.ping_interval is None
    assert config.limits.ping_timeout is None
    assert config.limits.session_idle_timeout is None
    assert config.programs == ()


def test_values_from_strings() -> None:
    """Limits given as numeric strings (as the command line gives them) are converted to numbers."""
    config = build_config({
        "routes": [ECHO], "listen": ["tcp:9000"],
        "limits": {"max_message_size": "1024", "ping_interval": "2.5", "session_idle_timeout": "60",
                   "connect_timeout": 3},
    })
    assert config.listeners == ("tcp:9000",)
    assert config.limits.max_message_size == 1024
    assert config.limits.ping_interval == 2.5
    assert config.limits.session_idle_timeout == 60.0
    assert config.limits.connect_timeout == 3.0


@pytest.mark.parametrize("limits, timeout", [
    ({"ping_interval": 20}, 20.0),
    ({"ping_interval": 20, "ping_timeout": 5}, 5.0),
    ({}, None),
])
def test_ping_timeout_defaults_to_interval(limits: dict[str, Any], timeout: float | None) -> None:
    """Without an explicit ping_timeout, a pinging router waits one ping interval for the pong."""
    config = build_config({"routes": [ECHO], "limits": limits})
    assert config.limits.ping_timeout == timeout


@pytest.mark.parametrize("extra, key, fragment", [
    pytest.param({"listen": [""]}, "listen[0]", "Twisted endpoint string", id="empty-listener"),
    pytest.param({"listen": ["tcp:1", 8080]}, "listen[1]", "Twisted endpoint string", id="listener-not-string"),
    pytest.param({"routes": [ECHO, 42]}, "routes[1]", "must be a table", id="route-not-table"),
    pytest.param({"routes": [ECHO, {"path": "x", "target": "echo:"}]}, "routes[1].path", "start with '/'",
                 id="table-route-bad-path"),
    pytest.param({"routes": [ECHO, {"path": "/x", "target": "tcp://h:1", "framing": "jsn"}]}, "routes[1].framing",
                 "framing", id="table-route-bad-framing"),
    pytest.param({"routes": [ECHO, {"path": "/x", "target": "tcp://h:0"}]}, "routes[1].target", "1 to 65535",
                 id="route-bad-port"),
    pytest.param({"routes": [ECHO, {"path": "/", "target": "tcp://h:1"}]}, "routes[1]", "duplicates routes[0]",
                 id="duplicate"),
    pytest.param({"limits": {"max_message_size": "big"}}, "limits.max_message_size", "whole number",
                 id="size-not-number"),
    pytest.param({"limits": {"max_message_size": 0}}, "limits.max_message_size", "greater than 0", id="size-zero"),
    pytest.param({"limits": {"ping_interval": "soon"}}, "limits.ping_interval", "number", id="ping-not-number"),
    pytest.param({"limits": {"ping_interval": -5}}, "limits.ping_interval", "greater than 0", id="ping-negative"),
    pytest.param({"limits": {"ping_timeout": -1}}, "limits.ping_timeout", "greater than 0", id="ping-timeout-neg"),
    pytest.param({"limits": {"session_idle_timeout": -1}}, "limits.session_idle_timeout", "greater than 0",
                 id="idle-negative"),
    pytest.param({"limits": {"handshake_timeout": [1]}}, "limits.handshake_timeout", "number", id="handshake-list"),
    pytest.param({"limits": {"connect_timeout": "0"}}, "limits.connect_timeout", "greater than 0", id="connect-zero"),
    pytest.param({"limits": {"shutdown_grace": -2.5}}, "limits.shutdown_grace", "greater than 0",
                 id="grace-negative"),
])
def test_each_problem_has_its_key(extra: dict[str, Any], key: str, fragment: str) -> None:
    """Each kind of bad value is reported alone, under the key path it concerns, saying what is wrong."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [ECHO], **extra})
    assert caught.value.problems == [(key, caught.value.problems[0][1])]
    assert fragment in caught.value.problems[0][1]


def test_all_problems_at_once() -> None:
    """Every problem in a configuration is reported in one ConfigError, not only the first."""
    keys = problem_keys({
        "listen": ["tcp:8080", ""],
        "routes": [*routes("/ok=echo:", "/ok=echo:"), {"path": "nope", "target": "echo:"}, {"path": "/x"}],
        "web": {"listing": True},
        "limits": {"max_message_size": "big", "ping_interval": -1, "session_idle_timeout": -3,
                   "shutdown_grace": "later"},
    })
    assert sorted(keys) == sorted([
        "listen[1]", "routes[1]", "routes[2].path", "routes[3].target", "web.root",
        "limits.max_message_size", "limits.ping_interval", "limits.session_idle_timeout", "limits.shutdown_grace",
    ])


def test_duplicate_keys_survive_an_invalid_route() -> None:
    """A duplicate is reported under its own index even when an earlier route is invalid."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [{"path": "nope", "target": "echo:"}, *routes("/a=echo:", "/a=echo:")]})
    assert caught.value.problems[1] == ("routes[2]", "duplicates routes[1] (/a)")


@pytest.mark.parametrize("texts", [
    pytest.param(["/a=echo:", "/a/*=echo:"], id="exact-and-prefix"),
    pytest.param(["/a=echo:", "/a@chat=echo:"], id="with-and-without-subprotocol"),
    pytest.param(["/a@chat=echo:", "/a@chat.v2=echo:"], id="different-subprotocols"),
    pytest.param(["/a=echo:", "/b=echo:"], id="different-paths"),
])
def test_distinct_routes_are_not_duplicates(texts: list[str]) -> None:
    """Routes that differ in path, prefix or subprotocols are all kept."""
    assert len(build_config({"routes": routes(*texts)}).routes) == 2


@pytest.mark.parametrize("raw", [{}, {"routes": []}, {"listen": ["tcp:1"]}])
def test_nothing_to_serve(raw: dict[str, Any]) -> None:
    """A configuration with neither routes nor a web root is refused under the key 'routes'."""
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert caught.value.problems == [("routes", caught.value.problems[0][1])]
    assert "nothing to serve" in caught.value.problems[0][1]


def test_bad_route_is_not_also_nothing_to_serve() -> None:
    """A configuration whose only route is invalid reports that route, not also 'nothing to serve'."""
    assert problem_keys({"routes": [{"path": "nope", "target": "echo:"}]}) == ["routes[0].path"]


@pytest.mark.parametrize("listing", [False, True])
def test_web_root_alone_is_enough(listing: bool) -> None:
    """A web root with no routes is a valid configuration, with listings only when asked for."""
    config = build_config({"web": {"root": "/srv/www", "listing": listing}})
    assert config.routes == ()
    assert config.web is not None
    assert (config.web.directory, config.web.listing) == ("/srv/www", listing)


def test_table_routes() -> None:
    """A route given as a table takes its path, target, subprotocols and framing from its keys."""
    config = build_config({"routes": [
        {"path": "/x/*", "target": "tcp://h:1", "subprotocols": ["a", "b"], "framing": "line"},
        {"path": "/y", "target": "exec:cat", "subprotocols": ["chat"], "framing": "fixed:4"},
    ]})
    assert config.routes == (
        Route("/x", TcpTarget("h", 1), prefix=True, subprotocols=("a", "b"), framing=Framing("line")),
        Route("/y", ExecTarget(("cat",)), subprotocols=("chat",), framing=Framing("fixed", length=4)),
    )


def test_table_route_bad_subprotocols() -> None:
    """A table route whose subprotocols are not a list is a problem reported under its key."""
    assert problem_keys({"routes": [ECHO, {"path": "/x", "target": "echo:", "subprotocols": 5}]}) == [
        "routes[1].subprotocols"]


def test_single_listener_string() -> None:
    """A single listener given as a string is a problem under 'listen', never split up."""
    assert problem_keys({"listen": "tcp:9000", "routes": [ECHO]}) == ["listen"]


@pytest.mark.parametrize("key", ["ping_interval", "session_idle_timeout"])
def test_nan_timer_refused(key: str) -> None:
    """A timer of 'nan' is refused under its key rather than accepted as a number."""
    assert problem_keys({"routes": [ECHO], "limits": {key: "nan"}}) == [f"limits.{key}"]


# -- ConfigError ---------------------------------------------------------------


def test_config_error_message() -> None:
    """ConfigError's message has one line per problem: source, key path and problem."""
    error = ConfigError([("routes[1]", "bad route"), ("limits.ping_interval", "must be a number")], "wsrouter.toml")
    assert error.problems == [("routes[1]", "bad route"), ("limits.ping_interval", "must be a number")]
    assert str(error) == (
        "wsrouter.toml: routes[1]: bad route\n"
        "wsrouter.toml: limits.ping_interval: must be a number"
    )


def test_build_config_error_names_source() -> None:
    """build_config's ConfigError names the given source on each line, with every key found."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [ECHO, {"path": "nope", "target": "echo:"}], "limits": {"session_idle_timeout": -1}},
                     source="command line")
    assert str(caught.value).splitlines() == [
        "command line: limits.session_idle_timeout: must be a number greater than 0, not -1",
        "command line: routes[1].path: must start with '/', not 'nope'",
    ]


def test_config_error_is_value_error() -> None:
    """ConfigError is a ValueError, so callers catching bad values catch it too."""
    assert issubclass(ConfigError, ValueError)


# -- listener_from_short_form --------------------------------------------------


@pytest.mark.parametrize("text, endpoint, port, interface", [
    ("8080", "tcp:8080:interface=127.0.0.1:backlog=1024", 8080, "127.0.0.1"),
    ("0.0.0.0:8080", "tcp:8080:interface=0.0.0.0:backlog=1024", 8080, "0.0.0.0"),
    ("[::1]:8080", "tcp:8080:interface=\\:\\:1:backlog=1024", 8080, "::1"),
    ("[::]:443", "tcp:443:interface=\\:\\::backlog=1024", 443, "::"),
    ("192.168.1.2:1", "tcp:1:interface=192.168.1.2:backlog=1024", 1, "192.168.1.2"),
])
def test_listener_from_short_form(text: str, endpoint: str, port: int, interface: str) -> None:
    """websockify's [HOST:]PORT becomes an endpoint string, loopback without a host, that Twisted reads back."""
    assert listener_from_short_form(text) == endpoint
    reactor = MemoryReactor()
    serverFromString(reactor, endpoint).listen(Factory())
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(port, interface)]


@pytest.mark.parametrize("text", ["0", "70000", "abc", ":8080", "host:", "::1:8080", ""])
def test_listener_from_short_form_errors(text: str) -> None:
    """A short form without a usable port or with an unbracketed IPv6 host raises ValueError."""
    with pytest.raises(ValueError):
        listener_from_short_form(text)


@pytest.mark.parametrize("text, expected", [
    ("/t[framing=line;max-forks=4]@tty=exec:login",
     {"framing": Framing("line"), "max_forks": 4, "subprotocols": ("tty",)}),
    ("/r[record=rec/dir]=echo:", {"record": "rec/dir"}),
    ("/e[env=TERM:xterm;env=LANG:C.UTF-8]=exec:env", {"env": (("TERM", "xterm"), ("LANG", "C.UTF-8"))}),
])
def test_route_options(text: str, expected: dict) -> None:
    """Bracketed route options set the route's framing, fork limit, recording directory and environment."""
    route = parse_route(text)
    for key, value in expected.items():
        assert getattr(route, key) == value


@pytest.mark.parametrize("text, fragment", [
    ("/t[colour=red]=echo:", "route option must be one of"),
    ("/t[max-forks=0]=exec:cat", "max_forks: must be a whole number"),
    ("/t[env=NOVALUE]=echo:", "env must be NAME:VALUE"),
    ("/t[framing=zigzag]=echo:", "framing must be"),
])
def test_route_option_errors(text: str, fragment: str) -> None:
    """A bad route option is refused with a message naming the option."""
    with pytest.raises(ValueError) as caught:
        parse_route(text)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("text", ["line:crlf", "length:u16", "length:u32", "length:u16:typed", "auto", "text", "json"])
def test_new_framings_round_trip(text: str) -> None:
    """The new framing forms are written back as they were read."""
    from wsrouter.config import framing_to_string
    assert framing_to_string(parse_framing(text)) == text


@pytest.mark.parametrize("fields", [
    {"kind": "length", "width": 3}, {"kind": "length"}, {"kind": "line", "width": 2},
    {"kind": "auto", "typed": True}, {"kind": "json", "separator": b"\r\n"},
])
def test_framing_model_refuses_misplaced_fields(fields: dict[str, object]) -> None:
    """A length framing needs a 2- or 4-byte prefix, and width, typed and CRLF belong to their own kinds only."""
    with pytest.raises(ValueError):
        Framing(**fields)  # type: ignore[arg-type]


def test_balanced_route_round_trips_and_command_line_form() -> None:
    """A route with targets, balance and down_for is written back as read; its route string gives the same."""
    import tomllib

    from wsrouter.config.emit import dumps
    from wsrouter.config.spec import to_data
    table = {"path": "/v", "targets": ["tcp://127.0.0.1:5901", "unix:///run/v.sock"], "balance": "hash-token",
             "down_for": 3}
    config = build_config({"routes": [table]})
    assert build_config(tomllib.loads(dumps(to_data(config)))) == config
    line = build_config({"routes": ["/v[balance=hash-token;down-for=3]=tcp://127.0.0.1:5901, unix:///run/v.sock"]})
    assert line.routes == config.routes
    assert config.routes[0].target == config.routes[0].balance.targets[0]  # type: ignore[union-attr]
    tls = build_config({"routes": [{"path": "/t", "targets": ["tls://a:1", "wss://b:2/x"], "tls_verify": False}]})
    assert all(not target.verify for target in tls.routes[0].balance.targets)  # type: ignore[union-attr]
    assert build_config(tomllib.loads(dumps(to_data(tls)))) == tls


@pytest.mark.parametrize(("route", "key", "problem"), [
    ({"path": "/v", "targets": ["tcp://h:1"]}, "routes[0].targets", "two or more"),
    ({"path": "/v", "targets": ["tcp://h:1", "exec:sh"]}, "routes[0].targets[1]", "tcp, unix, tls, ws or wss"),
    ({"path": "/v", "targets": ["tcp://h:1", "tcp://h:2"], "target": "tcp://h:3"}, "routes[0].targets", "not both"),
    ({"path": "/v", "target": "tcp://h:1", "balance": "random"}, "routes[0].balance", "several targets"),
    ({"path": "/v", "targets": ["tcp://h:1", "tcp://h:2"], "balance": "rr"}, "routes[0].balance", "round-robin"),
    ({"path": "/v", "targets": ["tcp://h:1", "tcp://h:2"], "down_for": 0}, "routes[0].down_for", "greater than 0"),
    ({"path": "/v", "targets": "tcp://h:1"}, "routes[0].targets", "list of target strings"),
    ({"path": "/v", "targets": ["tls://h:1", "tcp://h:2"], "tls_verify": False}, "routes[0].targets[1].tls_verify",
     "only for tls:// and wss://"),
])
def test_balanced_route_problems_name_their_key(route: dict[str, object], key: str, problem: str) -> None:
    """Each mistake in a balanced route is reported under its own key path."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [route]})
    assert any(k == key and problem in p for k, p in caught.value.problems), caught.value.problems


def test_framing_on_an_upstream_websocket_is_a_config_error():
    """A ws:// route with a framing is refused with the route's key path, not a KeyError."""
    with pytest.raises(ConfigError, match=r"framing.*not ws"):
        build_config({"routes": [{"path": "/u", "target": "ws://127.0.0.1:9/x", "framing": "line"}]})
