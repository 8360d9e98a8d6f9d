"""
UDP servers wrapped (issue 13): the shim moves a UDP server's bind, when
told the program is UDP, to a Unix datagram socket in a private directory
(faking the senders' IP addresses) or to a loopback port, and a route to
the program relays one datagram per WebSocket message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.config import ConfigError, build_config
from wsrouter.rebind import ENV_PROTO, find_shim, parse_report_line, shim_environment

from .other_user import assert_only_the_directory_refuses, connect_as_other_user, needs_root
from .support import REPO, RouterProcess, connect, free_port

#: The real interpreter binary (a pyenv shell wrapper would take the shim for itself).
PYTHON = os.path.realpath(sys.executable)
SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")
TIMEOUT = 10.0


@contextmanager
def held_udp_port() -> Iterator[tuple[socket.socket, int]]:
    """A UDP port on 127.0.0.1 this test holds, so a program that really binds it would fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder, holder.getsockname()[1]


def udp_server(port: int, *extra: str) -> list[str]:
    return [PYTHON, SERVER, "--host", "127.0.0.1", "--port", str(port), "--udp", *extra]


def test_shim_moves_a_udp_bind_when_told_udp():
    """With the shim's protocol set to udp, a UDP bind to a held port lands on a reported loopback port."""
    with held_udp_port() as (_, port):
        read_end, write_end = os.pipe()
        env = shim_environment(str(port), write_end, base_env=dict(os.environ), shim=find_shim(), protocol="udp")
        assert env[ENV_PROTO] == "udp"
        proc = subprocess.Popen([*udp_server(port, "--banner", "u:"), "--exit-after", "2"], env=env,
                                pass_fds=(write_end,), stdout=subprocess.PIPE)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as reports:
                report = parse_report_line(reports.readline())
            assert report is not None and report.error is None
            assert (report.requested_port, report.host) == (port, "127.0.0.1") and report.port != port
            assert proc.stdout is not None and proc.stdout.readline() == f"listening {port}\n".encode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(TIMEOUT)
                for payload in (b"one", b"two"):
                    client.sendto(payload, ("127.0.0.1", report.port))
                    assert client.recvfrom(100)[0] == b"u:" + payload
            assert proc.wait(TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_tcp_binds_pass_through_when_udp_is_moved(tmp_path):
    """In udp mode a TCP listener is left alone, private directory or not: nothing is reported."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    read_end, write_end = os.pipe()
    env = shim_environment("*", write_end, base_env=dict(os.environ), shim=find_shim(),
                           private_dir=str(tmp_path), protocol="udp")
    proc = subprocess.run([PYTHON, SERVER, "--host", "127.0.0.1", "--port", str(port), "--exit-after", "0"],
                          env=env, pass_fds=(write_end,), capture_output=True, timeout=60, check=True)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reports:
        assert reports.read() == b""
    assert proc.stdout == f"listening {port}\n".encode()


def test_udp_program_config():
    """A UDP program is private by default; a framing on its route is a config error; an unknown protocol too."""
    with pytest.raises(ConfigError) as caught:
        build_config({"programs": {"u": {"mode": "respawn", "command": "srv", "protocol": "sctp"}},
                      "routes": [{"path": "/", "target": "program:u"}]})
    assert "programs.u.protocol" in dict(caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        build_config({"programs": {"u": {"mode": "respawn", "command": "srv", "protocol": "udp"}},
                      "routes": [{"path": "/", "target": "program:u", "framing": "line"}]})
    assert "UDP program" in dict(caught.value.problems)["routes[0].framing"]
    config = build_config({"programs": {"u": {"mode": "respawn", "command": "srv", "protocol": "udp"}},
                           "routes": [{"path": "/", "target": "program:u"}]})
    assert (config.programs[0].socket, config.programs[0].protocol) == ("private", "udp")


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("where", ["private", "loopback"])
def test_two_udp_programs_on_the_same_port_through_the_router(tmp_path: Path, where: str):
    """Two wrapped UDP servers asking for one (held) port both serve; each message is one datagram, both ways."""
    with held_udp_port() as (_, port):
        programs = {name: {"mode": "respawn", "command": udp_server(port, "--banner", f"{name}:"),
                           "protocol": "udp"} for name in ("a", "b")}
        config = tmp_path / "wsrouter.toml"
        config.write_text("".join(
            f'[programs.{name}]\nmode = "respawn"\ncommand = {json.dumps(p["command"])}\nprotocol = "udp"\n'
            f'socket = "{where}"\n' for name, p in programs.items()) + "".join(
            f'[[routes]]\npath = "/{name}"\ntarget = "program:{name}"\n' for name in programs))
        listen = free_port()
        router = RouterProcess(["--config", str(config), "--listen", f"tcp:{listen}:interface=127.0.0.1"],
                               listen, tmp_path / "router.log")
        try:
            with connect(f"{router.url}/a") as a, connect(f"{router.url}/b") as b:
                a.send(b"one")
                a.send(b"two")
                b.send(b"x" * 1000)
                assert [a.recv(timeout=TIMEOUT), a.recv(timeout=TIMEOUT)] == [b"a:one", b"a:two"]
                assert b.recv(timeout=TIMEOUT) == b"b:" + b"x" * 1000
            log = router.log()
            if where == "loopback":
                moved = sorted(re.findall(rf"asked for port {port}; listening on 127\.0\.0\.1:(\d+)", log))
            else:
                moved = sorted(re.findall(rf"asked for port {port}; listening on the private socket (\S+)", log))
                assert all(Path(path).is_socket() for path in moved)
                if os.geteuid() == 0:  # the UDP programs are reached only through the router
                    for path in moved:
                        assert_only_the_directory_refuses(path, kind=socket.SOCK_DGRAM)
                    with connect(f"{router.url}/a") as again:
                        again.send(b"three")
                        assert again.recv(timeout=TIMEOUT) == b"a:three"
            assert len(moved) == 2 and moved[0] != moved[1]
            pids = [int(pid) for pid in re.findall(r"started [ab] \(pid (\d+)", log)]
        finally:
            router.stop()
        assert len(pids) == 2 and all(_gone(pid) for pid in pids)
        assert not any(Path(path).parent.exists() for path in moved if path.startswith("/"))


def test_wrap_protocol_and_user_options_lower_into_the_schema():
    """--wrap-protocol udp and --wrap-user USER:GROUP become the program's protocol and a sandbox of its own."""
    raw = options_to_raw({"wrap": "respawn", "wrap-protocol": "udp", "wrap-user": "nobody:nogroup",
                          "program": ["srv", "--port", "9"]})
    assert raw["programs"]["srv"]["protocol"] == "udp" and raw["programs"]["srv"]["sandbox"] == "srv"
    assert raw["sandbox"] == {"srv": {"user": "nobody", "group": "nogroup"}}
    config = build_config(raw)
    assert config.programs[0].sandbox is not None and config.programs[0].sandbox.user == "nobody"
    with pytest.raises(LoweringError, match="--wrap-user applies to the program"):
        options_to_raw({"wrap-user": "nobody", "short_form": ["8080", "localhost:5900"]})


def test_wrap_protocol_udp_from_the_command_line(tmp_path: Path):
    """`--wrap respawn --wrap-protocol udp -- udp-server`: each WebSocket message reaches the server as a datagram."""
    with held_udp_port() as (_, port):
        listen = free_port()
        router = RouterProcess(["--listen", f"tcp:{listen}:interface=127.0.0.1", "--wrap", "respawn",
                                "--wrap-protocol", "udp", "--", *udp_server(port, "--banner", "cli:")],
                               listen, tmp_path / "router.log")
        try:
            with connect(f"{router.url}/any") as ws:
                ws.send(b"hello")
                assert ws.recv(timeout=TIMEOUT) == b"cli:hello"
        finally:
            router.stop()


@contextmanager
def private_udp_server(*extra: str) -> Iterator[tuple[str, int]]:
    """A UDP server under the shim in private mode: yields its Unix socket path and the port it asked for."""
    directory = Path(tempfile.mkdtemp(prefix="wsr-udp-"))  # short: a Unix socket name has 107 bytes
    with held_udp_port() as (_, port):
        read_end, write_end = os.pipe()
        env = shim_environment(str(port), write_end, base_env=dict(os.environ), shim=find_shim(),
                               private_dir=str(directory), protocol="udp")
        proc = subprocess.Popen(udp_server(port, *extra), env=env, pass_fds=(write_end,), stdout=subprocess.PIPE)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as reports:
                report = parse_report_line(reports.readline())
            assert report is not None and report.path is not None and report.requested_port == port
            assert proc.stdout is not None and proc.stdout.readline() == f"listening {port}\n".encode()
            yield report.path, port
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(directory)


def test_private_udp_shows_the_named_client_and_answers_it(tmp_path: Path):
    """A sender bound to the router's abstract peer name is shown as that client; the reply reaches that sender."""
    with private_udp_server("--tell-peer") as (path, _), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as one, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as two:
        one.bind("\0wsrouter-peer 203.0.113.7 4242 aa11")
        two.bind("\0wsrouter-dgram bb22")  # not a client: a loopback address of its own
        for sock in (one, two):
            sock.settimeout(TIMEOUT)
            sock.connect(path)
        one.send(b"first")
        two.send(b"second")
        one.send(b"third")
        assert one.recv(100) == b"203.0.113.7 4242 first"
        reply = two.recv(100).decode().split()
        assert reply[0] == "127.0.0.1" and reply[2] == "second" and 32768 <= int(reply[1]) < 60768
        assert one.recv(100) == b"203.0.113.7 4242 third"


@needs_root
def test_private_udp_socket_refuses_other_users(tmp_path: Path):
    """Another uid cannot even address the private UDP socket (EACCES); the router's user can."""
    with private_udp_server() as (path, _):
        assert connect_as_other_user(path, kind=socket.SOCK_DGRAM) == 13
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mine:
            mine.connect(path)


@needs_root
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs /usr/bin/python3 to run as nobody")
def test_sandboxed_private_udp_program_sees_the_websocket_client(tmp_path: Path):
    """A UDP server run as nobody on its private socket answers through the router, seeing the client's address."""
    with held_udp_port() as (_, port):
        command = ["/usr/bin/python3", SERVER, "--host", "0.0.0.0", "--port", str(port), "--udp", "--tell-peer"]
        config = tmp_path / "wsrouter.toml"
        config.write_text('[sandbox.jail]\nuser = "nobody"\n'
                          f'[programs.u]\nmode = "respawn"\ncommand = {json.dumps(command)}\nprotocol = "udp"\n'
                          'sandbox = "jail"\n[[routes]]\npath = "/u"\ntarget = "program:u"\n')
        listen = free_port()
        router = RouterProcess(["--config", str(config), "--listen", f"tcp:{listen}:interface=127.0.0.1"],
                               listen, tmp_path / "router.log")
        try:
            with connect(f"{router.url}/u") as ws:
                client_port = ws.socket.getsockname()[1]
                ws.send(b"who am i")
                assert ws.recv(timeout=TIMEOUT) == f"127.0.0.1 {client_port} who am i".encode()
            pid = int(re.findall(r"started u \(pid (\d+)", router.log())[0])
            assert re.search(r"Uid:\s+65534\s", Path(f"/proc/{pid}/status").read_text())
        finally:
            router.stop()


def test_udp_programs_are_not_per_session_or_on_demand():
    """A UDP program with per-session instances or an on-demand start is a config error naming protocol."""
    from wsrouter.config import ConfigError, build_config

    for extra in ({"mode": "per-session"}, {"mode": "respawn", "start": "on-demand"}):
        program = {"mode": "respawn", "command": ["srv", "9"], "protocol": "udp", **extra}
        with pytest.raises(ConfigError, match=r"programs\.srv.*protocol.*TCP programs only"):
            build_config({"programs": {"srv": program}, "routes": [{"path": "/", "target": "program:srv"}]})
