"""
One worker process of C{--workers N}: C{python -m wsrouter.service.worker_process}, started
only by L{wsrouter.service.workers.WorkerSupervisor}, which describes the design.

The worker reads its set-up from the control socket (descriptor 3), adopts
the listening sockets it inherited, and serves them as a single-process
router would, except that wrapped programs are the supervisor's: their
addresses come over the control socket, and so do reloads.  Its log goes to stdout as
C{LEVEL TEXT} lines for the supervisor to relay.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, eventAsText, globalLogBeginner
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.config import RouterConfig, WrappedTarget
from wsrouter.descriptors import DescriptorGuard, GuardedSite
from wsrouter.interfaces import TargetError
from wsrouter.process.wrapped import AddressWaiters, wrapped_targets
from wsrouter.service.single import (
    build_resource,
    program_wait_timeout,
    proxy_header_factory,
    reload_tls,
    server_tls,
)
from wsrouter.service.workers import CONTROL_FD, decode_config
from wsrouter.targets.wrapped import WrappedConnector
from wsrouter.tlsport import listener_factory
from wsrouter.web.channel import limit_requests

log = Logger(namespace="wsrouter")

#: The set-up and reload lines carry the whole configuration; keep room for a big one.
MAX_CONTROL_LINE = 64 * 1024 * 1024


class ProgramAddress:
    """
    A wrapped program as a worker sees it: where the supervisor says it
    listens, and whether it is gone for good.  Offers what
    L{WrappedConnector} needs of a L{WrappedProgram}.
    """

    def __init__(self, reactor: Any, name: str, address: tuple[str, int] | None = None,
                 gone: str | None = None):
        self._reactor = reactor
        self.name = name
        self.address = address
        self._gone = gone
        self._waiters = AddressWaiters(reactor)

    def moved(self, address: tuple[str, int] | None, gone: str | None = None) -> None:
        self.address = address
        self._gone = gone
        if address is not None:
            self._waiters.ready(address)
        elif gone is not None:
            self._waiters.fail(gone, 502)

    def gone_reason(self) -> str | None:
        return self._gone

    def when_ready(self, timeout: float) -> Deferred[tuple[str, int]]:
        """
        Fires with the address once known; a 503 L{TargetError} after
        C{timeout} seconds without one, a 502 at once if the program is gone.
        """
        if self.address is not None:
            return succeed(self.address)
        if self._gone is not None:
            return fail(TargetError(self._gone, 502))
        return self._waiters.wait(timeout, lambda: f"wrapped program {self.name} is not listening")


def program_state(fields: Mapping[str, Any] | Sequence[Any] | None) -> tuple[tuple[str, int] | None, str | None]:
    """A program's address and gone reason from a control message's fields."""
    if not isinstance(fields, Mapping):  # an address alone, or nothing
        return ((str(fields[0]), int(fields[1])) if fields else None), None
    address = fields.get("address")
    gone = fields.get("gone")
    return ((str(address[0]), int(address[1])) if address else None), (str(gone) if gone else None)


class WorkerService(Service):
    """
    The router on adopted listening sockets.  Stopping stops accepting,
    closes the sessions with 1001 and ends exec commands.
    """

    def __init__(self, config: RouterConfig, reactor: Any, index: int, listener_fds: Iterable[int],
                 addresses: Sequence[Any]):
        self.config = config
        self.index = index
        self._reactor = reactor
        self._fds = list(listener_fds)
        self.resource = build_resource(config, reactor)
        self.gateway = self.resource.gateway
        self.gateway.session_prefix = f"w{index}."
        self.resource.ops.set_worker(index)
        self.ports: list[IListeningPort] = []
        self.descriptors = DescriptorGuard.for_this_process(reactor, lambda: self.ports)
        self.gateway.descriptors = self.descriptors
        self.site = GuardedSite(self.resource, self.descriptors)
        self.site.noisy = False
        limit_requests(self.site, lambda: self.gateway.config.limits)
        self.tls = server_tls(config)
        self.programs: dict[WrappedTarget, ProgramAddress] = {}
        self._adopt_programs(config, addresses)
        self.gateway.connectors.register(
            WrappedTarget, WrappedConnector(reactor, self.programs, program_wait_timeout(config)))

    def _adopt_programs(self, config: RouterConfig, states: Sequence[Any]) -> None:
        """
        Number C{config}'s wrapped programs anew, keeping the view of each
        one still configured (the connector holds this very mapping).
        """
        current = dict(self.programs)
        self.programs.clear()
        for number, target in enumerate(wrapped_targets(config)):
            address, gone = program_state(states[number] if number < len(states) else None)
            program = current.get(target) or ProgramAddress(self._reactor, target.name)
            program.moved(address, gone)
            self.programs[target] = program

    def program_moved(self, number: int, address: tuple[str, int] | None, gone: str | None = None) -> None:
        targets = list(self.programs)
        if 0 <= number < len(targets):
            self.programs[targets[number]].moved(address, gone)

    def reload(self, config: RouterConfig, states: Sequence[Any]) -> None:
        """Serve C{config} from now on; open sessions keep their routes."""
        self._adopt_programs(config, states)
        self.config = config
        self.gateway.use_config(config)
        for problem in reload_tls(self, config):
            log.error("reload incomplete: {problem}", problem=problem)
        log.info("configuration reloaded: {routes} routes", routes=len(config.routes))

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # The configured listeners first, in order; then any the supervisor
        # opened itself (follow_program_port: the program's tcp port), which
        # never read PROXY headers.
        descriptions = [*self.config.listeners, *["tcp:"] * len(self._fds)]
        for fd, description in zip(self._fds, descriptions, strict=False):
            inherited = socket.socket(fileno=fd)
            factory = proxy_header_factory(self, description, listener_factory(
                description, self.site, self.tls, self._reactor, self.config.limits.handshake_timeout))
            try:
                self.ports.append(self._reactor.adoptStreamPort(inherited.fileno(), inherited.family, factory))
            finally:
                inherited.close()  # the port has its own descriptor
        log.info("{capacity}", capacity=self.descriptors.describe_capacity(self.config))

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.descriptors.stop()
        # Only stop accepting: closing an adopted Unix port would remove its
        # path, which the supervisor and the other workers still serve.
        for port in self.ports:
            port.stopReading()  # type: ignore[attr-defined]
        await self.gateway.shutdown()
        await DeferredList([self.gateway.connectors.commands.terminate_all()])


class ControlReceiver(LineOnlyReceiver):
    """Reads the supervisor's set-up line, then address changes; its end stops the worker."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_CONTROL_LINE

    def __init__(self, reactor: Any):
        self._reactor = reactor
        self.service: WorkerService | None = None

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        if self.service is None:
            self._start(message)
        elif "reload" in message:
            self.service.reload(decode_config(message["reload"]), message.get("programs") or [])
            transport: Any = self.transport
            transport.write(json.dumps({"reloaded": True}).encode("utf-8") + b"\n")
        elif "program" in message:
            self.service.program_moved(int(message["program"]), *program_state(message))

    def _start(self, message: dict[str, Any]) -> None:
        config = decode_config(message["config"])
        self.service = WorkerService(config, self._reactor, int(message["worker"]), message["listeners"],
                                     message.get("programs") or [])
        self.service.startService()
        self._reactor.addSystemEventTrigger("before", "shutdown", self.service.stopService)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.error("control line from the supervisor too long ({size} bytes); stopping", size=len(line))
        transport: Any = self.transport
        transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._reactor.running:
            log.info("the supervisor is gone; stopping")
            self._reactor.stop()


@implementer(ILogObserver)
class LineLogObserver:
    """Writes each log event as C{LEVEL TEXT} lines (one per line of text) for the supervisor."""

    def __init__(self, out: IO[str]):
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        level = event.get("log_level")
        name = level.name if level is not None else "info"
        self._out.write("".join(f"{name} {line}\n" for line in text.splitlines() or [""]))
        self._out.flush()


def main() -> int:
    """Run one worker until SIGTERM or until the supervisor goes away."""
    from wsrouter.reactor import install_default

    install_default()  # before anything imports the global reactor
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    # A terminal's Ctrl-C goes to the foreground process group: let it reach
    # only the supervisor, which stops the workers in order.
    os.setpgid(0, 0)
    observer: Any = LineLogObserver(sys.stdout)  # provides ILogObserver (zope, unseen by mypy)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    control = ControlReceiver(reactor)
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, Factory.forProtocol(lambda: control))
    os.close(CONTROL_FD)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
