"""
Datagram targets: UDP and Unix datagram sockets.

One WebSocket message is one datagram and one datagram one message.  A
datagram socket cannot push back on a fast sender, so a datagram the kernel
will not take right now is dropped and counted, as UDP would drop it anyway;
reading from the target is still paused while the WebSocket client is slow.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import ConnectedDatagramProtocol, DatagramProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import LogLevel
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import UdpTarget, UnixDatagramTarget
from wsrouter.interfaces import Link, LinkReceiver, SessionInfo, TargetError

#: Largest datagram read from a target (the UDP maximum payload).
MAX_DATAGRAM = 65535


@implementer(IPushProducer)
class _ReadingProducer:
    """Pauses a datagram port by not reading it; the kernel queues or drops."""

    def __init__(self, port: Any):
        self._port = port

    def pauseProducing(self) -> None:
        self._port.stopReading()

    def resumeProducing(self) -> None:
        if self._port.connected:
            self._port.startReading()

    def stopProducing(self) -> None:
        self._port.stopReading()


def quietly(open_port: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """
    C{open_port(*args, **kwargs)} with the lines Twisted logs for every new
    datagram port (C{<class ...> starting on ...}) at debug level: a session
    opens one, so at info they would be lines per session.
    """
    return log.callWithContext({"log_level": LogLevel.debug}, open_port, *args, **kwargs)


def _stop_quietly(port: Any) -> None:
    """
    What C{port.stopListening()} does (stop reading now, close the socket a
    reactor turn later), with Twisted's C{(Port ... Closed)} line at debug
    level as well.
    """
    if port.connected:
        port.stopReading()
        port.reactor.callLater(0, quietly, port.connectionLost)


class _DatagramLinkBase:
    """Shared behaviour of UDP and Unix datagram links."""

    message_oriented = True
    #: No "Starting protocol"/"Stopping protocol" line per session.
    noisy = False

    def __init__(self, description: str) -> None:
        self.description = description
        self.dropped = 0
        self.transport: Any = None
        self._receiver: LinkReceiver | None = None
        self._lost = False
        self.ready: Deferred[Link] = Deferred()
        #: Set once the socket exists (L{_opened}).
        self.producer: IPushProducer | None = None
        #: A datagram socket takes or drops each write at once: nothing to pause.
        self.consumer: IConsumer | None = None

    def _opened(self) -> None:
        """The socket is bound (and connected): stay paused, hand the link over."""
        self.transport.stopReading()
        self.producer = _ReadingProducer(self.transport)
        self.ready.callback(self)

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        if self.transport.connected:
            self.transport.startReading()

    def write(self, data: bytes) -> None:
        if self._lost:
            return
        try:
            self.transport.write(data)
        except MessageLengthError:
            self._lose(f"message of {len(data)} bytes is too large for one datagram")
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                self._lose(f"cannot send to {self.description}: {e.strerror}")
            self.dropped += 1

    def write_eof(self) -> None:
        """Datagrams have no end-of-stream; nothing to tell the target."""

    def close(self) -> None:
        if not self._lost:
            self._lost = True
            self._stop()
            if self._receiver is not None:
                self._receiver.link_lost(None)

    abort = close

    def _stop(self) -> None:
        _stop_quietly(self.transport)

    def _lose(self, problem: str) -> None:
        if not self._lost:
            self._lost = True
            self._stop()
            if self._receiver is not None:
                self._receiver.link_lost(problem)

    def _deliver(self, data: bytes) -> None:
        if self._receiver is not None and not self._lost:
            self._receiver.data_received(data)


class UdpLink(_DatagramLinkBase, DatagramProtocol):
    """A connected UDP socket on an ephemeral local port."""

    def __init__(self, description: str, address: tuple[str, int]):
        super().__init__(description)
        self._address = address

    def startProtocol(self) -> None:
        self.transport.connect(*self._address)
        self._opened()

    def datagramReceived(self, data: bytes, addr: Any = None) -> None:
        self._deliver(data)

    def connectionRefused(self) -> None:
        self._lose(f"{self.description} refused the datagram (nothing listens there)")


class UnixDatagramLink(_DatagramLinkBase, ConnectedDatagramProtocol):
    """
    A Unix datagram socket bound in a private directory (removed when done)
    or to an abstract name (C{directory} C{None}), connected to the target.
    """

    def __init__(self, description: str, directory: str | None):
        super().__init__(description)
        self._directory = directory

    def startProtocol(self) -> None:
        self._opened()

    def datagramReceived(self, data: bytes, addr: Any = None) -> None:
        self._deliver(data)

    def connectionFailed(self, failure: Failure) -> None:
        self._remove_directory()
        problem = getattr(failure.value, "strerror", None) or str(failure.value)
        if not self.ready.called:
            self.ready.errback(TargetError(f"cannot connect to {self.description}: {problem}", 502))
        else:
            self._lose(problem)

    def _stop(self) -> None:
        _stop_quietly(self.transport)
        self._remove_directory()

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


class DatagramConnector:
    """Opens datagram links; a name is resolved off the reactor thread."""

    def __init__(self, reactor: Any):
        self._reactor = reactor

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        if isinstance(target, UdpTarget):
            return self._resolve(target).addCallback(self._open_udp, target)
        if isinstance(target, UnixDatagramTarget):
            return self._open_unix(target)
        raise TypeError(f"not a datagram target: {target!r}")

    def _resolve(self, target: UdpTarget) -> Deferred[str]:
        try:
            return succeed(str(ipaddress.ip_address(target.host)))
        except ValueError:
            pass
        lookup = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(),
            socket.getaddrinfo, target.host, target.port, 0, socket.SOCK_DGRAM,
        )

        def first(results: list[Any]) -> str:
            return str(results[0][4][0])

        def failed(reason: Failure) -> str:
            raise TargetError(f"cannot resolve {target.describe()}: host name not found", 502)

        return lookup.addCallbacks(first, failed)

    def _open_udp(self, address: str, target: UdpTarget) -> Deferred[Link]:
        link = UdpLink(target.describe(), (address, target.port))
        interface = "::" if ":" in address else "0.0.0.0"
        if ipaddress.ip_address(address).is_loopback:
            interface = "::1" if ":" in address else "127.0.0.1"
        try:
            quietly(self._reactor.listenUDP, 0, link, interface=interface, maxPacketSize=MAX_DATAGRAM)
        except Exception as e:  # CannotListenError and socket errors alike
            raise TargetError(f"cannot open a UDP socket for {target.describe()}: {e}", 502) from e
        return link.ready

    def _open_unix(self, target: UnixDatagramTarget) -> Deferred[Link]:
        directory = tempfile.mkdtemp(prefix="wsrouter-dgram-")
        link = UnixDatagramLink(target.describe(), directory)
        quietly(self._reactor.connectUNIXDatagram, target.path, link, maxPacketSize=MAX_DATAGRAM, mode=0o600,
                bindAddress=os.path.join(directory, "s"))
        return link.ready
