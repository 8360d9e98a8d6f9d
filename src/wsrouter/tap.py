"""
The command line: twistd's Options and makeService.

Options only turn strings into a L{RouterConfig} (so every mistake is
reported at once, before anything listens); L{makeService} is the only
place that reaches for the global reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from .config import ConfigError, build_config, listener_from_short_form
from .service import RouterService, build_service

SHORT_FORM = "[HOST:]PORT TARGET_HOST:TARGET_PORT"


class Options(usage.Options):
    synopsis = f"[options] [{SHORT_FORM}]"
    longdesc = (
        "Route WebSocket connections to TCP, UDP and Unix sockets. "
        f"websockify's form '{SHORT_FORM}' listens on PORT (loopback unless HOST is given) "
        "and sends every path to the TCP target. Routes: --route PATH[@SUBPROTOCOLS]=TARGET, "
        "where PATH is exact or ends in /* for a prefix (the longest match wins), and TARGET is "
        "tcp://HOST:PORT, unix:///PATH, udp://HOST:PORT, unix-dgram:///PATH or echo:."
    )
    optFlags = [
        ["web-listing", None, "List directories of the web root that have no index.html."],
    ]
    optParameters = [
        ["web", None, None, "Serve static files from this directory on the same port."],
        ["max-message-size", None, None,
         "Largest WebSocket message accepted, in bytes (default 16 MiB); larger closes with 1009."],
        ["ping", None, None, "Send a keepalive ping every SECONDS; drop a peer that does not answer."],
        ["ping-timeout", None, None, "Seconds to wait for a pong (default: the ping interval)."],
        ["idle-timeout", None, None, "Close a session (1000) after SECONDS without traffic either way."],
        ["handshake-timeout", None, None, "Seconds a client has to finish the opening handshake (default 10)."],
        ["connect-timeout", None, None, "Seconds to wait for a target to accept (default 10); then 502."],
        ["shutdown-grace", None, None, "Seconds sessions get to close on shutdown (default 5)."],
        ["record", None, None,
         "Record every session into this directory, one file (mode 0600) per session; a route's "
         "[record=DIR] or [record=off] overrides it."],
        ["record-format", None, None, "Recording format: jsonl (default) or asciicast (terminal sessions)."],
        ["record-max-bytes", None, None, "Stop recording a session before its file grows past BYTES."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["routes"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted endpoint, e.g. tcp:8080:interface=127.0.0.1 or unix:/run/ws.sock (repeatable; default tcp:8080:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_route(self, route: str) -> None:
        """Route PATH[@SUBPROTOCOLS]=TARGET, e.g. '/vnc=tcp://127.0.0.1:5900' or '/*=udp://127.0.0.1:9000' (repeatable)."""
        self["routes"].append(route)

    opt_r = opt_route

    def parseArgs(self, *args: str) -> None:
        if len(args) not in (0, 2):
            raise usage.UsageError(f"expected {SHORT_FORM} or no arguments, got {' '.join(args)}")
        self["short_form"] = args

    def postOptions(self) -> None:
        raw: dict[str, Any] = {
            "listen": list(self["listen"]),
            "routes": list(self["routes"]),
            "web": self["web"],
            "web_listing": self["web-listing"],
        }
        for option in ("max-message-size", "ping", "ping-timeout", "idle-timeout",
                       "handshake-timeout", "connect-timeout", "shutdown-grace",
                       "record", "record-format", "record-max-bytes"):
            if self[option] is not None:
                key = "ping_interval" if option == "ping" else option.replace("-", "_")
                raw[key] = self[option]
        if self.get("short_form"):
            listen, target = self["short_form"]
            try:
                raw["listen"].append(listener_from_short_form(listen))
            except ValueError as e:
                raise usage.UsageError(f"listen address: {e}") from e
            raw["routes"].append(f"/*={target}")
        try:
            self["config"] = build_config(raw, source="command line")
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e


def makeService(options: Options) -> RouterService:
    from twisted.internet import reactor

    return build_service(options["config"], reactor)
