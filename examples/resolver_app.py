"""
A Twisted web app that routes WebSockets with a resolver written in Python
(the Python API: docs/resolvers.md).

    python examples/resolver_app.py PORT NAME=HOST:PORT [NAME=HOST:PORT ...]

GET / is the app's own page; ws://127.0.0.1:PORT/ws/desk?user=NAME reaches
NAME's backend.  The resolver answers through a Deferred (as one asking a
database would); an unknown user is refused with 403.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from wsrouter import build_resource
from wsrouter.config import Resolver, ResolverTarget, Route, RouterConfig, TcpTarget, parse_target
from wsrouter.resolvers import Refuse, ResolveRequest


class Desks:
    """Finds a user's desk; a real app would ask its database here."""

    def __init__(self, desks: dict[str, TcpTarget]):
        self.desks = desks

    def resolve(self, request: ResolveRequest) -> Deferred[Any]:
        return deferLater(reactor, 0, self._lookup, request.query_value("user"))

    def _lookup(self, user: str | None) -> TcpTarget | Refuse:
        if user is None:
            return Refuse(400, "say ?user=NAME")
        return self.desks.get(user) or Refuse(403, f"no desk for {user}")


def main(argv: list[str]) -> None:
    port, pairs = int(argv[0]), argv[1:]
    desks = {}
    for pair in pairs:
        name, _, address = pair.partition("=")
        target = parse_target(address)
        if not isinstance(target, TcpTarget):
            raise SystemExit(f"backends are NAME=HOST:PORT, not {pair!r}")
        desks[name] = target
    config = RouterConfig(
        routes=[Route("/desk", ResolverTarget("desks"))],
        resolvers=[Resolver("desks", Desks(desks), timeout=2.0)],
    )
    root = Resource()
    root.putChild(b"", Data(b"<h1>my app</h1>", "text/html"))
    root.putChild(b"ws", build_resource(config, reactor))
    reactor.listenTCP(port, Site(root), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
