"""
More than one core: C{--workers N} runs N router processes under one
supervisor.

Design, and why:

  - B{One socket, handed to every worker.}  The supervisor (the process
    twistd or C{wsrouter} runs) opens each configured listener itself
    (C{tcp:}, C{tcp6:} and C{unix:} endpoints; others cannot be shared and
    are refused by the config) and never accepts on it.  Each worker
    inherits the listening sockets as descriptors and adopts them
    (C{reactor.adoptStreamPort}); the kernel hands each new connection to
    whichever worker accepts first.  Unlike C{SO_REUSEPORT} this works for
    port 0 and Unix sockets, a restarted worker takes over the very same
    socket (nothing queued in the backlog is lost), and no other process
    can bind the port in between.
  - B{Wrapped programs run once}, in the supervisor, as without workers.
    The supervisor tells every worker where each program listens (at
    start-up and whenever that changes) over a control socket, and the
    workers connect there; without an address a client waits and gets
    503, as in one process.  With C{follow_program_port} the supervisor
    opens the listener once the program has bound its port, then starts
    the workers.
  - B{The control socket} (the worker's descriptor 3, a Unix socket pair)
    carries JSON lines: first the set-up (worker number, the pickled
    L{RouterConfig}, the listening descriptors, the programs' addresses),
    then one line per address change.  Pickle is fine here: it crosses
    only from the supervisor to its own child, running the same code.  A
    worker whose control socket closes (the supervisor died, even by
    SIGKILL) shuts down: no orphaned workers.
  - B{Logs}: a worker writes its log as C{LEVEL TEXT} lines to its stdout,
    which the supervisor reads and logs with a C{[worker N]} prefix at the
    same level; anything else it prints (a crash's traceback) is logged
    too.  Session ids carry the worker's number (C{w2.3f2a91c0}), so log
    lines and recording file names from different workers never collide.
  - B{Supervision} follows L{twisted.runner.procmon}, like wrapped
    programs: a worker that dies is restarted, after 1 s doubling up to
    60 s if it keeps dying young.  Each worker runs in its own process
    group, so a terminal's Ctrl-C reaches only the supervisor, which then
    stops them in order.
  - B{Stopping}: SIGTERM to each worker, which stops accepting and closes
    its sessions with 1001 within the shutdown grace; the supervisor waits
    that long plus L{KILL_GRACE}, then SIGKILLs what is left, stops the
    wrapped programs, and closes the listeners.

C{--workers 1} (the default) does not use any of this: the router is the
single process it always was.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from wsrouter.config import RouterConfig, WrappedTarget
from wsrouter.descriptors import OpenFileLimit
from wsrouter.process.wrapped import ProgramNotFound, WrappedProgram
from wsrouter.rebind import ShimUnavailable
from wsrouter.service.single import CannotStart, ListenerService, follow_program_port

log = Logger(namespace="wsrouter.service.workers")

#: The worker's descriptor for the control socket; listening sockets follow it.
CONTROL_FD = 3
FIRST_LISTENER_FD = 4
#: Restart delays for workers that keep dying young, in seconds.
MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A worker that ran this long is restarted at once.
STABLE_AFTER = 10.0
#: Beyond the shutdown grace, how long workers get before SIGKILL, and how
#: long to wait for them after it.
KILL_GRACE = 5.0
#: Log levels a worker's lines may start with.
LEVELS = {level.name: level for level in LogLevel.iterconstants()}


def wrapped_targets(config: RouterConfig) -> list[WrappedTarget]:
    """The configured wrapped programs, each once, in route order: their index is their name on the wire."""
    targets: list[WrappedTarget] = []
    for route in config.routes:
        if isinstance(route.target, WrappedTarget) and route.target not in targets:
            targets.append(route.target)
    return targets


def setup_message(index: int, config: RouterConfig, listener_count: int,
                  addresses: list[tuple[str, int] | None]) -> bytes:
    """The first line a worker reads: who it is, what to serve, where programs are."""
    message = {
        "worker": index,
        "config": base64.b64encode(pickle.dumps(config)).decode("ascii"),
        "listeners": [FIRST_LISTENER_FD + n for n in range(listener_count)],
        "programs": [list(address) if address else None for address in addresses],
    }
    return json.dumps(message).encode("utf-8") + b"\n"


def address_message(program: int, address: tuple[str, int] | None) -> bytes:
    """A line telling a worker where wrapped program number C{program} listens now (C{None}: nowhere)."""
    return json.dumps({"program": program, "address": list(address) if address else None}).encode("utf-8") + b"\n"


def parse_log_line(line: str) -> tuple[LogLevel | None, str]:
    """A worker's C{LEVEL TEXT} line as level and text; C{None} for a line in no such form."""
    name, sep, text = line.partition(" ")
    level = LEVELS.get(name)
    return (level, text) if sep and level is not None else (None, line)


