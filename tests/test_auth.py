"""
Credentials end to end: a real router process with a config file naming an
htpasswd file (bcrypt hashes made here), a token file and a forward-auth
header, asked by the independent ``websockets`` client and raw HTTP; every
refusal is a 401 with its challenge, and no secret reaches the log.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
from pathlib import Path

import bcrypt
import pytest
from websockets.exceptions import InvalidStatus

from tests.support import PYTHON, REPO, child_env, connect, router_process
from tests.test_limits import read_answer, refusal, wait_for_log
from wsrouter.auth import AuthFileError, load_credentials
from wsrouter.config import Auth, ConfigError, build_config

PASSWORD = "correct-horse-7Qx"
TOKEN = "tok-9f2c4e1b8a7d"
SECRETS = (PASSWORD, TOKEN, base64.b64encode(f"alice:{PASSWORD}".encode()).decode())


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config: /basic asks [auth.staff] (htpasswd and tokens), /fwd trusts loopback's X-User, /open asks nothing."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "users.htpasswd").write_text(f"# staff\nalice:{hashed}\n")
    (tmp_path / "tokens.txt").write_text(f"# one per line\n{TOKEN}\nother-token\n")
    path = tmp_path / "router.toml"
    path.write_text(f"""
[security]
auth = "staff"

[auth.staff]
htpasswd = "{tmp_path / 'users.htpasswd'}"
tokens = "{tmp_path / 'tokens.txt'}"
realm = "staff area"

[auth.proxied]
forward_user_header = "X-User"
forward_from = ["127.0.0.1"]

[auth.elsewhere]
forward_user_header = "X-User"
forward_from = ["10.0.0.0/8"]

[[routes]]
path = "/basic"
target = "echo:"

[[routes]]
path = "/fwd"
target = "echo:"
auth = "proxied"

[[routes]]
path = "/fwd-untrusted"
target = "echo:"
auth = "elsewhere"

[[routes]]
path = "/open"
target = "echo:"
auth = "off"
""")
    return path


def test_basic_tokens_and_forward_auth(tmp_path: Path, config_file: Path) -> None:
    """Good Basic, bearer and forward-auth open the route (user logged); bad ones get 401, a challenge."""
    with router_process(tmp_path, "--config", str(config_file)) as router:
        url = router.url
        for path, headers in [("/basic", basic("alice", PASSWORD)), ("/basic", basic("alice", PASSWORD)),
                              ("/basic", {"Authorization": f"Bearer {TOKEN}"}), ("/fwd", {"X-User": "carol"}),
                              ("/open", {})]:
            with connect(url + path, additional_headers=headers) as ws:
                ws.send("hi")
                assert ws.recv() == "hi"  # echo: keeps the text type
        with connect(f"ws://alice:{PASSWORD}@127.0.0.1:{router.port}/basic"):
            pass  # credentials in the URL, as a browser page's would be
        wait_for_log(router, "alice (basic) for route /basic")
        wait_for_log(router, "carol (forward) for route /fwd")
        refused = [
            ("/basic", {}, "credentials required"),
            ("/basic", basic("alice", "wrong"), "wrong password for user 'alice'"),
            ("/basic", basic("mallory", PASSWORD), "unknown user 'mallory'"),
            ("/basic", {"Authorization": "Bearer nope"}, "unknown bearer token"),
            ("/basic", {"Authorization": "Basic !!!"}, "malformed Basic credentials"),
            ("/fwd", {}, "credentials required"),
            ("/fwd-untrusted", {"X-User": "carol"}, "X-User from 127.0.0.1, which is not a trusted proxy"),
        ]
        for path, headers, reason in refused:
            response = refusal(url + path, additional_headers=headers).response
            assert response.status_code == 401, (path, reason)
            assert response.body == reason.encode() + b"\n"
            if path == "/basic":
                assert response.headers.get_all("WWW-Authenticate") == [
                    'Basic realm="staff area", charset="UTF-8"', 'Bearer realm="staff area"']
            wait_for_log(router, f"401 {reason}")
        log = router.log()
        for secret in SECRETS:
            assert secret not in log


def test_web_root_and_websockify_basic_auth(tmp_path: Path) -> None:
    """websockify's --auth-plugin BasicHTTPAuth --auth-source user:pass --web-auth guards routes and the web root."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<p>inside</p>")
    (www / "sub").mkdir()
    (www / "sub" / "page.html").write_text("<p>deeper</p>")
    with router_process(tmp_path, "--route", "/echo=echo:", "--web", str(www), "--auth-plugin", "BasicHTTPAuth",
                        "--auth-source", f"alice:{PASSWORD}", "--web-auth") as router:
        def get(path: str, headers: dict[str, str]) -> bytes:
            with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
                return read_answer(sock)
        for path in ("/", "/sub/page.html"):
            answer = get(path, {})
            assert answer.startswith(b"HTTP/1.1 401 "), answer
            assert b'WWW-Authenticate: Basic realm="wsrouter", charset="UTF-8"' in answer
            assert b"inside" not in answer and b"deeper" not in answer
            assert get(path, basic("alice", "nope")).startswith(b"HTTP/1.1 401 ")
        assert get("/", basic("alice", PASSWORD)).endswith(b"<p>inside</p>")
        assert get("/sub/page.html", basic("alice", PASSWORD)).endswith(b"<p>deeper</p>")
        with pytest.raises(InvalidStatus), connect(router.url + "/echo"):
            pass
        with connect(router.url + "/echo", additional_headers=basic("alice", PASSWORD)):
            pass
        wait_for_log(router, "401 credentials required (the web root asks for credentials")
        log = router.log()
        for secret in SECRETS:
            assert secret not in log


