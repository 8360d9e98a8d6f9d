"""
Supervision of wrapped programs: TCP servers the router starts once, under
the rebind shim, and proxies to.

Each program runs in its own session (so its whole process group can be
signalled) with the shim preloaded.  The shim moves the port the program
binds to a loopback port chosen by the kernel and reports the real address
on an inherited pipe (child fd 3); the router connects there.

Supervision follows L{twisted.runner.procmon}: a program that dies soon
after starting is restarted after a delay that doubles each time, and
stopping sends SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import WrappedTarget
from wsrouter.interfaces import TargetError
from wsrouter.rebind import parse_report_line, shim_environment

log = Logger(namespace="wsrouter.wrap")

#: The child's fd on which the shim reports where it moved the program.
REPORT_FD = 3
#: Prefix under which the trampoline receives the variables it must set
#: only after it has started, so the shim is not loaded into it.
_DEFER_PREFIX = "WSROUTER_SPAWN_"
#: Runs first in the child: leave the router's process group, put the
#: shim's variables in place, then become the program.
_TRAMPOLINE = f"""
import os, sys
os.setsid()
for key in [k for k in os.environ if k.startswith({_DEFER_PREFIX!r})]:
    os.environ[key[{len(_DEFER_PREFIX)}:]] = os.environ.pop(key)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    sys.stderr.write("cannot run %s: %s\\n" % (sys.argv[1], e.strerror))
    os._exit(127)
"""

MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
#: A program that ran at least this long is not restarted with a delay.
STABLE_AFTER = 10.0
KILL_GRACE = 5.0
GROUP_POLL_INTERVAL = 0.05


def spawn_arguments(argv: tuple[str, ...]) -> list[str]:
    """The command line that starts C{argv} in a session of its own."""
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, *argv]


def deferred_environment(env: Mapping[str, str], deferred: Mapping[str, str]) -> dict[str, str]:
    """
    C{env} plus C{deferred}, whose variables the trampoline sets just
    before it runs the program (so the shim is preloaded there, not into
    the trampoline, which would remove it again).
    """
    result = dict(env)
    for key, value in deferred.items():
        result[_DEFER_PREFIX + key] = value
    return result


class AddressWaiters:
    """
    Clients waiting (bounded) for a program's address: each gets it when it
    is known, or a 503 L{TargetError} saying why when its time is up.
    """

    def __init__(self, clock: Any):
        self._clock = clock
        self._waiting: list[Deferred[tuple[str, int]]] = []

    def wait(self, timeout: float, why: Callable[[], str]) -> Deferred[tuple[str, int]]:
        """@param why: says, when the time is up, what the program is doing."""
        waiter: Deferred[tuple[str, int]] = Deferred()
        self._waiting.append(waiter)

        def expire() -> None:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                waiter.errback(TargetError(f"{why()} (waited {timeout:g} s)", 503))

        timer = self._clock.callLater(timeout, expire)
        waiter.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return waiter

    def ready(self, address: tuple[str, int]) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(address)

    def fail(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(TargetError(reason, 503))


class ProgramNotFound(Exception):
    """A wrapped program cannot be run; the message says which."""


class _ProgramProtocol(ProcessProtocol):
    """Relays one run's output to the log and its shim reports to the program."""

    def __init__(self, program: WrappedProgram):
        self._program = program
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._partial.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[fd] = rest[-4096:]
        for line in lines:
            if fd == REPORT_FD:
                self._program._report(line)
            else:
                self._program._output(fd, line)

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: a daemonized grandchild may hold the pipes open
        # for as long as it runs.
        self._program._ended(reason)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest and fd != REPORT_FD:
                self._program._output(fd, rest)


