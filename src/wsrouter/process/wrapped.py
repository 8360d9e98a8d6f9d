"""
Supervision of wrapped programs: TCP servers the router starts once, under
the rebind shim, and proxies to.

Each program runs in its own session (so its whole process group can be
signalled) with the shim preloaded.  The shim moves the socket the program
binds to a Unix socket in a private directory (socket = "private", the
default: no other local user can connect past the router) or to a loopback
port chosen by the kernel (socket = "loopback"), and reports where on an
inherited pipe (child fd 3); the router connects there.

A program's address is C{(host, port)} for a loopback port and
C{(path, 0)} for a Unix socket (the path is absolute, so it never looks
like a host); L{wsrouter.targets.wrapped} connects to either.

Supervision is L{wsrouter.process.supervisor}'s (restart backoff, SIGTERM
then SIGKILL to the group); this module adds what is particular to wrapped
programs: the shim's environment and reports, the modes, and clients
waiting for the address.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger

from wsrouter.config import RouterConfig, WrappedTarget
from wsrouter.interfaces import TargetError
from wsrouter.process.sandbox import (
    CHILD_ENVIRONMENT,
    SandboxError,
    allowed_environment,
    limit_hint,
    sandbox_command,
    share_directory,
)
from wsrouter.process.supervisor import KILL_GRACE, Child, ChildOwner, ExitStatus, Launch, Supervisor, log_output
from wsrouter.rebind import ShimReport, parse_report_line, shim_environment
from wsrouter.rebind.private import clear_sockets, make_private_dir, remove_private_dir

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
prefix = {_DEFER_PREFIX!r}
{CHILD_ENVIRONMENT}
try:
    os.execvpe(sys.argv[1], sys.argv[1:], env)
except OSError as e:
    sys.stderr.write("cannot run %s: %s\\n" % (sys.argv[1], e.strerror))
    os._exit(127)
"""


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

    def fail(self, reason: str, status: int = 503) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(TargetError(reason, status))


class ProgramNotFound(Exception):
    """A wrapped program cannot be run; the message says which."""


