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
    503, as in one process, or 502 at once when the program is gone and
    no restart is coming (the supervisor says so with the address).  With
    C{follow_program_port} the supervisor
    opens the listener once the program has bound its port, then starts
    the workers.
  - B{The control socket} (the worker's descriptor 3, a Unix socket pair)
    carries JSON lines: first the set-up (worker number, the
    L{RouterConfig} as text, the listening descriptors, the programs'
    addresses), then one line per address change and one per reload
    (C{{"reload": <config>, "programs": [...]}}), which the worker
    confirms with C{{"reloaded": true}}.  The config's encoding lives in
    L{encode_config} and L{decode_config} only.  A worker whose control
    socket closes (the supervisor died, even by SIGKILL) shuts down: no
    orphaned workers.
  - B{Reload}: wrapped programs are brought to the new config by
    difference, then every worker switches its gateway (open sessions
    keep their routes) and confirms.  A change of listeners restarts the
    workers one by one, each on the new set of sockets (its sessions are
    closed with 1001, as on stop); handing sockets to running workers is
    not done.
  - B{Logs}: a worker writes its log as C{LEVEL TEXT} lines to its stdout,
    which the supervisor reads and logs with a C{[worker N]} prefix at the
    same level; anything else it prints (a crash's traceback) is logged
    too.  Session ids carry the worker's number (C{w2.3f2a91c0}), so log
    lines and recording file names from different workers never collide.
  - B{Supervision} is L{wsrouter.process.supervisor}'s, as for wrapped
    programs: a worker that dies is restarted, after 1 s doubling up to
    60 s if it keeps dying young.  Each worker runs in its own process
    group, so a terminal's Ctrl-C reaches only the supervisor, which then
    stops them in order.
  - B{Stopping}: SIGTERM to each worker's process group, which stops
    accepting and closes its sessions with 1001 within the shutdown grace;
    the supervisor waits that long plus L{KILL_GRACE}, then SIGKILLs what
    is left, stops the wrapped programs, and closes the listeners.

C{--workers 1} (the default) does not use any of this: the router is the
single process it always was.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineOnlyReceiver

from wsrouter.balancing import describe_targets
from wsrouter.config import (
    DEFAULT_PROGRAM_KILL_GRACE,
    ConfigError,
    RouterConfig,
    WrappedTarget,
    build_config,
    to_data,
)
from wsrouter.descriptors import OpenFileLimit
from wsrouter.process.supervisor import Child, ChildOwner, ExitStatus, Launch, Supervisor
from wsrouter.process.wrapped import ProgramSet, WrappedProgram, wrapped_targets
from wsrouter.service.single import CannotListen, CannotStart, ListenerService, follow_program_port, start_programs

log = Logger(namespace="wsrouter.service.workers")

#: The worker's descriptor for the control socket; listening sockets follow it.
CONTROL_FD = 3
FIRST_LISTENER_FD = 4
#: Beyond the shutdown grace, how long workers get before SIGKILL.
KILL_GRACE = DEFAULT_PROGRAM_KILL_GRACE
#: How long a reload waits for the workers to confirm they applied it.
RELOAD_TIMEOUT = 10.0
#: Log levels a worker's lines may start with.
LEVELS = {level.name: level for level in LogLevel.iterconstants()}


def encode_config(config: RouterConfig) -> str:
    """
    The configuration as text for the control socket: the nested schema
    (L{to_data}) as JSON, plain data that L{decode_config} validates again.
    """
    return json.dumps(to_data(config), separators=(",", ":"))


def decode_config(text: str) -> RouterConfig:
    """
    The configuration L{encode_config} encoded.

    @raise ConfigError: the text is not a valid configuration.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError([("(config)", f"not JSON: {e}")], source="control socket") from None
    if not isinstance(raw, dict):
        raise ConfigError([("(config)", "must be a table")], source="control socket")
    return build_config(raw, "control socket")


#: Where a wrapped program is, for a worker: its address, or C{None} and
#: (perhaps) why it will not listen again.
ProgramState = tuple[tuple[str, int] | None, str | None]


def _program_fields(state: ProgramState) -> dict[str, Any]:
    address, gone = state
    return {"address": list(address) if address else None, "gone": gone}


def setup_message(index: int, config: RouterConfig, listener_count: int,
                  programs: list[ProgramState]) -> bytes:
    """The first line a worker reads: who it is, what to serve, where programs are."""
    message = {
        "worker": index,
        "config": encode_config(config),
        "listeners": [FIRST_LISTENER_FD + n for n in range(listener_count)],
        "programs": [_program_fields(state) for state in programs],
    }
    return json.dumps(message).encode("utf-8") + b"\n"


def address_message(program: int, state: ProgramState) -> bytes:
    """A line telling a worker where wrapped program number C{program} listens now (C{None}: nowhere)."""
    return json.dumps({"program": program, **_program_fields(state)}).encode("utf-8") + b"\n"


def reload_message(config: RouterConfig, programs: list[ProgramState]) -> bytes:
    """A line giving a worker a new configuration and where its programs (numbered anew) are."""
    message = {"reload": encode_config(config), "programs": [_program_fields(state) for state in programs]}
    return json.dumps(message).encode("utf-8") + b"\n"


def parse_log_line(line: str) -> tuple[LogLevel | None, str]:
    """A worker's C{LEVEL TEXT} line as level and text; C{None} for a line in no such form."""
    name, sep, text = line.partition(" ")
    level = LEVELS.get(name)
    return (level, text) if sep and level is not None else (None, line)


class _Unused(Factory):
    """The supervisor's listeners never accept; their sockets are for the workers."""

    noisy = False

    def logPrefix(self) -> str:
        return "Site"

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Control(LineOnlyReceiver):
    """The supervisor's end of a worker's control socket: writes orders, reads acknowledgements."""

    delimiter = b"\n"

    def __init__(self, worker: Worker):
        self._worker = worker

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("worker {index}: unreadable control line {line!r}", index=self._worker.index, line=line)
            return
        if isinstance(message, dict) and "reloaded" in message:
            self._worker.reload_acknowledged()


class Worker(ChildOwner):
    """One worker slot: a supervised child, and the control socket of its current run."""

    def __init__(self, supervisor: WorkerSupervisor, index: int):
        self.index = index
        self._supervisor = supervisor
        self.control: Any = None
        self._ours: socket.socket | None = None
        self._reloads: list[Deferred[None]] = []
        self.child = supervisor.process_supervisor.add(f"worker {index}", self._launch, self, restart=True)

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def send(self, line: bytes) -> None:
        if self.control is not None:
            self.control.write(line)

    def send_reload(self, line: bytes) -> Deferred[None]:
        """Send a reload line; fires when the worker has applied it (or is gone, or was not running)."""
        if self.control is None:
            return succeed(None)
        applied: Deferred[None] = Deferred()
        self._reloads.append(applied)
        self.control.write(line)
        return applied

    def reload_acknowledged(self) -> None:
        if self._reloads:
            self._reloads.pop(0).callback(None)

    def _release_reloads(self) -> None:
        """A worker that is gone applies nothing more; its next run starts with the current config."""
        waiting, self._reloads = self._reloads, []
        for applied in waiting:
            applied.callback(None)

    def _launch(self) -> Launch:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ours = ours
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno()}
        for offset, port in enumerate(self._supervisor.ports()):
            child_fds[FIRST_LISTENER_FD + offset] = port.fileno()  # type: ignore[attr-defined]
        argv = self._supervisor.worker_argv
        return Launch(argv[0], tuple(argv), self._supervisor.environ, child_fds, after=theirs.close)

    def child_started(self, child: Child) -> None:
        ours, self._ours = self._ours, None
        assert ours is not None, "a worker starts only after its launch"
        reactor = self._supervisor.process_supervisor.clock
        self.control = reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                                     Factory.forProtocol(lambda: _Control(self)))
        ours.close()
        self.send(self._supervisor.setup_for(self.index))
        log.info("started worker {index} (pid {pid})", index=self.index, pid=child.pid)

    def child_spawn_failed(self, child: Child, error: Exception) -> None:
        if self._ours is not None:
            self._ours.close()
            self._ours = None

    def child_exited(self, child: Child, status: ExitStatus) -> None:
        if self.control is not None:
            self.control.loseConnection()
            self.control = None
        self._release_reloads()

    def child_line(self, child: Child, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
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
                 environ: Mapping[str, str] | None = None, supervisor: Supervisor | None = None):
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        self.worker_argv = worker_argv or [sys.executable, "-m", "wsrouter.service.worker_process"]
        self.environ = dict(os.environ if environ is None else environ)
        self.process_supervisor = supervisor or Supervisor(reactor)
        self.listeners: list[ListenerService] = []
        for description in config.listeners:
            self.add_listener(description)
        self.workers = [Worker(self, index) for index in range(1, config.workers + 1)]
        self.exit_status: int | None = None
        self.on_program_exit: Callable[[int], None] | None = None
        #: What raising the open-file limit did (the workers inherit it).
        self.raised: OpenFileLimit | None = None
        self._programs = ProgramSet(self._make_program)
        self._programs.add(wrapped_targets(config))
        #: The wrapped programs numbered as the workers know them (until
        #: a reload has told them the new numbering).
        self._numbered = self._programs.ordered()
        self._stopping = False

    @property
    def programs(self) -> list[WrappedProgram]:
        """The wrapped programs, in the configuration's order."""
        return self._programs.ordered()

    def _make_program(self, target: WrappedTarget) -> WrappedProgram:
        return WrappedProgram(self._reactor, target, on_exit=self.program_exited,
                              on_listening=self._program_listening,
                              on_changed=self._program_listening,
                              supervisor=self.process_supervisor)

    # -- starting ------------------------------------------------------------------------

    def add_listener(self, description: str) -> ListenerService:
        """Open C{description} for the workers (held, never accepted on here)."""
        listener = ListenerService(self._reactor, description, _Unused())
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners.append(listener)
        if self.running:
            self._hold(listener)
        return listener

    def _hold(self, listener: ListenerService) -> None:
        """Keep the socket open for the workers, but never accept on it here."""
        if listener.port is not None:
            listener.port.stopReading()  # type: ignore[attr-defined]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for listener in self.listeners:
            self._hold(listener)
            log.info("listening on {listener} (shared by {count} workers)", listener=listener.description,
                     count=len(self.workers))
        for route in self.config.routes:
            log.info("route {route} -> {target}", route=route.describe(), target=describe_targets(route))
        if self.raised is not None:
            log.info("{limit}, for each worker", limit=self.raised.describe())
        start_programs(self.programs)
        if self.listeners:
            self._start_workers()

    def _start_workers(self) -> None:
        for worker in self.workers:
            if not worker.child.running and not worker.child.restart_pending:
                worker.child.start_or_retry()

    def setup_for(self, index: int) -> bytes:
        """The set-up line for worker C{index} starting now."""
        return setup_message(index, self.config, len(self.ports()), self._program_states())

    def _program_states(self) -> list[ProgramState]:
        return [(program.address, program.gone_reason()) for program in self._numbered]

    def ports(self) -> list[IListeningPort]:
        """The listening ports, in configuration order (then the followed program's)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

    # -- wrapped programs ----------------------------------------------------------------

    def _program_listening(self, program: WrappedProgram) -> None:
        """Tell every worker where the program listens now; follow its port if so configured."""
        if program not in self._numbered:
            return  # new: its state goes out with the reload; or gone: nobody asks
        index = self._numbered.index(program)
        for worker in self.workers:
            worker.send(address_message(index, (program.address, program.gone_reason())))
        if program.address is not None and follow_program_port(self, program):
            self._start_workers()

    def program_exited(self, status: int) -> None:
        """An C{exit}-mode program exited with C{status}: the router should exit with it."""
        self.exit_status = status
        if self.on_program_exit is not None:
            self.on_program_exit(status)

    # -- reloading -----------------------------------------------------------------------------

    def reload(self, config: RouterConfig) -> Deferred[None]:
        """
        Serve C{config} from now on: wrapped programs are brought to it by
        difference (see L{ProgramSet}), then every worker gets the new
        configuration over its control socket and switches its gateway,
        keeping its open sessions.  A change of listeners restarts the
        workers one by one on the new set (each closing its sessions with
        1001, as on stop).  The number of workers is not changed.  Fires
        once every worker confirmed (or L{RELOAD_TIMEOUT} passed).

        @raise CannotStart: (as a failure) a new wrapped program cannot run,
            or a new listener cannot be opened (L{CannotListen}); the rest
            of the configuration is in force.
        """
        return ensureDeferred(self._reload(config))

    async def _reload(self, config: RouterConfig) -> None:
        added = await self._programs.change_to(wrapped_targets(config))
        listeners_changed = (list(config.listeners) != list(self.config.listeners)
                             or config.proxies.proxy_protocol != self.config.proxies.proxy_protocol)
        self.config = config
        log.info("reloading: {routes} routes, {programs} wrapped programs, for {count} workers",
                 routes=len(config.routes), programs=len(config.programs), count=len(self.workers))
        try:
            start_programs(added)
        except CannotStart as e:
            log.error("reload incomplete, the rest is in force: {error}", error=e)
            raise
        finally:
            self._numbered = self._programs.ordered()
            message = reload_message(config, self._program_states())
            await self._all_applied([worker.send_reload(message) for worker in self.workers])
            if listeners_changed:
                await self._change_listeners(config)

    async def _all_applied(self, applying: list[Deferred[None]]) -> None:
        """Wait until every worker applied a reload, at most L{RELOAD_TIMEOUT} seconds."""
        done: Deferred[None] = Deferred()

        def finish(_: object = None) -> None:
            if not done.called:
                done.callback(None)

        def late() -> None:
            log.warn("not every worker confirmed the reload within {timeout:g} s", timeout=RELOAD_TIMEOUT)
            finish()

        timer = self._reactor.callLater(RELOAD_TIMEOUT, late)
        DeferredList(applying).addCallback(finish)
        await done
        if timer.active():
            timer.cancel()

    async def _change_listeners(self, config: RouterConfig) -> None:
        wanted = list(config.listeners)
        for listener in list(self.listeners):
            if listener.description not in wanted:
                self.listeners.remove(listener)
                await listener.disownServiceParent()  # type: ignore[no-untyped-call]
        have = {listener.description for listener in self.listeners}
        problems = []
        for description in wanted:
            if description not in have:
                try:
                    self.add_listener(description)
                except CannotListen as e:
                    problems.append(str(e))
        self.listeners.sort(key=lambda listener: wanted.index(listener.description))
        grace = config.limits.shutdown_grace + KILL_GRACE
        for worker in self.workers:
            if self._stopping:
                break
            await worker.child.stop(grace)
            if not self._stopping:
                worker.child.start_or_retry()
        if problems:
            log.error("reload incomplete, the rest is in force: {problems}", problems="; ".join(problems))
            raise CannotListen("; ".join(problems))

    # -- stopping ----------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        grace = self.config.limits.shutdown_grace + KILL_GRACE
        await DeferredList([worker.child.stop(grace) for worker in self.workers])
        await self._programs.stop_all()
        await super().stopService()  # type: ignore[no-untyped-call]


def build_supervisor(config: RouterConfig, reactor: Any = None) -> WorkerSupervisor:
    """The supervisor of C{config.workers} router processes (for C{config.workers} > 1)."""
    if reactor is None:
        from twisted.internet import reactor
    return WorkerSupervisor(config, reactor)
