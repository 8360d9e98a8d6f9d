"""The benchmark's peers: lighttpd's mod_wstunnel and the TLS variants start from their generated
configs, relay a real echo over ws:// and wss://, and the churn workload counts real connections."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import relays  # noqa: E402
import workloads  # noqa: E402
import wsclient  # noqa: E402

needs_lighttpd = pytest.mark.skipif(shutil.which("lighttpd") is None and not os.path.exists("/usr/sbin/lighttpd"),
                                    reason="lighttpd not installed (tests/setup/system-deps.sh)")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A threaded TCP echo server on loopback, closed after the test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def _one_echo(port: int, tls: bool, offer: tuple[str, ...]) -> bytes:
    conn = wsclient.connect(relays.HOST, port, "/", offer, keep_data=True, tls=tls)
    conn.sock.settimeout(10)
    conn.sock.sendall(wsclient.data_frame(b"peer-echo-" * 3))
    while conn.parser.data_bytes < 30:
        assert conn.recv_some(), "relay closed before the echo"
    conn.close(wait_s=5)
    return b"".join(m[1] for m in conn.parser.messages)


@pytest.mark.parametrize("name", [
    pytest.param("lighttpd", marks=needs_lighttpd),
    pytest.param("lighttpd+tls", marks=[needs_lighttpd, needs_openssl]),
    pytest.param("wsrouter+tls", marks=needs_openssl),
    "floor",
])
def test_peer_relays_an_echo(name: str, echo_port: int, log_dir: Path) -> None:
    """Each new relay variant starts from the bench's own config and relays one echo byte for byte."""
    variant = relays.VARIANTS[name]
    if variant.tls:
        relays.make_cert(log_dir)
    relay = relays.start_relay(relays.RELAYS[name], echo_port, relays.PortPool(19400, 100), log_dir)
    try:
        assert _one_echo(relay.port, variant.tls, variant.offer) == b"peer-echo-" * 3
    finally:
        relay.stop()
    assert not relay.alive()


def test_lighttpd_config_is_loopback_wstunnel_binary(log_dir: Path) -> None:
    """lighttpd's generated config binds loopback, tunnels as binary frames, and lies beside the scratch dir."""
    scratch = log_dir / "lighttpd-1.d"
    scratch.mkdir()
    argv = relays.RELAYS["lighttpd+tls"].argv(18001, 18002, scratch)
    conf = Path(argv[-1]).read_text()
    assert argv[1:3] == ["-D", "-f"] and Path(argv[-1]).parent == log_dir
    assert 'server.bind = "127.0.0.1"' in conf and "server.port = 18001" in conf
    assert '"port" => 18002' in conf and 'wstunnel.frame-type = "binary"' in conf
    assert 'ssl.engine = "enable"' in conf and "mod_openssl" in conf


def test_churn_counts_real_connections(echo_port: int, log_dir: Path) -> None:
    """The churn workload's forked clients complete connections through a real relay and report them."""
    relay = relays.start_relay(relays.RELAYS["wsrouter"], echo_port, relays.PortPool(19500, 100), log_dir)
    try:
        params = workloads.Params(**{**workloads.QUICK.__dict__, "churn_s": 0.5, "churn_clients": 2})
        ctx = workloads.Context(workloads.Endpoint(relays.HOST, relay.port), params, targets=None,  # type: ignore[arg-type]
                                direct=False, relay_pid=relay.pid)
        raw = workloads.run_churn(ctx)
    finally:
        relay.stop()
    figures = workloads.figures_churn(raw)
    assert raw["connections"] > 0 and raw["failed"] == 0
    assert figures["cpu_ms_conn"] > 0 and figures["conn_s"] > 0
