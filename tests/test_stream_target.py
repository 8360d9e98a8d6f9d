"""Stream targets (TCP, Unix): refusals name the reason the target could not be reached."""

import pytest_twisted

from .support import free_port, handshake_status, in_thread, start_router


@pytest_twisted.inlineCallbacks
def test_missing_unix_socket_is_refused_with_502_and_reason(tmp_path):
    """A Unix route whose socket file does not exist refuses the handshake with 502 saying so."""
    router = start_router(routes=[f"/u=unix://{tmp_path / 'absent.sock'}"])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/u")
    finally:
        yield router.stopService()
    assert status == 502
    assert b"no such socket file" in body


@pytest_twisted.inlineCallbacks
def test_closed_tcp_port_is_refused_with_502_and_reason():
    """A TCP route to a loopback port nobody listens on refuses the handshake with 502 'connection refused'."""
    router = start_router(routes=[f"/t=tcp://127.0.0.1:{free_port()}"])
    try:
        status, body = yield in_thread(handshake_status, router.url + "/t")
    finally:
        yield router.stopService()
    assert status == 502
    assert b"connection refused" in body
