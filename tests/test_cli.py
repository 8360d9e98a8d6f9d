"""
The command line as users run it: twistd's plugin, the `wsrouter` command,
the embedding example, and shutdown by signal.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from .support import PYTHON, REPO, child_env, connect, free_port, wait_for_port

TWISTD = [str(Path(PYTHON).parent / "twistd")]


def run(args, timeout=60):
    return subprocess.run(args, capture_output=True, check=False, text=True, env=child_env(), cwd=REPO, timeout=timeout)


def test_twistd_help_documents_every_option():
    """`twistd wsrouter --help` lists every option the router accepts."""
    result = run([*TWISTD, "wsrouter", "--help"])
    assert result.returncode == 0, result.stderr
    for option in ("--listen", "--route", "--web", "--web-listing", "--max-message-size", "--ping",
                   "--ping-timeout", "--session-idle-timeout", "--handshake-timeout", "--connect-timeout",
                   "--shutdown-grace", "--config", "--run-once", "--timeout", "--idle-timeout", "--heartbeat",
                   "--wrap-mode", "--unix-target", "--log-file", "--verbose", "--traffic",
                   "[HOST:]PORT TARGET_HOST:TARGET_PORT"):
        assert option in result.stdout, option


def test_serve_takes_the_same_options_as_twistd():
    """`wsrouter serve --help` and `twistd wsrouter --help` list the same options (one Options class)."""
    serve = run([PYTHON, "-m", "wsrouter", "serve", "--help"])
    twistd = run([*TWISTD, "wsrouter", "--help"])
    assert serve.returncode == 0 and twistd.returncode == 0
    options = set(re.findall(r"--[a-z][a-z-]+", twistd.stdout))
    assert len(options) > 20
    assert options == set(re.findall(r"--[a-z][a-z-]+", serve.stdout))


def test_version_prints_wsrouters_version():
    """`wsrouter --version` prints wsrouter's own version (not Twisted's)."""
    from wsrouter import __version__

    result = run([PYTHON, "-m", "wsrouter", "--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"wsrouter {__version__}"


def test_help_lists_the_subcommands():
    """`wsrouter --help` lists serve, check, reload, replay and record-convert."""
    result = run([PYTHON, "-m", "wsrouter", "--help"])
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check", "reload", "replay", "record-convert"):
        assert command in result.stdout, command


@pytest.mark.parametrize("command", ["replay", "record-convert", "reload"])
def test_tool_subcommands_dispatch(command):
    """Each tool subcommand answers --help through its own parser."""
    result = run([PYTHON, "-m", "wsrouter", command, "--help"])
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower() or "Usage" in result.stdout


def test_check_subcommand_dispatches():
    """`wsrouter check --help` reaches the config checker."""
    pytest.importorskip("wsrouter.cli.check")
    result = run([PYTHON, "-m", "wsrouter", "check", "--help"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_option_is_one_line_not_a_traceback():
    """An unknown option is reported on one line with where to look, exit 2."""
    result = run([PYTHON, "-m", "wsrouter", "--no-such-option"])
    assert result.returncode == 2
    assert "option --no-such-option not recognized" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_options_name_each_problem():
    """Bad options are all reported at once, each with its key, and no traceback."""
    result = run([PYTHON, "-m", "wsrouter", "--route", "/a=nowhere", "--route", "b=echo:",
                  "--max-message-size", "-5"])
    assert result.returncode == 2
    assert "routes[0].target: unknown target 'nowhere'" in result.stderr
    assert "routes[1].path: must start with '/'" in result.stderr
    assert "limits.max_message_size: must be a whole number greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error():
    """A listener that cannot bind stops the router with a message naming the listener."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run([PYTHON, "-m", "wsrouter", f"127.0.0.1:{port}", "127.0.0.1:9"])
    assert result.returncode == 1
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["twistd", "wsrouter"])
def test_sigterm_flushes_then_closes_1001(tmp_path, command):
    """On SIGTERM the client gets the target's pending data, then 1001, and the process exits promptly."""
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(1)
    target.settimeout(30)
    port = free_port()
    args = [f"127.0.0.1:{port}", f"127.0.0.1:{target.getsockname()[1]}"]
    if command == "twistd":
        argv = [*TWISTD, "--nodaemon", "--pidfile=", "wsrouter", *args]
    else:
        argv = [PYTHON, "-m", "wsrouter", *args]
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        router = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    try:
        wait_for_port(port)
        result = {}

        def client():
            with connect(f"ws://127.0.0.1:{port}/session") as ws:
                ws.send(b"hello")
                try:
                    while True:
                        result.setdefault("data", b"")
                        result["data"] += ws.recv(timeout=20)
                except ConnectionClosed as e:
                    result["code"] = e.rcvd.code if e.rcvd else None

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        conn, _ = target.accept()
        conn.settimeout(10)
        assert conn.recv(100) == b"hello"
        conn.sendall(b"pending data")
        time.sleep(0.3)
        started = time.monotonic()
        router.send_signal(signal.SIGTERM)
        status = router.wait(15)
        thread.join(10)
        assert time.monotonic() - started < 10
        # twistd re-raises the signal after a clean shutdown, so init systems see it
        assert status == (-signal.SIGTERM if command == "twistd" else 0)
        assert result == {"data": b"pending data", "code": 1001}
        assert conn.recv(100) == b""  # the target was closed too
        conn.close()
        log_text = log_path.read_text()
        assert "session" in log_text and "open: 127.0.0.1:" in log_text
        assert "close 1001 'router shutting down' by router" in log_text
        assert "bytes to target" in log_text
    finally:
        if router.poll() is None:
            router.kill()
            router.wait(5)
        target.close()


def test_embedding_example_mounts_router_under_ws(tmp_path):
    """examples/embed.py serves its own page at / and the router's echo route at /ws/echo."""
    port = free_port()
    app = subprocess.Popen([PYTHON, str(REPO / "examples" / "embed.py"), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    try:
        wait_for_port(port)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
        assert b"my app" in page
        with connect(f"ws://127.0.0.1:{port}/ws/echo") as ws:
            ws.send(b"embedded")
            assert ws.recv(timeout=10) == b"embedded"
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused, connect(f"ws://127.0.0.1:{port}/ws/nothing"):
            pass
        assert refused.value.response.status_code == 404
    finally:
        app.terminate()
        app.wait(10)
