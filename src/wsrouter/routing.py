"""
The route table: which route serves a request, and with which subprotocol.

Pure functions over L{Route} values, so every rule here is testable without
a socket.
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


def select_route(routes: Sequence[Route], path: str, offered: Sequence[str]) -> Match:
    """
    Choose the route for a handshake on C{path} offering C{offered}.

    Routes are tried from the most specific path to the least; among routes
    for the same path, one that names subprotocols comes before one that
    accepts any.  The first route that accepts the client's subprotocols
    wins, so C{/x@chat} plus C{/*} sends a C{/x} client that does not speak
    C{chat} to C{/*}.

    @raise NoRoute: 404 when no route serves the path, 400 when routes
        serve it but none speaks a subprotocol the client offered.
    """
    candidates = [route for route in routes if path_matches(route, path)]
    if not candidates:
        return _refuse(404, f"no route for path {path}")
    candidates.sort(key=lambda route: (_specificity(route), bool(route.subprotocols)), reverse=True)
    for route in candidates:
        chosen = choose_subprotocol(route, offered)
        if chosen is not None:
            return Match(route=route, subprotocol=chosen[0], base64=chosen[1])
    wanted = sorted({name for route in candidates for name in route.subprotocols})
    return _refuse(
        400,
        f"no acceptable subprotocol for {path}: offered {', '.join(offered) or 'none'}, "
        f"this path speaks {', '.join(wanted)}",
    )


def _refuse(status: int, reason: str) -> Match:
    raise NoRoute(status, reason)
