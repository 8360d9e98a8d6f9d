"""
The route table: which route serves a request, and with which subprotocol.

Pure functions over L{Route} values, so every rule here is testable without
a socket.  A request is matched by host, then path, then subprotocol: a
L{RouteTable} sorts the candidates of every host it knows once, when it is
built, so a handshake costs one dictionary look-up and one pass over its
host's routes.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from wsrouter.config import Route

#: websockify's subprotocols: raw binary frames, or base64 in text frames.
BINARY = "binary"
BASE64 = "base64"


@frozen
class Match:
    """
    The outcome of routing a handshake.

    @ivar subprotocol: the subprotocol to echo in the response, or C{None}.
    @ivar base64: carry payloads as base64 text frames (websockify's
        C{base64} subprotocol) instead of binary frames.
    """

    route: Route
    subprotocol: str | None
    base64: bool


class NoRoute(Exception):
    """No route accepts the request; C{status} is the HTTP status to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def path_matches(route: Route, path: str) -> bool:
    """Whether C{route} serves C{path} (a URL path without query)."""
    if not route.prefix:
        return path == route.path
    base = route.path.rstrip("/")
    return not base or path == base or path.startswith(base + "/")


def _specificity(route: Route) -> tuple[int, int]:
    """Exact routes beat prefixes; a longer path beats a shorter one."""
    return (0 if route.prefix else 1, len(route.path.rstrip("/")))


def choose_subprotocol(route: Route, offered: Sequence[str]) -> tuple[str | None, bool] | None:
    """
    Pick the subprotocol for C{route} from what the client C{offered}.

    A route that names subprotocols takes the first one the client offered
    (in the client's order), or refuses with C{None}.  A route that names
    none speaks websockify's dialect: C{binary} if offered, else C{base64}
    if offered, else no subprotocol and binary frames.

    @return: C{(subprotocol, use base64)}, or C{None} if unacceptable.
    """
    if route.subprotocols:
        for name in offered:
            if name in route.subprotocols:
                return name, name == BASE64
        return None
    if BINARY in offered:
        return BINARY, False
    if BASE64 in offered:
        return BASE64, True
    return None, False


def select_route(routes: Sequence[Route], path: str, offered: Sequence[str], host: str | None = None) -> Match:
    """
    Choose the route for a handshake on C{path} offering C{offered}, for
    C{host} (a Host header; C{None}: none).  A one-off L{RouteTable}: build
    the table once where routes are chosen often.

    Routes are tried from the most specific path to the least; among routes
    for the same path, one that names subprotocols comes before one that
    accepts any.  The first route that accepts the client's subprotocols
    wins, so C{/x@chat} plus C{/*} sends a C{/x} client that does not speak
    C{chat} to C{/*}.

    @raise NoRoute: 404 when no route serves the path, 400 when routes
        serve it but none speaks a subprotocol the client offered.
    """
    return RouteTable(routes).select(path, offered, host)


def _choose(ordered: Sequence[Route], path: str, offered: Sequence[str]) -> Match:
    """The first of C{ordered} (already in preference order) that serves C{path} and C{offered}."""
    candidates = [route for route in ordered if path_matches(route, path)]
    if not candidates:
        return _refuse(404, f"no route for path {_shown(path)}")
    for route in candidates:
        chosen = choose_subprotocol(route, offered)
        if chosen is not None:
            return Match(route=route, subprotocol=chosen[0], base64=chosen[1])
    wanted = sorted({name for route in candidates for name in route.subprotocols})
    return _refuse(
        400,
        f"no acceptable subprotocol for {_shown(path)}: offered {_shown(', '.join(offered)) or 'none'}, "
        f"this path speaks {', '.join(wanted)}",
    )


def _shown(text: str, limit: int = 200) -> str:
    """Client text as a refusal reason quotes it: as it is when printable and not too long, else escaped and cut."""
    return text if len(text) <= limit and text.isprintable() else ascii(text[:limit])


def _refuse(status: int, reason: str) -> Match:
    raise NoRoute(status, reason)


