"""
Vhosts: routes per Host (C{host} key, C{[host=NAME]} in the route
language), C{unknown_host = "default" | "421"}, and the TLS server name
checked against Host -- pure routing, the config schema, and end to end
with the independent ``websockets`` client over plain ws and wss with SNI.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from wsrouter.config import ConfigError, EchoTarget, Route, build_config, load_config, parse_route, to_data
from wsrouter.routing import NoRoute, RouteTable, host_name

from .support import connect, handshake_status, in_thread, start_router
from .tlscerts import Pair, client_context, make_ca, make_server, needs_openssl

# -- pure routing -------------------------------------------------------------------

TABLE = ("/*", "/chat", "/x[host=a.test]", "/*[host=A.Test]", "/*[host=*.wild.test]", "/w[host=b.wild.test]",
         "/p[host=p.test]@one", "/p")


def table(*texts: str, unknown_host: str = "default") -> RouteTable:
    """A route table of route strings, each to echo:, told apart by describe()."""
    return RouteTable([parse_route(f"{text}=echo:") for text in texts], unknown_host)


def chosen(routes: RouteTable, host: str | None, path: str, offered: tuple[str, ...] = ()) -> str:
    """The describe() of the route the table picks."""
    return routes.select(path, offered, host).route.describe()


@pytest.mark.parametrize(("host", "path", "expected"), [
    pytest.param("a.test", "/x", "a.test/x", id="exact-host-exact-path"),
    pytest.param("a.test", "/chat", "a.test/*", id="host-beats-a-better-path-without-host"),
    pytest.param("A.TEST:8080", "/y", "a.test/*", id="case-and-port-ignored"),
    pytest.param("a.test.", "/y", "a.test/*", id="final-dot-ignored"),
    pytest.param("c.wild.test", "/chat", "*.wild.test/*", id="wildcard"),
    pytest.param("b.wild.test", "/w", "b.wild.test/w", id="exact-beats-wildcard"),
    pytest.param("b.wild.test", "/v", "*.wild.test/*", id="exact-host-falls-to-its-wildcard"),
    pytest.param("x.c.wild.test", "/chat", "/chat", id="wildcard-is-one-label"),
    pytest.param("wild.test", "/chat", "/chat", id="wildcard-not-the-domain-itself"),
    pytest.param("other.test", "/chat", "/chat", id="unknown-host-gets-routes-without-host"),
    pytest.param(None, "/chat", "/chat", id="no-host-header"),
    pytest.param("127.0.0.1:80", "/zz", "/*", id="address"),
    pytest.param("p.test", "/p", "/p", id="host-route-refuses-subprotocol-then-any-host"),
])
def test_host_then_path_then_subprotocol(host: str | None, path: str, expected: str) -> None:
    """A request is matched by host (exact, then *.), then path, then subprotocol; routes without host come last."""
    assert chosen(table(*TABLE), host, path) == expected


def test_subprotocol_chooses_among_the_hosts_routes() -> None:
    """A client speaking the host route's subprotocol gets that route."""
    assert chosen(table(*TABLE), "p.test", "/p", ("one",)) == "p.test/p@one"


@pytest.mark.parametrize("order", [1, -1], ids=["host-first", "host-last"])
def test_order_in_the_file_does_not_matter(order: int) -> None:
    """The host route wins for its host, and the other for other hosts, whatever their order."""
    routes = table("/a", "/a[host=h.test]")
    flipped = RouteTable(routes.routes[::order])
    assert chosen(flipped, "h.test", "/a") == "h.test/a"
    assert chosen(flipped, "g.test", "/a") == "/a"


