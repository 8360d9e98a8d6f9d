"""
Links to leased wrapped programs (L{wsrouter.process.instances}): a
per-session instance or an on-demand program is leased for the session, the
client waits in its handshake (up to the program's C{ready_timeout}) until
it has bound, and the lease is released when the link to it is gone --
which stops a per-session instance, and may start an on-demand program's
idle timer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from wsrouter.config import UnixTarget, WrappedTarget
from wsrouter.interfaces import Link, SessionInfo, TargetError
from wsrouter.process.instances import Lease, LeasingProgram
from wsrouter.targets.stream import StreamLink, proxy_header_for
from wsrouter.targets.wrapped import WrappedConnector, connect_private, program_link_target


class InstanceLink(StreamLink):
    """A stream link that calls C{on_lost} once its connection is gone (whether or not it was ever started)."""

    on_lost: Callable[[], None] | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            on_lost, self.on_lost = self.on_lost, None
            if on_lost is not None:
                on_lost()


class LeasingConnector(WrappedConnector):
    """
    L{WrappedConnector} for every wrapped program; leased ones (per-session,
    on-demand) are leased first and waited for up to their C{ready_timeout}.
    """

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        target = session.route.target
        program = self._programs.get(target) if isinstance(target, WrappedTarget) else None
        if not isinstance(program, LeasingProgram) or not isinstance(target, WrappedTarget):
            return super().connect(session)
        leasing = program.lease(session)
        return leasing.addCallback(self._connect_leased, session, target.ready_timeout)

    def _connect_leased(self, lease: Lease, session: SessionInfo, timeout: float) -> Deferred[Link]:
        attempt = self._attempt(session, lease.program, self._reactor.seconds() + timeout)

        def attach(link: Link) -> Link:
            if isinstance(link, InstanceLink):
                link.on_lost = lease.release
            else:  # not ours to watch: never leave the lease held
                lease.release()
            return link

        def failed(reason: Failure) -> Failure:
            lease.release()
            return reason

        return attempt.addCallbacks(attach, failed)

    def _connect(self, address: tuple[str, int], session: SessionInfo) -> Deferred[Link]:
        program = session.route.target
        if isinstance(program, WrappedTarget) and program.protocol == "udp":
            return super()._connect(address, session)  # never leased (config refuses it)
        target = program_link_target(address)
        if isinstance(target, UnixTarget) and IReactorSocket.providedBy(self._reactor):
            return connect_private(self._reactor, target.path, session, link_class=InstanceLink)
        if isinstance(target, UnixTarget):
            return super()._connect(address, session)
        endpoint_class = TCP6ClientEndpoint if ":" in target.host else TCP4ClientEndpoint
        endpoint = endpoint_class(self._reactor, target.host, target.port, timeout=self._timeout)
        factory = Factory.forProtocol(InstanceLink)
        factory.noisy = False
        connecting: Deferred[Any] = endpoint.connect(factory)

        def connected(link: InstanceLink) -> Link:
            if session.route.proxy_protocol is not None:
                link.write(proxy_header_for(session))
            return cast(Link, link)

        def refused(reason: Failure) -> Failure:
            why = "connection refused" if reason.check(ConnectionRefusedError) else reason.getErrorMessage()
            raise TargetError(f"cannot connect to {target.describe()}: {why}", 502)

        return connecting.addCallbacks(connected, refused)



