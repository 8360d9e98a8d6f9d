"""
Client-certificate names (C{[auth.NAME] client_cert_names}, websockify's
C{ClientCertCNAuth}) and the subject in exec environments and recordings:
pure rules with plain pytest, then real TLS handshakes on loopback with
openssl-made certificates.
"""

from __future__ import annotations

import json
import re
import shlex
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.cli.replay import format_transcript
from wsrouter.clientcert import cgi_variables, common_name, matching_name, name_problem
from wsrouter.config import ConfigError, build_config, to_data
from wsrouter.policy import Accepted, Credentials, PasswordCheck, Refusal, authenticate
from wsrouter.recording import encode_jsonl_header, make_header, read_recording

from .support import connect, handshake_status, in_thread, router_process, start_router
from .tlscerts import Pair, client_context, make_ca, make_client, make_server, needs_openssl

PROGRAMS = Path(__file__).parent / "programs"
ENV_JSON = shlex.join([sys.executable, str(PROGRAMS / "env_json.py")])


# -- matching names (pure) ---------------------------------------------------------------------


def test_common_name_only_when_single() -> None:
    """The CN is read from an RFC 4514 subject; none, two, or an unparsable subject give None."""
    assert common_name("CN=alice,O=Example") == "alice"
    assert common_name("O=Example") is None
    assert common_name("CN=a,CN=b") is None
    assert common_name("not a subject") is None
    assert common_name(None) is None


@pytest.mark.parametrize("subject, names, matched", [
    ("CN=alice", ["alice"], "alice"),
    ("CN=alice,O=Example", ["bob", "alice"], "alice"),
    ("CN=Alice", ["alice"], None),
    ("CN=alice", ["CN=alice"], "CN=alice"),
    ("CN=alice,O=Example", ["CN=alice"], None),
    ("CN=alice,O=Example", ["CN=alice,O=Example"], "CN=alice,O=Example"),
    ("CN=alice,O=Example", ["O=Example,CN=alice"], None),
    ("CN=db1.ops.example", ["*.ops.example"], "*.ops.example"),
    ("CN=a.b.OPS.example", ["*.ops.example"], "*.ops.example"),
    ("CN=ops.example", ["*.ops.example"], None),
    ("CN=evilops.example", ["*.ops.example"], None),
    ("CN=a,CN=b", ["a", "b"], None),
    ("O=Example", ["Example"], None),
    (None, ["alice"], None),
])
def test_matching_name(subject: str | None, names: list[str], matched: str | None) -> None:
    """CNs match exactly, wildcards match subdomains only, full subjects match the whole subject in order."""
    assert matching_name(names, subject) == matched


def test_name_problems() -> None:
    """Empty names, unparsable subjects and misplaced wildcards are named; good names pass."""
    assert name_problem("alice") is None
    assert name_problem("*.ops.example") is None
    assert name_problem("CN=alice,O=Example") is None
    assert "empty" in (name_problem(" ") or "")
    assert "RFC 4514" in (name_problem("CN=alice, O=x") or "")
    assert "wildcard" in (name_problem("a.*.example") or "")
    assert "wildcard" in (name_problem("*") or "")


def test_cgi_variables() -> None:
    """A subject gives SSL_CLIENT_S_DN, _CN (when single) and VERIFY; none gives nothing."""
    assert cgi_variables("CN=alice,O=Example") == {
        "SSL_CLIENT_S_DN": "CN=alice,O=Example", "SSL_CLIENT_S_DN_CN": "alice", "SSL_CLIENT_VERIFY": "SUCCESS"}
    assert "SSL_CLIENT_S_DN_CN" not in cgi_variables("O=Example")
    assert cgi_variables(None) == {}


# -- the decision (pure) -------------------------------------------------------------------------


def credentials(names: tuple[str, ...], users: dict[str, str] | None = None) -> Credentials:
    return Credentials("r", users or {}, (), None, (), names)


def test_certificate_only_table_refuses_with_403() -> None:
    """A table of certificate names only accepts a listed name and refuses anything else with 403."""
    table = credentials(("alice",))
    assert authenticate(table, {}, "127.0.0.1", "CN=alice") == Accepted("CN=alice", "client-cert")
    assert authenticate(table, {}, "127.0.0.1", None) == Refusal(403, "a verified client certificate is required")
    refused = authenticate(table, {"authorization": "Bearer x"}, "127.0.0.1", "CN=bob")
    assert refused == Refusal(403, "client certificate 'CN=bob' is not among the accepted names")