class WrappedProgram(ChildOwner):
    """
    One wrapped program, supervised by a L{Supervisor} child.

    C{on_listening} is called once a run listens; C{on_changed} when a run
    ends (its address may be gone, and L{gone_reason} may say why).

    @ivar address: where the program listens now, C{(host, port)}, or
        C{None} while it is not (yet) listening.
    @ivar requested_port: the port the program asked for, once known.
    """

    def __init__(self, reactor: Any, target: WrappedTarget, *, name: str | None = None,
                 environ: Mapping[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None,
                 on_listening: Callable[[WrappedProgram], None] | None = None,
                 on_changed: Callable[[WrappedProgram], None] | None = None,
                 shim: str | None = None, supervisor: Supervisor | None = None):
        self._reactor = reactor
        self.target = target
        self.name = name or target.name  # the config names every program, inline ones too
        base = dict(os.environ if environ is None else environ)
        self._base_env = {k: v for k, v in base.items() if not k.startswith("WSROUTER_")}
        self._on_exit = on_exit
        self._on_listening = on_listening
        self._on_changed = on_changed
        self._shim = shim
        self.address: tuple[str, int] | None = None
        self.requested_port: int | None = None
        #: The private socket directory while the program may use it (private mode).
        self.private_dir: str | None = None
        self._waiters = AddressWaiters(reactor)
        supervisor = supervisor or Supervisor(reactor)
        self._child = supervisor.add(self.name, self._launch, self, restart=target.mode == "respawn")

    # -- running ----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def restarts(self) -> int:
        return self._child.restarts

    @property
    def running(self) -> bool:
        return self._child.running

    def start(self) -> None:
        """
        Start the program.

        @raise ProgramNotFound: the program is not on C{PATH} or not executable.
        @raise ShimUnavailable: the rebind shim cannot be found or built.
        @raise PrivateDirError: no private socket directory can be made.
        """
        self._child.start()

    def _command(self) -> tuple[str, ...]:
        """The program's command line (an instance fills in its template)."""
        return self.target.argv

    def _launch(self) -> Launch:
        command, sandbox = self._command(), self.target.sandbox
        program = command[0]
        base_env = allowed_environment(self._base_env, sandbox)
        if shutil.which(program, path=base_env.get("PATH", os.defpath)) is None:
            raise ProgramNotFound(f"wrapped program {program!r} not found or not executable (PATH is searched)")
        preload = {k: v for k, v in base_env.items() if k == "LD_PRELOAD"}
        if self.target.socket == "private":
            if self.private_dir is None or not os.path.isdir(self.private_dir):
                self.private_dir = make_private_dir(self.name)
            clear_sockets(self.private_dir)
        try:
            shim_env = shim_environment(self.target.ports, REPORT_FD, self.target.keep_env, base_env=preload,
                                        shim=self._shim, private_dir=self.private_dir, protocol=self.target.protocol)
            if sandbox is None:
                argv = spawn_arguments(command)
            else:
                if self.private_dir is not None:
                    share_directory(self.private_dir, sandbox)
                argv = sandbox_command(sandbox, command, defer_prefix=_DEFER_PREFIX)
        except Exception as e:
            self._remove_private_dir(None)  # nothing runs to use it (a failed start must not leave it behind)
            if isinstance(e, (SandboxError, OSError)):
                raise ProgramNotFound(f"wrapped program {self.name}: {e}") from None
            raise
        return Launch(sys.executable, tuple(argv), deferred_environment(base_env, shim_env),
                      {0: "w", 1: "r", 2: "r", REPORT_FD: "r"})

    def child_spawn_failed(self, child: Child, error: Exception) -> None:
        self._remove_private_dir(None)  # made for a run that never came

    def child_started(self, child: Child) -> None:
        log.info("started {name} (pid {pid}, {mode} mode): {command}", name=self.name, pid=child.pid,
                 mode=self.target.mode, command=shlex.join(self.target.argv))

    def gone_reason(self) -> str | None:
        """
        Why no client can be served now or later without a new start: the
        program exited and no restart is coming.  C{None} while it runs or
        a restart is scheduled.
        """
        child = self._child
        if child.running or child.restart_pending or child.last_status is None:
            return None
        if child.stopping:
            return f"wrapped program {self.name} was stopped"
        return (f"wrapped program {self.name} {child.last_status.describe()} and is not restarted"
                f" (mode {self.target.mode})")

    def when_ready(self, timeout: float) -> Deferred[tuple[str, int]]:
        """
        Fires with the program's address once it listens; fails with a 503
        L{TargetError} if that takes longer than C{timeout} seconds, or at
        once with a 502 one if the program is gone for good.
        """
        if self.address is not None:
            return succeed(self.address)
        gone = self.gone_reason()
        if gone is not None:
            return fail(TargetError(gone, 502))

        def why() -> str:
            state = "is restarting" if self._child.restart_pending else "has not bound its port"
            return f"wrapped program {self.name} {state}"

        return self._waiters.wait(timeout, why)

    def stop(self, grace: float = KILL_GRACE) -> Deferred[None]:
        """
        SIGTERM the program's process group, SIGKILL after C{grace}; fires
        once reaped and its private socket directory is removed.
        """
        self._waiters.fail(f"wrapped program {self.name} is stopping")
        return self._child.stop(grace).addCallback(self._remove_private_dir)

    def _remove_private_dir(self, result: None) -> None:
        if self.private_dir is not None:
            remove_private_dir(self.private_dir)
            self.private_dir = None
        return result

    # -- what the child tells us ------------------------------------------------------

    def child_line(self, child: Child, fd: int, line: bytes) -> None:
        if fd == REPORT_FD:
            self._report(line)
        else:
            log_output(self.name, fd, line)

    def _report(self, line: bytes) -> None:
        report = parse_report_line(line)
        if report is None:
            log.warn("{name}: unreadable report from the rebind shim: {line!r}", name=self.name, line=line)
            return
        if report.error is not None:
            log.error("{name}: binding port {port} failed: {error}", name=self.name,
                      port=report.requested_port, error=report.error)
            return
        address = self._address_of(report, line)
        if address is None:
            return
        if self.address is not None:
            return  # the first port a run binds is the one proxied (IPv4 before IPv6, say)
        self.requested_port = report.requested_port
        self.address = address
        where = f"{address[0]}:{address[1]}" if address[1] else f"the private socket {address[0]}"
        log.info("{name} asked for port {requested}; listening on {where} instead",
                 name=self.name, requested=report.requested_port, where=where)
        self._waiters.ready(self.address)
        if self._on_listening is not None:
            self._on_listening(self)

    def _address_of(self, report: ShimReport, line: bytes) -> tuple[str, int] | None:
        """
        The address a report gives, if it is one this program may use: a
        Unix socket only directly inside its own private directory (a
        program in keep mode could name any path), a port only in loopback
        mode.
        """
        if report.path is not None:
            if self.private_dir is not None and os.path.dirname(report.path) == self.private_dir:
                return (report.path, 0)
        elif report.host is not None and report.port is not None and self.private_dir is None:
            return (report.host, report.port)
        log.warn("{name}: the rebind shim reported an address outside this program's {socket} mode: {line!r}",
                 name=self.name, socket=self.target.socket, line=line)
        return None

    def child_exited(self, child: Child, status: ExitStatus) -> None:
        if not child.stopping and (hint := limit_hint(self.target.sandbox, status.code, status.signal)):
            log.warn("{name} {status}: {hint}", name=self.name, status=status.describe(), hint=hint)
        mode = self.target.mode
        if mode != "ignore":
            self.address = None
            if self.private_dir is not None:
                clear_sockets(self.private_dir)
        if self._on_changed is not None:
            self._on_changed(self)
        if child.stopping:
            return
        if mode == "exit":
            log.info("{name} {status}; the router exits too", name=self.name, status=status.describe())
            self._waiters.fail(f"wrapped program {self.name} exited")
            if self._on_exit is not None:
                self._on_exit(status.shell_status)
        elif mode == "ignore":
            log.info("{name} {status}; ignored, as it may have daemonized", name=self.name,
                     status=status.describe())
            if self.address is None:
                self._waiters.fail(self.gone_reason() or f"wrapped program {self.name} exited", 502)


def wrapped_targets(config: RouterConfig) -> list[WrappedTarget]:
    """The wrapped programs to run (C{config.programs}); their index is their number for workers."""
    return list(config.programs)


class ProgramSet:
    """
    The wrapped programs of a configuration, kept by target, and brought
    to another configuration's by difference: an equal target keeps its
    running program; a removed one is stopped; a new (or changed) one is
    made, to be started by the caller.
    """

    def __init__(self, make: Callable[[WrappedTarget], WrappedProgram]):
        self._make = make
        #: The current programs by target; connectors hold this very mapping.
        self.by_target: dict[WrappedTarget, WrappedProgram] = {}

    def ordered(self) -> list[WrappedProgram]:
        return list(self.by_target.values())

    def add(self, targets: list[WrappedTarget]) -> list[WrappedProgram]:
        """Make the programs of C{targets} not there yet (not started); the new ones."""
        added = []
        for target in targets:
            if target not in self.by_target:
                self.by_target[target] = program = self._make(target)
                added.append(program)
        return added

    def remove_others(self, targets: list[WrappedTarget], grace: float = KILL_GRACE) -> Deferred[None]:
        """Forget and stop every program whose target is not in C{targets}; fires when they are gone."""
        removed = [program for target, program in self.by_target.items() if target not in targets]
        for program in removed:
            del self.by_target[program.target]
            log.info("stopping {name}: no longer configured", name=program.name)
        stopped = DeferredList([program.stop(grace) for program in removed])
        return stopped.addCallback(lambda _: None)

    def reorder(self, targets: list[WrappedTarget]) -> None:
        """Keep the mapping in C{targets}' order (the numbering workers see)."""
        current = dict(self.by_target)
        self.by_target.clear()
        for target in targets:
            if target in current:
                self.by_target[target] = current[target]

    async def change_to(self, targets: list[WrappedTarget]) -> list[WrappedProgram]:
        """
        Bring the set to C{targets} (a reload): stop the programs no longer
        wanted, make the new ones (not started) and keep C{targets}' order;
        an unchanged program is left running.  Returns the new programs.
        """
        await self.remove_others(targets)
        added = self.add(targets)
        self.reorder(targets)
        return added

    def stop_all(self, grace: float = KILL_GRACE) -> Deferred[None]:
        """Stop every program (they stay in the set); fires when they are gone."""
        stopped = DeferredList([program.stop(grace) for program in self.by_target.values()])
        return stopped.addCallback(lambda _: None)
