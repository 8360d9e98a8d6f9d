"""
Socket activation: systemd (here Debian's ``systemd-socket-activate``, no
running init needed) binds the port and starts the router on the first
connection, handing the socket over; the router adopts it through Twisted's
``systemd:`` endpoint and answers that first client.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import PYTHON, REPO, child_env, connect, free_port

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (Debian's systemd) is not installed")
def test_socket_activated_router_answers_the_first_client(tmp_path: Path) -> None:
    """The router started by systemd-socket-activate on a connection serves that very client, then others."""
    port = free_port()
    env = child_env()
    log = (tmp_path / "router.log").open("wb")
    # systemd itself always sets LISTEN_FDNAMES, which Twisted requires; the test tool only with --fdname.
    process = subprocess.Popen(
        [str(ACTIVATE), f"--listen=127.0.0.1:{port}", "--fdname=wsrouter", f"--setenv=PYTHONPATH={env['PYTHONPATH']}",
         "--", PYTHON, "-m", "wsrouter", "--listen", "systemd:domain=INET:index=0", "--route", "/e=echo:",
         "--healthz", "/healthz"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        _wait_listening(port, process)
        with connect(f"ws://127.0.0.1:{port}/e", open_timeout=30) as ws:
            ws.send(b"activated")
            assert ws.recv(timeout=10) == b"activated"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.read() == b"ok\n"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait(5)
        log.close()
    text = (tmp_path / "router.log").read_text(errors="replace")
    assert "listening on systemd:domain=INET:index=0" in text, text
    assert status == 0, text


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    """
    systemd-socket-activate binds at once; wait for that by reading the
    kernel's table of listening sockets (a probe connection would itself
    start the router).
    """
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("systemd-socket-activate exited")
        if _listening(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def _listening(port: int) -> bool:
    """Whether /proc/net/tcp has a socket in LISTEN state (0A) on C{port}."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return True
    return False
