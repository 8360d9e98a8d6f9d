"""
The private socket of wrapped programs, below the end-to-end tests
(test_wrap.py, test_rebind.py): the private directories, the `socket`
key and `--wrap-socket`, which reports the router believes, and where the
connector connects.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.config import (
    ConfigError,
    Route,
    TcpTarget,
    UnixTarget,
    WrappedTarget,
    build_config,
    load_config,
    to_data,
)
from wsrouter.interfaces import SessionInfo
from wsrouter.process.wrapped import WrappedProgram
from wsrouter.rebind.private import PrivateDirError, clear_sockets, make_private_dir, remove_private_dir
from wsrouter.targets.wrapped import peer_name, program_link_target

ROUTE = '[[routes]]\npath = "/"\ntarget = "program:p"\n'


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short temporary directory, made the system temp dir; no XDG_RUNTIME_DIR."""
    path = Path(tempfile.mkdtemp(prefix="wsr-priv-"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    try:
        yield path
    finally:
        remove_private_dir(str(path))


# -- the directories ---------------------------------------------------------------


def test_private_dir_is_0700_and_ours(short_tmp: Path) -> None:
    """A program's directory is new, mode 0700, owned by this user, in the temp dir, named after the program."""
    path = Path(make_private_dir("telnetd"))
    info = path.stat()
    assert path.parent == short_tmp and path.name.startswith("wsrouter-telnetd-")
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    assert make_private_dir("telnetd") != str(path)  # one directory per call


def test_private_dir_prefers_a_private_runtime_dir(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$XDG_RUNTIME_DIR is used when it is this user's and mode 0700, and passed over when others can enter it."""
    runtime = short_tmp / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert Path(make_private_dir("p")).parent == runtime
    runtime.chmod(0o755)
    assert Path(make_private_dir("p")).parent == short_tmp


def test_private_dir_name_is_sanitised(short_tmp: Path) -> None:
    """Characters the shim's report line cannot carry are replaced, and a long name is cut."""
    path = Path(make_private_dir("a b:c" + "x" * 100))
    assert path.name.startswith("wsrouter-a_b_c" + "x" * 19 + "-")
    assert len(str(path)) + 41 <= 107


def test_private_dir_refused_when_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temp dir too long for a socket name inside is refused with a message naming the fix, leaving nothing."""
    long_dir = tmp_path / ("d" * 80)
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with pytest.raises(PrivateDirError, match=r'TMPDIR or XDG_RUNTIME_DIR.*socket = "loopback"'):
        make_private_dir("p")
    assert list(long_dir.iterdir()) == []


def test_clear_and_remove(short_tmp: Path) -> None:
    """clear_sockets removes only sockets; remove_private_dir removes the directory, and tolerates it gone."""
    path = Path(make_private_dir("p"))
    (path / "note").write_text("kept")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path / "4-23-1-1.sock"))
    clear_sockets(str(path))
    assert [entry.name for entry in path.iterdir()] == ["note"]
    remove_private_dir(str(path))
    assert not path.exists()
    remove_private_dir(str(path))
    clear_sockets(str(path))


# -- configuration -------------------------------------------------------------------


def test_socket_key_defaults_to_private(tmp_path: Path) -> None:
    """A [programs.NAME] table without `socket` is private; `socket = "loopback"` is kept, and survives to_data."""
    path = tmp_path / "c.toml"
    path.write_text('[programs.p]\nmode = "respawn"\ncommand = "server"\n' + ROUTE)
    assert load_config(str(path), {}).programs[0].socket == "private"
    path.write_text('[programs.p]\nmode = "respawn"\ncommand = "server"\nsocket = "loopback"\n' + ROUTE)
    config = load_config(str(path), {})
    assert config.programs[0].socket == "loopback"
    assert build_config(to_data(config), "again") == config


def test_bad_socket_value(tmp_path: Path) -> None:
    """A socket value other than private or loopback is refused with its key path."""
    path = tmp_path / "c.toml"
    path.write_text('[programs.p]\nmode = "respawn"\ncommand = "server"\nsocket = "public"\n' + ROUTE)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert f"{path}: programs.p.socket: must be private or loopback, not 'public'" in str(caught.value).splitlines()


def test_wrap_socket_option() -> None:
    """--wrap-socket sets the wrapped program's socket key; without a program after --wrap it is an error."""
    raw = options_to_raw({"wrap": "respawn", "wrap-socket": "loopback", "program": ["telnetd", "-debug", "23"],
                          "short_form": ["23"]})
    assert raw["programs"]["telnetd"]["socket"] == "loopback"
    assert build_config(raw, "command line").programs[0].socket == "loopback"
    with pytest.raises(LoweringError, match="--wrap-socket applies to the program"):
        options_to_raw({"wrap-socket": "loopback", "short_form": ["8080", "localhost:5900"]})


def test_inline_wrap_targets_differing_in_socket_are_two_programs() -> None:
    """Equal commands with different socket modes are different programs (each has its own run)."""
    a = WrappedTarget("respawn", ("server",), name="p")
    assert a != WrappedTarget("respawn", ("server",), name="p", socket="loopback")


# -- reports and connecting -------------------------------------------------------------


def program(socket_mode: str) -> WrappedProgram:
    target = WrappedTarget("respawn", ("true",), name="p", socket=socket_mode)
    return WrappedProgram(Clock(), target, environ={"PATH": os.defpath})


def test_private_program_accepts_only_its_own_directory() -> None:
    """A private program takes a Unix socket directly in its own directory, never elsewhere nor a TCP port."""
    prog = program("private")
    prog.private_dir = "/run/wsr-x"
    prog.child_line(None, 3, b"bound 23 unix /tmp/elsewhere/4-23-1-1.sock")  # type: ignore[arg-type]
    prog.child_line(None, 3, b"bound 23 unix /run/wsr-x/sub/4-23-1-1.sock")  # type: ignore[arg-type]
    prog.child_line(None, 3, b"bound 23 127.0.0.1 4000")  # type: ignore[arg-type]
    assert prog.address is None
    prog.child_line(None, 3, b"bound 23 unix /run/wsr-x/4-23-1-1.sock")  # type: ignore[arg-type]
    assert prog.address == ("/run/wsr-x/4-23-1-1.sock", 0)
    assert prog.requested_port == 23


def test_loopback_program_ignores_unix_reports() -> None:
    """A loopback-mode program takes a loopback port, never a Unix socket path."""
    prog = program("loopback")
    prog.child_line(None, 3, b"bound 23 unix /run/wsr-x/4-23-1-1.sock")  # type: ignore[arg-type]
    assert prog.address is None
    prog.child_line(None, 3, b"bound 23 127.0.0.1 4000")  # type: ignore[arg-type]
    assert prog.address == ("127.0.0.1", 4000)


@pytest.mark.parametrize(("address", "target"), [
    (("/run/wsr-x/4-23-1-1.sock", 0), UnixTarget("/run/wsr-x/4-23-1-1.sock")),
    (("127.0.0.1", 4000), TcpTarget("127.0.0.1", 4000)),
    (("::1", 4000), TcpTarget("::1", 4000)),
])
def test_program_link_target(address: tuple[str, int], target: UnixTarget | TcpTarget) -> None:
    """A (path, 0) address is connected as a Unix socket, any other as TCP."""
    assert program_link_target(address) == target


def session_from(host: str, port: int) -> SessionInfo:
    route = Route(path="/", target=WrappedTarget("respawn", ("server",), name="p"))
    return SessionInfo(session_id="s1", peer_host=host, peer_port=port, server_name="localhost", server_port=80,
                       secure=False, path="/", route_path="/", query="", headers=(), subprotocol=None, route=route)


@pytest.mark.parametrize(("host", "port", "prefix"), [
    ("192.0.2.7", 4242, "\0wsrouter-peer 192.0.2.7 4242 "),
    ("2001:db8::1", 1, "\0wsrouter-peer 2001:db8::1 1 "),
    ("/run/router.sock", 0, None),
    ("", 0, None),
])
def test_peer_name(host: str, port: int, prefix: str | None) -> None:
    """The router names its end after an IP client, with a fresh nonce; a non-IP peer (a Unix listener) gets none."""
    name = peer_name(session_from(host, port))
    if prefix is None:
        assert name is None
    else:
        assert name is not None and name.startswith(prefix) and len(name.encode()) <= 107
        assert name != peer_name(session_from(host, port))
