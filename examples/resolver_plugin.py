"""
A third-party resolver, loaded by name: ``plugin = "examples.resolver_plugin:PortTable"``
(or registered as an entry point of the ``wsrouter.resolvers`` group; docs/resolvers.md).

``source`` is ``NAME=PORT,NAME=PORT``: the token NAME reaches 127.0.0.1:PORT.
A token in the table but on a port outside 1024-65535 is refused with 403.

    [[routes]]
    path = "/desk/*"
    target = "resolve:desks"

    [resolvers.desks]
    plugin = "examples.resolver_plugin:PortTable"
    source = "alice=5901,bob=5902"
"""

from __future__ import annotations

from typing import Any

from wsrouter.config import TcpTarget
from wsrouter.resolvers import Refuse, ResolveRequest


class PortTable:
    """The factory: called with the [resolvers.NAME] table (its .source, .timeout...) and the reactor."""

    def __init__(self, settings: Any, reactor: Any):
        self.ports: dict[str, int] = {}
        for entry in filter(None, settings.source.split(",")):
            name, _, port = entry.partition("=")
            if not port.strip().isdigit():
                raise ValueError(f"PortTable source needs NAME=PORT entries, not {entry!r}")
            self.ports[name.strip()] = int(port)

    def resolve(self, request: ResolveRequest) -> TcpTarget | Refuse | None:
        """A target, a Refuse, None (404), or a Deferred of one of them; request.token is websockify's token."""
        port = self.ports.get(request.token or "")
        if port is None:
            return None
        if not 1024 <= port <= 65535:
            return Refuse(403, "that desk is not open to the web")
        return TcpTarget("127.0.0.1", port)
