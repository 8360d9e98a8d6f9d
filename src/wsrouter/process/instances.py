"""
Wrapped programs that start with their clients (issue 13).

  - B{Per-session instances} (C{mode = "per-session"}): L{InstancePool}
    starts a fresh instance of the program for each WebSocket session, with
    its command line filled in from the session (L{wsrouter.config.template}),
    each in its own private socket directory, so several instances may bind
    the same port.  The instance's process group is stopped (SIGTERM, SIGKILL
    after the grace) when the session ends; at most the program's
    C{max_instances} run at once, and at most a route's own C{max_instances}
    for that route (503 past either).
  - B{On demand} (C{start = "on-demand"}): L{OnDemandProgram} is a shared
    program that starts with its first client and is stopped after
    C{idle_stop} seconds without a session; the next client starts it again.

Both hand out a L{Lease} per session: L{wsrouter.targets.instance} releases
it when the session's link to the program is gone.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger

from wsrouter.config import Route, WrappedTarget
from wsrouter.config.template import TemplateError, render_argv
from wsrouter.interfaces import SessionInfo, TargetError
from wsrouter.process.supervisor import KILL_GRACE, Child, ExitStatus, Supervisor
from wsrouter.process.wrapped import ProgramNotFound, WrappedProgram
from wsrouter.rebind import ShimUnavailable

log = Logger(namespace="wsrouter.wrap")


class Lease:
    """One session's hold on a program: L{release} (once) when the session is over."""

    def __init__(self, program: WrappedProgram, release: Callable[[], None]):
        self.program = program
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class LeasingProgram(WrappedProgram):
    """A wrapped program that sessions lease (L{lease}) rather than find running."""

    def lease(self, session: SessionInfo) -> Deferred[Lease]:
        """
        A program for C{session} that is started (or starting): wait for
        its address with C{when_ready}.  Fails with a L{TargetError}: 503 at
        the cap or while stopping, 400 for a bad template value, 502 if the
        program cannot run.
        """
        raise NotImplementedError


def _check_runnable(target: WrappedTarget, environ: Mapping[str, str]) -> None:
    """@raise ProgramNotFound: C{target}'s program is not on C{PATH}."""
    program = target.argv[0]
    if shutil.which(program, path=environ.get("PATH", os.defpath)) is None:
        raise ProgramNotFound(f"wrapped program {program!r} not found or not executable (PATH is searched)")


def _start_error(name: str, error: Exception) -> TargetError:
    return TargetError(f"cannot start wrapped program {name}: {error}", 502)


class InstanceProgram(WrappedProgram):
    """
    One per-session instance: runs C{argv} (the filled-in template) once,
    never restarted; an instance that exits before binding fails its
    waiting client at once (502).
    """

    def __init__(self, reactor: Any, target: WrappedTarget, argv: tuple[str, ...], **kwargs: Any):
        super().__init__(reactor, target, **kwargs)
        self.argv = argv

    def _command(self) -> tuple[str, ...]:
        return self.argv

    def child_started(self, child: Child) -> None:
        # The template, not the filled-in line: a query value may be a token.
        log.info("started {name} (pid {pid}, one instance per session): {command}", name=self.name,
                 pid=child.pid, command=shlex.join(self.target.argv))

    def child_exited(self, child: Child, status: ExitStatus) -> None:
        super().child_exited(child, status)
        if not child.stopping:
            self._waiters.fail(f"wrapped program {self.name} {status.describe()} before it bound its port", 502)


