"""
The remote resolvers end to end, each against the real thing: TokenRedis
against a redis-server this test starts on loopback (values written with
redis-cli as websockify's docs show), BaseTokenAPI/JSONTokenApi against a
local twisted.web server, JWTTokenApi with tokens made by jwcrypto; the
websockets client reaches a real TCP echo through the router.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from jwcrypto import jwk, jwt
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from .support import free_port, handshake_status, in_thread, start_router, wait_for_port
from .test_resolvers import echo_port, resolving, round_trip

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                 reason="redis-server not installed (tests/setup/system-deps.sh installs it)")

PASSWORD = "s3cret-for-tests"


class RedisServer:
    """A redis-server of our own on a loopback port, with its own directory; stopped by its PID."""

    def __init__(self, directory: Path, port: int):
        self.directory, self.port = directory, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115  (the child holds it)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--databases", "4"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def cli(self, *args: str, db: int = 0) -> None:
        """redis-cli as websockify's TokenRedis docstring uses it."""
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "-n", str(db), "--no-auth-warning",
                        "-a", PASSWORD, *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- TokenRedis ------------------------------------------------------------------------------------


@needs_redis
@pytest_twisted.inlineCallbacks
def test_token_redis_formats_down_and_back(redis_server: RedisServer) -> Any:
    """JSON and plain values in a quoted namespace and db reach the echo; Redis down is 503, then it recovers."""
    target, number = echo_port()
    redis_server.cli("set", "app:v1:json-token", json.dumps({"host": f"127.0.0.1:{number}"}), db=2)
    redis_server.cli("set", "app:v1:plain-token", f"127.0.0.1:{number}", db=2)
    redis_server.cli("set", "app:v1:junk", "not a target", db=2)
    source = f'127.0.0.1:{redis_server.port}:2:{PASSWORD}:"app:v1"'
    service = start_router(**resolving("TokenRedis", source, timeout=3))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=json-token")) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/?token=plain-token")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/?token=missing"))[0] == 404
        assert (yield in_thread(handshake_status, service.url + "/?token=junk"))[0] == 404
        redis_server.stop()
        status, body = yield in_thread(handshake_status, service.url + "/?token=json-token")
        assert status == 503 and b"token store unreachable" in body
        assert b"127.0.0.1" not in body  # the store's address is for the log, not the client
        redis_server.start()
        redis_server.cli("set", "app:v1:json-token", json.dumps({"host": f"127.0.0.1:{number}"}), db=2)
        assert (yield in_thread(round_trip, service.url + "/?token=json-token")) == b"hello"
    finally:
        yield service.stopService()
        yield target.stopListening()


@needs_redis
@pytest_twisted.inlineCallbacks
def test_token_redis_cache_outlives_a_short_outage(redis_server: RedisServer) -> Any:
    """With cache_ttl a token found once still resolves while Redis is down; an unknown one is 503."""
    target, number = echo_port()
    redis_server.cli("set", "desk", f"127.0.0.1:{number}")
    service = start_router(**resolving("TokenRedis", f"127.0.0.1:{redis_server.port}::{PASSWORD}", cache_ttl=60))
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=desk")) == b"hello"
        redis_server.stop()
        assert (yield in_thread(round_trip, service.url + "/?token=desk")) == b"hello"
        assert (yield in_thread(handshake_status, service.url + "/?token=other"))[0] == 503
    finally:
        yield service.stopService()
        yield target.stopListening()


def test_redis_source_syntax() -> None:
    """websockify's host[:port[:db[:password[:namespace]]]] with empty fields and a quoted namespace."""
    from wsrouter.resolvers.tokenredis import parse_redis_source

    assert parse_redis_source("my-redis-host") == {
        "host": "my-redis-host", "port": 6379, "db": 0, "password": None, "namespace": ""}
    assert parse_redis_source('h::::"first-ns:second-ns"')["namespace"] == "first-ns:second-ns:"
    assert parse_redis_source("h:6380:1:pw:ns") == {
        "host": "h", "port": 6380, "db": 1, "password": "pw", "namespace": "ns:"}
    with pytest.raises(ValueError, match="host\\[:port"):
        parse_redis_source("h:1:2:3:4:5")


# -- BaseTokenAPI / JSONTokenApi ---------------------------------------------------------------------


