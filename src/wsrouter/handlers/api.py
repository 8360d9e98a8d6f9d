"""
The handler API: what a C{python:package.module:factory} handler sees.

A handler is a plain object made once per route by its factory, called as
C{factory(context)} with a L{HandlerContext}.  Every method is optional:

  - C{on_connect(request)}: decide the handshake before it is answered
    (L{Request}); return C{None}/C{True} to accept, a subprotocol name or
    an L{Accept} to choose one, C{False} or a L{Refuse} (returned or
    raised) to refuse with an HTTP status; or a Deferred of any of these,
    which must fire within C{limits.connect_timeout}.
  - C{on_open(session)}: the handshake is answered; L{Session.send} works.
  - C{on_message(session, payload, is_binary)}: one whole client message
    (C{bytes}; text arrives UTF-8 encoded with C{is_binary} false).  A
    Deferred returned holds the next messages and pauses reading from that
    client until it fires.
  - C{on_close(session, code, reason)}: once per opened session, whoever
    closed it.
  - C{on_shutdown()}: once per handler when the router stops, after every
    session got 1001 and its C{on_close}; a Deferred returned is waited
    for, at most C{limits.shutdown_grace} seconds.

Errors raised by handler code are logged and close that session with 1011;
they never reach the router.

See docs/handlers.md for the whole contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from attrs import field, frozen

if TYPE_CHECKING:
    from wsrouter.handlers.session import Session

#: The close code of a session whose client reads too slowly for its queue.
TOO_SLOW = 1008
#: The close code of a session whose handler raised.
HANDLER_ERROR = 1011

#: How many messages may wait for a client that is not reading, by default.
DEFAULT_MAX_QUEUE = 256
#: How many bytes may wait for a client that is not reading, by default (one
#: message, however large, always may).
DEFAULT_MAX_QUEUE_BYTES = 1024 * 1024


@frozen
class Request:
    """
    A client's handshake, as C{on_connect} sees it.

    @ivar path: the request path (decoded), as the client sent it.
    @ivar route_path: the path below the mount point, which routes match.
    @ivar query: the raw query string, without C{?}.
    @ivar headers: the request headers, names lower-cased, in order.
    @ivar protocols: the subprotocols the client offered, in its order (also
        C{subprotocols}, the name a resolver's request uses).
    @ivar peer_host: the client's address (the real one behind a trusted proxy).
    @ivar peer_port: the client's port (0 if a forwarding header gave none).
    @ivar secure: the client came over TLS.
    @ivar client_cert: the subject of the client's verified TLS certificate, if any.
    @ivar session_id: the id the session will have (log lines, recordings).
    """

    path: str
    route_path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    protocols: tuple[str, ...]
    peer_host: str
    peer_port: int
    secure: bool = False
    client_cert: str | None = None
    session_id: str = ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header C{name} (any case), or C{default}."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), default)

    @property
    def params(self) -> dict[str, list[str]]:
        """The query's parameters, each with all its values."""
        return parse_qs(self.query, keep_blank_values=True)

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter C{name}, or C{default}."""
        values = self.params.get(name)
        return values[0] if values else default

    # The names resolvers' requests use too (L{wsrouter.resolvers.ResolveRequest}); docs/handlers.md.

    @property
    def subprotocols(self) -> tuple[str, ...]:
        """The subprotocols the client offered (also called C{protocols})."""
        return self.protocols

    @property
    def peer(self) -> tuple[str, int]:
        """C{(peer_host, peer_port)}."""
        return self.peer_host, self.peer_port

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """L{param}, by the name resolvers' requests first had."""
        return self.param(name, default)


@frozen
class Accept:
    """Accept the handshake, naming C{subprotocol} (one the client offered) in the 101."""

    subprotocol: str | None = None


class Group:
    """
    Sessions to broadcast to.  The route's own group (L{HandlerContext.group},
    L{Session.group}) holds every open session on the route; handlers may
    make more (rooms) and add and discard sessions themselves.

    A broadcast never waits for anyone: each member has its own bounded
    queue (L{Session.send}), and a member that falls too far behind is
    closed with L{TOO_SLOW} (1008) while the others go on.
    """

    def __init__(self) -> None:
        self._members: dict[int, Session] = {}

    def add(self, session: Session) -> None:
        if not session.closed:
            self._members[id(session)] = session

    def discard(self, session: Session) -> None:
        self._members.pop(id(session), None)

    def __contains__(self, session: object) -> bool:
        return id(session) in self._members and not getattr(session, "closed", True)

    def __len__(self) -> int:
        return len(self._open())

    def __iter__(self) -> Iterator[Session]:
        """The open members now (a copy: members may leave while it is walked)."""
        return iter(self._open())

    def _open(self) -> list[Session]:
        """The open members; closed ones (a group the handler made) are dropped here."""
        members = list(self._members.values())
        if any(member.closed for member in members):
            members = [member for member in members if not member.closed]
            self._members = {id(member): member for member in members}
        return members

    def broadcast(self, payload: bytes | str, is_binary: bool | None = None,
                  exclude: Session | None = None) -> int:
        """
        Send one message to every member but C{exclude}.

        @return: how many members it was sent or queued to.
        """
        sent = 0
        for member in self:
            if member is not exclude:
                member.send(payload, is_binary)
                sent += 1
        return sent


@frozen
class HandlerContext:
    """
    What a handler factory is given, once per route.

    @ivar reactor: for timers (C{callLater}, C{LoopingCall(clock=...)}); the
        router's own, so tests can pass a fake clock.
    @ivar group: every open session on the route.
    @ivar route: the route (L{wsrouter.config.Route}) the handler serves.
    """

    reactor: Any
    group: Group = field(factory=Group)
    route: Any = None


class Handler(Protocol):
    """The shape of a handler (every method is optional; see the module docstring)."""

    def on_message(self, session: Session, payload: bytes, is_binary: bool) -> Any: ...