# -- hosts ----------------------------------------------------------------------------


def host_name(header: str | None) -> str | None:
    """
    The name in a Host header (or a TLS server name): lower case, without
    port or final dot; an IPv6 literal keeps its brackets.  C{None} for no
    or an empty header.
    """
    if not header:
        return None
    text = header.strip().lower()
    if text.startswith("["):
        name = text.partition("]")[0] + "]"
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name.rstrip(".") or None


def _parent(name: str) -> str | None:
    """The domain a C{*.DOMAIN} route would need to match C{name} (one label less)."""
    label, dot, rest = name.partition(".")
    return rest if dot and label and rest else None


def _preference(route: Route) -> tuple[int, tuple[int, int], bool]:
    """Host first (exact, then C{*.}, then none), then path, then whether it names subprotocols."""
    host_rank = 0 if route.host is None else (1 if route.host.startswith("*.") else 2)
    return (host_rank, _specificity(route), bool(route.subprotocols))


class RouteTable:
    """
    The routes of one configuration, sorted once per host they name.

    A route with C{host} serves that name only (C{*.DOMAIN}: any name one
    label below DOMAIN, as a certificate wildcard does); a route without
    serves any host.  For a request, the routes of its host (exact, then
    wildcard) come before the routes without a host, each group from the
    most specific path to the least.

    @ivar uses_hosts: some route names a host.
    @ivar strict: C{unknown_host = "421"}: a name no route names gets 421
        instead of the routes without a host.
    """

    def __init__(self, routes: Sequence[Route], unknown_host: str = "default"):
        self.routes = tuple(routes)
        self.strict = unknown_host == "421"
        ordered = sorted(self.routes, key=_preference, reverse=True)
        self._any = tuple(route for route in ordered if route.host is None)
        exact = {route.host for route in ordered if route.host is not None and not route.host.startswith("*.")}
        wild = {route.host[2:] for route in ordered if route.host is not None and route.host.startswith("*.")}
        self.uses_hosts = bool(exact or wild)
        #: name -> its routes in preference order (a C{*.DOMAIN} route's under C{DOMAIN} in C{_wild}).
        self._exact: dict[str, tuple[Route, ...]] = {}
        self._wild: dict[str, tuple[Route, ...]] = {}
        for name in exact:
            wildcard = f"*.{_parent(name)}" if _parent(name) else None
            self._exact[name] = tuple(route for route in ordered
                                      if route.host is None or route.host == name or route.host == wildcard)
        for domain in wild:
            self._wild[domain] = tuple(route for route in ordered if route.host in (None, "*." + domain))

    def candidates(self, host: str | None) -> tuple[Route, ...] | None:
        """
        The routes that may serve C{host} (a Host header), best first;
        C{None} for a name no route knows when C{strict}.
        """
        name = host_name(host)
        if name is not None:
            known = self._exact.get(name)
            parent = _parent(name)
            if known is None and parent is not None:
                known = self._wild.get(parent)
            if known is not None:
                return known
        return None if self.strict else self._any

    def select(self, path: str, offered: Sequence[str], host: str | None = None) -> Match:
        """
        Choose the route for a handshake for C{host} on C{path} offering C{offered}.

        @raise NoRoute: 421 for a name no route knows (with C{unknown_host =
            "421"}), else as L{select_route}.
        """
        candidates = self.candidates(host)
        if candidates is None:
            return _refuse(421, f"no route for host {_shown(host_name(host) or '(none)')} on this router")
        return _choose(candidates, path, offered)

    def tls_name_problem(self, host: str | None, server_name: str | None) -> str | None:
        """
        Why a TLS connection's server name (SNI) and its Host header
        disagree, when routes use hosts and both are given; else C{None}.
        A client must not reach one vhost through another's certificate.
        """
        if not self.uses_hosts:
            return None
        sni, name = host_name(server_name), host_name(host)
        if sni is None or name is None or sni == name:
            return None
        return f"TLS server name {sni} does not match Host {name}"