def test_refused_hashes_and_readable_files(tmp_path: Path) -> None:
    """DES-crypt and plain-text lines are refused with file, line and a hint; a missing file is named with its key."""
    (tmp_path / "old.htpasswd").write_text("ann:{SHA}GzY2Qb3z9grh8HRU8HgsfeBbMmk=\nbob:FLH8G7NiKWTv2\n")
    with pytest.raises(AuthFileError) as caught:
        load_credentials(Auth("x", htpasswd=str(tmp_path / "old.htpasswd")))
    assert caught.value.key == "auth.x.htpasswd"
    assert f"{tmp_path / 'old.htpasswd'}: line 2: user 'bob': refused: DES crypt" in str(caught.value)
    assert "htpasswd -B" in str(caught.value)
    assert "FLH8G7NiKWTv2" not in str(caught.value)
    with pytest.raises(AuthFileError) as caught:
        load_credentials(Auth("x", tokens=str(tmp_path / "missing.txt")))
    assert caught.value.key == "auth.x.tokens"
    with pytest.raises(ConfigError) as config_error:
        build_config({"auth": {"x": {"users": ["bob:plain-text"]}}, "routes": ["/a=echo:"]})
    assert config_error.value.problems[0][0] == "auth.x.users[0]"


def test_start_up_names_a_bad_auth_file(tmp_path: Path) -> None:
    """A router whose htpasswd file is missing does not start, and says which key and file."""
    config = tmp_path / "r.toml"
    config.write_text(f'[auth.a]\nhtpasswd = "{tmp_path / "nope"}"\n[security]\nauth = "a"\n'
                      '[[routes]]\npath = "/x"\ntarget = "echo:"\n')
    done = subprocess.run([PYTHON, "-m", "wsrouter", "--config", str(config)], capture_output=True, text=True,
                          check=False, env=child_env(), cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert "auth.a.htpasswd: cannot read" in done.stderr


def test_workers_get_the_policy_too(tmp_path: Path, config_file: Path) -> None:
    """With --workers 2 every worker gets the auth tables, the origin policy and the limits (config sent as data)."""
    with router_process(tmp_path, "--config", str(config_file), "--workers", "2",
                        "--max-connections-per-client", "50") as router:
        for _ in range(4):  # whichever worker accepts
            with connect(router.url + "/basic", additional_headers=basic("alice", PASSWORD)) as ws:
                ws.send("w")
                assert ws.recv() == "w"
            assert refusal(router.url + "/basic").response.status_code == 401
            assert refusal(router.url + "/open", origin="http://evil.example").response.status_code == 403
        log = router.log()
        for secret in SECRETS:
            assert secret not in log


def test_reload_reads_the_token_file_again(tmp_path: Path, config_file: Path) -> None:
    """After SIGHUP a token removed from the file is refused and a new one accepted; a broken file keeps the old."""
    with router_process(tmp_path, "--config", str(config_file)) as router:
        with connect(router.url + "/basic", additional_headers={"Authorization": f"Bearer {TOKEN}"}):
            pass
        (tmp_path / "tokens.txt").write_text("tok-new-55\n")
        router.process.send_signal(signal.SIGHUP)
        wait_for_log(router, "reload done")
        assert refusal(router.url + "/basic", additional_headers={
            "Authorization": f"Bearer {TOKEN}"}).response.status_code == 401
        with connect(router.url + "/basic", additional_headers={"Authorization": "Bearer tok-new-55"}):
            pass
        (tmp_path / "tokens.txt").write_text("# no token left\n")
        router.process.send_signal(signal.SIGHUP)
        wait_for_log(router, "auth.staff.tokens")
        with connect(router.url + "/basic", additional_headers={"Authorization": "Bearer tok-new-55"}):
            pass
        assert "tok-new-55" not in router.log()