class InstancePool(LeasingProgram):
    """
    The per-session instances of one C{mode = "per-session"} program.  The
    pool itself never runs; each lease starts an instance in the lowest free
    slot (1 to C{max_instances}, the template's C{{instance}}), and its
    release stops it.  A slot is free again once its instance is reaped.
    """

    def __init__(self, reactor: Any, target: WrappedTarget, *, supervisor: Supervisor,
                 environ: Mapping[str, str] | None = None, shim: str | None = None, grace: float = KILL_GRACE):
        super().__init__(reactor, target, supervisor=supervisor, environ=environ, shim=shim)
        self._environ = dict(os.environ if environ is None else environ)
        self._supervisor = supervisor
        self._grace = grace
        self._closed = False
        #: The live (or stopping) instances by slot.
        self.instances: dict[int, InstanceProgram] = {}
        #: The route each slot's instance was started through (for routes' own caps).
        self._routes: dict[int, Route] = {}

    def start(self) -> None:
        """Nothing runs before a session; only check that the program can be found."""
        self._closed = False
        _check_runnable(self.target, self._environ)

    def lease(self, session: SessionInfo) -> Deferred[Lease]:
        if self._closed:
            return fail(TargetError(f"wrapped program {self.name} is stopping", 503))
        free = [slot for slot in range(1, self.target.max_instances + 1) if slot not in self.instances]
        if not free:
            return fail(TargetError(f"wrapped program {self.name} already runs {self.target.max_instances} "
                                    "instances (max_instances)", 503))
        route_cap = session.route.max_instances
        if route_cap is not None and sum(route == session.route for route in self._routes.values()) >= route_cap:
            return fail(TargetError(f"route {session.route.describe()} already runs {route_cap} instances of "
                                    f"{self.name} (the route's max_instances)", 503))
        slot = free[0]
        values = {"session.id": session.session_id, "route.path": session.route.path, "instance": str(slot)}
        try:
            argv = render_argv(self.target.argv, values, parse_qs(session.query, keep_blank_values=True))
        except TemplateError as e:
            return fail(TargetError(str(e), 400))
        instance = InstanceProgram(self._reactor, self.target, argv, name=f"{self.name}.{slot}",
                                   supervisor=self._supervisor, environ=self._environ, shim=self._shim)
        try:
            instance.start()
        except (ProgramNotFound, ShimUnavailable, OSError) as e:
            return fail(_start_error(instance.name, e))
        self.instances[slot] = instance
        self._routes[slot] = session.route
        return succeed(Lease(instance, lambda: self._release(slot, instance)))

    def _release(self, slot: int, instance: InstanceProgram) -> None:
        def reaped(_: None) -> None:
            if self.instances.get(slot) is instance:
                del self.instances[slot]
                self._routes.pop(slot, None)

        instance.stop(self._grace).addCallback(reaped)

    def gone_reason(self) -> str | None:
        return None

    def when_ready(self, timeout: float) -> Deferred[tuple[str, int]]:
        return fail(TargetError(f"wrapped program {self.name} runs one instance per session", 502))

    def stop(self, grace: float = KILL_GRACE) -> Deferred[None]:
        """Stop every instance; fires once all are reaped and their private directories removed."""
        self._closed = True
        stopping = DeferredList([instance.stop(grace) for instance in list(self.instances.values())])

        def cleared(_: object) -> None:
            self.instances.clear()
            self._routes.clear()

        return stopping.addCallback(cleared)


class OnDemandProgram(LeasingProgram):
    """
    A shared program (C{start = "on-demand"}) started by its first lease and
    stopped C{idle_stop} seconds after its last lease is released (never,
    if C{idle_stop} is off).  A client that comes while an idle stop is
    under way waits for it and starts the program again.
    """

    def __init__(self, reactor: Any, target: WrappedTarget, **kwargs: Any):
        super().__init__(reactor, target, **kwargs)
        self._environ = dict(os.environ if kwargs.get("environ") is None else kwargs["environ"])
        self.sessions = 0
        self._idle_call: Any = None
        self._idle_stopping: Deferred[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Nothing runs before the first client; only check that the program can be found."""
        self._closed = False
        _check_runnable(self.target, self._environ)

    def lease(self, session: SessionInfo) -> Deferred[Lease]:
        if self._closed:
            return fail(TargetError(f"wrapped program {self.name} is stopping", 503))
        self._cancel_idle()
        self.sessions += 1
        lease = Lease(self, self._release)
        if self._idle_stopping is not None:
            waiting: Deferred[Lease] = Deferred()
            self._idle_stopping.addCallback(lambda _: self._start_for(lease).chainDeferred(waiting))
            return waiting
        return self._start_for(lease)

    def _start_for(self, lease: Lease) -> Deferred[Lease]:
        if not (self.running or self._child.restart_pending):
            try:
                WrappedProgram.start(self)
            except (ProgramNotFound, ShimUnavailable, OSError) as e:
                lease.release()
                return fail(_start_error(self.name, e))
        return succeed(lease)

    def _release(self) -> None:
        self.sessions -= 1
        if self.sessions == 0 and self.target.idle_stop is not None and not self._closed:
            self._idle_call = self._reactor.callLater(self.target.idle_stop, self._idle)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle(self) -> None:
        self._idle_call = None
        if self.sessions or not (self.running or self._child.restart_pending):
            return
        log.info("stopping {name} (pid {pid}): no session for {idle:g} s; the next client starts it again",
                 name=self.name, pid=self.pid, idle=self.target.idle_stop)
        stopping = self._idle_stopping = WrappedProgram.stop(self)

        def stopped(_: None) -> None:
            self._idle_stopping = None
            self.address = None  # mode "ignore" keeps it across exits; this run is gone for sure

        stopping.addCallback(stopped)

    def stop(self, grace: float = KILL_GRACE) -> Deferred[None]:
        self._closed = True
        self._cancel_idle()
        return WrappedProgram.stop(self, grace)


def make_program(reactor: Any, target: WrappedTarget, **kwargs: Any) -> WrappedProgram:
    """The supervised form of C{target}: an L{InstancePool}, an L{OnDemandProgram} or a plain L{WrappedProgram}."""
    if target.mode == "per-session":
        kwargs.pop("on_exit", None)
        kwargs.pop("on_listening", None)
        return InstancePool(reactor, target, **kwargs)
    if target.start == "on-demand":
        return OnDemandProgram(reactor, target, **kwargs)
    return WrappedProgram(reactor, target, **kwargs)
