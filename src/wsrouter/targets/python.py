"""
The C{python:package.module:factory} target: in-process handlers (L{wsrouter.handlers}).

The factory is imported at start-up (L{wsrouter.preflight}) and called
once per route, with the route's L{HandlerContext}, when the route's first
client connects; the handler object it returns serves every session of
the route from then on (a reload that changes the route makes a new one).
A factory that raises refuses that handshake with 500 and is tried again
at the next.

C{on_connect} decides before the 101: a refusal is its HTTP status, an
error 500, no answer within C{limits.connect_timeout} 503 -- each with a
log line.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import Limits, PythonTarget, Route
from wsrouter.handlers.api import Accept, HandlerContext, Request
from wsrouter.handlers.loader import HandlerLoadError, load_factory
from wsrouter.handlers.session import HandlerLink
from wsrouter.interfaces import Link, SessionInfo, TargetError
from wsrouter.refusal import Refuse

log = Logger(namespace="wsrouter.handlers")


def request_of(info: SessionInfo) -> Request:
    """The handler's view of a handshake."""
    offered = tuple(name.strip() for key, value in info.headers if key == "sec-websocket-protocol"
                    for name in value.split(",") if name.strip())
    return Request(path=info.path, route_path=info.route_path, query=info.query, headers=info.headers,
                   protocols=offered, peer_host=info.peer_host, peer_port=info.peer_port, secure=info.secure,
                   client_cert=info.client_cert, session_id=info.session_id)


def one_line(reason: str, limit: int = 200) -> str:
    """A handler's reason as one printable line (it goes into an HTTP status line)."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", reason).strip()[:limit] or "refused by the handler"


class PythonConnector:
    """Makes handler links; keeps one handler per route."""

    def __init__(self, reactor: Any, limits: Limits):
        self._reactor = reactor
        self._timeout = limits.connect_timeout
        self._handlers: dict[object, tuple[Any, HandlerContext]] = {}

    def use_limits(self, limits: Limits) -> None:
        self._timeout = limits.connect_timeout

    def handler_for(self, route: Route) -> tuple[Any, HandlerContext]:
        """
        The route's handler and context, made on first use.

        @raise TargetError: 500 when the factory cannot be loaded or raises.
        """
        key: object = route
        try:
            hash(route)
        except TypeError:  # a factory object that cannot be hashed: this very route object
            key = id(route)
        made = self._handlers.get(key)
        if made is not None:
            return made
        target = route.target
        if not isinstance(target, PythonTarget):
            raise TargetError(f"not a python: target: {target.describe()}", 500)
        context = HandlerContext(reactor=self._reactor, route=route)
        try:
            factory = target.factory if target.factory is not None else load_factory(target.name)
            handler = factory(context)
        except HandlerLoadError as e:
            log.error("route {route}: cannot load handler: {problem}", route=route.describe(), problem=str(e))
            raise TargetError(f"cannot load the handler: {e}", 500) from None
        except Exception:
            log.failure("route {route}: handler factory {target} raised", route=route.describe(),
                        target=target.describe())
            raise TargetError("the handler factory failed", 500) from None
        self._handlers[key] = made = (handler, context)
        return made

    def shutdown(self, timeout: float) -> Deferred[None]:
        """
        Call each route handler's C{on_shutdown()} once (the router is
        stopping and its sessions have ended), then forget the handlers.
        A handler that raises, or whose Deferred fails, is logged; one that
        has not finished within C{timeout} seconds is cancelled, so stopping
        never waits longer.

        @return: fires when every C{on_shutdown} has finished.
        """
        made, self._handlers = list(self._handlers.values()), {}
        waits = []
        for handler, context in made:
            hook = getattr(handler, "on_shutdown", None)
            if hook is None:
                continue
            ending: Deferred[Any] = maybeDeferred(hook)
            if not ending.called:
                ending.addTimeout(timeout, self._reactor)
            waits.append(ending.addErrback(self._shutdown_failed, handler, context.route))
        return DeferredList(waits).addCallback(lambda _: None)

    @staticmethod
    def _shutdown_failed(failure: Failure, handler: Any, route: Route) -> None:
        log.failure("route {route}: handler {handler!r} failed in on_shutdown", failure,
                    route=route.describe(), handler=handler)

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        handler, context = self.handler_for(session.route)
        request = request_of(session)
        on_connect = getattr(handler, "on_connect", None)
        deciding: Deferred[Any] = maybeDeferred(on_connect, request) if on_connect else Deferred()
        if on_connect is None:
            deciding.callback(None)
        elif not deciding.called:
            deciding.addTimeout(self._timeout, self._reactor)
        deciding.addCallback(self._decided, handler, context, request, session)
        return deciding.addErrback(self._failed, handler, session)

    def _decided(self, answer: Any, handler: Any, context: HandlerContext, request: Request,
                 session: SessionInfo) -> Link:
        if isinstance(answer, Refuse):
            raise answer
        if answer is False:
            raise Refuse(403, "refused by the handler")
        if answer is None or answer is True:
            chosen = session.subprotocol if session.route.subprotocols else None
        elif isinstance(answer, Accept):
            chosen = answer.subprotocol
        elif isinstance(answer, str):
            chosen = answer
        else:
            raise TypeError(f"on_connect returned {answer!r}; expected None, True, False, a subprotocol, "
                            "Accept or Refuse")
        if chosen is not None and chosen not in request.protocols:
            raise TypeError(f"on_connect chose subprotocol {chosen!r}, which the client did not offer "
                            f"({', '.join(request.protocols) or 'none'})")
        return HandlerLink(handler, request, chosen, context.group)

    def _failed(self, failure: Failure, handler: Any, session: SessionInfo) -> Link:
        error = failure.value
        if isinstance(error, TargetError):
            raise error
        if isinstance(error, Refuse):
            status = error.status if isinstance(error.status, int) and 400 <= error.status <= 599 else 500
            if status != error.status:
                log.error("route {route}: handler refused with status {status!r}, which is not 400-599; "
                          "answering 500", route=session.route.describe(), status=error.status)
            raise TargetError(one_line(str(error.reason)), status)
        if failure.check(CancelledError, TimeoutError):  # type: ignore[no-untyped-call, unused-ignore]
            log.error("route {route}: handler {handler!r} did not answer on_connect within {timeout} s",
                      route=session.route.describe(), handler=handler, timeout=self._timeout)
            raise TargetError(f"the handler did not answer within {self._timeout:g} s", 503)
        log.failure("route {route}: handler {handler!r} failed in on_connect", failure,
                    route=session.route.describe(), handler=handler)
        raise TargetError("internal error in the handler", 500)
