"""
The new-user trial's resolver defects (issue 9): a token source that is
missing is a start-up (and C{wsrouter check}) error under its own key, one
that goes away later a 503; errors say what is wrong in the user's words
(token file lines, token API answers, JWT claims, balance, several targets);
TokenRedis names the store and the reason, never the password; token APIs
refuse C{.}/C{..}; C{--token-plugin}/C{--unix-target} combine with C{--listen}.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from jwcrypto import jwk, jwt
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from wsrouter.cli.check import main_check
from wsrouter.cli.tap import Options
from wsrouter.config import ConfigError, Resolver, build_config
from wsrouter.preflight import preflight
from wsrouter.resolvers import Refuse, Unavailable
from wsrouter.resolvers.httpapi import BaseTokenAPI, JSONTokenApi
from wsrouter.resolvers.jwtapi import JWTTokenApi
from wsrouter.resolvers.tokenfile import parse_token_lines

from .support import REPO, child_env, free_port, handshake_status, in_thread, start_router
from .test_resolvers import request, resolving
from .test_resolvers_remote import PASSWORD, RedisServer, needs_redis

# -- item 6: a token source that cannot be used ------------------------------------------------------


@pytest.mark.parametrize(("plugin", "source", "problem"), [
    ("TokenFile", "", "TokenFile: no token source given"),
    ("TokenFile", "/nonexistent", "TokenFile: cannot read /nonexistent: No such file or directory"),
    ("ReadOnlyTokenFile", "/nonexistent", "cannot read /nonexistent: No such file or directory"),
    ("UnixDomainSocketDirectory", "/nonexistent", "cannot read /nonexistent: No such file or directory"),
    ("TokenFileName", "/nonexistent", "cannot read /nonexistent: No such file or directory"),
    ("TokenFileName", __file__, "is not a directory"),
    ("JWTTokenApi", "", "no JWT key file given"),
])
def test_unusable_token_source_stops_the_start_under_its_key(plugin: str, source: str, problem: str) -> None:
    """A token plugin whose source is missing or of the wrong kind is a start-up problem at resolvers.r.source."""
    problems = [(key, text) for key, text in preflight(build_config(resolving(plugin, source)))
                if key.startswith("resolvers")]
    assert len(problems) == 1 and problems[0][0] == "resolvers.r.source" and problem in problems[0][1], problems


def test_serve_refuses_to_start_without_a_token_source(tmp_path: Path) -> None:
    """`wsrouter --token-plugin TokenFile PORT` (no --token-source), run as a process, exits non-zero naming the key."""
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "wsrouter", "--token-plugin", "TokenFile", f"127.0.0.1:{port}"],
                          env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "resolvers.token.source: TokenFile: no token source given" in done.stderr + done.stdout


@pytest_twisted.inlineCallbacks
def test_token_file_that_goes_away_is_503_not_404(tmp_path: Path) -> Any:
    """A token file removed after start-up makes lookups 503, not 404, without telling the client the file's path."""
    tokens = tmp_path / "tokens"
    tokens.write_text("desk: 127.0.0.1:1\n")
    service = start_router(**resolving("TokenFile", str(tokens)))
    try:
        assert (yield in_thread(handshake_status, service.url + "/?token=other"))[0] == 404
        tokens.unlink()
        status, body = yield in_thread(handshake_status, service.url + "/?token=desk")
        assert status == 503
        # The client gets no file path or error text (they are in the router's log line).
        assert bytes(body) == b"resolver r: token store unreachable now (the router's log says why)\n"
    finally:
        yield service.stopService()


def test_socket_directory_that_goes_away_is_unavailable(tmp_path: Path) -> None:
    """UnixDomainSocketDirectory whose directory is removed after start raises Unavailable (503), not None (404)."""
    from wsrouter.resolvers.tokenfile import UnixDomainSocketDirectory

    directory = tmp_path / "socks"
    directory.mkdir()
    resolver = UnixDomainSocketDirectory(Resolver("r", "UnixDomainSocketDirectory", str(directory)))
    assert resolver.resolve(request(query="token=desk")) is None
    directory.rmdir()
    with pytest.raises(Unavailable, match=r"token store unavailable: .*socks: No such file or directory"):
        resolver.resolve(request(query="token=desk"))


# -- item 7: wsrouter check refuses what serve refuses; the right key; no echo of a failed table ----


