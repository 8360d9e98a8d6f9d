"""
The command line: twistd's Options and makeService.

Options only turn strings into a L{RouterConfig} (so every mistake is
reported at once, before anything listens); L{makeService} is the only
place that reaches for the global reactor.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.python import usage

from wsrouter.config import WRAP_MODES, ConfigError, build_config, listener_from_short_form, route_from_string
from wsrouter.config.spec import program_name
from wsrouter.descriptors import raise_open_file_limit
from wsrouter.service.single import RouterService, build_service
from wsrouter.service.workers import WorkerSupervisor, build_supervisor

SHORT_FORM = "[HOST:]PORT TARGET_HOST:TARGET_PORT"


class Options(usage.Options):
    synopsis = f"[options] [{SHORT_FORM}] | --wrap MODE [options] [[HOST:]PORT] -- PROGRAM [ARGS...]"
    longdesc = (
        "Route WebSocket connections to TCP, UDP and Unix sockets. "
        f"websockify's form '{SHORT_FORM}' listens on PORT (loopback unless HOST is given) "
        "and sends every path to the TCP target. Routes: --route PATH[@SUBPROTOCOLS]=TARGET, "
        "where PATH is exact or ends in /* for a prefix (the longest match wins), and TARGET is "
        "tcp://HOST:PORT, unix:///PATH, udp://HOST:PORT, unix-dgram:///PATH, exec:PROGRAM ARGS "
        "(one process per connection), wrap:MODE:PROGRAM ARGS or echo:. "
        "--wrap MODE -- PROGRAM ARGS starts a TCP server program under the rebind shim, which moves "
        "the port it binds to a free loopback port; the router listens on PORT (or, without one, on "
        "the loopback port the program asked for) and proxies every path to the program."
    )
    optFlags = [
        ["web-listing", None, "List directories of the web root that have no index.html."],
        ["wrap-keep-env", None, "Keep the rebind shim for programs the wrapped program execs (start scripts)."],
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
        ["wrap", None, None, "Start the program after -- and proxy to it; MODE is respawn, ignore or exit."],
        ["max-forks", None, None, "Most exec: programs running at once per route (default unlimited); then 503."],
        ["workers", None, None,
         "Router processes sharing the listeners (default 1); wrapped programs still run once."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["routes"] = []
        self["pass_env"] = []
        self["program"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Everything after C{--} is the wrapped program's command line."""
        if options is None:
            options = sys.argv[1:]
        if "--" in options:
            split = options.index("--")
            options, self["program"] = options[:split], options[split + 1:]
        super().parseOptions(options)

    def opt_pass_env(self, name: str) -> None:
        """Pass this variable of the router's environment to exec: programs (repeatable)."""
        self["pass_env"].append(name)

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted endpoint, e.g. tcp:8080:interface=127.0.0.1 or unix:/run/ws.sock (repeatable; default tcp:8080:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_route(self, route: str) -> None:
        """Route PATH[@SUBPROTOCOLS]=TARGET, e.g. '/vnc=tcp://127.0.0.1:5900' or '/*=udp://127.0.0.1:9000' (repeatable)."""
        self["routes"].append(route)

    opt_r = opt_route

    def parseArgs(self, *args: str) -> None:
        allowed = (0, 1) if self["program"] else (0, 2)
        if len(args) not in allowed:
            wanted = "[HOST:]PORT before --" if self["program"] else SHORT_FORM
            raise usage.UsageError(f"expected {wanted} or no arguments, got {' '.join(args)}")
        self["short_form"] = args

    def postOptions(self) -> None:
        raw: dict[str, Any] = {"listen": list(self["listen"]), "routes": [], "pass_env": list(self["pass_env"])}
        if self["web"] is not None:
            raw["web"] = {"root": self["web"], "listing": self["web-listing"]}
        limits = {"max-message-size": "max_message_size", "ping": "ping_interval", "ping-timeout": "ping_timeout",
                  "idle-timeout": "session_idle_timeout", "handshake-timeout": "handshake_timeout",
                  "connect-timeout": "connect_timeout", "shutdown-grace": "shutdown_grace", "max-forks": "max_forks"}
        recording = {"record": "directory", "record-format": "format", "record-max-bytes": "max_bytes"}
        for table, names in (("limits", limits), ("recording", recording)):
            values = {key: self[option] for option, key in names.items() if self[option] is not None}
            if values:
                raw[table] = values
        if self["workers"] is not None:
            raw["workers"] = self["workers"]
        try:
            raw["routes"] = [route_from_string(route) for route in self["routes"]]
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        if self["program"] or self["wrap"]:
            self._add_wrapped_program(raw)
        elif self.get("short_form"):
            listen, target = self["short_form"]
            raw["listen"].append(self._short_listener(listen))
            raw["routes"].append({"path": "/*", "target": target})
        if not raw["listen"] and not raw.get("follow_program_port"):
            del raw["listen"]
        try:
            self["config"] = build_config(raw, source="command line")
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e


    def _short_listener(self, text: str) -> str:
        try:
            return listener_from_short_form(text)
        except ValueError as e:
            raise usage.UsageError(f"listen address: {e}") from e

    def _add_wrapped_program(self, raw: dict[str, Any]) -> None:
        if not self["program"]:
            raise usage.UsageError("--wrap needs the program after --, e.g. --wrap respawn -- telnetd -debug 2023")
        if self["wrap"] not in WRAP_MODES:
            raise usage.UsageError(f"a program after -- needs --wrap MODE, MODE one of {', '.join(WRAP_MODES)}")
        ports = "*"
        if self.get("short_form"):
            (listen,) = self["short_form"]
            raw["listen"].append(self._short_listener(listen))
            ports = listen.rsplit(":", 1)[-1]
        elif not raw["listen"]:
            raw["follow_program_port"] = True
        name = program_name(self["program"])
        raw["programs"] = {name: {"mode": self["wrap"], "command": list(self["program"]), "ports": ports,
                                  "keep_env": bool(self["wrap-keep-env"])}}
        raw["routes"].append({"path": "/*", "target": f"program:{name}"})


def makeService(options: Options) -> RouterService | WorkerSupervisor:
    """
    Build the service (with C{--workers} above 1, their supervisor); an
    exit-mode program's exit stops the reactor with its status.
    """
    from twisted.internet import reactor

    raised = raise_open_file_limit()
    service: RouterService | WorkerSupervisor
    if options["config"].workers > 1:
        service = build_supervisor(options["config"], reactor)
        service.raised = raised
    else:
        service = build_service(options["config"], reactor)
        service.descriptors.raised = raised

    def program_exited(status: int) -> None:
        # twistd has no exit status of its own to set: exit with the
        # program's once twistd has finished its own shutdown.
        atexit.register(os._exit, status)
        if reactor.running:
            reactor.stop()

    service.on_program_exit = program_exited
    return service
