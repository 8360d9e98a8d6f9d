"""
The one process supervisor, in the spirit of L{twisted.runner.procmon}:
it serves both wrapped programs and C{--workers} router processes.

  - B{Restart backoff}: a child that dies young (ran less than
    L{STABLE_AFTER} seconds) is restarted after a delay that starts at
    L{MIN_RESTART_DELAY} and doubles up to L{MAX_RESTART_DELAY}; one that
    ran longer is restarted at once and its delay is reset.
  - B{Stopping}: SIGTERM to the child's process group (or to the child, if
    it has no group of its own yet), SIGKILL after a grace period; the
    returned Deferred fires once the child is reaped and its group empty.
  - B{Output}: each line a child writes is handed to its owner, who by
    default logs it prefixed with the child's name.
  - B{Seams}: the reactor (clock) is injected, and so are spawning and
    group signalling, so the whole policy runs under test on a fake clock.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import DEFAULT_PROGRAM_KILL_GRACE

log = Logger(namespace="wsrouter.process")

MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A child that ran at least this long is restarted at once.
STABLE_AFTER = 10.0
#: Between SIGTERM and SIGKILL, and after SIGKILL how long to wait for the
#: group to empty before giving up (the default lives in the config model).
KILL_GRACE = DEFAULT_PROGRAM_KILL_GRACE
#: How often an emptying process group is polled while stopping.
GROUP_POLL_INTERVAL = 0.05
#: The longest partial output line kept while waiting for its end.
MAX_PARTIAL_LINE = 65536


def restart_delay(ran: float, previous: float) -> tuple[float, float]:
    """
    How long to wait before restarting a child that ran C{ran} seconds,
    and the delay to use next time: at once after a stable run, else
    doubling from L{MIN_RESTART_DELAY} to L{MAX_RESTART_DELAY}.
    """
    if ran >= STABLE_AFTER:
        return 0.0, MIN_RESTART_DELAY
    return previous, min(previous * 2, MAX_RESTART_DELAY)


@attrs.frozen
class ExitStatus:
    """How a child ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_reason(cls, reason: Failure) -> ExitStatus:
        value = reason.value
        if isinstance(value, ProcessDone):
            return cls(code=0)
        if isinstance(value, ProcessTerminated):
            if value.signal is not None:
                return cls(signal=int(value.signal))
            if value.exitCode is not None:
                return cls(code=int(value.exitCode))
        return cls(code=1)

    @property
    def shell_status(self) -> int:
        """The status a shell would report: the exit code, or 128 + the signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 1

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with status {self.code}"


@attrs.frozen
class Launch:
    """
    What to run for one start of a child.  C{child_fds} as for
    C{spawnProcess}; C{after} runs once the spawn was attempted (to close
    the parent's copies of descriptors handed over).
    """

    executable: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    child_fds: Mapping[int, Any]
    after: Callable[[], None] | None = None


class Timer(Protocol):
    """What the supervisor uses of a delayed call (L{IDelayedCall})."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Spawner(Protocol):
    """The spawning seam: C{reactor.spawnProcess} in production."""

    def __call__(self, protocol: ProcessProtocol, executable: str, args: list[str], env: dict[str, str],
                 child_fds: dict[int, Any]) -> Any: ...


class GroupSignaller(Protocol):
    """Signals the process group led by C{pid}; C{False} if the group has no members (signal 0 probes)."""

    def __call__(self, pid: int, signum: int) -> bool: ...


def signal_group(pid: int, signum: int) -> bool:
    """L{GroupSignaller} on the real system."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warn("cannot signal process group {pid}", pid=pid)
        return False
    return True


class ChildOwner:
    """
    What a supervised child's owner learns.  The defaults log; owners
    override what they need.
    """

    def child_started(self, child: Child) -> None:
        """The child runs (C{child.pid} is set)."""

    def child_line(self, child: Child, fd: int, line: bytes) -> None:
        """One line of the child's output (without its newline)."""
        log_output(child.name, fd, line)

    def child_exited(self, child: Child, status: ExitStatus) -> None:
        """The child exited; C{child.restart_pending} says whether a restart is scheduled."""

    def child_spawn_failed(self, child: Child, error: Exception) -> None:
        """Spawning failed (the launch's C{after} has run)."""


def log_output(name: str, fd: int, line: bytes) -> None:
    """Log a child's output line prefixed with its name: stderr as warnings, the rest as info."""
    text = line.decode("utf-8", "replace").rstrip("\r")[:2000]
    if fd == 2:
        log.warn("[{name}] {line}", name=name, line=text)
    else:
        log.info("[{name}] {line}", name=name, line=text)


class _ChildProtocol(ProcessProtocol):
    """Splits one run's output into lines for the owner and reports its exit."""

    def __init__(self, child: Child):
        self._child = child
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = rest[-MAX_PARTIAL_LINE:]
        for line in lines:
            self._child.owner.child_line(self._child, fd, line)

    def _flush(self) -> None:
        partial, self._partial = self._partial, {}
        for fd, rest in partial.items():
            if rest:
                self._child.owner.child_line(self._child, fd, rest)

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: a daemonized grandchild may hold the pipes open
        # for as long as it runs.
        self._flush()
        self._child._exited(self, ExitStatus.from_reason(reason))

    def processEnded(self, reason: Failure) -> None:
        self._flush()


class Child:
    """
    One supervised child slot: its current process, if any, and its
    restart state.  Made by L{Supervisor.add}.

    @ivar restart: whether the child is restarted when it exits on its own.
    @ivar restart_pending: a restart is scheduled.
    @ivar exited: fires when the current run is reaped.
    """

    def __init__(self, supervisor: Supervisor, name: str, launch: Callable[[], Launch], owner: ChildOwner,
                 restart: bool):
        self.name = name
        self.owner = owner
        self.restart = restart
        self.pid: int | None = None
        self.restarts = 0
        self.stopping = False
        self.last_status: ExitStatus | None = None
        self.exited: Deferred[None] = succeed(None)
        self._supervisor = supervisor
        self._launch = launch
        self._process: Any = None
        self._protocol: _ChildProtocol | None = None
        self._started_at = 0.0
        self._delay = MIN_RESTART_DELAY
        self._restart_call: Timer | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def restart_pending(self) -> bool:
        return self._restart_call is not None and self._restart_call.active()

    @property
    def next_delay(self) -> float:
        """The delay the next restart after a young death will wait."""
        return self._delay

    def start(self) -> None:
        """
        Start a run now.

        @raise OSError: spawning failed (the caller decides what that means).
        """
        self.stopping = False
        self._cancel_restart()
        launch = self._launch()
        protocol = _ChildProtocol(self)
        try:
            process = self._supervisor.spawner(protocol, launch.executable, list(launch.args), dict(launch.env),
                                               dict(launch.child_fds))
        except Exception as e:
            if launch.after is not None:
                launch.after()
            self.owner.child_spawn_failed(self, e)
            raise
        if launch.after is not None:
            launch.after()
        self._process, self._protocol = process, protocol
        self.pid = int(process.pid)
        self._started_at = self._supervisor.clock.seconds()
        self.exited = Deferred()
        self.owner.child_started(self)

    def signal(self, signum: int) -> bool:
        """Signal the child's process group, or the child alone if it leads none yet."""
        if self.pid is None:
            return False
        if self._supervisor.signal_group(self.pid, signum):
            return True
        if self._process is None:
            return False
        try:
            self._process.signalProcess(signum)
        except (ProcessExitedAlready, OSError):
            return False
        return True

    def stop(self, grace: float) -> Deferred[None]:
        """SIGTERM, then SIGKILL after C{grace} seconds; fires once the child is reaped and its group empty."""
        self.stopping = True
        self._cancel_restart()
        if self.pid is None or not self.signal(signal.SIGTERM):
            return self.exited if self._process is not None else succeed(None)
        gone: Deferred[None] = Deferred()
        self._poll(gone, self._supervisor.clock.seconds() + grace, killed=False)
        return gone

    def _poll(self, gone: Deferred[None], deadline: float, killed: bool) -> None:
        """
        Wait until the group is empty: the child is reaped by Twisted,
        daemonized members by init, so their absence is polled.
        """
        clock = self._supervisor.clock
        if self._process is None and (self.pid is None or not self._supervisor.signal_group(self.pid, 0)):
            gone.callback(None)
            return
        if clock.seconds() >= deadline:
            if killed:
                log.error("{name}: process group {pid} survived SIGKILL; giving up", name=self.name, pid=self.pid)
                gone.callback(None)
                return
            log.warn("{name} did not stop within the grace period; sending SIGKILL", name=self.name)
            self.signal(signal.SIGKILL)
            deadline, killed = clock.seconds() + KILL_GRACE, True
        clock.callLater(GROUP_POLL_INTERVAL, self._poll, gone, deadline, killed)

    def _cancel_restart(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None

    def _exited(self, protocol: _ChildProtocol, status: ExitStatus) -> None:
        if protocol is not self._protocol:
            return
        ran = self._supervisor.clock.seconds() - self._started_at
        self._process = self._protocol = None
        self.last_status = status
        if self.stopping:
            log.info("{name} (pid {pid}) stopped ({status})", name=self.name, pid=self.pid, status=status.describe())
        elif self.restart:
            delay, self._delay = restart_delay(ran, self._delay)
            log.info("{name} (pid {pid}) {status} after {ran:.1f} s; restarting in {delay:g} s", name=self.name,
                     pid=self.pid, status=status.describe(), ran=ran, delay=delay)
            self._restart_call = self._supervisor.clock.callLater(delay, self._restart)
        exited = self.exited
        self.owner.child_exited(self, status)
        if not exited.called:
            exited.callback(None)

    def start_or_retry(self) -> None:
        """Start now; if that fails, log why and try again after the backoff delay (for restarts)."""
        try:
            self.start()
        except Exception as e:  # the program vanished, fork failed: say so, keep trying
            delay, self._delay = restart_delay(0.0, self._delay)
            log.error("cannot start {name}: {error}; trying again in {delay:g} s", name=self.name, error=e,
                      delay=delay)
            if not self.stopping:
                self._restart_call = self._supervisor.clock.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        self.restarts += 1
        self.start_or_retry()


class Supervisor:
    """
    Makes L{Child} slots that share one clock, spawner and group
    signaller.  C{spawner} defaults to C{reactor.spawnProcess}.
    """

    def __init__(self, reactor: Any, *, spawner: Spawner | None = None,
                 signaller: GroupSignaller | None = None):
        self.clock = reactor
        self.spawner: Spawner = spawner or _reactor_spawner(reactor)
        self.signal_group: GroupSignaller = signaller or signal_group

    def add(self, name: str, launch: Callable[[], Launch], owner: ChildOwner, *, restart: bool) -> Child:
        """A child slot, not started yet."""
        return Child(self, name, launch, owner, restart)


def _reactor_spawner(reactor: Any) -> Spawner:
    def spawn(protocol: ProcessProtocol, executable: str, args: list[str], env: dict[str, str],
              child_fds: dict[int, Any]) -> Any:
        return reactor.spawnProcess(protocol, executable, args, env=env, childFDs=child_fds)

    return spawn
