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



def test_direct_connect_fires_with_a_paused_link_and_cancels():
    """The direct connect fires once with the connected, paused link; a cancelled attempt stops its connector."""
    from twisted.internet.defer import CancelledError
    from twisted.internet.interfaces import ITCPTransport
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from zope.interface import implementer

    from wsrouter.targets.stream import StreamLink, _direct

    @implementer(ITCPTransport)
    class TcpTransport(StringTransport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    memory = MemoryReactorClock()
    connecting = _direct(lambda factory: memory.connectTCP("127.0.0.1", 9, factory, timeout=5))
    (host, port, factory, timeout, _bind) = memory.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 9, 5)
    link = factory.buildProtocol(None)
    assert isinstance(link, StreamLink) and not connecting.called
    got: list[object] = []
    connecting.addCallback(got.append)
    transport = TcpTransport()
    link.makeConnection(transport)
    assert got == [link] and transport.producerState == "paused"

    cancelled = _direct(lambda factory: memory.connectTCP("127.0.0.1", 9, factory, timeout=5))
    connector = memory.connectors[-1]
    cancelled.addErrback(got.append)
    cancelled.cancel()
    assert connector.stoppedConnecting
    assert len(got) == 2 and got[1].check(CancelledError)  # type: ignore[attr-defined]