@pytest.mark.parametrize(("source", "problem"), [
    ("/tmp/{token}.sock", "must start with its scheme"),
    ("tcp://{token}", "does not make a target"),
    ("{bogus}", "unknown placeholder {bogus}"),
])
def test_check_refuses_templates_serve_refuses(tmp_path: Path, source: str, problem: str) -> None:
    """`wsrouter check` exits 1 for a template serve would refuse, naming resolvers.v.source."""
    path = tmp_path / "t.toml"
    path.write_text(f'[[routes]]\npath = "/v"\ntarget = "resolve:v"\n[resolvers.v]\nplugin = "template"\n'
                    f'source = "{source}"\n')
    out, err = io.StringIO(), io.StringIO()
    assert main_check([str(path)], out, err) == 1
    assert f"{path}: resolvers.v.source: template: " in err.getvalue() and problem in err.getvalue()


def test_check_refuses_a_missing_token_file(tmp_path: Path) -> None:
    """`wsrouter check` exits 1 for a TokenFile whose source does not exist, as start-up does."""
    path = tmp_path / "t.toml"
    path.write_text('[[routes]]\npath = "/v"\ntarget = "resolve:v"\n[resolvers.v]\nplugin = "TokenFile"\n'
                    'source = "/nonexistent"\n')
    err = io.StringIO()
    assert main_check([str(path)], io.StringIO(), err) == 1
    assert "resolvers.v.source: TokenFile: cannot read /nonexistent" in err.getvalue()


@pytest.mark.parametrize("settings", [{"timeout": 0}, {"host_tokn": True}])
def test_a_refused_table_is_not_also_reported_missing(settings: dict[str, Any]) -> None:
    """A mistake inside [resolvers.r] is reported once, without 'routes[0].target: no [resolvers.r] table'."""
    with pytest.raises(ConfigError) as caught:
        build_config(resolving("TokenFile", "x", **settings))
    assert [key for key, _ in caught.value.problems] == [f"resolvers.r.{next(iter(settings))}"]


def test_a_route_naming_no_table_is_still_reported() -> None:
    """A route naming a table that is not there at all is still reported at routes[0].target."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [{"path": "/", "target": "resolve:nope"}], **{k: v for k, v in
                      resolving("TokenFile", "x", timeout=0).items() if k == "resolvers"}})
    keys = [key for key, _ in caught.value.problems]
    assert "routes[0].target" in keys and "resolvers.r.timeout" in keys


# -- item 8: errors in the user's words -------------------------------------------------------------


def test_bad_token_file_line_says_what_a_line_should_be() -> None:
    """A token file line that is not 'token: host:port' is logged as FILE:LINE: expected 'token: host:port'."""
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        assert parse_token_lines("ok: 127.0.0.1:1\nbroken line\n", "tokens.cfg") == {
            "ok": build_config({"routes": [{"path": "/", "target": "tcp://127.0.0.1:1"}]}).routes[0].target}
    finally:
        globalLogPublisher.removeObserver(logged.append)
    lines = [formatEvent(event) for event in logged if event.get("log_namespace") == "wsrouter.resolvers"]
    assert len(lines) == 1 and lines[0].startswith("tokens.cfg:2: expected 'token: host:port'"), lines
    assert "unpack" not in lines[0]


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"port": 5900}', "token API answer is not a target: the answer has no 'host' key"),
    (b'{"host": "h"}', "token API answer is not a target: the answer has no 'port' key"),
    (b'[1, 2]', "token API answer is not a target: the answer is not a JSON object with host and port"),
    (b'host:1', "token API answer is not a target: the answer is not JSON"),
])
def test_json_token_api_says_which_key_is_missing(body: bytes, problem: str) -> None:
    """A JSONTokenApi answer without host or port is a 502 naming the missing key, not Python's KeyError text."""
    api = JSONTokenApi(Resolver("r", "JSONTokenApi", "http://127.0.0.1:1/%s"), MemoryReactor())
    with pytest.raises(Refuse) as caught:
        api._parsed(body)
    assert (caught.value.status, caught.value.reason) == (502, problem)


