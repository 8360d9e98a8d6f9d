"""
The resolver seam: what a resolver is given (L{ResolveRequest}), what it
may answer (a target, C{None} for "no such token", or a L{Refuse}), and the
errors that become 503 (L{Unavailable}).  Pure: no reactor, no I/O.

websockify's token rules live here too: where the token is read from
(L{token_of}) and how a plugin's C{(host, port)} answer becomes a target
(L{target_of_pair}).
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode

import attrs
from attrs import field, frozen
from twisted.internet.defer import Deferred

from wsrouter.config import (
    ConfigError,
    EchoTarget,
    Route,
    Target,
    TcpTarget,
    TlsTarget,
    UdpTarget,
    UnixDatagramTarget,
    UnixTarget,
    WebSocketTarget,
)
from wsrouter.interfaces import SessionInfo
from wsrouter.refusal import Refuse

#: The target kinds a resolver may hand out.  Never a command or a program
#: (C{exec:}, C{wrap:}): a token store must not be able to start processes.
RESOLVABLE = (TcpTarget, UnixTarget, TlsTarget, WebSocketTarget, UdpTarget, UnixDatagramTarget, EchoTarget)

#: The name of websockify's token: query parameter and cookie.
TOKEN = "token"


class Unavailable(Exception):
    """The resolver's backing store cannot be reached now (503: the client may retry)."""


def _pairs(query: str) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(query, keep_blank_values=True))