class WrappedProgram:
    """
    One wrapped program and its supervision.

    @ivar address: where the program listens now, C{(host, port)}, or
        C{None} while it is not (yet) listening.
    @ivar requested_port: the port the program asked for, once known.
    """

    def __init__(self, reactor: Any, target: WrappedTarget, *, name: str | None = None,
                 environ: Mapping[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None,
                 on_listening: Callable[[WrappedProgram], None] | None = None,
                 on_stopped_listening: Callable[[WrappedProgram], None] | None = None,
                 shim: str | None = None):
        self._reactor = reactor
        self.target = target
        self.name = name or os.path.basename(target.argv[0])
        base = dict(os.environ if environ is None else environ)
        self._base_env = {k: v for k, v in base.items() if not k.startswith("WSROUTER_")}
        self._on_exit = on_exit
        self._on_listening = on_listening
        self._on_stopped_listening = on_stopped_listening
        self._shim = shim
        self.address: tuple[str, int] | None = None
        self.requested_port: int | None = None
        self.pid: int | None = None
        self.restarts = 0
        self._process: Any = None
        self._started_at = 0.0
        self._delay = MIN_RESTART_DELAY
        self._restart_call: IDelayedCall | None = None
        self._waiters = AddressWaiters(reactor)
        self._stopping = False

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        """
        Start the program.

        @raise ProgramNotFound: the program is not on C{PATH} or not executable.
        @raise ShimUnavailable: the rebind shim cannot be found or built.
        """
        program = self.target.argv[0]
        if shutil.which(program, path=self._base_env.get("PATH", os.defpath)) is None:
            raise ProgramNotFound(f"wrapped program {program!r} not found or not executable (PATH is searched)")
        preload = {k: v for k, v in self._base_env.items() if k == "LD_PRELOAD"}
        shim_env = shim_environment(self.target.ports, REPORT_FD, self.target.keep_env,
                                    base_env=preload, shim=self._shim)
        full_env = deferred_environment(self._base_env, shim_env)
        self._started_at = self._reactor.seconds()
        self._process = self._reactor.spawnProcess(
            _ProgramProtocol(self), sys.executable, spawn_arguments(self.target.argv),
            env=full_env, childFDs={0: "w", 1: "r", 2: "r", REPORT_FD: "r"},
        )
        self.pid = self._process.pid
        log.info("started {name} (pid {pid}, {mode} mode): {command}", name=self.name, pid=self.pid,
                 mode=self.target.mode, command=shlex.join(self.target.argv))

    @property
    def running(self) -> bool:
        return self._process is not None

    def when_ready(self, timeout: float) -> Deferred[tuple[str, int]]:
        """
        Fires with the program's address once it listens; fails with a 503
        L{TargetError} if that takes longer than C{timeout} seconds.
        """
        if self.address is not None:
            return succeed(self.address)

        def why() -> str:
            state = "is restarting" if self._restart_call else "has not bound its port"
            return f"wrapped program {self.name} {state}"

        return self._waiters.wait(timeout, why)

    def stop(self, grace: float = KILL_GRACE) -> Deferred[None]:
        """SIGTERM the program's process group, SIGKILL after C{grace}; fires once reaped."""
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        self._waiters.fail("router is shutting down")
        if self.pid is None or not self._signal_group(signal.SIGTERM):
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._poll_group(gone, self._reactor.seconds() + grace, killed=False)
        return gone

    def _poll_group(self, gone: Deferred[None], deadline: float, killed: bool) -> None:
        """
        Wait until the process group is empty: the program is reaped by
        Twisted, daemonized members by init, so their absence is polled.
        """
        if self._process is None and not self._signal_group(0):
            gone.callback(None)
            return
        if self._reactor.seconds() >= deadline:
            if killed:
                log.error("{name}: process group {pid} survived SIGKILL; giving up", name=self.name, pid=self.pid)
                gone.callback(None)
                return
            log.warn("{name} did not stop within the grace period; sending SIGKILL", name=self.name)
            self._signal_group(signal.SIGKILL)
            deadline, killed = self._reactor.seconds() + KILL_GRACE, True
        self._reactor.callLater(GROUP_POLL_INTERVAL, self._poll_group, gone, deadline, killed)

    def _signal_group(self, signum: int) -> bool:
        """Signal the program's process group; C{False} if it has no members left."""
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            log.warn("cannot signal {name}'s process group {pid}", name=self.name, pid=self.pid)
            return False
        return True

    # -- what the child tells us ------------------------------------------------------

    def _report(self, line: bytes) -> None:
        report = parse_report_line(line)
        if report is None:
            log.warn("{name}: unreadable report from the rebind shim: {line!r}", name=self.name, line=line)
            return
        if report.error is not None:
            log.error("{name}: binding port {port} failed: {error}", name=self.name,
                      port=report.requested_port, error=report.error)
            return
        if report.host is None or report.port is None:
            return
        if self.address is not None:
            return  # the first port a run binds is the one proxied (IPv4 before IPv6, say)
        self.requested_port = report.requested_port
        self.address = (report.host, report.port)
        log.info("{name} asked for port {requested}; listening on {host}:{port} instead",
                 name=self.name, requested=report.requested_port, host=report.host, port=report.port)
        self._waiters.ready(self.address)
        if self._on_listening is not None:
            self._on_listening(self)

    def _output(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")[:2000]
        if fd == 2:
            log.warn("[{name}] {line}", name=self.name, line=text)
        else:
            log.info("[{name}] {line}", name=self.name, line=text)

    def _ended(self, reason: Failure) -> None:
        status = _exit_status(reason)
        ran = self._reactor.seconds() - self._started_at
        self._process = None
        mode = self.target.mode
        if mode != "ignore" and self.address is not None:
            self.address = None
            if self._on_stopped_listening is not None:
                self._on_stopped_listening(self)
        if self._stopping:
            log.info("{name} stopped ({status})", name=self.name, status=_describe_status(reason))
            return
        if mode == "exit":
            log.info("{name} exited ({status}); the router exits too", name=self.name,
                     status=_describe_status(reason))
            self._waiters.fail(f"wrapped program {self.name} exited")
            if self._on_exit is not None:
                self._on_exit(status)
        elif mode == "ignore":
            log.info("{name} exited ({status}); ignored, as it may have daemonized", name=self.name,
                     status=_describe_status(reason))
        else:
            self._schedule_restart(reason, ran)

    def _schedule_restart(self, reason: Failure, ran: float) -> None:
        if ran >= STABLE_AFTER:
            self._delay = MIN_RESTART_DELAY
            delay = 0.0
        else:
            delay = self._delay
            self._delay = min(self._delay * 2, MAX_RESTART_DELAY)
        log.info(
            "{name} exited ({status}) after {ran:.1f} s; restarting in {delay:g} s",
            name=self.name, status=_describe_status(reason), ran=ran, delay=delay,
        )
        self._restart_call = self._reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        self.restarts += 1
        try:
            self.start()
        except Exception as e:  # the shim vanished, fork failed: say so, keep trying
            log.error("cannot restart {name}: {error}", name=self.name, error=e)
            self._restart_call = self._reactor.callLater(self._delay, self._restart)



def _exit_status(reason: Failure) -> int:
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.exitCode is not None:
            return int(value.exitCode)
        if value.signal is not None:
            return 128 + int(value.signal)
    return 1


def _describe_status(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"killed by signal {value.signal}"
    return f"status {_exit_status(reason)}"