@pytest.mark.parametrize(("host", "status"), [
    pytest.param("other.test", 421, id="unknown-name"),
    pytest.param(None, 421, id="no-host"),
    pytest.param("x.c.wild.test", 421, id="two-labels-below-wildcard"),
    pytest.param("a.test", 404, id="known-name-unknown-path"),
])
def test_unknown_host_421(host: str | None, status: int) -> None:
    """With unknown_host 421, a name no route names is refused 421 even when routes without host exist."""
    routes = table("/x[host=a.test]", "/y[host=*.wild.test]", "/x", unknown_host="421")
    with pytest.raises(NoRoute) as caught:
        routes.select("/zz" if host == "a.test" else "/x", (), host)
    assert caught.value.status == status
    if status == 421:
        assert "no route for host" in caught.value.reason


def test_unknown_host_421_still_serves_known_names() -> None:
    """With unknown_host 421, known names (exact and wildcard) and their fallback routes still work."""
    routes = table("/x[host=a.test]", "/y[host=*.wild.test]", "/*", unknown_host="421")
    assert chosen(routes, "a.test", "/x") == "a.test/x"
    assert chosen(routes, "q.wild.test", "/y") == "*.wild.test/y"
    assert chosen(routes, "a.test", "/other") == "/*"


@pytest.mark.parametrize(("header", "name"), [
    ("Example.COM", "example.com"), ("example.com:8443", "example.com"), ("[::1]:80", "[::1]"),
    ("[::1]", "[::1]"), ("example.com.", "example.com"), ("", None), (None, None), ("::1", "::1"),
])
def test_host_name(header: str | None, name: str | None) -> None:
    """A Host header's name: lower case, no port, no final dot, brackets kept for IPv6."""
    assert host_name(header) == name


@pytest.mark.parametrize(("routes", "host", "sni", "problem"), [
    pytest.param(("/a[host=a.test]",), "a.test:443", "A.test", False, id="same-name"),
    pytest.param(("/a[host=a.test]",), "b.test", "a.test", True, id="mismatch"),
    pytest.param(("/a[host=a.test]",), "b.test", None, False, id="no-sni"),
    pytest.param(("/a",), "b.test", "a.test", False, id="routes-without-hosts"),
])
def test_tls_name_problem(routes: tuple[str, ...], host: str, sni: str | None, problem: bool) -> None:
    """The TLS server name must equal Host when both are given and routes use hosts."""
    found = table(*routes).tls_name_problem(host, sni)
    assert (found is not None) == problem
    if problem:
        assert found == f"TLS server name {host_name(sni)} does not match Host {host_name(host)}"


# -- the config schema ---------------------------------------------------------------


def test_host_in_file_and_route_language() -> None:
    """host (file key) and [host=NAME] (route language) build the same route, lower-cased; the config round-trips."""
    config = build_config({"unknown_host": "421", "routes": [
        {"path": "/a", "target": "echo:", "host": "A.Example"}, "/a[host=*.b.example]=echo:", "/a=echo:"]})
    assert [route.host for route in config.routes] == ["a.example", "*.b.example", None]
    assert config.unknown_host == "421"
    assert build_config(to_data(config)) == config
    assert to_data(build_config({"routes": ["/a=echo:"]})).get("unknown_host") is None


def test_unknown_host_as_number() -> None:
    """unknown_host = 421 written as a TOML number means "421"."""
    assert build_config({"unknown_host": 421, "routes": ["/a[host=a.test]=echo:"]}).unknown_host == "421"


def test_same_path_on_two_hosts_is_no_duplicate() -> None:
    """Routes for one path on different hosts are allowed; the same host twice is a duplicate."""
    build_config({"routes": ["/a=echo:", "/a[host=a.test]=echo:", "/a[host=b.test]=echo:"]})
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": ["/a[host=a.test]=echo:", "/a[host=A.TEST]=echo:"]})
    assert caught.value.problems == [("routes[1]", "duplicates routes[0] (a.test/a)")]


