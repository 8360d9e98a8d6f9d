"""
Real servers wrapped as users wrap them: netkit's telnetd (the headline
`--wrap respawn -- telnetd -debug PORT`) and x11vnc on an Xvfb display.

`make test` installs them (tests/setup/system-deps.sh); where that was not
possible these tests skip and say why.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .listening import reachable_listeners, tcp_listeners, wrapped_pid
from .other_user import assert_only_the_directory_refuses
from .support import REPO, RouterProcess, connect, free_port

CACHE = REPO / ".cache"
TELNETD = CACHE / "telnetd-ssl" / "usr" / "sbin" / "in.telnetd"

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240


def refuse_options(data: bytes) -> bytes:
    """Answer every telnet DO/WILL with WONT/DONT, so the server goes on to login."""
    answer = bytearray()
    i = 0
    while i + 2 < len(data) + 0:
        if data[i] == IAC and data[i + 1] in (DO, WILL, DONT, WONT):
            command, option = data[i + 1], data[i + 2]
            if command == DO:
                answer += bytes((IAC, WONT, option))
            elif command == WILL:
                answer += bytes((IAC, DONT, option))
            i += 3
        else:
            i += 1
    return bytes(answer)


def telnet_login_prompt(port: int, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    with connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"]) as ws:
        while b"login:" not in seen and time.monotonic() < deadline:
            try:
                data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            seen += data
            answer = refuse_options(data)
            if answer:
                ws.send(answer)
    return seen


def self_signed_pem(path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    path.chmod(0o600)


def test_telnetd_login_prompt_twice_with_respawn(tmp_path):
    """
    `wsrouter --wrap respawn -- in.telnetd -debug PORT` shows a login prompt to a WebSocket client, twice in a row.
    """
    if not TELNETD.exists():
        pytest.skip("netkit telnetd not available: `make test` fetches it (telnetd-ssl) as root with apt reachable")
    if os.geteuid() != 0:
        pytest.skip("telnetd's login needs root")
    cert = tmp_path / "telnetd.pem"
    self_signed_pem(cert)
    port = free_port()
    program = [str(TELNETD), "-debug", str(port), "-L", "/bin/login", "-z", f"cert={cert}"]
    router = RouterProcess(["--wrap", "respawn", str(port), "--", *program], port, tmp_path / "router.log")
    try:
        first = telnet_login_prompt(port)
        assert b"login:" in first, first
        second = telnet_login_prompt(port)  # telnetd -debug serves one connection, then is respawned
        assert b"login:" in second, second
        assert "restarting in" in router.log()
        directory = private_directory(router.log())
        if os.geteuid() == 0:  # telnetd is reached only through the router
            for sock in directory.iterdir():
                assert_only_the_directory_refuses(str(sock))
            assert b"login:" in telnet_login_prompt(port)
    finally:
        router.stop()
    assert not directory.exists()


@pytest.fixture
def xvfb_display():
    if not shutil.which("Xvfb") or not shutil.which("x11vnc"):
        pytest.skip("Xvfb/x11vnc not installed: `make test` installs them as root with apt reachable")
    for number in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    else:
        pytest.skip("no free X display number")
    xvfb = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.mark.parametrize("socket_mode", ["private", "loopback"])
def test_x11vnc_behind_the_router(tmp_path, xvfb_display, socket_mode):
    """
    x11vnc wrapped in respawn mode greets a WebSocket client with its RFB version, like noVNC sees it, on a private
    socket (removed at stop) or a loopback port, and listens on no TCP port beyond loopback (its IPv6 one included).
    """
    port = free_port()
    program = ["x11vnc", "-display", xvfb_display, "-rfbport", str(port), "-rfbportv6", str(port), "-forever",
               "-shared", "-nopw", "-quiet"]
    router = RouterProcess(["--wrap", "respawn", "--wrap-socket", socket_mode, str(port), "--", *program], port,
                           tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/websockify", subprotocols=["binary"]) as ws:
            greeting = ws.recv(timeout=20)
        assert greeting.startswith(b"RFB 003.")
        x11vnc = wrapped_pid(router.log(), "x11vnc")  # its IPv6 port (5900 unless -rfbportv6) is moved too
        assert reachable_listeners(x11vnc) == []
        if socket_mode == "private":
            assert tcp_listeners(x11vnc) == []
        directory = private_directory(router.log()) if socket_mode == "private" else None
        if directory is not None and os.geteuid() == 0:
            sockets = list(directory.iterdir())  # x11vnc binds IPv4 and IPv6: two sockets
            assert sockets and all(sock.is_socket() for sock in sockets)
            for sock in sockets:  # x11vnc is reached only through the router
                assert_only_the_directory_refuses(str(sock))
        if socket_mode == "loopback":
            assert re.search(rf"asked for port {port}; listening on 127\.0\.0\.1:\d+ instead", router.log())
    finally:
        router.stop()
    assert directory is None or not directory.exists()


def private_directory(log: str) -> Path:
    """The private socket directory the router's log names for the (one) wrapped program."""
    found = re.search(r"listening on the private socket (/\S+)/[^/\s]+\.sock instead", log)
    assert found is not None, log
    return Path(found.group(1))