class Lookup(Resource):
    """A token API: GET /lookup/TOKEN answers for 'desk', 404 otherwise; it notes the paths asked."""

    isLeaf = True

    def __init__(self, answer: bytes):
        super().__init__()
        self.answer, self.paths = answer, []

    def render_GET(self, request: Any) -> bytes:
        self.paths.append(request.path)
        if request.path == b"/lookup/desk":
            return self.answer
        request.setResponseCode(404)
        return b"no"


@pytest.mark.parametrize("plugin", ["BaseTokenAPI", "JSONTokenApi"])
@pytest_twisted.inlineCallbacks
def test_token_api(plugin: str) -> Any:
    """The API's answer (host:port, or JSON host and port) reaches the echo; a token is URL-quoted; 404 is 404."""
    target, number = echo_port()
    answer = f"127.0.0.1:{number}" if plugin == "BaseTokenAPI" else json.dumps({"host": "127.0.0.1", "port": number})
    api = Lookup(answer.encode())
    web = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    service = start_router(**resolving(plugin, f"http://127.0.0.1:{web.getHost().port}/lookup/%s"))
    lines: list[str] = []

    def note(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(note)
    try:
        assert (yield in_thread(round_trip, service.url + "/?token=desk")) == b"hello"
        # A lookup's HTTP connection is quiet: no "Starting factory" / "Stopping factory" lines.
        assert not [line for line in lines if "HTTP11ClientFactory" in line], lines
        assert (yield in_thread(handshake_status, service.url + "/?token=..%2Fadmin%3Fx%3D1"))[0] == 404
        assert api.paths[-1] == b"/lookup/..%2Fadmin%3Fx%3D1"
    finally:
        globalLogPublisher.removeObserver(note)
        yield service.stopService()
        yield web.stopListening()
        yield target.stopListening()


@pytest_twisted.inlineCallbacks
def test_token_api_unreachable_is_503() -> Any:
    """A token API that refuses connections gives 503 with a reason, not a dropped connection."""
    service = start_router(**resolving("JSONTokenApi", f"http://127.0.0.1:{free_port()}/t/%s"))
    try:
        status, body = yield in_thread(handshake_status, service.url + "/?token=desk")
        assert status == 503 and b"unreachable" in body
    finally:
        yield service.stopService()


# -- JWTTokenApi -----------------------------------------------------------------------------------


def signed(key: jwk.JWK, claims: dict[str, Any], alg: str) -> str:
    token = jwt.JWT(header={"alg": alg}, claims=claims)
    token.make_signed_token(key)
    return str(token.serialize())


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """A symmetric key file (websockify reads its text as the key) and an RSA PEM key file."""
    oct_key = jwk.JWK.generate(kty="oct", size=256)
    (tmp_path / "oct.key").write_text(json.loads(oct_key.export())["k"])
    rsa_key = jwk.JWK.generate(kty="RSA", size=2048)
    (tmp_path / "rsa.pem").write_bytes(rsa_key.export_to_pem(private_key=True, password=None))
    return {"oct": oct_key, "oct_file": str(tmp_path / "oct.key"),
            "rsa": rsa_key, "rsa_file": str(tmp_path / "rsa.pem")}


@pytest_twisted.inlineCallbacks
def test_jwt_signed_encrypted_and_refused(keys: dict[str, Any]) -> Any:
    """HS256 and RS256 tokens and an encrypted (JWE) one reach the echo; forged, expired, early ones are 403."""
    target, number = echo_port()
    claims = {"host": "127.0.0.1", "port": number}
    config = {"routes": [{"path": "/o", "target": "resolve:oct"}, {"path": "/r", "target": "resolve:rsa"}],
              "resolvers": {"oct": {"plugin": "JWTTokenApi", "source": keys["oct_file"]},
                            "rsa": {"plugin": "JWTTokenApi", "source": keys["rsa_file"]}}}
    inner = signed(keys["rsa"], claims, "RS256")
    sealed = jwt.JWT(header={"alg": "RSA-OAEP-256", "enc": "A256GCM"}, claims=inner)
    sealed.make_encrypted_token(keys["rsa"])
    service = start_router(**config)
    try:
        hs256 = signed(keys["oct"], claims, "HS256")
        assert (yield in_thread(round_trip, service.url + "/o?token=" + hs256)) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/r?token=" + inner)) == b"hello"
        assert (yield in_thread(round_trip, service.url + "/r?token=" + sealed.serialize())) == b"hello"
        other = jwk.JWK.generate(kty="oct", size=256)
        now = int(time.time())
        for token, reason in [(signed(other, claims, "HS256"), b"invalid token"),
                              (signed(keys["oct"], {**claims, "exp": now - 5}, "HS256"), b"token expired"),
                              (signed(keys["oct"], {**claims, "nbf": now + 300}, "HS256"), b"not valid yet"),
                              (signed(keys["oct"], {"host": "127.0.0.1"}, "HS256"), b"no valid target"),
                              ("not.a.token", b"invalid token")]:
            status, body = yield in_thread(handshake_status, service.url + "/o?token=" + token)
            assert status == 403 and reason in body, (status, body)
        assert (yield in_thread(round_trip, service.url + "/o?token=" + signed(
            keys["oct"], {**claims, "exp": now + 300, "nbf": now - 5}, "HS256"))) == b"hello"
    finally:
        yield service.stopService()
        yield target.stopListening()


class Stalling(Resource):
    """A token API that answers /bad with a body that is not a target and never answers anything else."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        if request.path == b"/t/bad":
            return b"this is not host and port"
        self.waiting.append(request)
        return NOT_DONE_YET


@pytest_twisted.inlineCallbacks
def test_token_api_timeout_and_bad_answer() -> Any:
    """A token API that never answers is a 503 after the timeout; an answer that is no target is a 502."""
    api = Stalling()
    web = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    service = start_router(**resolving("BaseTokenAPI", f"http://127.0.0.1:{web.getHost().port}/t/%s", timeout=0.5))
    try:
        status, body = yield in_thread(handshake_status, service.url + "/?token=slow")
        assert (status, bytes(body)) == (503, b"resolver r timed out\n")
        status, body = yield in_thread(handshake_status, service.url + "/?token=bad")
        assert status == 502 and b"not a target" in body
    finally:
        yield service.stopService()
        for request in api.waiting:
            request.transport.abortConnection()
        yield web.stopListening()


@needs_redis
@pytest_twisted.inlineCallbacks
def test_token_redis_that_never_answers_is_503() -> Any:
    """A 'Redis' that accepts but never replies: the lookup times out (redis-py's socket timeout) as a 503."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    service = start_router(**resolving("TokenRedis", f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5))
    try:
        status, _ = yield in_thread(handshake_status, service.url + "/?token=desk")
        assert status == 503
    finally:
        yield service.stopService()
        silent.close()


# -- the TLS client certificate ---------------------------------------------------------------------


class ByCertificate:
    """A resolver choosing by the verified client certificate: CN=alice reaches 127.0.0.1:SOURCE, others 403."""

    def __init__(self, settings: Any, reactor: Any):
        self.port = int(settings.source)

    def resolve(self, request: Any) -> Any:
        from wsrouter.config import TcpTarget
        from wsrouter.resolvers import Refuse

        if request.client_cert == "CN=alice":
            return TcpTarget("127.0.0.1", self.port)
        return Refuse(403, f"no desk for {request.client_cert}")


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Any]:
    """A CA, a server certificate, and client certificates for alice and bob."""
    from .tlscerts import make_ca, make_client, make_server, needs_openssl

    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    ca = make_ca(tmp_path)
    return {"ca": ca, "server": make_server(tmp_path, "server", ca),
            **{name: make_client(tmp_path, name, ca) for name in ("alice", "bob")}}


@pytest_twisted.inlineCallbacks
def test_resolver_sees_the_client_certificate(certs: dict[str, Any]) -> Any:
    """Over wss:// with verify_client, the resolver gets the certificate's subject and routes by it."""
    from .tlscerts import client_context

    target, number = echo_port()
    ca = certs["ca"]
    tls = {"cert": str(certs["server"].combined), "verify_client": True, "cafile": str(ca.cert)}
    service = start_router(tls=tls, **resolving("tests.test_resolvers_remote:ByCertificate", str(number)))
    url = f"wss://127.0.0.1:{service.port_number}/"
    try:
        assert (yield in_thread(round_trip, url, ssl=client_context(ca, cert=certs["alice"]))) == b"hello"
        status, body = yield in_thread(handshake_status, url, ssl=client_context(ca, cert=certs["bob"]))
        assert (status, bytes(body)) == (403, b"no desk for CN=bob\n")
    finally:
        yield service.stopService()
        yield target.stopListening()
