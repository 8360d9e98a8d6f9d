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

from wsrouter import __version__
from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.cli.reload import Reloader, outcome_path
from wsrouter.config import ConfigError, RouterConfig, load_config
from wsrouter.descriptors import raise_open_file_limit
from wsrouter.lifetime import LifetimeService
from wsrouter.preflight import check_or_raise
from wsrouter.service.single import RouterService, build_service
from wsrouter.service.workers import WorkerSupervisor, build_supervisor

SHORT_FORM = "[HOST:]PORT TARGET_HOST:TARGET_PORT"


#: websockify options wsrouter does not have yet: what to write instead, or where it is coming.
NOT_YET = {
    "unix-listen": "write --listen unix:PATH instead",
    "unix-listen-mode": "write --listen unix:PATH:mode=MODE (octal) instead",
    "inetd": "inetd socket activation is not supported; give --listen",
    "syslog": "syslog logging is not supported; use --log-file FILE, or twistd --syslog wsrouter ...",
    "legacy-syslog": "syslog logging is not supported; use --log-file FILE",
    "libserver": "not needed: wsrouter has one server implementation",
    "file-only": "the web root never follows symlinks out of itself already; drop --file-only",
    "prefer-ipv6": "give the address you want, e.g. [::]:8080",
    "ssl-target-host": "not supported: a tls://HOST:PORT target is verified for its HOST",
}
DAEMON_HINT = "use twistd wsrouter ... (which daemonizes; -n keeps it in the foreground)"


class NotSupported(usage.UsageError):
    """A websockify option wsrouter does not have (yet); the message says what to write instead."""


