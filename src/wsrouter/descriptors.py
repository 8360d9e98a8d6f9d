"""
Running out of file descriptors gracefully.

Every relayed session holds descriptors: the client's socket, plus the
target's socket (an C{exec:} command's three pipes, six while it is being
started), plus a file while it is recorded.  A process that runs out finds
out in C{accept()}: Twisted 26's C{tcp.Port} then closes the one descriptor
it keeps in reserve for that, accepts what waits in the backlog and closes
it at once (the client sees a dropped connection, not an answer); when even
that reservation could not be re-taken it logs C{Could not accept new
connection (EMFILE)} and returns, and since the listener stays readable the
reactor calls it again at once: a busy loop until something closes.

So the router does not go there:

  - At start-up (the command line, not embedding) the soft C{RLIMIT_NOFILE}
    is raised to the hard limit, and the log says how many sessions fit.
  - A handshake whose session would leave fewer than L{reserve_for} the
    limit (32 descriptors or 2 %, whichever is more) free is refused with
    503 "too many open connections", before its target is connected.
    Established sessions are not touched; new ones are admitted again as
    soon as enough have closed.
  - Should connections that never finish a handshake eat into the second
    half of that reserve (a flood, a slow client), the listeners stop
    accepting: new clients wait in the kernel's listen backlog, not
    refused, and accepting resumes when descriptors are free again (checked
    every L{RESUME_CHECK_INTERVAL} seconds).  Twisted accepts a burst of
    connections per reactor turn, which a pause cannot cut short; from
    such a burst, connections that would take the last few descriptors
    are closed unanswered (counted in the log) rather than reach EMFILE.

Counting: C{/proc/self/fd} is exact but costs time in proportion to what is
open, so it is read only when a cheap upper bound (the last count plus
every descriptor handed out since) says the limit may be near, at most every
L{RECOUNT_INTERVAL} seconds, and at least every L{STALE_AFTER} seconds.
Closes are not tracked, so the bound only ever overestimates: between two
counts the router errs towards refusing.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from twisted.logger import Logger
from twisted.web.server import Site

from wsrouter.config import EchoTarget, ExecTarget, PythonTarget, Route, RouterConfig, Target

log = Logger(namespace="wsrouter")

#: Descriptors kept free for listeners, logs, recordings and accept() itself:
#: at least this many ...
MIN_RESERVE = 32
#: ... or this share of the limit, whichever is more.
RESERVE_SHARE = 0.02
#: Near the limit, count open descriptors at most this often (seconds).
RECOUNT_INTERVAL = 0.1
#: Count at least this often (seconds) while connections come in, so a
#: descriptor opened behind the router's back is noticed.
STALE_AFTER = 5.0
#: While accepting is paused, look this often (seconds) whether to resume.
RESUME_CHECK_INTERVAL = 0.25

#: Where the open descriptors of this process are listed, in order of preference.
_FD_DIRECTORIES = ("/proc/self/fd", "/dev/fd")


# -- pure decisions ---------------------------------------------------------------


def reserve_for(limit: int) -> int:
    """Descriptors to keep free under an open-file limit of C{limit}."""
    return max(MIN_RESERVE, math.ceil(limit * RESERVE_SHARE))


def has_room(open_now: int, needed: int, limit: int, reserve: int) -> bool:
    """Whether C{needed} more descriptors leave at least C{reserve} of C{limit} free."""
    return open_now + needed <= limit - reserve


def accept_pause_level(limit: int, reserve: int) -> int:
    """With this many descriptors open, stop accepting: half the reserve is gone."""
    return limit - reserve // 2


def accept_resume_level(limit: int, reserve: int) -> int:
    """Below this many open descriptors, accept again (some way under the pause level)."""
    return accept_pause_level(limit, reserve) - max(1, reserve // 4)


def target_cost(target: Target) -> int:
    """
    Descriptors a session's target holds at most: one socket for most, none
    for the in-process echo and handlers, three pipes for an exec: command (six while it starts:
    the child's ends are open until it has forked).
    """
    if isinstance(target, EchoTarget | PythonTarget):
        return 0
    if isinstance(target, ExecTarget):
        return 6
    return 1


def session_cost(route: Route, config: RouterConfig) -> int:
    """Descriptors one more session on C{route} needs beyond its client's socket."""
    recorded = config.recording_directory(route) is not None
    return target_cost(route.target) + (1 if recorded else 0)


def sessions_that_fit(limit: int, reserve: int, open_now: int, per_session: int) -> int:
    """How many sessions of C{per_session} descriptors each (client included) fit."""
    return max(0, (limit - reserve - open_now) // max(per_session, 1))


# -- this process ---------------------------------------------------------------------


@frozen
class OpenFileLimit:
    """
    The soft open-file limit before and after L{raise_open_file_limit}.

    @ivar hard: the hard limit; C{None} when unlimited.
    @ivar error: why raising failed, if it did.
    """

    before: int | None
    now: int | None
    hard: int | None
    error: str | None = None

    def describe(self) -> str:
        if self.now is None:
            return "open-file limit: unlimited"
        if self.error is not None:
            return f"open-file limit {self.now} (could not raise it to {self.hard}: {self.error})"
        if self.before is not None and self.before != self.now:
            return f"open-file limit {self.now} (raised from {self.before})"
        return f"open-file limit {self.now} (the hard limit)" if self.now == self.hard else \
            f"open-file limit {self.now}"


def _finite(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY or value < 0 else int(value)


def current_limit() -> int | None:
    """This process's soft open-file limit; C{None} when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft)


def raise_open_file_limit() -> OpenFileLimit:
    """
    Raise the soft open-file limit to the hard one (an unlimited hard
    limit leaves the soft one as it is: there is no number to raise it to).
    Children started afterwards inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before, ceiling = _finite(soft), _finite(hard)
    if ceiling is None or before is None or before >= ceiling:
        return OpenFileLimit(before, before, ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    except (ValueError, OSError) as e:
        return OpenFileLimit(before, before, ceiling, error=str(e))
    return OpenFileLimit(before, ceiling, ceiling)


def count_open_descriptors() -> int | None:
    """
    How many descriptors this process has open, or C{None} where the
    system does not list them.  The listing's own descriptor is not counted.
    """
    for directory in _FD_DIRECTORIES:
        try:
            return max(len(os.listdir(directory)) - 1, 0)
        except OSError:
            continue
    return None


# -- the guard ----------------------------------------------------------------------------


class DescriptorGuard:
    """
    Decides, cheaply, whether there is room for one more connection or
    session, and pauses the listeners when there is not even room to accept.

    @param limit: the open-file limit; C{None} (unlimited, or unknown)
        turns the guard off.
    @param count: counts open descriptors exactly; returning C{None} turns
        the guard off.
    @param ports: the listening ports to pause and resume (objects with
        C{startReading}/C{stopReading}, as Twisted's TCP and Unix ports).
    """

    def __init__(self, reactor: Any, limit: int | None,
                 count: Callable[[], int | None] = count_open_descriptors,
                 ports: Callable[[], Iterable[Any]] = tuple):
        self._reactor = reactor
        self._count = count
        self._ports = ports
        self.limit = limit
        self.reserve = reserve_for(limit) if limit is not None else 0
        #: What L{raise_open_file_limit} did, for the start-up log line.
        self.raised: OpenFileLimit | None = None
        self._known = 0
        self._handed_out = 0
        self._counted_at: float | None = None
        self.enabled = limit is not None and self._recount() is not None
        self.refusing = False
        self.accept_paused = False
        #: Connections closed unanswered at the very edge since the last pause.
        self.dropped = 0
        self._resume_call: Any = None

    @classmethod
    def for_this_process(cls, reactor: Any, ports: Callable[[], Iterable[Any]] = tuple) -> DescriptorGuard:
        return cls(reactor, current_limit(), ports=ports)

    # -- counting ------------------------------------------------------------------

    def _recount(self) -> int | None:
        counted = self._count()
        if counted is None:
            return None
        self._known, self._handed_out = counted, 0
        self._counted_at = self._reactor.seconds()
        return counted

    def estimate(self) -> int:
        """An upper bound on the descriptors open now (exact just after a count)."""
        return self._known + self._handed_out

    def _open_now(self, wanted: int, level: int) -> int:
        """
        The estimate, recounted when it says C{wanted} more would reach
        C{level} and the last count is old enough, or when it is stale.
        """
        age = self._reactor.seconds() - (self._counted_at or 0.0)
        close = self.estimate() + wanted > level
        if (close and age >= RECOUNT_INTERVAL) or age >= STALE_AFTER:
            self._recount()
        return self.estimate()

    # -- sessions --------------------------------------------------------------------

    def admit(self, needed: int) -> bool:
        """
        Whether a session needing C{needed} more descriptors may start; if
        so they are counted as handed out.  Logs when refusing starts and ends.
        """
        if not self.enabled or self.limit is None:
            return True
        open_now = self._open_now(needed, self.limit - self.reserve)
        if not has_room(open_now, needed, self.limit, self.reserve):
            if not self.refusing:
                self.refusing = True
                log.warn(
                    "open-file limit nearly reached: {open} of {limit} descriptors in use, {reserve} kept "
                    "in reserve; refusing new sessions with 503 'too many open connections' until some "
                    "close (established sessions go on; raise the limit with ulimit -n or systemd's "
                    "LimitNOFILE=, or run more workers or instances)",
                    open=open_now, limit=self.limit, reserve=self.reserve)
            return False
        if self.refusing:
            self.refusing = False
            log.info("descriptors available again ({open} of {limit} in use); accepting new sessions",
                     open=open_now, limit=self.limit)
        self._handed_out += needed
        return True

    # -- connections -------------------------------------------------------------------

    def accepted(self) -> bool:
        """
        Note one accepted connection.  Pauses the listeners when half the
        reserve is gone; C{False} means not even that connection can be kept
        (the reserve is almost exhausted) and it should be closed.
        """
        if not self.enabled or self.limit is None:
            return True
        self._handed_out += 1
        pause_at = accept_pause_level(self.limit, self.reserve)
        open_now = self._open_now(0, pause_at - 1)
        if open_now >= pause_at and not self.accept_paused:
            self._pause_accepting(open_now, self.limit)
        if open_now < self.limit - max(self.reserve // 8, 2):
            return True
        # Twisted accepts a burst per reactor turn, so a flood may bring
        # more than the pause can stop; these are closed, and counted.
        if self.dropped == 0:
            log.warn("closing new connections unanswered: only {free} of {limit} descriptors left",
                     free=self.limit - open_now, limit=self.limit)
        self.dropped += 1
        return False

    def _pause_accepting(self, open_now: int, limit: int) -> None:
        self.accept_paused = True
        for port in self._ports():
            if getattr(port, "connected", True):
                port.stopReading()
        log.warn(
            "only {free} of {limit} descriptors left; not accepting new connections until some close "
            "(clients wait in the listen backlog)", free=limit - open_now, limit=limit)
        self._resume_call = self._reactor.callLater(RESUME_CHECK_INTERVAL, self._maybe_resume)

    def _maybe_resume(self) -> None:
        self._resume_call = None
        if not self.accept_paused or self.limit is None:
            return
        open_now = self._recount()
        if open_now is not None and open_now >= accept_resume_level(self.limit, self.reserve):
            self._resume_call = self._reactor.callLater(RESUME_CHECK_INTERVAL, self._maybe_resume)
            return
        self.resume_accepting()
        dropped, self.dropped = self.dropped, 0
        log.info("accepting new connections again ({open} of {limit} descriptors in use){dropped}",
                 open=open_now, limit=self.limit,
                 dropped=f"; {dropped} connection(s) were closed unanswered meanwhile" if dropped else "")

    def resume_accepting(self) -> None:
        """Listen again on every port still open (also when stopping: cancels the check)."""
        self.accept_paused = False
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        for port in self._ports():
            if getattr(port, "connected", False):
                port.startReading()

    def stop(self) -> None:
        """Cancel the resume check (the service is stopping; its ports are closing)."""
        self.accept_paused = False
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None

    # -- start-up -------------------------------------------------------------------------

    def describe_capacity(self, config: RouterConfig) -> str:
        """
        The start-up line: the limit, what raising it did, and about how
        many sessions of the costliest configured route fit in what is left.
        """
        raised = self.raised or OpenFileLimit(self.limit, self.limit, None)
        if not self.enabled or self.limit is None:
            if self.limit is None:
                return raised.describe() + "; no descriptor accounting"
            return raised.describe() + "; open descriptors cannot be counted here, so none are reserved"
        per_session = 1 + max((session_cost(route, config) for route in config.routes), default=1)
        open_now = self._recount() or 0
        fit = sessions_that_fit(self.limit, self.reserve, open_now, per_session)
        return (f"{raised.describe()}: room for about {fit} concurrent sessions "
                f"({per_session} descriptors each, {open_now} in use, {self.reserve} kept in reserve)")


class GuardedSite(Site):
    """
    A Site that tells the descriptor guard about every accepted connection
    (which may pause the listeners) and closes one the guard cannot keep.
    """

    def __init__(self, resource: Any, guard: DescriptorGuard, *args: Any, **kwargs: Any):
        # untyped_calls_exclude does not reach calls through super()
        super().__init__(resource, *args, **kwargs)  # type: ignore[no-untyped-call]
        self.descriptor_guard = guard

    def logPrefix(self) -> str:
        return "Site"

    def buildProtocol(self, addr: Any) -> Any:
        if not self.descriptor_guard.accepted():
            return None
        return super().buildProtocol(addr)  # type: ignore[no-untyped-call]