def _cookies(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in headers:
        if name == "cookie":
            try:
                jar.load(value)
            except CookieError:
                continue
    return {name: morsel.value for name, morsel in jar.items()}


@frozen
class ResolveRequest:
    """
    Everything a resolver may look at, read from the handshake.

    @ivar path: the request path (decoded, without the query).
    @ivar path_info: the part of the path below a prefix route's own path
        (C{"/abc"} for C{/vnc/abc} on C{/vnc/*}); C{""} otherwise.
    @ivar query: the query's C{(name, value)} pairs, decoded, in order.
    @ivar headers: the request headers, names lower-cased, in order.
    @ivar cookies: the C{Cookie} header's values by name.
    @ivar subprotocols: the subprotocols the client offered.
    @ivar peer: the real client's C{(address, port)}.
    @ivar client_cert: the subject (RFC 4514) of a verified client certificate.
    @ivar host: the Host header without its port (lower case), or C{""}.
    @ivar token: the websockify token (L{token_of}), or C{None} if none was sent.
    @ivar route: the route being resolved (its target is the C{resolve:} one).
    """

    path: str
    route: Route
    path_info: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    cookies: Mapping[str, str] = field(factory=dict)
    subprotocols: tuple[str, ...] = ()
    peer: tuple[str, int] = ("", 0)
    client_cert: str | None = None
    host: str = ""
    token: str | None = None

    @classmethod
    def of_session(cls, info: SessionInfo, subprotocols: tuple[str, ...] = (),
                   host_token: bool = False) -> ResolveRequest:
        """The request for a session's handshake; C{host_token}: websockify's C{--host-token}."""
        host = dict(info.headers).get("host", "")
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        query = _pairs(info.query)
        cookies = _cookies(info.headers)
        path_info = info.path_info if info.route.prefix else ""
        made = cls(path=info.path, route=info.route, path_info=path_info, query=query, headers=info.headers,
                   cookies=cookies, subprotocols=tuple(subprotocols), peer=(info.peer_host, info.peer_port),
                   client_cert=info.client_cert, host=host.lower().strip("[]"))
        return made.with_token(token_of(made, host_token))

    def with_token(self, token: str | None) -> ResolveRequest:
        return attrs.evolve(self, token=token)

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter C{name}, or C{default} (as a handler's request)."""
        return next((value for key, value in self.query if key == name), default)

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """L{param}, by its first name."""
        return self.param(name, default)

    @property
    def params(self) -> dict[str, list[str]]:
        """The query's parameters, each with all its values (as a handler's request)."""
        found: dict[str, list[str]] = {}
        for key, value in self.query:
            found.setdefault(key, []).append(value)
        return found

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header C{name} (any case), or C{default}."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), default)

    # The names a handler's request uses too (L{wsrouter.handlers.Request}); docs/resolvers.md.

    @property
    def protocols(self) -> tuple[str, ...]:
        """L{subprotocols}, by a handler's request's name."""
        return self.subprotocols

    @property
    def peer_host(self) -> str:
        """The real client's address (C{peer[0]})."""
        return self.peer[0]

    @property
    def peer_port(self) -> int:
        """The real client's port (C{peer[1]})."""
        return self.peer[1]


def token_of(request: ResolveRequest, host_token: bool = False) -> str | None:
    """
    The token, where websockify and noVNC put it: with C{host_token} the
    Host header without its port (C{--host-token}); else the C{token} query
    parameter (its trailing newlines cut, as websockify does), else the
    C{token} cookie (noVNC's old C{vnc_auto.html} sets it), else the path
    below a prefix route (C{/vnc/TOKEN} on C{/vnc/*}; one path segment).
    C{None}: no token was sent.
    """
    if host_token:
        return request.host or None
    token = request.query_value(TOKEN)
    if token:
        return token.rstrip("\n")
    token = request.cookies.get(TOKEN)
    if token:
        return token
    below = request.path_info.strip("/")
    return below if below and "/" not in below else None


def without_token(query: str) -> str:
    """C{query} with the C{token} parameter's value replaced by C{REDACTED} (for logs and recordings)."""
    if TOKEN not in query:
        return query
    pairs = [(name, "REDACTED" if name == TOKEN else value) for name, value in _pairs(query)]
    return urlencode(pairs)


def redact_token(path: str, query: str, token: str | None) -> tuple[str, str]:
    """
    C{path} and C{query} as logs, status pages and recordings may show
    them: the C{token} parameter's value, and a path segment equal to
    C{token} (C{/vnc/TOKEN}), each replaced by C{REDACTED}.
    """
    query = without_token(query)
    if token:
        path = "/".join("REDACTED" if token in (segment, unquote(segment)) else segment
                        for segment in path.split("/"))
    return path, query


def redacted_session(info: SessionInfo, token: str | None) -> SessionInfo:
    """C{info} with L{redact_token} applied to its path, route path and query."""
    path, query = redact_token(info.path, info.query, token)
    route_path, _ = redact_token(info.route_path, "", token)
    return attrs.evolve(info, path=path, route_path=route_path, query=query)


Resolution: TypeAlias = "Target | Refuse | None"


class Resolver(Protocol):
    """
    Finds one connection's target (L{wsrouter.resolvers} documents the rules).

    C{resolve} returns (or a Deferred fires with) a target, C{None} when the
    token names nothing (404), or a L{Refuse}; it may raise L{Refuse}, or
    L{Unavailable} (503).  Anything else it raises is a 502 with a log line.
    """

    def resolve(self, request: ResolveRequest) -> Target | Refuse | Deferred[Any] | None:
        """The target, C{None}, a L{Refuse}, or a Deferred of one of them."""


class ResolverFactory(Protocol):
    """What a plugin name loads: called with the C{[resolvers.NAME]} table and the reactor."""

    def __call__(self, settings: Any, reactor: Any) -> Resolver:
        """A resolver for the C{[resolvers.NAME]} table C{settings}."""


def target_of_pair(host: object, port: object) -> Target:
    """
    A websockify plugin's answer as a target: C{("unix_socket", PATH)} is a
    Unix socket; anything else C{(HOST, PORT)} over TCP (an IPv6 host may
    be bracketed).

    @raise ValueError: the pair is not a valid target (says why).
    """
    host = host.decode() if isinstance(host, bytes) else str(host)
    port = port.decode() if isinstance(port, bytes) else str(port)
    try:
        if host == "unix_socket":
            return UnixTarget(port)
        if not port.strip().isdigit():
            raise ValueError(f"port {port!r} is not a number")
        return TcpTarget(host.strip().strip("[]"), int(port))
    except ConfigError as e:
        raise ValueError("; ".join(problem for _, problem in e.problems)) from None


def target_of_fields(answer: object, what: str) -> Target:
    """
    A JSON object's C{host} and C{port} (a token API's answer, a JWT's
    claims) as a target, with L{target_of_pair}'s rules.

    @raise ValueError: not an object, or a key missing, or no valid target;
        the message says which, in C{what}'s words (C{"the answer"}).
    """
    if not isinstance(answer, Mapping):
        raise ValueError(f"{what} is not a JSON object with host and port")
    missing = [key for key in ("host", "port") if key not in answer]
    if missing:
        raise ValueError(f"{what} has no {' and no '.join(repr(key) for key in missing)} key")
    return target_of_pair(answer["host"], answer["port"])


def split_target(text: str) -> Target:
    """websockify's C{HOST:PORT} (split at the last colon) or C{unix_socket:PATH}."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("unix_socket") and host != "unix_socket":  # unix_socket:/a:b.sock
        return target_of_pair("unix_socket", text.strip()[len("unix_socket:"):])
    return target_of_pair(host, port)
