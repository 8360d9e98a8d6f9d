"""
Dynamic targets end to end: the router in this process, the independent
``websockets`` client, a real TCP (and Unix) echo behind it, and websockify's
own token-file formats; a Python resolver for success, refusal, Deferred,
error and timeout; the template resolver's injection checks; the cache on a
Clock; configuration and command-line forms.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater

from wsrouter.cli.tap import Options
from wsrouter.config import (
    ConfigError,
    EchoTarget,
    ExecTarget,
    Resolver,
    ResolverTarget,
    Route,
    RouterConfig,
    TcpTarget,
    UnixTarget,
    build_config,
    to_data,
)
from wsrouter.interfaces import TargetError
from wsrouter.preflight import preflight
from wsrouter.resolvers import Refuse, ResolveRequest, Resolvers, Unavailable, token_of
from wsrouter.resolvers.template import TemplateResolver, template_problem
from wsrouter.resolvers.tokenfile import parse_token_lines

from .support import RecordingTarget, connect, handshake_status, in_thread, listen_target, start_router


def echo_port() -> tuple[Any, int]:
    """A TCP echo server on loopback: (its listening port, its number)."""
    port, _ = listen_target(lambda: RecordingTarget(echo=True))
    return port, port.getHost().port


def round_trip(url: str, payload: bytes = b"hello", **kwargs: Any) -> bytes:
    """Send one binary message through the router and return what comes back."""
    with connect(url, **kwargs) as ws:
        ws.send(payload)
        answer = ws.recv(timeout=10)
    return answer if isinstance(answer, bytes) else answer.encode()


def resolving(plugin: Any, source: str = "", **settings: Any) -> dict[str, Any]:
    """Router settings with one /* route resolved by C{plugin}."""
    return {"routes": [{"path": "/*", "target": "resolve:r"}],
            "resolvers": {"r": {"plugin": plugin, "source": source, **settings}}}


def python_router(resolver: Any, **settings: Any) -> Any:
    """A router whose /* route is resolved by a Python object (the Python API)."""
    config = RouterConfig(listeners=("tcp:0:interface=127.0.0.1",),
                          routes=(Route("/", ResolverTarget("r"), prefix=True),),
                          resolvers=(Resolver("r", resolver, **settings),))
    from wsrouter.service.single import build_service

    service = build_service(config, reactor)
    service.startService()
    service.url = f"ws://127.0.0.1:{service.ports()[0].getHost().port}"
    return service


# -- configuration ----------------------------------------------------------------------


def test_config_forms_round_trip() -> None:
    """resolve:NAME with a [resolvers.NAME] table builds, and to_data gives it back unchanged."""
    config = build_config(resolving("TokenRedis", "127.0.0.1:6390", timeout=2, cache_ttl="30", host_token=True))
    assert config.routes[0].target == ResolverTarget("r")
    assert config.resolvers == (Resolver("r", "TokenRedis", "127.0.0.1:6390", True, 2.0, 30.0),)
    assert build_config(to_data(config)) == config


@pytest.mark.parametrize(("raw", "key", "problem"), [
    ({"routes": [{"path": "/", "target": "resolve:nope"}]}, "routes[0].target", "no [resolvers.nope] table"),
    (resolving("TokenFile", sourc="x"), "resolvers.r.sourc", "did you mean source"),
    (resolving("TokenFile", timeout=0), "resolvers.r.timeout", "greater than 0"),
    (resolving("TokenFile", cache_ttl=-1), "resolvers.r.cache_ttl", "0 or more"),
    ({"routes": [{"path": "/", "target": "resolve:r"}], "resolvers": {"r": {"source": "x"}}},
     "resolvers.r.plugin", "required"),
])
def test_config_mistakes_name_their_key(raw: dict[str, Any], key: str, problem: str) -> None:
    """Each mistake in a resolver table or resolve:NAME is reported with its key path."""
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert any(k == key and problem in p for k, p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("plugin", "source", "key", "problem"), [
    ("NoSuchPlugin", "", "plugin", "unknown resolver plugin"),
    ("template", "tcp://127.0.0.1:{query.port", "source", "no {placeholder}"),
    ("template", "exec:cat {token}", "source", "must start with its scheme"),
    ("JWTTokenApi", "/nonexistent/key.pem", "source", "cannot read the JWT key file"),
    ("tests.no_such_module:thing", "", "plugin", "cannot load resolver plugin"),
])
def test_preflight_builds_every_resolver(plugin: str, source: str, key: str, problem: str) -> None:
    """A plugin that cannot load (key plugin), or refuses its source (key source), stops the start with its key path."""
    problems = preflight(build_config(resolving(plugin, source)))
    assert any(k == f"resolvers.r.{key}" and problem in text for k, text in problems), problems


# -- the token, where websockify reads it ------------------------------------------------


def request(path: str = "/", query: str = "", headers: tuple[tuple[str, str], ...] = (),
            prefix_path: str | None = None) -> ResolveRequest:
    route = Route(prefix_path or "/", ResolverTarget("r"), prefix=prefix_path is not None)
    from wsrouter.interfaces import SessionInfo

    info = SessionInfo(session_id="s", peer_host="127.0.0.1", peer_port=1, server_name="", server_port=0,
                       secure=False, path=path, route_path=path, query=query, headers=headers,
                       subprotocol=None, route=route)
    return ResolveRequest.of_session(info)


def test_token_sources_in_websockify_order() -> None:
    """The token is ?token= (newline cut), else the token cookie, else the path below a prefix route."""
    assert token_of(request(query="token=abc%0A")) == "abc"
    assert token_of(request(query="token=q", headers=(("cookie", "token=c"),))) == "q"
    assert token_of(request(headers=(("cookie", "a=1; token=c"),))) == "c"
    assert token_of(request("/vnc/p1", prefix_path="/vnc")) == "p1"
    assert token_of(request("/vnc/a/b", prefix_path="/vnc")) is None
    assert token_of(request()) is None
    hosted = request(headers=(("host", "Desk1.example:8080"),))
    assert token_of(hosted, host_token=True) == "desk1.example"


def test_token_file_format_as_websockify_writes_it() -> None:
    """websockify's `token: host:port` lines, comments, unix_socket targets; a bad line is skipped."""
    text = "# comment\n\ntoken1: 127.0.0.1:5900\ntoken2: [::1]:5901\nsock: unix_socket:/run/a.sock\nbroken line\n"
    assert parse_token_lines(text, "t") == {
        "token1": TcpTarget("127.0.0.1", 5900), "token2": TcpTarget("::1", 5901), "sock": UnixTarget("/run/a.sock")}


# -- websockify's token files, end to end ---------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_token_file_end_to_end(tmp_path: Path) -> Any:
    """TokenFile: ?token=, cookie and path tokens reach the echo; unknown 404, none 400; edits are seen."""
    target, number = echo_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# websockify token file\ndesk1: 127.0.0.1:{number}\n")
    service = start_router(**resolving("TokenFile", str(tokens)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=desk1")) == b"hello"
        cookie = {"Cookie": "token=desk1"}
        assert (yield in_thread(round_trip, service.url + "/", additional_headers=cookie)) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/desk1")) == b"hello"
        status, body = yield in_thread(handshake_status, service.url + "/?token=desk2")
        assert status == 404 and b"no target for this token" in body
        status, body = yield in_thread(handshake_status, service.url + "/")
        assert status == 400 and b"token not present" in body
        tokens.write_text(f"desk1: 127.0.0.1:{number}\ndesk2: 127.0.0.1:{number}\n")
        os.utime(tokens, ns=(1, 1))  # a different mtime even within one clock tick
        assert (yield in_thread(round_trip, service.url + "/?token=desk2")) == b"hello"
    finally:
        yield service.stopService()
        yield target.stopListening()


@pytest_twisted.inlineCallbacks
def test_read_only_token_file_reads_once_and_directories(tmp_path: Path) -> Any:
    """ReadOnlyTokenFile reads a directory of token files once; a later edit is not seen."""
    target, number = echo_port()
    (tmp_path / "a.conf").write_text(f"a: 127.0.0.1:{number}\n")
    (tmp_path / "b.conf").write_text(f"b: 127.0.0.1:{number}\n")
    service = start_router(**resolving("ReadOnlyTokenFile", str(tmp_path)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=a")) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/?token=b")) == b"hello"
        (tmp_path / "c.conf").write_text(f"c: 127.0.0.1:{number}\n")
        status, _ = yield in_thread(handshake_status, service.url + "/?token=c")
        assert status == 404
    finally:
        yield service.stopService()
        yield target.stopListening()


@pytest_twisted.inlineCallbacks
def test_unix_socket_directory_never_leaves_it(tmp_path: Path) -> Any:
    """UnixDomainSocketDirectory: a socket's name reaches it; ../ and non-sockets name nothing."""
    sockets = tmp_path / "socks"
    sockets.mkdir()
    from .support import TargetFactory

    factory = TargetFactory(lambda: RecordingTarget(echo=True))
    target = reactor.listenUNIX(str(sockets / "vm1"), factory)
    (sockets / "plain").write_text("not a socket")
    outside = reactor.listenUNIX(str(tmp_path / "outside"), TargetFactory(lambda: RecordingTarget(echo=True)))
    service = start_router(**resolving("UnixDomainSocketDirectory", str(sockets)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=vm1")) == b"hello"
        for token in ("..%2Foutside", "plain", "..", "vm1%00"):
            status, _ = yield in_thread(handshake_status, service.url + "/?token=" + token)
            assert status == 404, token
    finally:
        yield service.stopService()
        yield target.stopListening()
        yield outside.stopListening()


# -- the template resolver ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_template_reaches_tcp_and_unix(tmp_path: Path) -> Any:
    """tcp://127.0.0.1:{query.port} and unix://DIR/{token}.sock both connect to the real echo."""
    target, number = echo_port()
    from .support import TargetFactory

    unix = reactor.listenUNIX(str(tmp_path / "vm7.sock"), TargetFactory(lambda: RecordingTarget(echo=True)))
    config = {"routes": [{"path": "/t/*", "target": "resolve:tcp"}, {"path": "/u/*", "target": "resolve:unix"}],
              "resolvers": {"tcp": {"plugin": "template", "source": "tcp://127.0.0.1:{query.port}"},
                            "unix": {"plugin": "template", "source": f"unix://{tmp_path}/{{token}}.sock"}}}
    service = start_router(**config)
    try:
        assert (yield in_thread(round_trip, service.url + f"/t/x?port={number}")) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/u/vm7")) == b"hello"
        status, body = yield in_thread(handshake_status, service.url + "/t/x")
        assert status == 400 and b"missing query.port" in body
    finally:
        yield service.stopService()
        yield target.stopListening()
        yield unix.stopListening()


@pytest.mark.parametrize("value", [
    "../etc/passwd", "a/b", "..", "a\0b", "evil.example", "10.0.0.1", "x:22", "host:1@evil", "a b", "%2e%2e",
    "a" * 65, "",
])
@pytest.mark.parametrize("pattern", ["unix:///run/vnc/{query.v}.sock", "tcp://10.0.0.{query.v}:5900",
                                     "tcp://desk-{query.v}.internal:5900", "tcp://127.0.0.1:59{query.v}"])
def test_template_values_never_leave_their_place(pattern: str, value: str) -> None:
    """Each injection attempt (path, dots, NUL, host, port, user, percent, length, empty) is a 400."""
    resolver = TemplateResolver(Resolver("r", "template", pattern), None)
    with pytest.raises(Refuse) as caught:
        resolver.resolve(request(query=f"v={value}".replace("%", "%25").replace("\0", "%00")))
    assert caught.value.status == 400


def test_template_check_refuses_unusable_patterns() -> None:
    """A template must name a known placeholder and make a network or socket target."""
    assert template_problem("tcp://127.0.0.1:{query.p}") is None
    assert "unknown placeholder" in (template_problem("tcp://h:{env.HOME}") or "")
    assert "must start with its scheme" in (template_problem("{token}") or "")


# -- a resolver written in Python: success, refusal, Deferred, error, timeout ----------------


class Recorded:
    """A Python resolver answering from a table, remembering what it was asked."""

    def __init__(self, answer: Any):
        self.answer = answer
        self.asked: list[ResolveRequest] = []

    def resolve(self, request: ResolveRequest) -> Any:
        self.asked.append(request)
        return self.answer(request) if callable(self.answer) else self.answer


@pytest_twisted.inlineCallbacks
def test_python_resolver_outcomes() -> Any:
    """Target, Deferred target, Refuse, None, Unavailable, an error, an exec: target and a hang map to statuses."""
    target, number = echo_port()

    def answer(req: ResolveRequest) -> Any:
        kind = req.query_value("k")
        if kind == "now":
            return TcpTarget("127.0.0.1", number)
        if kind == "later":
            return deferLater(reactor, 0.01, lambda: TcpTarget("127.0.0.1", number))
        if kind == "refuse":
            return Refuse(403, "not your desk")
        if kind == "raise":
            raise Refuse(451, "unavailable for legal reasons")
        if kind == "down":
            raise Unavailable("store is down")
        if kind == "bug":
            raise RuntimeError("a bug")
        if kind == "exec":
            return ExecTarget(("sh",))
        if kind == "hang":
            return defer.Deferred()
        return None

    resolver = Recorded(answer)
    service = python_router(resolver, timeout=0.5)
    try:
        assert (yield in_thread(round_trip, service.url + "/?k=now", subprotocols=["chat"])) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/?k=later&token=t1")) == b"hello"
        seen = resolver.asked[-1]
        assert seen.token == "t1" and seen.peer[0] == "127.0.0.1" and seen.query_value("k") == "later"
        assert resolver.asked[0].subprotocols == ("chat",)
        for kind, status, reason in [("refuse", 403, b"not your desk"), ("raise", 451, b"legal"),
                                     ("none", 404, b"no target"), ("down", 503, b"token store unreachable now"),
                                     ("bug", 502, b"resolver r failed"), ("exec", 502, b"unusable target"),
                                     ("hang", 503, b"timed out")]:
            got = yield in_thread(handshake_status, service.url + f"/?k={kind}&token=x")
            assert got[0] == status and reason in got[1], (kind, got)
    finally:
        yield service.stopService()
        yield target.stopListening()


def test_echo_target_from_resolver_and_route_checks() -> None:
    """A resolved target that does not fit the route (framing on echo) is checked like a configured one."""
    with pytest.raises(ConfigError):
        import attrs

        from wsrouter.config import Framing

        attrs.evolve(Route("/", ResolverTarget("r"), framing=Framing("line")), target=EchoTarget())


# -- the cache, on a Clock ------------------------------------------------------------------------


def test_cache_keeps_targets_for_ttl_only() -> None:
    """With cache_ttl a found target is reused until the TTL passes; misses are never cached."""
    clock = Clock()
    resolver = Recorded(lambda req: TcpTarget("127.0.0.1", 1) if req.token == "a" else None)
    resolvers = Resolvers(clock)
    settings = Resolver("r", resolver, cache_ttl=10)
    asked = request(query="token=a")
    results: list[Any] = []
    for _ in range(2):
        resolvers.resolve(settings, asked).addCallback(results.append)
    assert results == [TcpTarget("127.0.0.1", 1)] * 2 and len(resolver.asked) == 1
    clock.advance(10)
    resolvers.resolve(settings, asked).addCallback(results.append)
    assert len(resolver.asked) == 2
    failures: list[Any] = []
    for _ in range(2):
        resolvers.resolve(settings, request(query="token=b")).addErrback(failures.append)
    assert len(resolver.asked) == 4 and all(f.check(TargetError) for f in failures)


def test_timeout_on_a_clock() -> None:
    """A resolver that never answers fails with 503 after its timeout, measured on the injected clock."""
    clock = Clock()
    resolvers = Resolvers(clock)
    failures: list[Any] = []
    resolvers.resolve(Resolver("r", Recorded(lambda req: defer.Deferred()), timeout=3),
                      request(query="token=a")).addErrback(failures.append)
    clock.advance(2.9)
    assert not failures
    clock.advance(0.2)
    assert failures[0].value.status == 503


# -- plugins by name ---------------------------------------------------------------------------------


class LookupPlugin:
    """A websockify-style token plugin class: made with the source, lookup(token) gives (host, port)."""

    def __init__(self, source: str):
        self.source = source

    def lookup(self, token: str) -> tuple[str, str] | None:
        return ("127.0.0.1", self.source) if token == "ok" else None


@pytest_twisted.inlineCallbacks
def test_websockify_plugin_class_by_dotted_name() -> Any:
    """--token-plugin package.module.Class loads a websockify plugin; its blocking lookup runs in a thread."""
    target, number = echo_port()
    service = start_router(**resolving("tests.test_resolvers.LookupPlugin", str(number)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=ok")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/?token=no"))[0] == 404
    finally:
        yield service.stopService()
        yield target.stopListening()


@pytest_twisted.inlineCallbacks
def test_example_plugin_by_module_attribute(tmp_path: Path) -> Any:
    """The examples/ resolver loads as module:attribute and routes by its rules."""
    target, number = echo_port()
    service = start_router(**resolving("examples.resolver_plugin:PortTable", f"desk={number}"))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=desk")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/?token=other"))[0] == 404
    finally:
        yield service.stopService()
        yield target.stopListening()


# -- the command line -------------------------------------------------------------------------------


def test_websockify_token_options_lower() -> None:
    """--token-plugin, --token-source and --host-token make a [resolvers.token] table and a /* route."""
    options = Options()
    options.parseOptions(["--token-plugin", "TokenFile", "--token-source", "/etc/tokens", "--host-token", "6080"])
    config = options["config"]
    assert config.routes[0].target == ResolverTarget("token") and config.routes[0].prefix
    assert config.resolvers == (Resolver("token", "TokenFile", "/etc/tokens", host_token=True),)
    target_config = Options()
    target_config.parseOptions(["--target-config", "/etc/tokens", "6080"])
    assert target_config["config"].resolvers[0].plugin == "TokenFile"


@pytest.mark.parametrize(("argv", "problem"), [
    (["--token-source", "x", "6080"], "--token-source needs --token-plugin"),
    (["--host-token", "6080"], "--host-token needs --token-plugin"),
    (["--token-plugin", "TokenFile", "6080", "127.0.0.1:5900"], "listening [HOST:]PORT alone"),
])
def test_websockify_token_option_mistakes(argv: list[str], problem: str) -> None:
    """The token options refuse the combinations websockify refuses, saying what to write."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Options().parseOptions(argv)


def test_example_and_docs_name_every_resolver_key() -> None:
    """examples/wsrouter.toml sets every [resolvers.NAME] key and docs/config.md documents each."""
    from wsrouter.config import read_file, spec

    repo = Path(__file__).resolve().parent.parent
    raw = read_file(str(repo / "examples" / "wsrouter.toml"))
    assert any(set(table) == set(spec.RESOLVER_KEYS) for table in raw["resolvers"].values())
    text = (repo / "docs" / "config.md").read_text()
    assert all(f"| `{key}` |" in text for key in spec.RESOLVER_KEYS)


def thread_echo() -> socket.socket:
    """A blocking TCP echo for one connection, served from a thread (for routers run as processes)."""
    import threading

    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(4)

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return echo


def spawn(argv: list[str], log: Path) -> Any:
    """This Python running C{argv} from the checkout, output to C{log}; the caller stops it by its PID."""
    import subprocess
    import sys

    from .support import REPO, child_env

    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, *argv], env=child_env(), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)


def test_python_api_example_app(tmp_path: Path) -> None:
    """examples/resolver_app.py, run as a process, routes by its Python resolver to a real echo; others get 403/400."""
    from .support import REPO, free_port, wait_for_port

    echo = thread_echo()
    port = free_port()
    app = spawn([str(REPO / "examples" / "resolver_app.py"), str(port), f"alice=127.0.0.1:{echo.getsockname()[1]}"],
                tmp_path / "app.log")
    try:
        wait_for_port(port)
        url = f"ws://127.0.0.1:{port}/ws/desk"
        assert round_trip(url + "?user=alice") == b"hello"
        assert handshake_status(url + "?user=bob") == (403, bytearray(b"no desk for bob\n"))
        assert handshake_status(url)[0] == 400
    finally:
        app.terminate()
        app.wait(10)
        echo.close()


@pytest.mark.parametrize("program", ["wsrouter", "websockify"])
def test_websockify_command_line_works_in_both(tmp_path: Path, program: str) -> None:
    """The same websockify command line (--token-plugin TokenFile --token-source FILE PORT) reaches the echo in both."""
    from .support import free_port, wait_for_port

    if program == "websockify":
        pytest.importorskip("websockify")
    echo = thread_echo()
    tokens = tmp_path / "tokens.cfg"
    tokens.write_text(f"# token: host:port\ndesk: 127.0.0.1:{echo.getsockname()[1]}\n")
    port = free_port()
    argv = ["--token-plugin", "TokenFile", "--token-source", str(tokens), f"127.0.0.1:{port}"]
    child = spawn(["-m", program, *argv], tmp_path / "out.log")
    try:
        wait_for_port(port)
        assert round_trip(f"ws://127.0.0.1:{port}/?token=desk", subprotocols=["binary"]) == b"hello"
    finally:
        child.terminate()
        child.wait(10)
        echo.close()


@pytest_twisted.inlineCallbacks
def test_host_token_end_to_end(tmp_path: Path) -> Any:
    """host_token: the Host header without its port is the token (websockify --host-token)."""
    target, number = echo_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"127.0.0.1: 127.0.0.1:{number}\n")
    service = start_router(**resolving("TokenFile", str(tokens), host_token=True))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=ignored")) == b"hello"
        port = service.url.rsplit(":", 1)[1]
        assert (yield in_thread(handshake_status, f"ws://localhost:{port}/"))[0] == 404
    finally:
        yield service.stopService()
        yield target.stopListening()


def test_slow_client_on_a_resolved_route_bounds_memory(tmp_path: Path) -> None:
    """A resolved target streaming 128 MiB to a client that stops reading for a while grows the router < 64 MiB."""
    from . import rawws
    from .support import router_process
    from .test_bulk import MiB, ThreadTarget

    total = 128 * MiB
    block = os.urandom(MiB)

    def source(conn: socket.socket) -> None:
        for _ in range(total // MiB):
            conn.sendall(block)

    target = ThreadTarget(source)
    config = tmp_path / "wsrouter.toml"
    config.write_text('[[routes]]\npath = "/*"\ntarget = "resolve:t"\n'
                      '[resolvers.t]\nplugin = "template"\nsource = "tcp://127.0.0.1:{query.port}"\n')
    with router_process(tmp_path, "--config", str(config)) as router:
        baseline = router.status("VmRSS")
        s = rawws.upgrade(router.port, f"/?port={target.port}")
        reader = rawws.read_late_and_slowly(s)
        s.close()
        target.join()
        growth = router.status("VmHWM") - baseline
        assert reader.received == total
        assert growth < 64 * 1024, f"router grew by {growth} KiB"


def test_entry_point_plugins_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution's wsrouter.resolvers entry point is a plugin name (found through real package metadata)."""
    from wsrouter.resolvers.loading import build

    info = tmp_path / "desk_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: desk-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[wsrouter.resolvers]\ndesks = examples.resolver_plugin:PortTable\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    resolver = build(Resolver("r", "desks", "alice=5901"), None)
    assert resolver.resolve(request(query="token=alice")) == TcpTarget("127.0.0.1", 5901)
    assert resolver.resolve(request(query="token=alice2")) is None


@pytest_twisted.inlineCallbacks
def test_refusals_are_logged_without_the_token(tmp_path: Path) -> Any:
    """A resolver's refusal logs one line with status, reason and resolver; the token itself is never logged."""
    from twisted.logger import formatEvent, globalLogPublisher

    target, number = echo_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"SECRET-known-77: 127.0.0.1:{number}\n")
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    service = start_router(**resolving("TokenFile", str(tokens)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=SECRET-known-77")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/?token=SECRET-unknown-88"))[0] == 404
    finally:
        yield service.stopService()
        yield target.stopListening()
        globalLogPublisher.removeObserver(observe)
    assert any("404 no target for this token (resolver r)" in line for line in lines), lines
    assert not any("SECRET" in line for line in lines), [line for line in lines if "SECRET" in line]


@pytest_twisted.inlineCallbacks
def test_recording_names_the_resolved_target_and_hides_the_token(tmp_path: Path) -> Any:
    """A recorded resolved session names the target it reached; its query keeps the token redacted."""
    target, number = echo_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"SECRET-desk: 127.0.0.1:{number}\n")
    records = tmp_path / "records"
    service = start_router(record=records, **resolving("TokenFile", str(tokens)))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=SECRET-desk&view=1")) == b"hello"
    finally:
        yield service.stopService()
        yield target.stopListening()
    (recording,) = records.iterdir()
    header = json.loads(recording.read_text().splitlines()[0])
    assert header["target"] == f"tcp://127.0.0.1:{number}"
    assert header["query"] == "token=REDACTED&view=1"
    assert "SECRET" not in recording.read_text()


def test_workers_resolve_too(tmp_path: Path) -> None:
    """With --workers 2 the worker processes resolve tokens (the [resolvers] table reaches them as data)."""
    from .support import free_port, wait_for_port

    tokens = tmp_path / "tokens.cfg"
    echoes = [thread_echo() for _ in range(4)]
    tokens.write_text("".join(f"d{i}: 127.0.0.1:{echo.getsockname()[1]}\n" for i, echo in enumerate(echoes)))
    port = free_port()
    child = spawn(["-m", "wsrouter", "--workers", "2", "--token-plugin", "TokenFile", "--token-source", str(tokens),
                   f"127.0.0.1:{port}"], tmp_path / "out.log")
    try:
        wait_for_port(port)
        for i in range(4):
            assert round_trip(f"ws://127.0.0.1:{port}/?token=d{i}") == b"hello"
        assert handshake_status(f"ws://127.0.0.1:{port}/?token=nope")[0] == 404
    finally:
        child.terminate()
        child.wait(15)
        for echo in echoes:
            echo.close()


def test_reload_keeps_unchanged_resolvers_and_closes_dropped_ones() -> None:
    """use_config keeps a resolver whose table is unchanged (its cache too) and closes one that is gone."""

    class Closing(Recorded):
        closed = False

        def close(self) -> None:
            self.closed = True

    clock = Clock()
    kept, dropped = Closing(TcpTarget("127.0.0.1", 1)), Closing(TcpTarget("127.0.0.1", 2))
    keep, drop = Resolver("keep", kept, cache_ttl=60), Resolver("drop", dropped)
    resolvers = Resolvers(clock)
    for settings in (keep, drop):
        resolvers.resolve(settings, request(query="token=a"))
    route = (Route("/", ResolverTarget("keep")),)
    resolvers.use_config(RouterConfig(routes=route, resolvers=(keep,)))
    resolvers.resolve(keep, request(query="token=a"))
    assert (dropped.closed, kept.closed, len(kept.asked)) == (True, False, 1)


def test_cache_is_refused_for_templates() -> None:
    """A template looks at more than the token, so a token-keyed cache_ttl is refused for it."""
    with pytest.raises(ConfigError, match="cache_ttl: is for token stores"):
        build_config(resolving("template", "tcp://127.0.0.1:{query.port}", cache_ttl=5))


def test_redact_token_hides_the_query_value_and_a_path_segment_equal_to_the_token() -> None:
    """One helper redacts ?token= and a /vnc/TOKEN segment (also percent-encoded), and leaves other segments alone."""
    from wsrouter.resolvers import redact_token

    assert redact_token("/vnc/s3cret", "view=1", "s3cret") == ("/vnc/REDACTED", "view=1")
    assert redact_token("/vnc/a%20b", "", "a b") == ("/vnc/REDACTED", "")
    assert redact_token("/vnc/other", "token=s3cret&x=1", "s3cret") == ("/vnc/other", "token=REDACTED&x=1")
    assert redact_token("/vnc/x", "", None) == ("/vnc/x", "")


@pytest_twisted.inlineCallbacks
def test_path_tokens_appear_in_no_log_line_nor_recording(tmp_path: Path) -> Any:
    """A /vnc/TOKEN path token is redacted in session, refusal and status lines and in the recording header."""
    from twisted.logger import formatEvent, globalLogPublisher

    target, number = echo_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"SECRET-path-41: 127.0.0.1:{number}\n")
    records = tmp_path / "records"
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    service = start_router(record=records, routes=[{"path": "/vnc/*", "target": "resolve:r"}],
                           resolvers={"r": {"plugin": "TokenFile", "source": str(tokens)}})
    try:
        assert (yield in_thread(round_trip, service.url + "/vnc/SECRET-path-41?view=1")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/vnc/SECRET-unknown-42"))[0] == 404
    finally:
        yield service.stopService()
        yield target.stopListening()
        globalLogPublisher.removeObserver(observe)
    assert any("/vnc/REDACTED?view=1" in line for line in lines), lines
    assert any("/vnc/REDACTED: 404" in line for line in lines), lines
    assert not any("SECRET" in line for line in lines), [line for line in lines if "SECRET" in line]
    (recording,) = records.iterdir()
    assert "SECRET" not in recording.read_text()
    assert json.loads(recording.read_text().splitlines()[0])["path"] == "/vnc/REDACTED"
