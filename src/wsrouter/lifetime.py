"""
websockify's whole-server lifetime options: C{--run-once}, C{--timeout}
and C{--idle-timeout} (exit the router, not one session).

L{LifetimeService} watches sessions open and close through the gateway's
observer API and calls C{stop} when the router should exit; the clock is
injected, so the rules are tested on C{task.Clock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger(namespace="wsrouter")


class Observable(Protocol):
    """The gateway's observer API."""

    def observe(self, observer: Any) -> None: ...


class Clock(Protocol):
    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any, **kw: Any) -> Any: ...


class LifetimeService(Service):
    """
    Calls C{stop(reason)} once, when the router's lifetime is over:

      - C{run_once}: the first session has ended;
      - C{start_timeout} seconds after start, no client has opened a session;
      - C{idle_exit} seconds pass with no session open (counted from start,
        and again from each moment the last open session ends).

    C{None} or 0 turns a timer off.
    """

    def __init__(self, clock: Clock, stop: Callable[[str], None], *, run_once: bool = False,
                 start_timeout: float | None = None, idle_exit: float | None = None):
        self._clock = clock
        self._stop = stop
        self.run_once = run_once
        self.start_timeout = start_timeout or None
        self.idle_exit = idle_exit or None
        self.open_sessions = 0
        self._any_session = False
        self._stopped = False
        # IDelayedCall, typed Any: zope interfaces are not mypy types.
        self._start_timer: Any = None
        self._idle_timer: Any = None

    @property
    def active(self) -> bool:
        """Whether any rule is on (else the service need not be added)."""
        return bool(self.run_once or self.start_timeout or self.idle_exit)

    def watch(self, gateway: Observable) -> None:
        gateway.observe(self)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self.start_timeout:
            self._start_timer = self._clock.callLater(self.start_timeout, self._no_client)
        self._arm_idle()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._cancel_idle()
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None

    # -- the gateway's observer API -----------------------------------------------

    def session_opened(self, session: object) -> None:
        self.open_sessions += 1
        self._any_session = True
        self._cancel_idle()
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None

    def session_closed(self, session: object) -> None:
        self.open_sessions = max(0, self.open_sessions - 1)
        if self.run_once:
            self._exit("--run-once: the first session has ended")
            return
        if self.open_sessions == 0:
            self._arm_idle()

    # -- rules ---------------------------------------------------------------------

    def _no_client(self) -> None:
        self._start_timer = None
        if not self._any_session:
            self._exit(f"--timeout: no client connected within {self.start_timeout:g} s")

    def _idle(self) -> None:
        self._idle_timer = None
        if self.open_sessions == 0:
            self._exit(f"--idle-timeout: no session open for {self.idle_exit:g} s")

    def _arm_idle(self) -> None:
        if self.idle_exit and self.running and self._idle_timer is None:
            self._idle_timer = self._clock.callLater(self.idle_exit, self._idle)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _exit(self, reason: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("exiting: {reason}", reason=reason)
        self._stop(reason)