class Options(usage.Options):
    """
    The serve options, for C{twistd wsrouter} and C{wsrouter [serve]}.

    Parsing only lowers strings into the nested schema (L{options_to_raw})
    and builds the frozen config, so every mistake is reported at once,
    before anything listens.
    """

    synopsis = f"[options] [{SHORT_FORM}] | --wrap MODE [options] [[HOST:]PORT] -- PROGRAM [ARGS...]"
    longdesc = (
        "Route WebSocket connections to TCP, UDP and Unix sockets. "
        f"websockify's form '{SHORT_FORM}' listens on PORT (loopback unless HOST is given) "
        "and sends every path to the TCP target. Routes: --route PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET, "
        "where PATH is exact or ends in /* for a prefix (the longest match wins), and TARGET is "
        "tcp://HOST:PORT, tls://HOST:PORT (certificate verified), unix:///PATH, udp://HOST:PORT, "
        "unix-dgram:///PATH, exec:COMMAND ARGS "
        "(one process per connection), wrap:MODE:PROGRAM ARGS, python:MODULE:FACTORY "
        "(in-process handlers, docs/handlers.md) or echo:. "
        "--wrap MODE -- PROGRAM ARGS starts a TCP server program under the rebind shim, which moves "
        "the port it binds to a free loopback port; the router listens on PORT (or, without one, on "
        "the loopback port the program asked for) and proxies every path to the program. "
        "--config FILE reads a TOML file first; the command line is combined over it "
        "(its values win, its listeners and routes are added after the file's). "
        "websockify's --timeout and --idle-timeout exit the whole router; "
        "--session-idle-timeout closes one quiet session."
    )
    #: Under twistd, logging and daemonizing are twistd's.
    under_twistd = True
    #: Set when parsing failed: twistd then prints L{getUsage} above the problem.
    failed = False

    optFlags = [
        ["web-listing", None, "List directories of the web root that have no index.html."],
        ["wrap-keep-env", None, "Keep the rebind shim in whatever the wrapped program execs (start scripts)."],
        ["permessage-deflate", None, "Accept permessage-deflate (compression) offers on every route; "
         "off by default (CPU per message; see docs/conformance.md). Its parameters: [compression] in a file."],
        ["run-once", None, "Exit after the first session ends (websockify --run-once)."],
        ["verbose", "v", "Log debug messages too (websockify --verbose)."],
        ["traffic", None, "Log one debug line per message relayed (websockify --traffic); implies --verbose."],
        ["web-auth", None, "Ask the web root for the --auth-plugin BasicHTTPAuth credentials too (websockify)."],
        ["ssl-only", None, "Refuse plain connections on the TLS listeners (403); needs --cert."],
        ["verify-client", None, "Require a client certificate signed by a --cafile CA (refuses plain connections)."],
        ["ssl-target", None, "Speak TLS to the short form's target, verifying its certificate (tls://HOST:PORT)."],
        ["daemon", "D", "websockify's daemon mode: " + DAEMON_HINT + "."],
        ["host-token", None, "Read the --token-plugin's token from the Host header (websockify --host-token)."],
    ]
    optParameters = [
        ["config", "c", None, "Read listeners, routes, programs and settings from this TOML file first."],
        ["web", None, None, "Serve static files from this directory on the same port."],
        ["terminal", None, None, "Serve the bundled terminal page (wstelnet.html, xterm.js) under this path: /term/."],
        ["max-message-size", None, None,
         "Largest WebSocket message accepted, in bytes (default 16 MiB); larger closes with 1009."],
        ["ping", None, None, "Send a keepalive ping every SECONDS; drop a peer that does not answer."],
        ["heartbeat", None, None, "websockify's name for --ping SECONDS."],
        ["ping-timeout", None, None, "Seconds to wait for a pong (default: the ping interval)."],
        ["session-idle-timeout", None, None, "Close a session (1000) after SECONDS without traffic either way."],
        ["timeout", None, None, "Exit if no client has connected within SECONDS (websockify --timeout)."],
        ["idle-timeout", None, None,
         "Exit after SECONDS without any open session (websockify --idle-timeout); "
         "to close one quiet session use --session-idle-timeout."],
        ["handshake-timeout", None, None, "Seconds a client has to finish the opening handshake (default 10)."],
        ["connect-timeout", None, None, "Seconds to wait for a target to accept (default 10); then 502."],
        ["shutdown-grace", None, None, "Seconds sessions get to close on shutdown (default 5)."],
        ["record", None, None,
         "Record every session into this directory (created if missing), one file (mode 0600) per "
         "session; a route's [record=DIR] or [record=off] overrides it. websockify's --record FILE "
         "writes FILE.1, FILE.2...: wsrouter takes a directory instead, and refuses an existing file."],
        ["record-format", None, None, "Recording format: jsonl (default) or asciicast (terminal sessions)."],
        ["record-max-bytes", None, None, "Stop recording a session before its file grows past BYTES."],
        ["wrap", None, None, "Start the program after -- and proxy to it; MODE is respawn, ignore, exit "
                             "or per-session (a fresh instance per WebSocket session)."],
        ["wrap-start", None, None, "always (default) or on-demand: start the program with its first client."],
        ["wrap-idle-stop", None, None, "On-demand: stop the program after SECONDS with no session (default 300; "
                                       "0 never)."],
        ["wrap-ready-timeout", None, None, "Per-session or on-demand: SECONDS a client waits for the program to "
                                           "bind (default 5); then 503."],
        ["wrap-max-instances", None, None, "Per-session: instances running at once (default 10); then 503."],
        ["wrap-mode", None, None, "websockify's name for --wrap MODE."],
        ["wrap-socket", None, None, "Where the shim moves the program's socket: private (default; a Unix socket "
                                    "only the router's user can reach) or loopback (a 127.0.0.1 port)."],
        ["wrap-user", None, None, "Run the wrapped program as USER[:GROUP] (router as root), no supplementary "
                                  "groups, no_new_privs; rlimits etc. in a [sandbox.NAME] table (docs/sandbox.md)."],
        ["wrap-memory", None, None, "The wrapped program's address space limit in BYTES (RLIMIT_AS; docs/sandbox.md)."],
        ["wrap-cpu-seconds", None, None, "CPU seconds after which the kernel kills the wrapped program (RLIMIT_CPU)."],
        ["wrap-open-files", None, None, "The wrapped program's open-files limit (RLIMIT_NOFILE)."],
        ["wrap-processes", None, None, "Processes the wrapped program's user may have (RLIMIT_NPROC; needs "
                                       "--wrap-user)."],
        ["wrap-protocol", None, None, "tcp (default) or udp: the wrapped program is a UDP server, relayed "
                                      "one datagram per message (private or loopback as --wrap-socket says)."],
        ["token-plugin", None, None,
         "Choose each connection's target by its token (websockify): TokenFile, ReadOnlyTokenFile, TokenRedis, "
         "JSONTokenApi, JWTTokenApi, UnixDomainSocketDirectory, template, ... or module:attribute; "
         "give the listening [HOST:]PORT alone (docs/resolvers.md)."],
        ["token-source", None, None, "The --token-plugin's argument: a file, directory, URL, key file or "
                                     "Redis host[:port[:db[:password[:namespace]]]] (websockify)."],
        ["target-config", None, None, "websockify's older --token-plugin TokenFile --token-source FILE|DIR."],
        ["unix-target", None, None, "Proxy every path to this Unix socket (websockify --unix-target); "
                                    "give the listening [HOST:]PORT alone."],
        ["max-forks", None, None, "Most exec: commands running at once per route (default unlimited); then 503."],
        ["workers", None, None,
         "Router processes sharing the listeners (default 1); wrapped programs still run once."],
        ["cert", None, None,
         "TLS on the tcp listeners: PEM file with the certificate (and the key, unless --key); "
         "TLS and plain connections share the port unless --ssl-only."],
        ["key", None, None, "PEM file with the TLS private key (default: in the --cert file)."],
        ["cafile", None, None, "PEM file of the CAs client certificates must chain to (--verify-client)."],
        ["ssl-version", None, None, "Lowest TLS version accepted: tlsv1_2 (default) or tlsv1_3."],
        ["ssl-ciphers", None, None, "OpenSSL cipher string for TLS 1.2 (default: modern forward-secret ciphers)."],
        ["log-file", None, None, "Log to this file instead of stderr (websockify --log-file)."],
        ["log-format", None, None, "text (default: human-readable lines) or json (one JSON object per line)."],
        ["metrics", None, None, "Serve Prometheus metrics at this path (e.g. /metrics); loopback clients only "
                                "unless --ops-auth."],
        ["status", None, None, "Serve the live status page at this path (e.g. /status), with session watching "
                               "under PATH/watch/ID; loopback clients only unless --ops-auth."],
        ["healthz", None, None, "Answer health checks at this path (e.g. /healthz): 200 while serving, else 503; "
                                "open to every client."],
        ["ops-auth", None, None, "The [auth.NAME] (or 'websockify' with --auth-plugin BasicHTTPAuth) that lets "
                                 "non-loopback clients see --metrics and --status."],
        ["unknown-host", None, None, "A Host no route names: default (the routes without [host=...]) or 421."],
        ["max-header-bytes", None, None,
         "Largest request line plus headers, in bytes (default 65536); larger gets 431."],
        ["max-connections", None, None, "Most sessions at once, handshakes included (default 10000); then 503."],
        ["max-connections-per-client", None, None,
         "Most sessions at once from one client address (default 256); then 429."],
        ["max-handshakes-per-client", None, None,
         "Most handshakes one client address may start per minute (default 600); then 429."],
        ["origin-policy", None, None,
         "Who may connect from a browser: same (the Origin must be this site; the default), off, "
         "or space-separated trusted origins (https://a.example https://*.b.example)."],
        ["auth-plugin", None, None,
         "websockify's auth plugin: ExpectOrigin (--auth-source ORIGINS), BasicHTTPAuth (--auth-source USER:PASS) "
         "or ClientCertCNAuth (--auth-source \"CN CN...\", with --verify-client)."],
        ["auth-source", None, None,
         "The auth plugin's argument: space-separated origins, USER:PASSWORD (kept only as a bcrypt hash), "
         "or space-separated client-certificate common names."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["routes"] = []
        self["pass_env"] = []
        self["proxy_listen"] = []
        self["trusted_proxies"] = []
        self["program"] = []
        self["short_form"] = ()
        self["argv"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Everything after C{--} is the wrapped program's command line."""
        if options is None:
            options = sys.argv[1:]
        self["argv"] = list(options)
        if "--" in options:
            split = options.index("--")
            options, self["program"] = options[:split], options[split + 1:]
        try:
            _refuse_unsupported(options)
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError:
            self.failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """
        The option list; after a mistake under twistd, only where to find it, as twistd prints the usage
        before the one line that says what is wrong (which ~100 lines of options would push off the screen).
        """
        if self.under_twistd and self.failed:
            return "(twistd -n wsrouter --help lists the options)"
        return str(super().getUsage(width))

    def opt_pass_env(self, name: str) -> None:
        """Pass this variable of the router's environment to exec: commands (repeatable)."""
        self["pass_env"].append(name)

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint to listen on, e.g. unix:/run/ws.sock (repeatable; default tcp:8080:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_proxy_listen(self, endpoint: str) -> None:
        """Like --listen, but each connection must start with a PROXY v1/v2 header from a --trusted-proxy."""
        self["proxy_listen"].append(endpoint)

    def opt_trusted_proxy(self, network: str) -> None:
        """A proxy (IP or CIDR) whose PROXY and X-Forwarded-For/Forwarded headers are believed (repeatable)."""
        self["trusted_proxies"].append(network)

    def opt_route(self, route: str) -> None:
        """Route PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET, e.g. '/vnc=tcp://127.0.0.1:5900',
        '/calc[framing=line]=exec:bc -q'; OPTIONS are KEY=VALUE pairs separated by ';' (docs/config.md); repeatable."""
        self["routes"].append(route)

    opt_r = opt_route

    def opt_version(self) -> None:
        """Print wsrouter's version and exit."""
        print(f"wsrouter {__version__}")
        sys.exit(0)

    def parseArgs(self, *args: str) -> None:
        self["short_form"] = args

    def postOptions(self) -> None:
        if self["daemon"]:
            hint = ("twistd daemonizes by itself unless given --nodaemon (-n); drop -D" if self.under_twistd
                    else DAEMON_HINT)
            raise usage.UsageError(f"-D/--daemon: {hint}")
        if self.under_twistd and self["log-file"]:
            raise usage.UsageError("--log-file: under twistd, give twistd's own --logfile FILE before 'wsrouter'")
        if self.under_twistd and self["log-format"] == "json":
            raise usage.UsageError("--log-format json: under twistd, give twistd's own "
                                   "--logger wsrouter.ops.logformat.json_logger before 'wsrouter'")
        _merge_alias(self, "wrap-mode", "wrap")
        _merge_alias(self, "heartbeat", "ping")
        try:
            self["raw"] = options_to_raw(self)
        except LoweringError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["config-file"] = self["config"]
            self["config"] = load_config(self["config-file"], self["raw"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e
        self["lifetime"] = lifetime_settings(self)
        if any(self["lifetime"]) and self["config"].workers > 1:
            raise usage.UsageError("--run-once, --timeout and --idle-timeout work with one router process; "
                                   "drop --workers")
        if self["traffic"] and self["config"].workers > 1:
            raise usage.UsageError("--traffic logs one router process's messages; drop --workers to use it")


class ServeOptions(Options):
    """C{wsrouter [serve]}: the same options; run without twistd, it logs by itself."""

    under_twistd = False


def _merge_alias(options: usage.Options, alias: str, name: str) -> None:
    if options[alias] is None:
        return
    if options[name] is not None and options[name] != options[alias]:
        raise usage.UsageError(f"--{alias} and --{name} are the same option; give one")
    options[name] = options[alias]


def _refuse_unsupported(argv: list[str]) -> None:
    """websockify options wsrouter lacks stop with what to write instead, not a getopt message."""
    problems = []
    for arg in argv:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name in NOT_YET:
            problems.append(f"--{name}: not supported yet: {NOT_YET[name]}")
    if problems:
        raise NotSupported("\n".join(problems))


def global_reactor() -> Any:
    """The global reactor, typed Any (its zope interfaces are not mypy types)."""
    from twisted.internet import reactor

    return reactor


def rebuild_config(options: Options) -> RouterConfig:
    """
    The config again from the original command line (and its --config
    file, read anew), with the start-up checks: what a reload applies.

    @raise ConfigError: listing every problem.
    """
    fresh = type(options)()
    try:
        fresh.parseOptions(list(options["argv"]))
    except usage.UsageError as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise ConfigError([("command line", str(e))], "reload") from None
    config: RouterConfig = fresh["config"]
    check_or_raise(config)
    return config


def lifetime_settings(options: Options) -> tuple[bool, float | None, float | None]:
    """(run_once, start_timeout, idle_exit) from the config."""
    settings = options["config"].lifetime
    return settings.run_once, settings.start_timeout, settings.idle_exit


def traffic_of(options: Options) -> bool:
    """Whether --traffic (log.traffic) is on."""
    return bool(options["config"].log.traffic)


def lifetime_of(options: Options) -> LifetimeService | None:
    """The --run-once/--timeout/--idle-timeout rules (C{None} if none is on)."""
    run_once, start_timeout, idle_exit = options["lifetime"]
    if not (run_once or start_timeout or idle_exit):
        return None
    reactor = global_reactor()

    def stop(reason: str) -> None:
        if reactor.running:
            reactor.stop()

    return LifetimeService(reactor, stop, run_once=run_once, start_timeout=start_timeout, idle_exit=idle_exit)



def makeService(options: Options) -> RouterService | WorkerSupervisor:
    """
    Check the machine (every problem at once, exit 2), then build the
    service (with C{--workers} above 1, their supervisor); an exit-mode
    program's exit stops the reactor with its status.  SIGHUP reloads.
    """
    reactor = global_reactor()
    try:
        check_or_raise(options["config"])
    except ConfigError as e:
        print(f"wsrouter: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raised = raise_open_file_limit()
    service: RouterService | WorkerSupervisor
    lifetime = lifetime_of(options)
    if options["config"].workers > 1:
        service = build_supervisor(options["config"], reactor)
        service.raised = raised
    else:
        service = build_service(options["config"], reactor)
        service.descriptors.raised = raised
        service.gateway.traffic = traffic_of(options)
        if lifetime is not None:
            lifetime.watch(service.gateway)
            lifetime.setServiceParent(service)  # type: ignore[no-untyped-call]

    def program_exited(status: int) -> None:
        # twistd has no exit status of its own to set: exit with the
        # program's once twistd has finished its own shutdown.
        atexit.register(os._exit, status)
        if reactor.running:
            reactor.stop()

    service.on_program_exit = program_exited
    Reloader(service, lambda: rebuild_config(options),
             outcome=lambda: outcome_path(os.getpid())).install(reactor)
    return service
