"""
Targets: one module per kind, each turning a session into a paused L{Link}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail

from wsrouter.config import (
    EchoTarget,
    ExecTarget,
    Limits,
    ReplayTarget,
    TcpTarget,
    UdpTarget,
    UnixDatagramTarget,
    UnixTarget,
)
from wsrouter.interfaces import Connector, Link, SessionInfo, TargetError
from wsrouter.targets.datagram import DatagramConnector
from wsrouter.targets.echo import EchoConnector
from wsrouter.targets.exec import ExecConnector
from wsrouter.targets.replay import ReplayConnector
from wsrouter.targets.stream import StreamConnector


class Connectors:
    """Dispatches each session to the connector for its target's kind."""

    def __init__(self, reactor: Any, limits: Limits, pass_env: Sequence[str] = ()):
        stream = StreamConnector(reactor, limits.connect_timeout)
        datagram = DatagramConnector(reactor)
        self.programs = ExecConnector(reactor, limits, pass_env)
        self._by_kind: dict[type, Connector] = {
            TcpTarget: stream,
            UnixTarget: stream,
            UdpTarget: datagram,
            UnixDatagramTarget: datagram,
            EchoTarget: EchoConnector(),
            ExecTarget: self.programs,
            ReplayTarget: ReplayConnector(reactor),
        }

    def register(self, kind: type, connector: Connector) -> None:
        """Serve targets of C{kind} with C{connector} (program targets, tests)."""
        self._by_kind[kind] = connector

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        connector = self._by_kind.get(type(session.route.target))
        if connector is None:
            return fail(TargetError(f"no connector for {session.route.target.describe()}", 502))
        try:
            return connector.connect(session)
        except TargetError:
            return fail()