def test_jwt_without_host_says_which_claim_is_missing(tmp_path: Path) -> None:
    """A valid JWT whose claims lack host is refused 403 naming the missing claim key."""
    key = jwk.JWK.generate(kty="oct", size=256)
    (tmp_path / "oct.key").write_text(json.loads(key.export())["k"])
    token = jwt.JWT(header={"alg": "HS256"}, claims={"port": 5900})
    token.make_signed_token(key)
    resolver = JWTTokenApi(Resolver("r", "JWTTokenApi", str(tmp_path / "oct.key")), MemoryReactorClock())
    with pytest.raises(Refuse) as caught:
        resolver.resolve(request(query=f"token={token.serialize()}"))
    assert caught.value.status == 403
    assert caught.value.reason == "token names no valid target: the token has no 'host' key"


@pytest.mark.parametrize(("route", "problem"), [
    ("/b[balance=round-robin]=tcp://127.0.0.1:1",
     "routes[0].targets: balancing needs two or more targets (comma-separated), got 1"),
    ("/b=tcp://127.0.0.1:1,tcp://127.0.0.2:2",
     "routes[0].target: 2 targets (tcp://127.0.0.1:1,tcp://127.0.0.2:2) need a balance policy: [balance=round-robin]"),
])
def test_balance_mistakes_in_user_words(route: str, problem: str) -> None:
    """A balance with one target, and several targets without a balance, each say what to write, not a repr."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError) as caught:
        Options().parseOptions(["--route", route, "--listen", "tcp:0:interface=127.0.0.1"])
    assert problem in str(caught.value) and "TcpTarget(" not in str(caught.value)


# -- item 9: TokenRedis says where and why, never the password ------------------------------------


@needs_redis
def test_token_redis_reason_names_the_store_and_the_message(tmp_path: Path) -> None:
    """A wrong password gives redis-py's message and host:port/db, and the password given appears nowhere."""
    from wsrouter.resolvers.tokenredis import TokenRedis

    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        wrong = "not-the-" + PASSWORD
        resolver = TokenRedis(Resolver("r", "TokenRedis", f"127.0.0.1:{server.port}:3:{wrong}", timeout=3),
                              MemoryReactor())
        with pytest.raises(Unavailable) as caught:
            resolver._get("desk")
        text = str(caught.value)
        assert text.startswith(f"token store (Redis 127.0.0.1:{server.port}/3) unreachable: AuthenticationError: ")
        assert "password" in text.lower() and wrong not in text
        resolver.close()
    finally:
        server.stop()


# -- item 10: token APIs refuse . and .. -----------------------------------------------------------


@pytest.mark.parametrize("plugin", [BaseTokenAPI, JSONTokenApi])
@pytest.mark.parametrize("token", [".", ".."])
def test_token_api_refuses_dot_tokens(plugin: Any, token: str) -> None:
    """A '.' or '..' token would become a path step at the API; it is refused with 400 before any request."""
    reactor = MemoryReactor()
    api = plugin(Resolver("r", "BaseTokenAPI", "http://127.0.0.1:1/json/%s"), reactor)
    with pytest.raises(Refuse) as caught:
        api.resolve(request(query=f"token={token}"))
    assert caught.value.status == 400 and reactor.tcpClients == []


# -- item 11: --token-plugin and --unix-target with --listen -----------------------------------------


@pytest.mark.parametrize("argv", [
    ["--token-plugin", "TokenFile", "--token-source", "f"],
    ["--unix-target", "/run/app.sock"],
])
def test_route_options_combine_with_listen(argv: list[str]) -> None:
    """--token-plugin and --unix-target serve their /* route on each --listen listener, with no positional PORT."""
    options = Options()
    listeners = ["--listen", "tcp:24011:interface=127.0.0.1", "--listen", "tcp:24012:interface=127.0.0.1"]
    options.parseOptions([*argv, *listeners])
    config = options["config"]
    assert config.listeners == ("tcp:24011:interface=127.0.0.1", "tcp:24012:interface=127.0.0.1")
    assert [route.path for route in config.routes] == ["/"] and config.routes[0].prefix


@pytest.mark.parametrize("argv", [
    ["--token-plugin", "TokenFile", "--token-source", "f"],
    ["--unix-target", "/run/app.sock"],
])
def test_route_options_without_any_listener_say_what_to_write(argv: list[str]) -> None:
    """With neither a PORT nor --listen the error names both ways to say where to listen."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="or --listen"):
        Options().parseOptions(argv)