def restart_delay(ran: float, previous: float) -> tuple[float, float]:
    """
    How long to wait before restarting a worker that ran C{ran} seconds,
    and the delay to use next time: at once after a stable run, else
    doubling from L{MIN_RESTART_DELAY} to L{MAX_RESTART_DELAY}.
    """
    if ran >= STABLE_AFTER:
        return 0.0, MIN_RESTART_DELAY
    return previous, min(previous * 2, MAX_RESTART_DELAY)


class _Unused(Factory):
    """The supervisor's listeners never accept; their sockets are for the workers."""

    noisy = False

    def logPrefix(self) -> str:
        return "Site"

    def buildProtocol(self, addr: Any) -> None:
        return None


class _WorkerOutput(ProcessProtocol):
    """Logs a worker's output lines and tells the supervisor when it exits."""

    def __init__(self, supervisor: WorkerSupervisor, worker: Worker):
        self._supervisor = supervisor
        self._worker = worker
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = rest[-65536:]
        for line in lines:
            self._worker.log_line(fd, line)

    def processExited(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._worker.log_line(fd, rest)
        self._partial.clear()
        self._supervisor._worker_exited(self._worker, reason)


class _Control(Protocol):
    """The supervisor's end of a worker's control socket: it only writes."""


class Worker:
    """One worker slot: its current process (if any) and its restart state."""

    def __init__(self, index: int):
        self.index = index
        self.pid: int | None = None
        self.process: Any = None
        self.control: Any = None
        self.started_at = 0.0
        self.delay = MIN_RESTART_DELAY
        self.restart_call: IDelayedCall | None = None
        self.exited: Deferred[None] = succeed(None)

    def send(self, line: bytes) -> None:
        if self.control is not None:
            self.control.write(line)

    def log_line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        level, text = parse_log_line(text)
        if level is None:
            level = LogLevel.warn if fd == 2 else LogLevel.info
        log.emit(level, "[worker {index}] {line}", index=self.index, line=text)


class WorkerSupervisor(MultiService):
    """
    Holds the listening sockets and the wrapped programs, and keeps
    C{config.workers} worker processes running on them.

    @ivar exit_status: an C{exit}-mode program's status once it exited.
    @ivar on_program_exit: called with that status; the command line stops
        the reactor there.
    """

    def __init__(self, config: RouterConfig, reactor: Any, *, worker_argv: list[str] | None = None,
                 environ: Mapping[str, str] | None = None):
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._argv = worker_argv or [sys.executable, "-m", "wsrouter.service.worker_process"]
        self._env = dict(os.environ if environ is None else environ)
        self.listeners: list[ListenerService] = []
        for description in config.listeners:
            self._add_listener(description)
        self.workers = [Worker(index) for index in range(1, config.workers + 1)]
        self.exit_status: int | None = None
        self.on_program_exit: Callable[[int], None] | None = None
        #: What raising the open-file limit did (the workers inherit it).
        self.raised: OpenFileLimit | None = None
        self.programs: list[WrappedProgram] = []
        for target in wrapped_targets(config):
            program = WrappedProgram(reactor, target, on_exit=self._program_exited,
                                     on_listening=self._program_listening,
                                     on_stopped_listening=self._program_listening)
            self.programs.append(program)
        self._stopping = False

    # -- starting ------------------------------------------------------------------------

    def _add_listener(self, description: str) -> ListenerService:
        listener = ListenerService(self._reactor, description, _Unused())
        listener.setServiceParent(self)
        self.listeners.append(listener)
        if self.running:
            self._hold(listener)
        return listener

    def _hold(self, listener: ListenerService) -> None:
        """Keep the socket open for the workers, but never accept on it here."""
        if listener.port is not None:
            listener.port.stopReading()  # type: ignore[attr-defined]

    def startService(self) -> None:
        super().startService()
        for listener in self.listeners:
            self._hold(listener)
            log.info("listening on {listener} (shared by {count} workers)", listener=listener.description,
                     count=len(self.workers))
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=route.target.describe())
        if self.raised is not None:
            log.info("{limit}, for each worker", limit=self.raised.describe())
        try:
            for program in self.programs:
                program.start()
        except (ShimUnavailable, ProgramNotFound) as e:
            raise CannotStart(str(e)) from None
        if self.listeners:
            self._start_workers()

    def _start_workers(self) -> None:
        for worker in self.workers:
            if worker.process is None:
                self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart_call = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno()}
        for offset, port in enumerate(self.ports()):
            child_fds[FIRST_LISTENER_FD + offset] = port.fileno()  # type: ignore[attr-defined]
        exited: Deferred[None] = Deferred()
        worker.exited = exited
        try:
            worker.process = self._reactor.spawnProcess(
                _WorkerOutput(self, worker), self._argv[0], self._argv, env=self._env, childFDs=child_fds)
        except OSError as e:
            ours.close()
            theirs.close()
            exited.callback(None)
            delay, worker.delay = restart_delay(0.0, worker.delay)
            log.error("cannot start worker {index}: {error}; trying again in {delay:g} s", index=worker.index,
                      error=e, delay=delay)
            self._schedule_restart(worker, delay)
            return
        finally:
            theirs.close()
        worker.pid = worker.process.pid
        worker.started_at = self._reactor.seconds()
        worker.control = self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(_Control))
        ours.close()
        addresses = [program.address for program in self.programs]
        worker.send(setup_message(worker.index, self.config, len(self.ports()), addresses))
        log.info("started worker {index} (pid {pid})", index=worker.index, pid=worker.pid)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, in configuration order (then the followed program's)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

    # -- wrapped programs ----------------------------------------------------------------

    def _program_listening(self, program: WrappedProgram) -> None:
        """Tell every worker where the program listens now; follow its port if so configured."""
        index = self.programs.index(program)
        for worker in self.workers:
            worker.send(address_message(index, program.address))
        if program.address is not None and follow_program_port(self, program):
            self._start_workers()

    def _program_exited(self, status: int) -> None:
        self.exit_status = status
        if self.on_program_exit is not None:
            self.on_program_exit(status)

    # -- workers' lives ----------------------------------------------------------------------

    def _worker_exited(self, worker: Worker, reason: Failure) -> None:
        ran = self._reactor.seconds() - worker.started_at
        worker.process = None
        if worker.control is not None:
            worker.control.loseConnection()
            worker.control = None
        status = _describe(reason)
        if self._stopping:
            log.info("worker {index} (pid {pid}) stopped ({status})", index=worker.index, pid=worker.pid,
                     status=status)
        else:
            delay, worker.delay = restart_delay(ran, worker.delay)
            log.warn("worker {index} (pid {pid}) exited ({status}) after {ran:.1f} s; restarting in {delay:g} s",
                     index=worker.index, pid=worker.pid, status=status, ran=ran, delay=delay)
            self._schedule_restart(worker, delay)
        worker.exited.callback(None)

    def _schedule_restart(self, worker: Worker, delay: float) -> None:
        if not self._stopping:
            worker.restart_call = self._reactor.callLater(delay, self._spawn, worker)

    # -- stopping ----------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for worker in self.workers:
            if worker.restart_call is not None and worker.restart_call.active():
                worker.restart_call.cancel()
            worker.restart_call = None
        await self._stop_workers()
        await DeferredList([program.stop() for program in self.programs])
        await super().stopService()

    async def _stop_workers(self) -> None:
        """SIGTERM every worker; SIGKILL those still there after the grace period."""
        running = [worker for worker in self.workers if worker.process is not None]
        for worker in running:
            _signal(worker, signal.SIGTERM)
        if not running:
            return
        grace = self.config.limits.shutdown_grace + KILL_GRACE
        if not await self._all_exited(running, grace):
            for worker in running:
                if worker.process is not None:
                    log.warn("worker {index} (pid {pid}) did not stop within {grace:g} s; sending SIGKILL",
                             index=worker.index, pid=worker.pid, grace=grace)
                    _signal(worker, signal.SIGKILL)
            await self._all_exited(running, KILL_GRACE)

    async def _all_exited(self, workers: list[Worker], timeout: float) -> bool:
        """Whether all C{workers} exit within C{timeout} seconds."""
        done: Deferred[bool] = Deferred()
        timer = self._reactor.callLater(timeout, lambda: done.called or done.callback(False))

        def exited(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(True)

        DeferredList([worker.exited for worker in workers]).addCallback(exited)
        return await done


def _signal(worker: Worker, signum: int) -> None:
    if worker.process is None:
        return
    try:
        worker.process.signalProcess(signum)
    except (ProcessExitedAlready, OSError) as e:  # gone already; its exit is on its way
        log.debug("cannot signal worker {index}: {error}", index=worker.index, error=e)


def _describe(reason: Failure) -> str:
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum is not None:
        return f"killed by signal {signum}"
    return f"status {getattr(value, 'exitCode', None) or 0}"


def build_supervisor(config: RouterConfig, reactor: Any = None) -> WorkerSupervisor:
    """The supervisor of C{config.workers} router processes (for C{config.workers} > 1)."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    return WorkerSupervisor(config, reactor)