def test_mixed_table_falls_back_to_passwords() -> None:
    """A table with users too accepts a listed certificate, else asks for a password (401)."""
    table = credentials(("alice",), {"carol": "$2b$04$" + "x" * 53})
    assert isinstance(authenticate(table, {}, "::1", "CN=alice"), Accepted)
    assert authenticate(table, {}, "::1", "CN=bob") == Refusal(401, "credentials required")
    assert isinstance(authenticate(table, {"authorization": "Basic Y2Fyb2w6cHc="}, "::1", None), PasswordCheck)


# -- configuration ---------------------------------------------------------------------------------

TLS = {"cert": "c.pem", "verify_client": True, "cafile": "ca.pem"}


def test_config_round_trips() -> None:
    """client_cert_names in an [auth.NAME] table is kept and written back by to_data."""
    config = build_config({"routes": [{"path": "/", "target": "echo:", "auth": "certs"}], "tls": TLS,
                           "auth": {"certs": {"client_cert_names": ["alice", "*.ops.example"]}}})
    assert config.auth[0].client_cert_names == ("alice", "*.ops.example")
    assert build_config(to_data(config)) == config


def test_config_problems_have_key_paths() -> None:
    """A bad name, or certificate names without tls.verify_client, are refused naming the key."""
    with pytest.raises(ConfigError) as e:
        build_config({"routes": [{"path": "/", "target": "echo:"}],
                      "auth": {"certs": {"client_cert_names": ["ok", "a*b"]}}})
    assert "auth.certs.client_cert_names[1]: 'a*b': a wildcard is a leading '*.'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_config({"routes": [{"path": "/", "target": "echo:"}],
                      "tls": {"cert": "c.pem"}, "auth": {"certs": {"client_cert_names": ["alice"]}}})
    assert "auth.certs.client_cert_names: needs tls.verify_client" in str(e.value)


def test_websockify_client_cert_cn_auth_lowers() -> None:
    """--auth-plugin ClientCertCNAuth --auth-source "alice bob" becomes client_cert_names guarding every route."""
    raw = options_to_raw({"routes": ["/=echo:"], "cert": "c.pem", "verify-client": True, "cafile": "ca.pem",
                          "auth-plugin": "auth_plugins.ClientCertCNAuth", "auth-source": "alice bob"})
    config = build_config(raw)
    assert config.auth[0].client_cert_names == ("alice", "bob")
    assert config.auth_for(config.routes[0]) == config.auth[0]


@pytest.mark.parametrize("options, problem", [
    ({"auth-plugin": "ClientCertCNAuth", "verify-client": True}, 'needs --auth-source "CN [CN...]"'),
    ({"auth-plugin": "ClientCertCNAuth", "auth-source": "alice"}, "needs --verify-client"),
])
def test_websockify_client_cert_cn_auth_problems(options: dict[str, Any], problem: str) -> None:
    """ClientCertCNAuth without names, or without --verify-client, is refused with a clear message."""
    with pytest.raises(LoweringError, match=re.escape(problem)):
        options_to_raw({"routes": ["/=echo:"], "cert": "c.pem", "cafile": "ca.pem", **options})


# -- end to end: real TLS client certificates --------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """A CA, a server certificate, and client certificates it signs for alice, bob and db1.ops.example."""
    if needs_openssl.args[0]:
        pytest.skip("no openssl command")
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return {"ca": ca, "server": make_server(directory, "server", ca),
            **{name: make_client(directory, name, ca) for name in ("alice", "bob", "db1.ops.example")}}


def cert_router(certs: dict[str, Pair], **raw: Any) -> Any:
    tls = {"cert": str(certs["server"].combined), "verify_client": True, "cafile": str(certs["ca"].cert)}
    return start_router(tls=tls, auth={"certs": {"client_cert_names": ["alice", "*.ops.example"]}}, **raw)


def wss(service: Any, path: str) -> str:
    return f"wss://127.0.0.1:{service.port_number}{path}"


