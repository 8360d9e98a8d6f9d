"""
htpasswd hashes made by Apache's own ``htpasswd`` tool (apache2-utils,
installed by tests/setup/system-deps.sh): bcrypt, apr1, {SHA}, SHA-256
and SHA-512 crypt are accepted (the weak ones with a start-up warning),
DES crypt and plain text refused; right and wrong passwords at the unit
level, and a real router process guarding a route with an apr1 file.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import connect, router_process
from tests.test_limits import refusal, wait_for_log
from wsrouter import htpasswd
from wsrouter.auth import AuthFileError, load_credentials, weak_hashes
from wsrouter.config import Auth, build_config
from wsrouter.policy import PasswordCheck, authenticate

PASSWORD = "correct-horse-7Qx"
HTPASSWD = shutil.which("htpasswd")
needs_htpasswd = pytest.mark.skipif(HTPASSWD is None, reason="Apache's htpasswd (apache2-utils) is not installed")

#: htpasswd's option for each scheme, and the prefix its lines start with.
SCHEMES = [("-B", "$2y$", htpasswd.BCRYPT), ("-m", "$apr1$", htpasswd.APR1), ("-s", "{SHA}", htpasswd.SHA1),
           ("-2", "$5$", htpasswd.SHA256), ("-5", "$6$", htpasswd.SHA512)]


def made_by_htpasswd(option: str, user: str = "alice", password: str = PASSWORD) -> str:
    """One ``user:hash`` line from the real htpasswd tool (password on its standard input)."""
    assert HTPASSWD is not None
    done = subprocess.run([HTPASSWD, "-n", "-i", option, user], input=password, capture_output=True, text=True,
                          check=False, timeout=30)
    if done.returncode != 0 and "illegal option" in done.stderr:
        pytest.skip(f"this htpasswd does not know {option}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@needs_htpasswd
@pytest.mark.parametrize(("option", "prefix", "scheme"), SCHEMES, ids=[s[2] for s in SCHEMES])
def test_each_scheme_checks_right_and_wrong_passwords(tmp_path: Path, option: str, prefix: str,
                                                      scheme: str) -> None:
    """A line htpasswd made loads from a file; its password matches, a wrong one and an unknown user do not."""
    line = made_by_htpasswd(option)
    assert line.startswith("alice:" + prefix)
    path = tmp_path / "users.htpasswd"
    path.write_text(f"# made by htpasswd {option}\n{line}\n")
    credentials = load_credentials(Auth("staff", htpasswd=str(path)))
    assert htpasswd.scheme(credentials.users["alice"]) == scheme

    def check(user: str, password: str) -> tuple[bool, bool]:
        decided = authenticate(credentials, basic(user, password), "127.0.0.1")
        assert isinstance(decided, PasswordCheck)
        return decided.known, htpasswd.matches(decided.password, decided.hashed.decode())

    assert check("alice", PASSWORD) == (True, True)
    assert check("alice", PASSWORD + "x") == (True, False)
    assert check("alice", "") == (True, False)
    known, _ = check("mallory", PASSWORD)
    assert not known
    # An unknown user is checked against a decoy of the same scheme, costing the same hash.
    unknown = authenticate(credentials, basic("mallory", PASSWORD), "127.0.0.1")
    assert isinstance(unknown, PasswordCheck)
    assert htpasswd.scheme(unknown.hashed.decode()) == scheme


@needs_htpasswd
def test_weak_schemes_warn_naming_file_and_line(tmp_path: Path) -> None:
    """{SHA} and apr1 lines give one warning each naming the file, line and user, never the hash; strong ones none."""
    lines = [made_by_htpasswd("-B", "ann"), made_by_htpasswd("-m", "bob"), made_by_htpasswd("-s", "cy"),
             made_by_htpasswd("-5", "dee")]
    path = tmp_path / "users.htpasswd"
    path.write_text("\n".join(lines) + "\n")
    config = build_config({"auth": {"staff": {"htpasswd": str(path), "users": [made_by_htpasswd("-s", "eve")]}},
                           "routes": ["/a=echo:"]})
    warnings = list(weak_hashes(config))
    assert len(warnings) == 3
    assert warnings[0].startswith(f"auth.staff.htpasswd {path}: line 2: user 'bob' has a weak apr1")
    assert warnings[1].startswith(f"auth.staff.htpasswd {path}: line 3: user 'cy' has a weak {{SHA}}")
    assert warnings[2].startswith("auth.staff.users: line 1: user 'eve' has a weak {SHA}")
    assert all("htpasswd -B" in warning for warning in warnings)
    for line in lines:
        assert line.split(":", 1)[1] not in "".join(warnings)


@needs_htpasswd
@pytest.mark.parametrize(("option", "why"), [("-d", "DES crypt"), ("-p", "plain text")])
def test_des_and_plain_text_are_refused(tmp_path: Path, option: str, why: str) -> None:
    """A DES-crypt or plain-text line stops the load, naming key, file, line, the reason and htpasswd -B."""
    line = made_by_htpasswd(option, "bob")
    path = tmp_path / "users.htpasswd"
    path.write_text(made_by_htpasswd("-B") + "\n" + line + "\n")
    with pytest.raises(AuthFileError) as caught:
        load_credentials(Auth("staff", htpasswd=str(path)))
    message = str(caught.value)
    assert message.startswith(f"auth.staff.htpasswd: {path}: line 2: user 'bob': refused: {why}")
    assert "htpasswd -B" in message
    assert line.split(":", 1)[1] not in message


def test_malformed_hashes_do_not_match() -> None:
    """Truncated hashes of each accepted scheme make the check fail rather than raise."""
    for hashed in ("$2y$05$abc", "$apr1$x", "{SHA}!!", "$5$", "$6$abc", "$1$abc$def"):
        assert htpasswd.matches(b"pw", hashed) is False


@needs_htpasswd
def test_router_guards_a_route_with_an_apr1_file(tmp_path: Path) -> None:
    """A router with an apr1 htpasswd file opens the route (101) for the right password, 401 otherwise, and warns."""
    path = tmp_path / "users.htpasswd"
    line = made_by_htpasswd("-m")
    path.write_text(f"# apr1\n{line}\n")
    config = tmp_path / "router.toml"
    config.write_text(f'[security]\nauth = "staff"\n\n[auth.staff]\nhtpasswd = "{path}"\n\n'
                      '[[routes]]\npath = "/echo"\ntarget = "echo:"\n')
    with router_process(tmp_path, "--config", str(config)) as router:
        with connect(router.url + "/echo", additional_headers=basic("alice", PASSWORD)) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"
        wait_for_log(router, "alice (basic) for route /echo")
        for user, password, reason in [("alice", "wrong", "wrong password for user 'alice'"),
                                       ("mallory", PASSWORD, "unknown user 'mallory'")]:
            response = refusal(router.url + "/echo", additional_headers=basic(user, password)).response
            assert response.status_code == 401
            assert response.body == reason.encode() + b"\n"
        log = wait_for_log(router, f"auth.staff.htpasswd {path}: line 2: user 'alice' has a weak apr1")
        assert line.split(":", 1)[1] not in log
        assert PASSWORD not in log


def test_refusal_never_quotes_the_line() -> None:
    """A refused line is described, never quoted: it may be a plain-text password starting with '$'."""
    for line in ("$ecretpw99", "$zz$secretpass", "plainpassword", "abCDefGHij012"):
        assert "ecret" not in htpasswd.refusal(line) and "plainpass" not in htpasswd.refusal(line)
