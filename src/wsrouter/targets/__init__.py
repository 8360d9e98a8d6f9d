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
    PythonTarget,
    ReplayTarget,
    TcpTarget,
    TlsTarget,
    UdpTarget,
    UnixDatagramTarget,
    UnixTarget,
    WebSocketTarget,
)
from wsrouter.interfaces import Connector, Link, SessionInfo, TargetError
from wsrouter.targets.datagram import DatagramConnector
from wsrouter.targets.echo import EchoConnector
from wsrouter.targets.exec import ExecConnector
from wsrouter.targets.python import PythonConnector
from wsrouter.targets.replay import ReplayConnector
from wsrouter.targets.stream import StreamConnector
from wsrouter.targets.tls import TlsConnector
from wsrouter.targets.websocket import WebSocketConnector


class Connectors:
    """Dispatches each session to the connector for its target's kind."""

    def __init__(self, reactor: Any, limits: Limits, pass_env: Sequence[str] = ()):
        stream = self._stream = StreamConnector(reactor, limits.connect_timeout)
        tls = self._tls = TlsConnector(reactor, limits.connect_timeout)
        datagram = DatagramConnector(reactor)
        websocket = self._websocket = WebSocketConnector(reactor, limits)
        #: Runs the C{exec:} targets' commands (one process per session).
        self.commands = ExecConnector(reactor, limits, pass_env)
        #: Keeps the python: targets' handlers, one per route.
        self.handlers = PythonConnector(reactor, limits)
        self._by_kind: dict[type, Connector] = {
            TcpTarget: stream,
            UnixTarget: stream,
            TlsTarget: tls,
            UdpTarget: datagram,
            UnixDatagramTarget: datagram,
            EchoTarget: EchoConnector(),
            ExecTarget: self.commands,
            ReplayTarget: ReplayConnector(reactor),
            WebSocketTarget: websocket,
            PythonTarget: self.handlers,
        }

    def use_settings(self, limits: Limits, pass_env: Sequence[str]) -> None:
        """
        New connections use these limits (connect timeout, fork limits) and
        environment names (a reload); commands already running are untouched.
        """
        self._stream.use_timeout(limits.connect_timeout)
        self._tls.use_timeout(limits.connect_timeout)
        self._websocket.use_limits(limits)
        self.commands.use_settings(limits, pass_env)
        self.handlers.use_limits(limits)

    def register(self, kind: type, connector: Connector) -> None:
        """Serve targets of C{kind} with C{connector} (wrapped programs' targets, tests)."""
        self._by_kind[kind] = connector

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        connector = self._by_kind.get(type(session.route.target))
        if connector is None:
            return fail(TargetError(f"no connector for {session.route.target.describe()}", 502))
        try:
            return connector.connect(session)
        except TargetError:
            return fail()