@pytest.mark.parametrize(("raw", "key", "problem"), [
    pytest.param({"routes": [{"path": "/", "target": "echo:", "host": "a.test:80"}]}, "routes[0].host",
                 "must be a host name or *.DOMAIN (no port), not 'a.test:80'", id="port"),
    pytest.param({"routes": ["/a=echo:", "/b[host=a.*.test]=echo:"]}, "routes[1].host",
                 "must be a host name or *.DOMAIN (no port), not 'a.*.test'", id="inner-star"),
    pytest.param({"routes": [{"path": "/", "target": "echo:", "host": 5}]}, "routes[0].host",
                 "must be a host name or *.DOMAIN (no port), not 5", id="number"),
    pytest.param({"routes": [{"path": "/", "target": "echo:", "hots": "a"}]}, "routes[0].hots",
                 "unknown key (did you mean host?)", id="typo"),
    pytest.param({"routes": ["/a=echo:"], "unknown_host": "404"}, "unknown_host",
                 "must be default or 421, not '404'", id="bad-choice"),
    pytest.param({"routes": ["/a=echo:"], "unknown_host": "421"}, "unknown_host",
                 '421 needs routes with a host: give some route a host, or use "default"', id="421-without-hosts"),
])
def test_config_errors_by_key_path(raw: dict[str, Any], key: str, problem: str) -> None:
    """A bad host or unknown_host is reported with its key path."""
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert any(k == key and problem in p for k, p in caught.value.problems), caught.value.problems


def test_host_in_a_toml_file(tmp_path: Path) -> None:
    """A TOML file's host key and unknown_host are read; a bad one names the file and the key path."""
    good = tmp_path / "good.toml"
    good.write_text('unknown_host = "421"\n[[routes]]\npath = "/a"\ntarget = "echo:"\nhost = "a.test"\n')
    config = load_config(str(good), {"routes": ["/b[host=b.test]=echo:"]})
    assert config.routes == (Route(path="/a", target=EchoTarget(), host="a.test"),
                             Route(path="/b", target=EchoTarget(), host="b.test"))
    assert config.unknown_host == "421"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[routes]]\npath = "/a"\ntarget = "echo:"\nhost = "a_b.test"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(bad), {})
    assert f"{bad}: routes[0].host: must be a host name" in str(caught.value)


# -- end to end: plain ws --------------------------------------------------------------


def first_message(url: str, port: int, **kwargs: Any) -> str:
    """Connect to loopback C{port} with C{url}'s host in Host (and SNI), and read the first message."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(url, sock=sock, **kwargs) as ws:
        return str(ws.recv(timeout=10)).strip()


def refused(url: str, port: int, **kwargs: Any) -> tuple[int, bytes]:
    """The status and body of a handshake for C{url}'s host, sent to loopback C{port}."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return handshake_status(url, sock=sock, **kwargs)
    finally:
        sock.close()


def says(name: str) -> str:
    """An exec target that sends C{name} and stays open until the client leaves (so TLS details stay readable)."""
    return f"exec:sh -c 'echo {name}; exec cat'"


VHOST_ROUTES = [f"/who[host=a.test]={says('host-a')}", f"/who[host=*.wild.test]={says('wild')}",
                f"/who={says('default')}"]


@pytest_twisted.inlineCallbacks
def test_routes_by_host_end_to_end() -> Any:
    """The websockets client's Host picks the route: exact, wildcard, and the routes without host for others."""
    service = start_router(routes=VHOST_ROUTES)
    port = service.port_number
    try:
        assert (yield in_thread(first_message, f"ws://a.test:{port}/who", port)) == "host-a"
        assert (yield in_thread(first_message, f"ws://A.TEST:{port}/who", port)) == "host-a"
        assert (yield in_thread(first_message, f"ws://x.wild.test:{port}/who", port)) == "wild"
        assert (yield in_thread(first_message, f"ws://other.test:{port}/who", port)) == "default"
        assert (yield in_thread(first_message, f"ws://127.0.0.1:{port}/who", port)) == "default"
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_unknown_host_421_end_to_end() -> Any:
    """With unknown_host 421 an unnamed host gets 421 Misdirected Request with a one-line reason; named ones work."""
    service = start_router(routes=VHOST_ROUTES, unknown_host="421")
    port = service.port_number
    try:
        status, body = yield in_thread(refused, f"ws://other.test:{port}/who", port)
        assert (status, body) == (421, b"no route for host other.test on this router\n")
        assert (yield in_thread(first_message, f"ws://a.test:{port}/who", port)) == "host-a"
        status, _ = yield in_thread(refused, f"ws://a.test:{port}/nowhere", port)
        assert status == 404
    finally:
        yield service.stopService()