def first_message(url: str, context: ssl.SSLContext) -> str:
    with connect(url, ssl=context) as ws:
        ws.send("hello")
        return str(ws.recv(timeout=10))


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_listed_certificates_pass_others_get_403(certs: dict[str, Pair]) -> Any:
    """alice and db1.ops.example (wildcard) connect; bob, verified but not listed, gets 403 with the reason."""
    ca = certs["ca"]
    service = cert_router(certs, routes=["/echo[auth=certs]=echo:", "/open=echo:"])
    try:
        for name in ("alice", "db1.ops.example"):
            assert (yield in_thread(first_message, wss(service, "/echo"), client_context(ca, cert=certs[name]))) \
                == "hello"
        bob = client_context(ca, cert=certs["bob"])
        status, body = yield in_thread(handshake_status, wss(service, "/echo"), ssl=bob)
        assert status == 403
        assert b"client certificate 'CN=bob' is not among the accepted names" in body
        assert (yield in_thread(first_message, wss(service, "/open"), client_context(ca, cert=certs["bob"]))) \
            == "hello"
    finally:
        yield service.stopService()


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_exec_environment_and_recording_name_the_certificate(certs: dict[str, Pair], tmp_path: Path) -> Any:
    """An exec target sees SSL_CLIENT_S_DN/_CN/VERIFY; the recording header has client_cert, and replay shows it."""
    service = cert_router(certs, routes=[f"/env[auth=certs]=exec:{ENV_JSON}"], record=tmp_path)
    try:
        env = json.loads((yield in_thread(first_message, wss(service, "/env"),
                                          client_context(certs["ca"], cert=certs["alice"]))))
    finally:
        yield service.stopService()
    assert (env["SSL_CLIENT_S_DN"], env["SSL_CLIENT_S_DN_CN"], env["SSL_CLIENT_VERIFY"], env["HTTPS"]) == \
        ("CN=alice", "alice", "SUCCESS", "on")
    [recorded] = list(tmp_path.iterdir())
    assert json.loads(recorded.read_text().splitlines()[0])["client_cert"] == "CN=alice"
    header, events = read_recording(recorded)
    assert header.client_cert == "CN=alice"
    assert "# client certificate CN=alice" in list(format_transcript(header, events))


def test_recording_header_without_certificate_has_no_field() -> None:
    """Without a client certificate the header line has no client_cert field at all."""
    from .test_exec import make_session

    line = json.loads(encode_jsonl_header(make_header(make_session(), "echo:", 1.0)))
    assert "client_cert" not in line
    with_cert = json.loads(encode_jsonl_header(make_header(make_session(client_cert="CN=a"), "echo:", 1.0)))
    assert with_cert["client_cert"] == "CN=a"


@needs_openssl
@pytest_twisted.inlineCallbacks
def test_web_root_asks_for_a_listed_certificate(certs: dict[str, Pair], tmp_path: Path) -> Any:
    """security.web_auth naming a certificate table serves alice's requests and answers bob with 403."""
    (tmp_path / "index.html").write_text("hi")
    service = cert_router(certs, routes=["/echo=echo:"], web=tmp_path, security={"web_auth": "certs"})

    def get(name: str) -> int:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{service.port_number}/index.html", timeout=10,
                                        context=client_context(certs["ca"], cert=certs[name])) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert (yield in_thread(get, "alice")) == 200
        assert (yield in_thread(get, "bob")) == 403
    finally:
        yield service.stopService()


@needs_openssl
def test_websockify_command_line_end_to_end(certs: dict[str, Pair], tmp_path: Path) -> None:
    """A router process started websockify's way admits alice's certificate and refuses bob's with 403."""
    with router_process(tmp_path, "--route", "/echo=echo:", "--cert", str(certs["server"].combined),
                        "--verify-client", "--cafile", str(certs["ca"].cert),
                        "--auth-plugin", "ClientCertCNAuth", "--auth-source", "alice carol") as router:
        url = f"wss://127.0.0.1:{router.port}/echo"
        assert first_message(url, client_context(certs["ca"], cert=certs["alice"])) == "hello"
        assert handshake_status(url, ssl=client_context(certs["ca"], cert=certs["bob"]))[0] == 403
    assert "client certificate 'CN=bob' is not among the accepted names" in router.log()
