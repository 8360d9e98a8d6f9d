"""
wsrouter's reactor: Twisted's epoll reactor without the per-event log context.

Twisted's C{EPollReactor.doPoll} wraps every readiness event in
C{log.callWithLogger}, which asks the selectable for its C{logPrefix()} and
runs C{_doReadOrWrite} under C{callWithContext}, so that legacy
C{twisted.python.log} lines written meanwhile carry the prefix as their
"system".  On a fan-in relay that is a large share of the busy time
(docs/performance.md, "the reactor's dispatch").  L{DirectEPollReactor}
dispatches each event with L{DirectEPollReactor._dispatch}: Twisted's
C{_doReadOrWrite} step for step, except that its "Unhandled Error" line
names the selectable's prefix itself (C{log.err(system=...)}), so that line
reads as before.  A legacy C{log.msg} written inside a C{doRead} shows
C{[-]} instead of the prefix; wsrouter's own lines (C{twisted.logger}) never
carried one.

L{install_default} is called by C{wsrouter serve} and the C{--workers}
children; C{twistd --reactor wsrouter} installs it through the plugin in
C{twisted/plugins/wsrouter_reactor.py}; embedders keep their own reactor.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import posixbase
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

# The private Twisted names used here are listed (and checked by the tests) in
# wsrouter.ws.internals.PRIVATE_ATTRIBUTES.

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform
    EPollReactor = None  # type: ignore[assignment,misc,unused-ignore]


def _prefix(selectable: Any) -> str:
    """The selectable's log prefix, as C{log.callWithLogger} takes it."""
    try:
        return str(selectable.logPrefix())
    except Exception:
        return "(buggy logPrefix method)"


if EPollReactor is not None:

    class DirectEPollReactor(EPollReactor):  # type: ignore[misc,unused-ignore]
        """An epoll reactor that dispatches events without a log context per event."""

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and dispatch each one (Twisted's C{doPoll} without C{callWithLogger})."""
            if timeout is None:
                timeout = -1  # wait indefinitely
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            dispatch = self._dispatch
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    dispatch(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # What callWithLogger catches: an error while disconnecting.
                    log.err(system=_prefix(selectable))

        doIteration = doPoll

        def _dispatch(self, selectable: Any, fd: int, event: int) -> None:
            """Twisted's C{_doReadOrWrite}; an error is logged with the selectable's prefix."""
            why: Any = None
            in_read = False
            if event & self._POLL_DISCONNECTED and not (event & self._POLL_IN):
                # A hang-up: clean if we were reading (all input was read), else an error.
                if fd in self._reads:
                    in_read = True
                    why = CONNECTION_DONE
                else:
                    why = CONNECTION_LOST
            else:
                try:
                    if selectable.fileno() == -1:
                        why = posixbase._NO_FILEDESC
                    else:
                        if event & self._POLL_IN:
                            why = selectable.doRead()
                            in_read = True
                        if not why and event & self._POLL_OUT:
                            why = selectable.doWrite()
                            in_read = False
                except BaseException:
                    # An error in application code: log it and disconnect this selectable only.
                    why = sys.exc_info()[1]
                    log.err(system=_prefix(selectable))
            if why:
                self._disconnectSelectable(selectable, why, in_read)  # type: ignore[no-untyped-call]


def install() -> Any:
    """Install L{DirectEPollReactor} as the global reactor and return it (Twisted's reactor-plugin entry)."""
    from twisted.internet.main import installReactor

    if EPollReactor is None:
        raise ImportError("wsrouter's reactor needs epoll (Linux)")
    reactor = DirectEPollReactor()  # type: ignore[no-untyped-call,unused-ignore]
    installReactor(reactor)
    return reactor


def install_default() -> bool:
    """
    Install wsrouter's reactor unless a reactor is installed already or the
    platform has no epoll (then Twisted's default stays); True if installed.
    """
    if "twisted.internet.reactor" in sys.modules or EPollReactor is None:
        return False
    install()
    return True
