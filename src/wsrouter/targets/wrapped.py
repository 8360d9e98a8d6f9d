"""
Wrapped-program targets: connect to wherever the rebind shim moved the
program's port -- a Unix socket in a private directory, or a loopback port
-- waiting (bounded) for it to come up.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import socket
from collections.abc import Mapping
from typing import Any, Protocol, cast

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from wsrouter.config import TcpTarget, UdpTarget, UnixTarget, WrappedTarget
from wsrouter.interfaces import Link, SessionInfo, TargetError
from wsrouter.rebind import PEER_PREFIX
from wsrouter.targets.datagram import MAX_DATAGRAM, DatagramConnector, UnixDatagramLink, quietly
from wsrouter.targets.stream import StreamConnector, StreamLink

#: The shim reports the address when bind() returns, a moment before the
#: program calls listen(); refused connections are retried this often.
RETRY_INTERVAL = 0.05


class ProgramEndpoint(Protocol):
    """
    What the connector needs of a wrapped program: the supervisor's
    L{wsrouter.process.wrapped.WrappedProgram}, or a worker's view of it.
    """

    def when_ready(self, timeout: float) -> Deferred[tuple[str, int]]:
        """
        The program's address once it listens, C{(host, port)} or, for a
        private Unix socket, C{(path, 0)}; a L{TargetError} if not in time or
        never.
        """

    def gone_reason(self) -> str | None:
        """Why the program will not listen again without a new start; C{None} while it may."""


class WrappedConnector:
    """
    Connects sessions to the wrapped programs the service supervises.
    C{programs} is the service's own mapping: programs it adds or removes
    on reload are seen by the next connection.
    """

    def __init__(self, reactor: Any, programs: Mapping[WrappedTarget, ProgramEndpoint], timeout: float):
        self._reactor = reactor
        self._programs = programs
        self._timeout = timeout
        self._stream = StreamConnector(reactor, timeout)
        self._datagram = DatagramConnector(reactor)

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        program = self._programs.get(target) if isinstance(target, WrappedTarget) else None
        if program is None:
            raise TargetError(f"no wrapped program for {target.describe()}", 502)
        return self._attempt(session, program, self._reactor.seconds() + self._timeout)

    def _attempt(self, session: SessionInfo, program: ProgramEndpoint, deadline: float) -> Deferred[Link]:
        """
        Wait for the program's current address and connect; a refusal means
        it is between bind() and listen(), or being restarted, so ask again
        -- unless it has exited and no restart is coming: then answer 502 at
        once, saying so.
        """
        remaining = max(deadline - self._reactor.seconds(), 0.001)
        attempt = program.when_ready(remaining)
        attempt.addCallback(self._connect, session)

        def refused(reason: Failure) -> Any:
            if not _is_refusal(reason) or self._reactor.seconds() >= deadline:
                return reason
            gone = program.gone_reason()
            if gone is not None:
                raise TargetError(f"{gone}; nothing listens at its address", 502)
            return deferLater(self._reactor, RETRY_INTERVAL, lambda: None).addCallback(
                lambda _: self._attempt(session, program, deadline))

        attempt.addErrback(refused)
        return attempt  # type: ignore[return-value]

    def _connect(self, address: tuple[str, int], session: SessionInfo) -> Deferred[Link]:
        program = session.route.target
        if isinstance(program, WrappedTarget) and program.protocol == "udp":
            # A UDP program: one datagram per message, to its private socket or moved loopback port.
            if address[1] == 0 and address[0].startswith("/"):
                return connect_private_datagram(self._reactor, address[0], session)
            udp = UdpTarget(address[0], address[1])
            return self._datagram.connect(attrs.evolve(session, route=attrs.evolve(session.route, target=udp)))
        target = program_link_target(address)
        if isinstance(target, UnixTarget) and IReactorSocket.providedBy(self._reactor):
            return connect_private(self._reactor, target.path, session)
        direct = attrs.evolve(session, route=attrs.evolve(session.route, target=target))
        return self._stream.connect(direct)


def peer_name(session: SessionInfo) -> str | None:
    """
    The abstract socket name that tells the shim the client's address
    (C{rebind.c}: the program's accept() and getpeername() show it), or
    C{None} if the session's peer is not an IP address.
    """
    try:
        host = ipaddress.ip_address(session.peer_host)
    except ValueError:
        return None
    if not 0 <= session.peer_port <= 65535:
        return None
    return f"\0{PEER_PREFIX}{host} {session.peer_port} {secrets.token_hex(8)}"


def connect_private(reactor: Any, path: str, session: SessionInfo,
                    link_class: type[StreamLink] = StreamLink) -> Deferred[Link]:
    """
    Connect to a program's private Unix socket from a socket bound to
    L{peer_name}, so the program sees the WebSocket client's address; the
    link comes paused, as L{StreamConnector}'s do.  A Unix connect finishes
    at once or fails: a full backlog counts as refused (and is retried).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        name = peer_name(session)
        if name is not None:
            with contextlib.suppress(OSError):  # unbound, the program sees a loopback peer
                sock.bind(name)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, BlockingIOError):
            return fail(TargetError(f"cannot connect to unix://{path}: connection refused", 502))
        except OSError as e:
            why = "no such socket file" if e.errno == errno.ENOENT else (e.strerror or str(e))
            return fail(TargetError(f"cannot connect to unix://{path}: {why}", 502))
        factory = Factory.forProtocol(link_class)
        factory.noisy = False
        transport = reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    finally:
        sock.close()  # adopting took a duplicate
    if transport is None:
        return fail(TargetError(f"cannot connect to unix://{path}: the connection was not adopted", 502))
    return succeed(cast(Link, transport.protocol))


def connect_private_datagram(reactor: Any, path: str, session: SessionInfo) -> Deferred[Link]:
    """
    A Unix datagram link to a UDP program's private socket, bound to
    L{peer_name} (abstract, so nothing to clean up) so the program sees the
    client's address and its replies find this session; connected, so only
    the program's datagrams are taken.
    """
    link = UnixDatagramLink(f"unix-dgram://{path}", None)
    name = peer_name(session) or f"\0wsrouter-dgram {secrets.token_hex(8)}"
    quietly(reactor.connectUNIXDatagram, path, link, maxPacketSize=MAX_DATAGRAM, bindAddress=name)
    return link.ready


def program_link_target(address: tuple[str, int]) -> TcpTarget | UnixTarget:
    """Where a program's address points: C{(path, 0)} is a Unix socket, anything else a TCP port."""
    host, port = address
    if port == 0 and host.startswith("/"):
        return UnixTarget(host)
    return TcpTarget(host, port)


def _is_refusal(reason: Failure) -> bool:
    error = reason.value
    return isinstance(error, TargetError) and error.status == 502 and "connection refused" in error.reason

