"""The reactor plugin: `twistd --reactor wsrouter -n wsrouter ...` runs on wsrouter's reactor."""

from twisted.application.reactors import Reactor

wsrouter_reactor = Reactor(
    "wsrouter",
    "wsrouter.reactor",
    "epoll without the per-event log context (wsrouter serve's default; Linux only).",
)