# -- end to end: TLS with SNI ------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A CA and two server certificates it signs: one for a.test and *.wild.test, one for b.test."""
    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return {"ca": ca, "a": make_server(directory, "a", ca, alt="DNS:a.test,DNS:*.wild.test"),
            "b": make_server(directory, "b", ca, alt="DNS:b.test")}


def peer_name(url: str, port: int, context: ssl.SSLContext, server_hostname: str | None = None) -> tuple[str, str]:
    """The common name of the certificate the router showed, and the first message."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(url, sock=sock, ssl=context, server_hostname=server_hostname) as ws:
        cert = ws.socket.getpeercert()
        message = str(ws.recv(timeout=10)).strip()
    return dict(item[0] for item in cert["subject"])["commonName"], message


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_sni_certificate_and_host_route_end_to_end(certs: dict[str, Pair]) -> Any:
    """Over wss, SNI picks the host's certificate and Host its route; a server name other than Host gets 421."""
    tls = {"cert": str(certs["a"].combined), "hosts": {"b.test": {"cert": str(certs["b"].combined)}}}
    service = start_router(routes=[*VHOST_ROUTES, f"/who[host=b.test]={says('host-b')}"], tls=tls)
    port = service.port_number
    context = client_context(certs["ca"])
    try:
        assert (yield in_thread(peer_name, f"wss://b.test:{port}/who", port, context)) == ("b", "host-b")
        assert (yield in_thread(peer_name, f"wss://a.test:{port}/who", port, context)) == ("a", "host-a")
        assert (yield in_thread(peer_name, f"wss://q.wild.test:{port}/who", port, context)) == ("a", "wild")
        # The a.test certificate is valid for q.wild.test too, but Host says a.test: misdirected.
        status, body = yield in_thread(refused, f"wss://a.test:{port}/who", port, ssl=context,
                                       server_hostname="q.wild.test")
        assert (status, body) == (421, b"TLS server name q.wild.test does not match Host a.test\n")
        # Plain ws on the same port carries no server name: Host alone decides.
        assert (yield in_thread(first_message, f"ws://b.test:{port}/who", port)) == "host-b"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_tls_without_host_routes_ignores_the_server_name(certs: dict[str, Pair]) -> Any:
    """Without host routes, a server name other than Host is no refusal (nothing to misdirect)."""
    service = start_router(routes=[f"/who={says('default')}"], tls={"cert": str(certs["a"].combined)})
    port = service.port_number
    try:
        got = yield in_thread(peer_name, f"wss://a.test:{port}/who", port, client_context(certs["ca"]),
                              server_hostname="q.wild.test")
        assert got == ("a", "default")
    finally:
        yield service.stopService()


# -- the command line ---------------------------------------------------------------------


def test_command_line_host_and_unknown_host() -> None:
    """--route '/x[host=NAME]=...' and --unknown-host 421 reach the config; a bad value names the key."""
    from twisted.python import usage

    from wsrouter.cli.tap import ServeOptions

    options = ServeOptions()
    options.parseOptions(["--unknown-host", "421", "--route", "/x[host=A.test]=echo:", "--route", "/x=echo:"])
    config = options["config"]
    assert config.unknown_host == "421"
    assert [route.host for route in config.routes] == ["a.test", None]
    with pytest.raises(usage.UsageError, match="unknown_host: must be default or 421, not 'maybe'"):
        ServeOptions().parseOptions(["--unknown-host", "maybe", "--route", "/x=echo:"])
