"""
The router's configuration: frozen data that checks itself.

Everything the router does is decided by one L{RouterConfig}.  Each class
checks its own fields when it is built, so a value built in Python is held
to the same rules as one read from a file (L{wsrouter.config.spec}); a class
reports every problem it finds at once, as a L{ConfigError} whose key paths
are the names of the nested schema (C{docs/config.md}).

This module is the only home of defaults and imports nothing from Twisted.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import pwd
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from attrs import Factory, field, frozen

from wsrouter.clientcert import name_problem
from wsrouter.config.template import template_fields, template_problems
from wsrouter.policy import ORIGIN_SAME, htpasswd_line_problem, network_problem, origin_policy_problem

MiB = 1024 * 1024

DEFAULT_LISTENER = "tcp:8080:interface=127.0.0.1:backlog=1024"
DEFAULT_MAX_MESSAGE_SIZE = 16 * MiB
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_GRACE = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a wrapped program's process group (or a worker) gets between
#: SIGTERM and SIGKILL.
DEFAULT_PROGRAM_KILL_GRACE = 5.0
#: Seconds an C{exec:} command's process group gets between SIGTERM and
#: SIGKILL once its session has ended.
DEFAULT_COMMAND_KILL_GRACE = 2.0
#: Who may connect (issue 10): the request head, sessions in all and per client address.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256
DEFAULT_MAX_HANDSHAKES_PER_CLIENT = 600
#: Router processes sharing the listeners (L{wsrouter.service.workers}).
DEFAULT_WORKERS = 1
#: Listener kinds whose sockets several worker processes can share.
SHAREABLE_LISTENERS = ("tcp:", "tcp6:", "unix:")
#: Twisted server endpoint types a listener may name (checked lexically).
LISTENER_KINDS = ("tcp", "tcp6", "unix", "ssl", "systemd")

#: The web root's C{frame_options} (X-Frame-Options / CSP frame-ancestors).
FRAME_OPTIONS = ("sameorigin", "deny", "off")
#: What a Host no route names gets (C{unknown_host}): the routes without a host, or 421.
UNKNOWN_HOST_CHOICES = ("default", "421")
#: A route's C{host}: a DNS name (or IPv4 address), or C{*.DOMAIN} for one more label.
HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*")
#: PROXY protocol versions a route may send to its target (L{wsrouter.proxyproto}).
PROXY_PROTOCOL_VERSIONS = ("v1", "v2")

#: Framings a route may name; see L{wsrouter.framing}.
FRAMINGS = ("binary", "line", "separator", "fixed", "auto", "text", "length", "json")

#: Recording formats (L{wsrouter.recording.FORMATS} has their file suffixes).
RECORDING_FORMATS = ("jsonl", "asciicast")
#: Request headers whose values a recording replaces by C{"[redacted]"}.
DEFAULT_RECORD_REDACT = ("cookie", "authorization", "proxy-authorization", "sec-websocket-key")
#: The C{record} value that turns recording off (for a route: even when the
#: router records everything); write C{./off} for a directory of that name.
RECORD_OFF = "off"

#: Log levels (websockify's --verbose is C{debug}) and formats.
LOG_LEVELS = ("info", "debug")
LOG_FORMATS = ("text", "json")

#: How a wrapped program is supervised when it exits.
WRAP_MODES = ("respawn", "ignore", "exit", "per-session")
#: When a shared wrapped program starts: with the router, or with its first client.
WRAP_STARTS = ("always", "on-demand")
#: Seconds an on-demand program runs with no session before it is stopped.
DEFAULT_IDLE_STOP = 300.0
#: Seconds a client waits in its handshake for an instance (or an
#: on-demand program) to bind its port.
DEFAULT_READY_TIMEOUT = 5.0
#: Per-session instances of one program that may run at once.
DEFAULT_MAX_INSTANCES = 10
#: Where the shim moves a wrapped program's socket: a Unix socket in a
#: private directory (other local users cannot reach it), or a loopback port.
WRAP_SOCKETS = ("private", "loopback")
#: The name of a wrapped program built without one.
DEFAULT_PROGRAM_NAME = "program"
PROGRAM_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ConfigError(ValueError):
    """
    A configuration has one or more problems.

    @ivar problems: C{(key path, problem)} pairs, in the order found.
    @ivar source: where the configuration came from (a file name, "command
        line"), named in the message so the user knows what to edit.
    @ivar sources: the source of each problem (a file and the command line
        combined give problems from both); by default all C{source}.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "configuration",
                 sources: Sequence[str] | None = None):
        self.problems = list(problems)
        self.source = source
        self.sources = list(sources) if sources is not None else [source] * len(self.problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One C{SOURCE: key.path: problem} line per problem."""
        return [f"{where}: {key}: {problem}" if key else f"{where}: {problem}"
                for where, (key, problem) in zip(self.sources, self.problems, strict=True)]


class _Checks:
    """Collects the problems one object finds in its own fields."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, problem: str) -> None:
        self.items.append((key, problem))

    def nested(self, prefix: str, error: ConfigError) -> None:
        for key, problem in error.problems:
            self.add(f"{prefix}.{key}" if key else prefix, problem)

    def raise_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _check_positive(checks: _Checks, key: str, value: object, *, integer: bool = False,
                    optional: bool = False) -> None:
    """C{value} must be a (whole) number greater than 0 (or C{None} when optional)."""
    if value is None and optional:
        return
    ok = _is_int(value) if integer else _is_number(value)
    if not ok or value <= 0:  # type: ignore[operator]
        kind = "a whole number" if integer else "a number"
        checks.add(key, f"must be {kind} greater than 0, not {value!r}")


def _check_bool(checks: _Checks, key: str, value: object) -> None:
    if not isinstance(value, bool):
        checks.add(key, f"must be true or false, not {value!r}")


def _check_choice(checks: _Checks, key: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        checks.add(key, f"must be {' or '.join(choices)}, not {value!r}")


def _check_text(checks: _Checks, key: str, value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        checks.add(key, f"must be {what}, not {value!r}")


def _check_strings(checks: _Checks, key: str, values: object, what: str) -> None:
    if not isinstance(values, tuple):
        checks.add(key, f"must be a list of {what}s, not {values!r}")
        return
    for index, value in enumerate(values):
        _check_text(checks, f"{key}[{index}]", value, f"a {what}")


def _off_when_zero(value: Any) -> Any:
    """Optional timers: 0 means off, as absent does (websockify's --timeout 0)."""
    return None if _is_number(value) and value == 0 else value


def _lower_host(value: Any) -> Any:
    """Host names are case-insensitive: kept in lower case, without a final dot."""
    return value.lower().rstrip(".") if isinstance(value, str) else value


def _number_as_text(value: Any) -> Any:
    """C{unknown_host = 421} (a TOML number) means C{"421"}."""
    return str(value) if _is_int(value) else value


def _as_tuple(value: Any) -> Any:
    """Lists become tuples (the frozen form); anything else is left for the checks."""
    return tuple(value) if isinstance(value, list) else value


# -- targets -----------------------------------------------------------------


def _check_port(checks: _Checks, key: str, port: object) -> None:
    if not _is_int(port) or not 0 < port < 65536:  # type: ignore[operator]
        checks.add(key, f"port must be a number from 1 to 65535, not {port!r}")


def _check_host_port(checks: _Checks, host: object, port: object) -> None:
    _check_text(checks, "host", host, "a host name or address")
    _check_port(checks, "port", port)


def _check_absolute(checks: _Checks, path: object) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        checks.add("path", f"must be an absolute path, not {path!r}")


def _host_port(host: str, port: int) -> str:
    """C{HOST:PORT}, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_sandbox(checks: _Checks, sandbox: object) -> None:
    if sandbox is not None and not isinstance(sandbox, Sandbox):
        checks.add("sandbox", f"must be a sandbox, not {sandbox!r}")


def _check_argv(checks: _Checks, key: str, argv: object) -> None:
    if not isinstance(argv, tuple) or not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
        shown = list(argv) if isinstance(argv, tuple) else argv
        checks.add(key, f"must be an executable and its arguments, not {shown!r}")


@frozen
class TcpTarget:
    """A TCP server; one connection per WebSocket session."""

    host: str
    port: int

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_host_port(checks, self.host, self.port)
        checks.raise_any()

    def describe(self) -> str:
        return f"tcp://{_host_port(self.host, self.port)}"


@frozen
class UnixTarget:
    """A Unix stream socket."""

    path: str

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_absolute(checks, self.path)
        checks.raise_any()

    def describe(self) -> str:
        return f"unix://{self.path}"


@frozen
class UdpTarget:
    """A UDP peer; one datagram per WebSocket message, both ways."""

    host: str
    port: int

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_host_port(checks, self.host, self.port)
        checks.raise_any()

    def describe(self) -> str:
        return f"udp://{_host_port(self.host, self.port)}"


@frozen
class UnixDatagramTarget:
    """A Unix datagram socket; one datagram per WebSocket message."""

    path: str

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_absolute(checks, self.path)
        checks.raise_any()

    def describe(self) -> str:
        return f"unix-dgram://{self.path}"


@frozen
class EchoTarget:
    """An in-process echo: every message comes back unchanged (demos, tests)."""

    def describe(self) -> str:
        return "echo:"


# -- sandbox (issue 13) ------------------------------------------------------------

#: Where a sandbox's programs start unless it says (a directory every user may enter).
DEFAULT_SANDBOX_CWD = "/"
SANDBOX_NAME = PROGRAM_NAME
#: Kinds of server a wrapped program may be; the shim moves that kind's bind.
WRAP_PROTOCOLS = ("tcp", "udp")


def _lookup_user(value: object) -> str | None:
    """A problem with a user name or uid, or C{None}; the account must exist here."""
    try:
        if _is_int(value):
            pwd.getpwuid(value)  # type: ignore[arg-type]
        elif isinstance(value, str) and value:
            pwd.getpwnam(value)
        else:
            return f"must be a user name or uid, not {value!r}"
    except KeyError:
        return f"no such user {value!r} on this machine"
    return None


def _lookup_group(value: object) -> str | None:
    try:
        if _is_int(value):
            grp.getgrgid(value)  # type: ignore[arg-type]
        elif isinstance(value, str) and value:
            grp.getgrnam(value)
        else:
            return f"must be a group name or gid, not {value!r}"
    except KeyError:
        return f"no such group {value!r} on this machine"
    return None


def _as_optional_tuple(value: Any) -> Any:
    return None if value is None else _as_tuple(value)


@frozen
class Sandbox:
    """
    How the programs wsrouter starts are confined: a C{[sandbox.NAME]}
    table, named by wrapped programs and exec routes (C{sandbox = "NAME"}).
    Applied in the child between fork and exec (L{wsrouter.process.sandbox}).

    @ivar user: run as this user (name or uid); supplementary groups are
        cleared.  C{None}: the router's user.
    @ivar group: and this group; by default the user's primary group.
    @ivar cpu_seconds: RLIMIT_CPU, soft = hard (the kernel kills the program there).
    @ivar memory: RLIMIT_AS in bytes (allocations beyond it fail).
    @ivar open_files: RLIMIT_NOFILE.
    @ivar processes: RLIMIT_NPROC (counted per user by the kernel).
    @ivar env: when given, only these environment variable names reach the
        program (a trailing C{*} matches a prefix); the shim's own are added after.
    @ivar no_new_privs: set PR_SET_NO_NEW_PRIVS, so setuid programs cannot gain rights.
    @ivar cwd: the working directory.
    """

    name: str
    user: str | int | None = None
    group: str | int | None = None
    cpu_seconds: int | None = None
    memory: int | None = None
    open_files: int | None = None
    processes: int | None = None
    env: tuple[str, ...] | None = field(default=None, converter=_as_optional_tuple)
    no_new_privs: bool = True
    cwd: str = DEFAULT_SANDBOX_CWD

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if not isinstance(self.name, str) or not SANDBOX_NAME.fullmatch(self.name):
            checks.add("name", f"must be letters, digits, '_', '.' or '-', not {self.name!r}")
        for key, lookup in (("user", _lookup_user), ("group", _lookup_group)):
            value = getattr(self, key)
            problem = None if value is None else lookup(value)
            if problem is not None:
                checks.add(key, problem)
        if self.group is not None and self.user is None:
            checks.add("group", "needs a user too (the group alone is not changed)")
        for key in ("cpu_seconds", "memory", "open_files", "processes"):
            value = getattr(self, key)
            if value is not None:
                _check_positive(checks, key, value, integer=True)
        _check_rlimits(checks, self)
        if self.env is not None:
            _check_strings(checks, "env", self.env, "environment variable name (or PREFIX*)")
            for index, name in enumerate(self.env if isinstance(self.env, tuple) else ()):
                if isinstance(name, str) and ("=" in name or "*" in name[:-1] or not name):
                    checks.add(f"env[{index}]", f"must be a variable name or PREFIX*, not {name!r}")
        _check_bool(checks, "no_new_privs", self.no_new_privs)
        if not isinstance(self.cwd, str) or not self.cwd.startswith("/"):
            checks.add("cwd", f"must be an absolute directory, not {self.cwd!r}")
        checks.raise_any()


#: The smallest C{memory} (bytes of address space) a program can start in:
#: the loader, libc and a stack already take a few MiB.
MIN_SANDBOX_MEMORY = 16 * 2**20
#: The largest rlimit value the kernel takes below "unlimited" (RLIM_INFINITY).
MAX_RLIMIT = 2**63 - 1


def _nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open); its usual default if unreadable."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1048576


def _check_rlimits(checks: _Checks, sandbox: Sandbox) -> None:
    """Values the kernel would refuse at the program's start, or that no program could run under."""
    for key in ("cpu_seconds", "memory", "open_files", "processes"):
        value = getattr(sandbox, key)
        if _is_int(value) and value > MAX_RLIMIT:
            checks.add(key, f"must be at most {MAX_RLIMIT}, not {value}")
    if _is_int(sandbox.memory) and 0 < sandbox.memory < MIN_SANDBOX_MEMORY:  # type: ignore[operator]
        checks.add("memory", f"{sandbox.memory} bytes is too small for any program to start (loader, libc and"
                   f" stack take a few MiB); give at least {MIN_SANDBOX_MEMORY} (16 MiB)")
    if _is_int(sandbox.open_files) and sandbox.open_files > (ceiling := _nr_open()):  # type: ignore[operator]
        checks.add("open_files", f"must be at most {ceiling}, the kernel's fs.nr_open, not {sandbox.open_files}")
    if _is_int(sandbox.open_files) and 0 < sandbox.open_files < 3:  # type: ignore[operator]
        checks.add("open_files", "must be at least 3 (stdin, stdout and stderr are open files)")
    if sandbox.processes is not None and sandbox.user is None:
        checks.add("processes", "needs a user: RLIMIT_NPROC counts every process of the program's user, so"
                   " without a user of its own it would count the router's (and root ignores it)")


@frozen
class ExecTarget:
    """
    A command run once per connection (session): messages to its stdin, its stdout to messages.

    @ivar pty: run it on a pseudo-terminal (L{wsrouter.targets.pty}): a route's C{pty = true}.
    """

    argv: tuple[str, ...] = field(converter=_as_tuple)
    #: Confinement of each command (a route's C{sandbox} key), or C{None}.
    sandbox: Sandbox | None = field(default=None, kw_only=True)
    pty: bool = field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_argv(checks, "command", self.argv)
        _check_sandbox(checks, self.sandbox)
        _check_bool(checks, "pty", self.pty)
        checks.raise_any()

    def describe(self) -> str:
        return "exec:" + shlex.join(self.argv)


@frozen
class WrappedTarget:
    """
    A TCP server program started once, under the rebind shim, which moves
    the port it binds to a loopback port the router learns and proxies to.

    The same object is a C{[programs.NAME]} entry of the configuration and
    the target of every route that names it, so two configurations run the
    same program exactly when their WrappedTargets are equal.

    @ivar name: the program's name (C{[A-Za-z0-9_.-]+}); inline C{wrap:}
        targets get one from their command.
    @ivar mode: what to do when it exits: C{respawn} (restart with backoff),
        C{ignore} (it daemonized; keep serving) or C{exit} (stop the router
        with the program's status).
    @ivar ports: the ports the shim moves: comma-separated, or C{*} for the
        first port it binds.
    @ivar keep_env: keep the shim for programs it execs (start scripts).
    @ivar socket: C{private} (a Unix socket in a directory only the router's
        user can enter) or C{loopback} (a loopback port any local user can
        reach).
    """

    mode: str
    argv: tuple[str, ...] = field(converter=_as_tuple)
    ports: str = "*"
    keep_env: bool = False
    name: str = field(default=DEFAULT_PROGRAM_NAME, kw_only=True)
    socket: str = field(default="private", kw_only=True)
    #: C{udp}: a UDP server, relayed one datagram per message.
    protocol: str = field(default="tcp", kw_only=True)
    sandbox: Sandbox | None = field(default=None, kw_only=True)
    #: Instances and on-demand starts (issue 13); see L{_check_instances}.
    start: str = field(default="always", kw_only=True)
    idle_stop: float | None = field(default=DEFAULT_IDLE_STOP, kw_only=True, converter=_off_when_zero)
    ready_timeout: float = field(default=DEFAULT_READY_TIMEOUT, kw_only=True)
    max_instances: int = field(default=DEFAULT_MAX_INSTANCES, kw_only=True)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_instances(checks, self)
        if not isinstance(self.name, str) or not PROGRAM_NAME.fullmatch(self.name):
            checks.add("name", f"must be letters, digits, '_', '.' or '-', not {self.name!r}")
        _check_choice(checks, "mode", self.mode, WRAP_MODES)
        _check_argv(checks, "command", self.argv)
        if self.ports != "*" and not (isinstance(self.ports, str) and all(
                part.strip().isdigit() and 0 < int(part) < 65536 for part in self.ports.split(","))):
            checks.add("ports", f"must be comma-separated port numbers or '*', not {self.ports!r}")
        _check_bool(checks, "keep_env", self.keep_env)
        _check_choice(checks, "socket", self.socket, WRAP_SOCKETS)
        _check_choice(checks, "protocol", self.protocol, WRAP_PROTOCOLS)
        _check_sandbox(checks, self.sandbox)
        checks.raise_any()

    def describe(self) -> str:
        return f"wrap:{self.mode}:" + shlex.join(self.argv)


def _check_instances(checks: _Checks, target: WrappedTarget) -> None:
    """
    C{start} (C{always}, or C{on-demand}: with the first client, stopped
    after C{idle_stop} seconds without one), C{ready_timeout} (how long a
    client waits for the bind), C{max_instances} (per-session mode's cap)
    and the per-session command template (L{wsrouter.config.template}).
    """
    _check_choice(checks, "start", target.start, WRAP_STARTS)
    if target.start == "on-demand" and target.mode in ("per-session", "exit"):
        checks.add("start", f"on-demand does not go with mode {target.mode!r}"
                   " (per-session instances always start on demand)")
    if target.protocol == "udp" and (target.mode == "per-session" or target.start == "on-demand"):
        checks.add("protocol", "per-session instances and on-demand starts are for TCP programs only, not udp")
    _check_positive(checks, "idle_stop", target.idle_stop, optional=True)
    _check_positive(checks, "ready_timeout", target.ready_timeout)
    _check_positive(checks, "max_instances", target.max_instances, integer=True)
    for key in unused_instance_keys(target.mode, target.start, {
            "idle_stop": target.idle_stop != DEFAULT_IDLE_STOP, "ready_timeout": target.ready_timeout !=
            DEFAULT_READY_TIMEOUT, "max_instances": target.max_instances != DEFAULT_MAX_INSTANCES}):
        checks.add(key, INSTANCE_KEY_USE[key])
    if isinstance(target.argv, tuple) and all(isinstance(a, str) for a in target.argv):
        if target.mode == "per-session":
            for problem in template_problems(target.argv):
                checks.add("command", problem)
        elif used := template_fields(target.argv):
            checks.add("command", f"uses {', '.join('{' + name + '}' for name in used)}, filled in only with "
                       f"mode = \"per-session\" (each session's own instance); mode {target.mode!r} runs the "
                       "command as written (write {{ and }} for literal braces)")


#: When each instance key applies, for the error that it is given where it does nothing.
INSTANCE_KEY_USE = {
    "idle_stop": "applies only with start = \"on-demand\" (it stops an on-demand program after that long "
                 "without a session); leave it out",
    "ready_timeout": "applies only with mode = \"per-session\" or start = \"on-demand\" (how long a client "
                     "waits for the program it started to bind); leave it out",
    "max_instances": "applies only with mode = \"per-session\" (instances running at once); leave it out",
}


def unused_instance_keys(mode: object, start: object, given: Mapping[str, bool]) -> list[str]:
    """Of the instance keys C{given} (name: given or not), those doing nothing for a program's C{mode}, C{start}."""
    on_demand, per_session = start == "on-demand", mode == "per-session"
    applies = {"idle_stop": on_demand, "ready_timeout": on_demand or per_session, "max_instances": per_session}
    return [key for key, used in applies.items() if given.get(key) and not used]


@frozen
class ReplayTarget:
    """
    A recording played back to each client: the messages the recorded
    target sent, at their recorded times divided by C{speed}.

    @ivar path: the recording file (JSON Lines or asciicast), relative to
        the router's working directory unless absolute.
    @ivar speed: 2.0 plays twice as fast, 0.5 half as fast.
    """

    path: str
    speed: float = 1.0

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_text(checks, "path", self.path, "a recording file")
        _check_positive(checks, "speed", self.speed)
        checks.raise_any()

    def describe(self) -> str:
        speed = repr(self.speed).removesuffix(".0")  # exact, unlike :g
        return f"replay:{self.path}" + (f"?speed={speed}" if self.speed != 1.0 else "")


# -- TLS (issue 10) --------------------------------------------------------------

#: Lowest TLS versions a listener may require; websockify's names are accepted too.
TLS_VERSIONS = ("1.2", "1.3")
_TLS_VERSION_NAMES = {"tlsv1_2": "1.2", "tlsv1_3": "1.3", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}


def _tls_version(value: Any) -> Any:
    return _TLS_VERSION_NAMES.get(value, value) if isinstance(value, str) else value


@frozen
class TlsSettings:
    """
    TLS on the router's C{tcp:} listeners (C{[tls]}, websockify's C{--cert}).

    Each such listener then accepts TLS and plain connections on the same
    port, told apart by their first byte, unless C{ssl_only}.

    @ivar cert: PEM file with the certificate (then any chain), and the key
        too unless C{key} is given.
    @ivar key: PEM file with the private key.
    @ivar min_version: the lowest TLS version accepted (L{TLS_VERSIONS}).
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2; C{None}: Twisted's
        modern default (forward-secret AEAD ciphers).
    @ivar ssl_only: refuse plain connections (403, then close).
    @ivar verify_client: require a client certificate that C{cafile}
        vouches for (websockify's C{--verify-client}); plain connections,
        which cannot carry one, are then refused as with C{ssl_only}.
    @ivar cafile: PEM file of the CAs client certificates must chain to.
    @ivar hosts: per-host certificates chosen by SNI, C{(name, cert, key)};
        a name may start with C{*.}; other names get C{cert}.
    """

    cert: str
    key: str | None = None
    min_version: str = field(default="1.2", converter=_tls_version)
    ciphers: str | None = None
    ssl_only: bool = False
    verify_client: bool = False
    cafile: str | None = None
    hosts: tuple[tuple[str, str, str | None], ...] = field(default=(), converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_bool(checks, "verify_client", self.verify_client)
        _check_text(checks, "cafile", self.cafile, "a PEM file of CA certificates", optional=True)
        if self.verify_client is True and self.cafile is None:
            checks.add("cafile", "required with verify_client: the CAs client certificates must chain to")
        if self.verify_client is False and self.cafile is not None:
            checks.add("cafile", "is for verify_client, which is off")
        for name, cert, key in self.hosts if isinstance(self.hosts, tuple) else ():
            if not isinstance(name, str) or not re.fullmatch(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", name):
                checks.add(f"hosts.{name}", "must be a host name, or *.DOMAIN")
            _check_text(checks, f"hosts.{name}.cert", cert, "a PEM file")
            _check_text(checks, f"hosts.{name}.key", key, "a PEM file", optional=True)
        _check_text(checks, "cert", self.cert, "a PEM file")
        _check_text(checks, "key", self.key, "a PEM file", optional=True)
        _check_choice(checks, "min_version", self.min_version, TLS_VERSIONS)
        _check_text(checks, "ciphers", self.ciphers, "an OpenSSL cipher string", optional=True)
        _check_bool(checks, "ssl_only", self.ssl_only)
        checks.raise_any()


def _pin(value: Any) -> Any:
    """A SHA-256 fingerprint as lower-case hex: C{sha256:}, colons and case are forgiven."""
    if not isinstance(value, str):
        return value
    return value.lower().removeprefix("sha256:").replace(":", "")


@frozen
class TlsTarget:
    """
    A TLS server over TCP (C{tls://HOST:PORT}); its certificate is verified
    for C{host} against the system's CAs unless told otherwise.

    @ivar ca: a PEM file of CA certificates to trust instead of the system's.
    @ivar pin: the SHA-256 fingerprint (hex) the server's certificate must
        have; the CA chain and name are then not checked.
    @ivar verify: C{False} accepts any certificate (logged loudly).
    """

    host: str
    port: int
    ca: str | None = None
    pin: str | None = field(default=None, converter=_pin)
    verify: bool = True

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_host_port(checks, self.host, self.port)
        _check_text(checks, "tls_ca", self.ca, "a PEM file of CA certificates", optional=True)
        if self.pin is not None and not (isinstance(self.pin, str) and re.fullmatch(r"[0-9a-f]{64}", self.pin)):
            checks.add("tls_pin", f"must be a SHA-256 fingerprint (64 hex digits), not {self.pin!r}")
        _check_bool(checks, "tls_verify", self.verify)
        if self.verify is False and (self.ca is not None or self.pin is not None):
            checks.add("tls_verify", "false turns off the checks tls_ca and tls_pin ask for; give one or the other")
        checks.raise_any()

    def describe(self) -> str:
        return f"tls://{_host_port(self.host, self.port)}"


@frozen
class WebSocketTarget:
    """
    A WebSocket server (C{ws://HOST:PORT/PATH}, C{wss://...}): each client
    message goes upstream whole with its type, and back; close codes pass
    through.  For C{wss://} the certificate is checked as for L{TlsTarget}.
    """

    secure: bool
    host: str
    port: int
    path: str = "/"
    ca: str | None = None
    pin: str | None = field(default=None, converter=_pin)
    verify: bool = True

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if not isinstance(self.path, str) or not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            checks.add("path", f"must start with / and hold no spaces, not {self.path!r}")
        if not self.secure and (self.ca is not None or self.pin is not None or self.verify is not True):
            checks.add("tls_verify", "tls_ca, tls_pin and tls_verify are only for wss:// targets")
        checks.raise_any()
        self.tls()  # host, port and the tls_* keys are checked as for tls://

    def tls(self) -> TlsTarget:
        """The TLS side of a C{wss://} target, for L{wsrouter.tls}."""
        return TlsTarget(self.host, self.port, self.ca, self.pin, self.verify)

    def describe(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{_host_port(self.host, self.port)}{self.path}"



# -- dynamic targets (issue 9) ---------------------------------------------------

DEFAULT_RESOLVER_TIMEOUT = 5.0
RESOLVER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@frozen
class ResolverTarget:
    """A target chosen per connection by the C{[resolvers.NAME]} resolver (L{wsrouter.resolvers})."""

    name: str

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if not isinstance(self.name, str) or not RESOLVER_NAME.fullmatch(self.name):
            checks.add("target", f"resolve:NAME needs a resolver name (letters, digits, _.-), not {self.name!r}")
        checks.raise_any()

    def describe(self) -> str:
        return f"resolve:{self.name}"


@frozen
class Resolver:
    """
    One C{[resolvers.NAME]} table: how a connection's target is found.

    @ivar plugin: a built-in name (websockify's C{TokenFile}, C{TokenRedis},
        ...; C{template}), a C{module:attribute} or C{module.Class}, an entry
        point of the C{wsrouter.resolvers} group, or (from Python) an object
        with a C{resolve(request)} method.
    @ivar source: the plugin's argument (websockify's C{--token-source}).
    @ivar host_token: read the token from the Host header (C{--host-token}).
    @ivar timeout: seconds a lookup may take; then 503.
    @ivar cache_ttl: seconds a found target is remembered (0: not cached).
    """

    name: str
    plugin: Any
    source: str = ""
    host_token: bool = False
    timeout: float = DEFAULT_RESOLVER_TIMEOUT
    cache_ttl: float = 0.0

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if not isinstance(self.name, str) or not RESOLVER_NAME.fullmatch(self.name):
            checks.add("name", f"must be letters, digits and _.-, not {self.name!r}")
        if isinstance(self.plugin, str):
            if not self.plugin.strip():
                checks.add("plugin", "must name a plugin, e.g. TokenFile, TokenRedis, template or module:attribute")
        elif not callable(getattr(self.plugin, "resolve", None)):
            checks.add("plugin", f"must be a plugin name or have a resolve(request) method, not {self.plugin!r}")
        if not isinstance(self.source, str) or "\0" in self.source:
            checks.add("source", f"must be a string (the plugin's argument), not {self.source!r}")
        _check_bool(checks, "host_token", self.host_token)
        _check_positive(checks, "timeout", self.timeout)
        if not _is_number(self.cache_ttl) or self.cache_ttl < 0 or not math.isfinite(self.cache_ttl):
            checks.add("cache_ttl", f"must be a number of seconds, 0 or more, not {self.cache_ttl!r}")
        elif self.cache_ttl and self.plugin == "template":
            checks.add("cache_ttl", "is for token stores: the cache is keyed by the token alone, a template is not")
        checks.raise_any()



#: C{package.module:factory} (the factory may be a dotted attribute path, C{module:Class.make}).
PYTHON_HANDLER_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@frozen
class PythonTarget:
    """
    In-process Python handlers (L{wsrouter.handlers}): C{python:package.module:factory}.

    From a file or the command line the factory is named (C{name}) and
    imported at start-up; from Python it may be given as the callable
    itself (C{factory}), and C{name} is then optional.
    """

    name: str = ""
    factory: Callable[..., Any] | None = None

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if self.factory is not None and not callable(self.factory):
            checks.add("target", f"a handler factory must be callable, not {self.factory!r}")
        if (self.factory is None or self.name) and not (
                isinstance(self.name, str) and PYTHON_HANDLER_NAME.fullmatch(self.name)):
            checks.add("target", f"must be python:package.module:factory, not python:{self.name}")
        checks.raise_any()

    def describe(self) -> str:
        if self.name or self.factory is None:
            return f"python:{self.name}"
        factory = self.factory
        return f"python:{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


Target: TypeAlias = (TcpTarget | UnixTarget | UdpTarget | UnixDatagramTarget | EchoTarget | ExecTarget
                     | WrappedTarget | ReplayTarget | TlsTarget | WebSocketTarget | ResolverTarget | PythonTarget)

#: Target kinds whose natural unit is a datagram, not a byte stream.
DATAGRAM_TARGETS = (UdpTarget, UnixDatagramTarget)
#: Target kinds that have no byte stream to frame.
UNFRAMED_TARGETS = (UdpTarget, UnixDatagramTarget, EchoTarget, ReplayTarget, WebSocketTarget, PythonTarget)


def default_framing(target: Target) -> str:
    """
    How a target kind's output is cut into messages when its route names no
    framing: lines (text messages) for C{exec:} commands, as websocketd does;
    chunks as they arrive (binary messages) for everything else.
    """
    return "line" if isinstance(target, ExecTarget) and not target.pty else "binary"


# -- routes ------------------------------------------------------------------


@frozen
class Framing:
    """
    How a target's byte stream is cut into WebSocket messages; C{kind} is
    the tag, and only the field of that kind means anything.

    @ivar kind: one of L{FRAMINGS}.
    @ivar separator: for C{separator}: the bytes that end each message.
    @ivar length: for C{fixed}: the size of each message in bytes.
    @ivar width: for C{length}: the size of the big-endian length prefix, 2 or 4 bytes.
    @ivar typed: for C{length}: a type byte (1 text, 2 binary) follows the prefix.
    """

    kind: str = "binary"
    separator: bytes = b"\n"
    length: int = 0
    width: int = 0
    typed: bool = False

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_choice(checks, "kind", self.kind, FRAMINGS)
        if not isinstance(self.separator, bytes) or not self.separator:
            checks.add("separator", f"must be one or more bytes, not {self.separator!r}")
        if self.kind == "fixed":
            _check_positive(checks, "length", self.length, integer=True)
        elif self.length != 0:
            checks.add("length", f"is only for fixed framing, not {self.kind!r}")
        if self.kind != "separator" and self.separator != b"\n" and not (
                self.kind == "line" and self.separator == b"\r\n"):
            checks.add("separator", f"is only for separator framing (and CRLF lines), not {self.kind!r}")
        if self.kind == "length" and self.width not in (2, 4):
            checks.add("width", f"must be 2 (u16) or 4 (u32) bytes, not {self.width!r}")
        elif self.kind != "length" and (self.width or self.typed):
            checks.add("width", f"width and typed are only for length framing, not {self.kind!r}")
        checks.raise_any()


#: An origin policy: C{"same"}, C{"off"}, or trusted origins (see L{wsrouter.policy}).
OriginPolicy: TypeAlias = str | tuple[str, ...]


def _check_origin(checks: _Checks, key: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    problem = origin_policy_problem(value)
    if problem:
        checks.add(key, problem)


@frozen
class Security:
    """
    Who may connect, router-wide (issue 10).

    @ivar origin: the origin policy of routes that name none: C{same} (a
        browser's Origin must be this site), C{off}, or trusted origins.
    @ivar auth: the C{[auth.NAME]} of routes that name none; C{None}: none.
    @ivar web_auth: the C{[auth.NAME]} the web root asks for; C{None}: none.
    """

    origin: OriginPolicy = field(default=ORIGIN_SAME, converter=_as_tuple)
    auth: str | None = None
    web_auth: str | None = None

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_origin(checks, "origin", self.origin)
        _check_text(checks, "auth", self.auth, "the name of an [auth.NAME] table", optional=True)
        _check_text(checks, "web_auth", self.web_auth, "the name of an [auth.NAME] table", optional=True)
        checks.raise_any()


#: The C{auth} value of a route that asks for nothing even when C{security.auth} is set.
AUTH_OFF = "off"


@frozen
class Auth:
    """
    One way of checking who connects (C{[auth.NAME]}); a request passes if
    any configured method accepts it.

    @ivar htpasswd: an htpasswd file of bcrypt hashes (C{htpasswd -B}), for HTTP Basic.
    @ivar users: more C{user:bcrypt-hash} lines, as in an htpasswd file.
    @ivar tokens: a file of bearer tokens, one per line (C{#} starts a comment).
    @ivar forward_user_header: a header an auth proxy in front sets to the
        user's name (forward auth), trusted only from C{forward_from}.
    @ivar forward_from: the proxies' addresses or networks (C{10.0.0.0/8}).
    @ivar realm: named in the C{WWW-Authenticate} challenge.
    @ivar client_cert_names: names a verified client certificate may have
        (a CN, C{*.} wildcard CN, or full RFC 4514 subject; see
        L{wsrouter.clientcert}); needs C{tls.verify_client}.
    """

    name: str
    htpasswd: str | None = None
    users: tuple[str, ...] = field(default=(), converter=_as_tuple)
    tokens: str | None = None
    forward_user_header: str | None = None
    forward_from: tuple[str, ...] = field(default=(), converter=_as_tuple)
    realm: str = "wsrouter"
    client_cert_names: tuple[str, ...] = field(default=(), converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_client_cert_names(checks, self.client_cert_names)
        _check_text(checks, "htpasswd", self.htpasswd, "an htpasswd file", optional=True)
        _check_strings(checks, "users", self.users, "user:hash line")
        _check_text(checks, "tokens", self.tokens, "a file of bearer tokens", optional=True)
        _check_text(checks, "forward_user_header", self.forward_user_header, "a header name", optional=True)
        _check_strings(checks, "forward_from", self.forward_from, "proxy address or network")
        _check_text(checks, "realm", self.realm, "a realm name")
        if isinstance(self.users, tuple):
            for index, line in enumerate(self.users):
                problem = htpasswd_line_problem(line) if isinstance(line, str) else None
                if problem:
                    checks.add(f"users[{index}]", problem)
        if isinstance(self.forward_from, tuple):
            for index, network in enumerate(self.forward_from):
                if isinstance(network, str) and network_problem(network):
                    checks.add(f"forward_from[{index}]", network_problem(network) or "")
        if (self.forward_user_header is None) != (not self.forward_from):
            checks.add("forward_from", "forward_user_header and forward_from go together")
        if not (self.htpasswd or self.users or self.tokens or self.forward_user_header or self.client_cert_names):
            checks.add("", "names no method: give htpasswd, users, tokens, forward_user_header or client_cert_names")
        checks.raise_any()


def _check_client_cert_names(checks: _Checks, names: tuple[str, ...]) -> None:
    _check_strings(checks, "client_cert_names", names, "certificate name")
    if isinstance(names, tuple):
        for index, name in enumerate(names):
            problem = name_problem(name) if isinstance(name, str) else None
            if problem:
                checks.add(f"client_cert_names[{index}]", problem)


#: How a route with several targets picks one (L{wsrouter.balancing}).
BALANCE_POLICIES = ("round-robin", "least-connections", "random", "hash-address", "hash-token")
#: Seconds a target that refused a connection is skipped for.
DEFAULT_DOWN_FOR = 10.0


@frozen
class Balance:
    """
    Several targets for one route, and how each session picks one (issue 9).

    @ivar targets: the targets, two or more, of the kinds that are connected
        (tcp, unix, tls, ws/wss); the route's C{target} is the first.
    @ivar policy: one of L{BALANCE_POLICIES}; C{hash-token} hashes the
        token as resolvers read it (C{?token=}, cookie, path; else the client address).
    @ivar down_for: seconds a target that could not be connected is skipped.
    """

    targets: tuple[Target, ...] = field(converter=_as_tuple)
    policy: str = "round-robin"
    down_for: float = DEFAULT_DOWN_FOR

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_choice(checks, "balance", self.policy, BALANCE_POLICIES)
        _check_positive(checks, "down_for", self.down_for)
        if not isinstance(self.targets, tuple) or len(self.targets) < 2:
            given = len(self.targets) if isinstance(self.targets, tuple) else self.targets
            checks.add("targets", f"balancing needs two or more targets (comma-separated), got {given!r}; "
                                  "a single target needs no balance")
        else:
            for index, target in enumerate(self.targets):
                if not isinstance(target, (TcpTarget, UnixTarget, TlsTarget, WebSocketTarget)):
                    described = target.describe() if hasattr(target, "describe") else repr(target)
                    checks.add(f"targets[{index}]", f"must be a tcp, unix, tls, ws or wss target, not {described}")
        checks.raise_any()


@frozen
class Route:
    """
    Where WebSocket connections for one path (and subprotocol) go.

    @ivar path: the URL path, without query.
    @ivar prefix: match C{path} and everything below it, not only C{path}.
    @ivar subprotocols: the subprotocols this route speaks; empty means any.
    @ivar framing: how target output becomes messages; C{None} picks the
        target kind's default (binary chunks; lines for exec).  Only for
        targets with a byte stream.
    @ivar max_forks: for exec targets, how many may run at once for this
        route (C{None}: the router-wide limit).
    @ivar record: a directory to record this route's sessions into
        (C{None}: the router-wide setting; L{RECORD_OFF}: not recorded).
    @ivar env: extra environment for exec targets, C{(name, value)}.
    @ivar proxy_protocol: send the target a PROXY protocol header (C{v1}
        or C{v2}) naming the client first; tcp and unix targets only.
    """

    path: str
    target: Target
    prefix: bool = False
    subprotocols: tuple[str, ...] = field(default=(), converter=_as_tuple)
    framing: Framing | None = None
    max_forks: int | None = None
    record: str | None = None
    env: tuple[tuple[str, str], ...] = field(default=(), converter=_as_tuple)
    proxy_protocol: str | None = None
    #: Who may open this route from a browser (L{wsrouter.policy}); C{None}: C{security.origin}.
    origin: OriginPolicy | None = field(default=None, converter=_as_tuple)
    #: The C{[auth.NAME]} this route asks for; C{None}: C{security.auth}; L{AUTH_OFF}: none.
    auth: str | None = None
    #: The Host this route serves (L{HOST_PATTERN}, lower case); C{None}: any host.
    host: str | None = field(default=None, converter=_lower_host)
    #: Who may watch this route's sessions from the status page (L{WATCH_MODES}).
    watch: str = "read"
    #: Several targets and a policy (C{target} is one of them); C{None}: C{target} alone.
    balance: Balance | None = None
    #: Per-session programs: instances started through this route at once
    #: (within the program's own C{max_instances}); C{None}: no route cap.
    max_instances: int | None = field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        self._check_path(checks)
        _check_choice(checks, "watch", self.watch, WATCH_MODES)
        if self.balance is not None and (not isinstance(self.balance, Balance)
                                         or self.target not in self.balance.targets):
            checks.add("targets", f"must be a Balance holding the route's target, not {self.balance!r}")
        if self.host is not None and not (isinstance(self.host, str) and HOST_PATTERN.fullmatch(self.host)):
            checks.add("host", f"must be a host name or *.DOMAIN (no port), not {self.host!r}")
        _check_proxy_protocol(checks, self.proxy_protocol, self.target)
        _check_origin(checks, "origin", self.origin, optional=True)
        _check_text(checks, "auth", self.auth, f"the name of an [auth.NAME] table (or {AUTH_OFF})", optional=True)
        if not isinstance(self.target, Target.__args__):
            checks.add("target", f"must be a target, not {self.target!r}")
        _check_bool(checks, "prefix", self.prefix)
        _check_strings(checks, "subprotocols", self.subprotocols, "subprotocol name")
        kind = type(self.target).__name__
        if self.framing is not None:
            if not isinstance(self.framing, Framing):
                checks.add("framing", f"must be a framing, not {self.framing!r}")
            elif isinstance(self.target, WrappedTarget) and self.target.protocol == "udp":
                checks.add("framing", "is only for stream targets, not a UDP program (one datagram per message)")
            elif isinstance(self.target, UNFRAMED_TARGETS):
                checks.add("framing", "is only for stream targets (tcp, unix, exec, program), "
                           f"not {_KIND_NAMES.get(kind, kind)}")
        if self.max_forks is not None:
            _check_positive(checks, "max_forks", self.max_forks, integer=True)
            if not isinstance(self.target, ExecTarget):
                checks.add("max_forks", "is only for exec targets")
        _check_text(checks, "record", self.record, f"a directory (or {RECORD_OFF})", optional=True)
        self._check_env(checks)
        _check_route_instances(checks, self.max_instances, self.target)
        checks.raise_any()

    def _check_path(self, checks: _Checks) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            checks.add("path", f"must start with '/', not {self.path!r}")
        elif "*" in self.path:
            checks.add("path", f"'*' is only allowed as a final '/*', not {self.path!r}")
        elif self.prefix and self.path != "/" and self.path.endswith("/"):
            checks.add("path", f"a prefix route's path must not end in '/', not {self.path!r}")

    def _check_env(self, checks: _Checks) -> None:
        if not isinstance(self.env, tuple) or not all(
                isinstance(pair, tuple) and len(pair) == 2 for pair in self.env):
            checks.add("env", f"must be NAME = value pairs, not {self.env!r}")
            return
        for name, value in self.env:
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                checks.add(f"env.{name}", "must be an environment variable name")
            elif not isinstance(value, str):
                checks.add(f"env.{name}", f"must be a string, not {value!r}")
        if self.env and not isinstance(self.target, ExecTarget):
            checks.add("env", "is only for exec targets")

    def describe(self) -> str:
        pattern = self.pattern()
        if self.host is not None:
            pattern = self.host + pattern
        if self.subprotocols:
            pattern += "@" + ",".join(self.subprotocols)
        return pattern

    def pattern(self) -> str:
        """The path as written in a route: a prefix route ends in C{/*}."""
        if not self.prefix:
            return self.path
        return self.path + "*" if self.path.endswith("/") else self.path + "/*"


def _check_route_instances(checks: _Checks, cap: object, target: object) -> None:
    """A route's C{max_instances}: a whole number within its per-session program's own cap."""
    if cap is None:
        return
    _check_positive(checks, "max_instances", cap, integer=True)
    if not isinstance(target, WrappedTarget) or target.mode != "per-session":
        checks.add("max_instances", "is only for routes to a per-session program (mode = \"per-session\")")
    elif _is_int(cap) and isinstance(cap, int) and cap > target.max_instances:
        checks.add("max_instances", f"{cap} is more than the program's own max_instances ({target.max_instances}),"
                   " which caps all its routes together")


def _check_proxy_protocol(checks: _Checks, version: object, target: object) -> None:
    if version is None:
        return
    _check_choice(checks, "proxy_protocol", version, PROXY_PROTOCOL_VERSIONS)
    if not isinstance(target, (TcpTarget, UnixTarget)):
        checks.add("proxy_protocol", "is only for tcp and unix stream targets")


_KIND_NAMES = {"UdpTarget": "udp", "UnixDatagramTarget": "unix-dgram", "EchoTarget": "echo",
               "ReplayTarget": "replay", "PythonTarget": "python", "WebSocketTarget": "ws/wss"}


# -- the whole router ----------------------------------------------------------


_LIMIT_TIMERS = ("handshake_timeout", "connect_timeout", "shutdown_grace")
_CLIENT_LIMITS = ("max_header_bytes", "max_connections", "max_connections_per_client",
                  "max_handshakes_per_client")
_OPTIONAL_TIMERS = ("ping_interval", "ping_timeout", "session_idle_timeout")


@frozen
class Limits:
    """
    Per-session limits and timers; times in seconds, sizes in bytes.

    C{None} (or 0) for an optional timer turns it off; C{ping_timeout}
    defaults to C{ping_interval}.
    """

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ping_interval: float | None = field(default=None, converter=_off_when_zero)
    ping_timeout: float | None = field(default=Factory(lambda self: self.ping_interval, takes_self=True),
                                       converter=_off_when_zero)
    session_idle_timeout: float | None = field(default=None, converter=_off_when_zero)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_forks: int | None = None
    #: The request line and headers together (431 beyond).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    #: Sessions at once, handshakes included (503 beyond).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Sessions at once from one client address (429 beyond).
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    #: Handshakes one client address may start per minute (429 beyond).
    max_handshakes_per_client: int = DEFAULT_MAX_HANDSHAKES_PER_CLIENT

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        for key in ("max_message_size", *_CLIENT_LIMITS):
            _check_positive(checks, key, getattr(self, key), integer=True)
        for key in _OPTIONAL_TIMERS:
            if key == "ping_timeout" and self.ping_timeout is self.ping_interval:
                continue  # the default: any problem is ping_interval's
            _check_positive(checks, key, getattr(self, key), optional=True)
        for key in _LIMIT_TIMERS:
            _check_positive(checks, key, getattr(self, key))
        _check_positive(checks, "max_forks", self.max_forks, integer=True, optional=True)
        checks.raise_any()


@frozen
class Lifetime:
    """
    When the whole router exits by itself (websockify's lifetime options).

    @ivar run_once: exit after the first session ends (C{--run-once}).
    @ivar start_timeout: exit if no client connects within this many
        seconds (websockify's C{--timeout}); C{None}: never.
    @ivar idle_exit: exit after this many seconds with no open session
        (websockify's C{--idle-timeout}); C{None}: never.
    """

    run_once: bool = False
    start_timeout: float | None = field(default=None, converter=_off_when_zero)
    idle_exit: float | None = field(default=None, converter=_off_when_zero)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_bool(checks, "run_once", self.run_once)
        _check_positive(checks, "start_timeout", self.start_timeout, optional=True)
        _check_positive(checks, "idle_exit", self.idle_exit, optional=True)
        checks.raise_any()


@frozen
class LogSettings:
    """
    Where and how much the router logs.

    @ivar file: append the log to this file; C{None}: standard error.
    @ivar level: C{info}, or C{debug} (websockify's C{--verbose}).
    @ivar traffic: one debug line per message relayed (C{--traffic}).
    @ivar format: C{text} (human-readable lines) or C{json} (one JSON object per line; L{wsrouter.ops.logformat}).
    """

    file: str | None = None
    level: str = "info"
    traffic: bool = False
    format: str = "text"

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_text(checks, "file", self.file, "a file name", optional=True)
        _check_choice(checks, "level", self.level, LOG_LEVELS)
        _check_bool(checks, "traffic", self.traffic)
        _check_choice(checks, "format", self.format, LOG_FORMATS)
        checks.raise_any()


#: A route's C{watch}: no watchers, watchers that only see, watchers whose input reaches the target.
WATCH_MODES = ("off", "read", "write")


def _check_ops_path(checks: _Checks, key: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith("/") or value == "/" or value.endswith("/") \
            or any(c in value for c in "*?# "):
        checks.add(key, f"must be a path like /metrics (no trailing '/', '*', '?', '#'), not {value!r}")


@frozen
class Ops:
    """
    The operator's pages (C{[ops]}, L{wsrouter.ops}); each is off (C{None}) unless given a path.

    @ivar metrics: Prometheus text format; loopback clients only, or C{auth}.
    @ivar status: the status page, its live WebSocket (C{STATUS/live}) and
        session watching (C{STATUS/watch/ID}); loopback only, or C{auth}.
    @ivar healthz: 200 while serving, 503 otherwise; open to every client
        (load balancers), as it tells nothing but that.
    @ivar auth: the C{[auth.NAME]} that lets other clients than loopback see
        metrics and status; C{None}: loopback clients only.
    @ivar watch_queue: bytes a watcher may fall behind before it is dropped (close 4008).
    """

    metrics: str | None = None
    status: str | None = None
    healthz: str | None = None
    auth: str | None = None
    watch_queue: int = 1 << 20

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        for key in ("metrics", "status", "healthz"):
            _check_ops_path(checks, key, getattr(self, key))
        paths = [p for p in (self.metrics, self.status, self.healthz) if isinstance(p, str)]
        if len(set(paths)) != len(paths):
            checks.add("", "metrics, status and healthz need different paths")
        _check_text(checks, "auth", self.auth, "the name of an [auth.NAME] table", optional=True)
        _check_positive(checks, "watch_queue", self.watch_queue, integer=True)
        checks.raise_any()


@frozen
class WebRoot:
    """Static files served on the same port as the WebSocket routes."""

    directory: str
    listing: bool = False
    #: C{None}: the default policy (L{wsrouter.web.static.DEFAULT_CSP}); C{"off"}: none.
    content_security_policy: str | None = None
    frame_options: str = "sameorigin"

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_text(checks, "root", self.directory, "a directory")
        _check_bool(checks, "listing", self.listing)
        _check_text(checks, "content_security_policy", self.content_security_policy, "a policy", optional=True)
        if isinstance(self.content_security_policy, str) and (
                not self.content_security_policy.isascii() or any(c in self.content_security_policy for c in "\r\n")):
            checks.add("content_security_policy", "must be one line of ASCII")
        _check_choice(checks, "frame_options", self.frame_options, FRAME_OPTIONS)
        checks.raise_any()


def _off_when_off(value: Any) -> Any:
    """A router-wide recording directory of L{RECORD_OFF} records nothing, as absent does."""
    return None if value == RECORD_OFF else value


@frozen
class Recording:
    """
    Session recording, router-wide (see C{docs/recording.md}).

    @ivar directory: record every session into this directory; C{None}
        (or L{RECORD_OFF}) records only the routes that name a directory of
        their own.
    @ivar format: one of L{RECORDING_FORMATS}.
    @ivar max_bytes: stop recording a session before its file would grow
        past this many bytes; C{None}: no limit.
    @ivar redact: request headers (lower case) whose values are not recorded.
    """

    directory: str | None = field(default=None, converter=_off_when_off)
    format: str = "jsonl"
    max_bytes: int | None = None
    redact: tuple[str, ...] = field(default=DEFAULT_RECORD_REDACT, converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_text(checks, "directory", self.directory, "a directory", optional=True)
        _check_choice(checks, "format", self.format, RECORDING_FORMATS)
        _check_positive(checks, "max_bytes", self.max_bytes, integer=True, optional=True)
        _check_strings(checks, "redact", self.redact, "request header name")
        if isinstance(self.redact, tuple):
            for index, name in enumerate(self.redact):
                if isinstance(name, str) and name != name.lower():
                    checks.add(f"redact[{index}]", f"must be lower case, not {name!r}")
        checks.raise_any()


def _check_network(checks: _Checks, key: str, value: object) -> None:
    if not isinstance(value, str):
        return  # reported by _check_strings; ipaddress would take True or 1 as 0.0.0.1
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        checks.add(key, f"must be an IP network such as 10.0.0.0/8 or ::1/128, not {value!r}")


@frozen
class Proxies:
    """
    Who may say who the client is (see C{docs/security.md}).

    @ivar trusted_proxies: networks (CIDR; a bare address is one host) whose
        PROXY headers and C{X-Forwarded-For} / C{Forwarded} headers are
        believed; none by default.
    @ivar proxy_protocol: listeners (as written in C{listen}) on which every
        connection must start with a PROXY protocol v1/v2 header from a
        trusted proxy.
    """

    trusted_proxies: tuple[str, ...] = field(default=(), converter=_as_tuple)
    proxy_protocol: tuple[str, ...] = field(default=(), converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        _check_strings(checks, "trusted_proxies", self.trusted_proxies, "IP network")
        if isinstance(self.trusted_proxies, tuple):
            for index, network in enumerate(self.trusted_proxies):
                _check_network(checks, f"trusted_proxies[{index}]", network)
        _check_strings(checks, "proxy_protocol", self.proxy_protocol, "listener")
        if self.proxy_protocol and not self.trusted_proxies:
            checks.add("proxy_protocol", "needs trusted_proxies: the addresses of the load balancers "
                       "allowed to send PROXY headers")
        checks.raise_any()


def _wrapped_of(routes: Iterable[Route]) -> tuple[WrappedTarget, ...]:
    """The wrapped programs behind C{routes}, each once, in route order."""
    found: list[WrappedTarget] = []
    for route in routes:
        if isinstance(route.target, WrappedTarget) and route.target not in found:
            found.append(route.target)
    return tuple(found)


@frozen
class Compression:
    """
    permessage-deflate (RFC 7692), negotiated on every route when on.

    Off by default: compressing costs CPU on every message relayed (most
    relayed traffic, VNC or SSH, is already compressed or encrypted), and
    compressing secrets together with data an attacker chooses in one
    context leaks them through sizes (CRIME, BREACH).  Turn it on where
    clients send compressible text (JSON, terminals) over slow links.

    @ivar permessage_deflate: accept a client's permessage-deflate offer.
    @ivar server_no_context_takeover: the router starts each message it
        sends with a fresh compressor (less memory per session, worse ratio).
    @ivar client_no_context_takeover: ask the client to do the same (when
        its offer allows it).
    @ivar server_max_window_bits: the router's LZ77 window, 9 to 15 (lower
        if the client asks for less).
    @ivar client_max_window_bits: the window asked of the client, 9 to 15
        (only when its offer allows it); 15 asks nothing.
    """

    permessage_deflate: bool = False
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        for key in ("permessage_deflate", "server_no_context_takeover", "client_no_context_takeover"):
            _check_bool(checks, key, getattr(self, key))
        for key in ("server_max_window_bits", "client_max_window_bits"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 9 <= value <= 15:
                checks.add(key, f"must be a whole number from 9 to 15, not {value!r}")
        checks.raise_any()


#: What a terminal page mount point looks like: one path segment between slashes.
TERMINAL_MOUNT = re.compile(r"/[A-Za-z0-9._~-]+/")


@frozen
class TerminalPage:
    """
    The bundled terminal page (wstelnet.html on xterm.js, L{wsrouter.web.terminal}).

    @ivar mount: where it is served, one path segment such as C{/term/}
        (C{None}: not served); it shadows the web root's files there.
    """

    mount: str | None = None

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        if self.mount is not None and not (isinstance(self.mount, str) and TERMINAL_MOUNT.fullmatch(self.mount)):
            checks.add("mount", f"must be one path segment between slashes, such as /term/, not {self.mount!r}")
        checks.raise_any()


def no_resolver_table(name: str) -> str:
    """The problem of a route naming a C{[resolvers.NAME]} table that is not there."""
    return f"no [resolvers.{name}] table"


@frozen
class RouterConfig:
    """
    Everything one router needs: where to listen, what to route, limits.

    @ivar programs: every wrapped program the supervisor starts; by default
        those the routes name.  Each route's wrapped target is one of them.
    @ivar follow_program_port: with no listener, listen on the loopback
        port the (single) wrapped program asked for.
    """

    listeners: tuple[str, ...] = field(default=(DEFAULT_LISTENER,), converter=_as_tuple)
    routes: tuple[Route, ...] = field(default=(), converter=_as_tuple)
    web: WebRoot | None = None
    limits: Limits = field(factory=Limits)
    recording: Recording = field(factory=Recording)
    lifetime: Lifetime = field(factory=Lifetime)
    log: LogSettings = field(factory=LogSettings)
    compression: Compression = field(factory=Compression)
    programs: tuple[WrappedTarget, ...] = field(
        default=Factory(lambda self: _wrapped_of(self.routes), takes_self=True),
        converter=_as_tuple)
    pass_env: tuple[str, ...] = field(default=(), converter=_as_tuple)
    follow_program_port: bool = False
    workers: int = DEFAULT_WORKERS
    proxies: Proxies = field(factory=Proxies)
    security: Security = field(factory=Security)
    auth: tuple[Auth, ...] = field(default=(), converter=_as_tuple)
    tls: TlsSettings | None = None
    terminal: TerminalPage = field(factory=TerminalPage)
    #: What a Host that no route names gets: C{"default"}, the routes without
    #: a host; C{"421"}, 421 Misdirected Request (L{wsrouter.routing}).
    unknown_host: str = field(default="default", converter=_number_as_text)
    #: Metrics, health check and status page (L{Ops}).
    ops: Ops = field(factory=Ops)
    #: The C{[resolvers.NAME]} tables the routes' C{resolve:NAME} targets use.
    resolvers: tuple[Resolver, ...] = field(default=(), converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        checks = _Checks()
        self._check_resolvers(checks)
        self._check_auth(checks)
        self._check_open_terminals(checks)
        self._check_unknown_host(checks)
        if self.tls is not None and not isinstance(self.tls, TlsSettings):
            checks.add("tls", f"must be TLS settings, not {self.tls!r}")
        self._check_listeners(checks)
        self._check_proxies(checks)
        self._check_routes(checks)
        self._check_programs(checks)
        if self.web is not None and not isinstance(self.web, WebRoot):
            checks.add("web", f"must be a web root, not {self.web!r}")
        if not self.routes and self.web is None:
            checks.add("routes", "nothing to serve: give at least one route (or a web root)")
        _check_strings(checks, "pass_env", self.pass_env, "environment variable name")
        if isinstance(self.pass_env, tuple):
            for index, name in enumerate(self.pass_env):
                if isinstance(name, str) and "=" in name:
                    checks.add(f"pass_env[{index}]", f"must be an environment variable name, not {name!r}")
        _check_bool(checks, "follow_program_port", self.follow_program_port)
        if self.follow_program_port is True and len(self.programs) != 1:
            checks.add("follow_program_port", f"needs exactly one wrapped program, not {len(self.programs)}")
        _check_positive(checks, "workers", self.workers, integer=True)
        if _is_int(self.workers) and self.workers > 1 and isinstance(self.programs, tuple):
            for program in self.programs:
                if isinstance(program, WrappedTarget) and (program.mode == "per-session" or program.start != "always"):
                    checks.add(f"programs.{program.name}", "per-session and on-demand programs need workers = 1")
        self._check_ready_timeouts(checks)
        checks.raise_any()

    def _check_listeners(self, checks: _Checks) -> None:
        _check_strings(checks, "listen", self.listeners, "Twisted endpoint string")
        if not isinstance(self.listeners, tuple):
            return
        for index, listener in enumerate(self.listeners):
            if not isinstance(listener, str) or not listener:
                continue
            kind = re.split(r"(?<!\\):", listener, maxsplit=1)[0]
            if kind not in LISTENER_KINDS:
                checks.add(f"listen[{index}]", f"unknown endpoint type {kind!r} (expected {', '.join(LISTENER_KINDS)})")
            elif _is_int(self.workers) and self.workers > 1 and not listener.startswith(SHAREABLE_LISTENERS):
                checks.add(f"listen[{index}]", f"workers cannot share {listener!r}; with workers > 1 use "
                           f"{', '.join(kind + '...' for kind in SHAREABLE_LISTENERS)} listeners")

    def _check_proxies(self, checks: _Checks) -> None:
        if not isinstance(self.proxies, Proxies):
            checks.add("proxies", f"must be proxy settings, not {self.proxies!r}")
            return
        for index, listener in enumerate(self.proxies.proxy_protocol):
            if listener not in self.listeners:
                checks.add(f"proxy_protocol[{index}]", f"{listener!r} is not one of the listeners in listen")

    def _check_routes(self, checks: _Checks) -> None:
        if not isinstance(self.routes, tuple):
            checks.add("routes", f"must be a list of routes, not {self.routes!r}")
            return
        seen: dict[tuple[str, bool, frozenset[str], str | None], int] = {}
        for index, route in enumerate(self.routes):
            if not isinstance(route, Route):
                checks.add(f"routes[{index}]", f"must be a route, not {route!r}")
                continue
            identity = (route.path, route.prefix, frozenset(route.subprotocols), route.host)
            if identity in seen:
                checks.add(f"routes[{index}]", f"duplicates routes[{seen[identity]}] ({route.describe()})")
            seen.setdefault(identity, index)

    def _check_ready_timeouts(self, checks: _Checks) -> None:
        """A client waits for a per-session or on-demand program within its handshake, so for less time."""
        if not isinstance(self.programs, tuple) or not isinstance(self.limits, Limits) \
                or not _is_number(self.limits.handshake_timeout):
            return
        for program in self.programs:
            if isinstance(program, WrappedTarget) and (program.mode == "per-session" or program.start != "always") \
                    and _is_number(program.ready_timeout) and program.ready_timeout >= self.limits.handshake_timeout:
                checks.add(f"programs.{program.name}.ready_timeout",
                           f"must be less than limits.handshake_timeout ({self.limits.handshake_timeout:g} s), "
                           "or the client's handshake times out first")

    def _check_unknown_host(self, checks: _Checks) -> None:
        _check_choice(checks, "unknown_host", self.unknown_host, UNKNOWN_HOST_CHOICES)
        if self.unknown_host == "421" and isinstance(self.routes, tuple) and not any(
                isinstance(route, Route) and route.host is not None for route in self.routes):
            checks.add("unknown_host", "421 needs routes with a host: give some route a host, or use \"default\"")

    def _check_programs(self, checks: _Checks) -> None:
        if not isinstance(self.programs, tuple) or not all(isinstance(p, WrappedTarget) for p in self.programs):
            checks.add("programs", f"must be wrapped programs, not {self.programs!r}")
            return
        names: set[str] = set()
        for program in self.programs:
            if program.name in names:
                checks.add(f"programs.{program.name}", "two different programs have this name")
            names.add(program.name)
        if not isinstance(self.routes, tuple):
            return
        for index, route in enumerate(self.routes):
            if isinstance(route, Route) and isinstance(route.target, WrappedTarget) \
                    and route.target not in self.programs:
                checks.add(f"routes[{index}].target", f"program {route.target.name!r} is not in programs")

    def _check_resolvers(self, checks: _Checks) -> None:
        if not isinstance(self.resolvers, tuple) or not all(isinstance(r, Resolver) for r in self.resolvers):
            checks.add("resolvers", f"must be [resolvers.NAME] tables, not {self.resolvers!r}")
            return
        names = {resolver.name for resolver in self.resolvers}
        for index, route in enumerate(self.routes if isinstance(self.routes, tuple) else ()):
            if isinstance(route, Route) and isinstance(route.target, ResolverTarget) and route.target.name not in names:
                checks.add(f"routes[{index}].target", no_resolver_table(route.target.name))

    def resolver(self, name: str) -> Resolver | None:
        """The C{[resolvers.NAME]} table called C{name}, if any."""
        return next((resolver for resolver in self.resolvers if resolver.name == name), None)

    def recording_directory(self, route: Route) -> str | None:
        """Where C{route}'s sessions are recorded: its own directory, else the router's; C{None}: nowhere."""
        if route.record == RECORD_OFF:
            return None
        return route.record or self.recording.directory

    def _check_auth(self, checks: _Checks) -> None:
        if not isinstance(self.auth, tuple) or not all(isinstance(a, Auth) for a in self.auth):
            checks.add("auth", f"must be [auth.NAME] tables, not {self.auth!r}")
            return
        names = {auth.name for auth in self.auth}
        wanted = [("security.auth", self.security.auth), ("security.web_auth", self.security.web_auth),
                  ("ops.auth", self.ops.auth if isinstance(self.ops, Ops) else None)]
        if isinstance(self.routes, tuple):
            wanted += [(f"routes[{i}].auth", r.auth) for i, r in enumerate(self.routes) if isinstance(r, Route)]
        for key, name in wanted:
            if name is not None and name != AUTH_OFF and name not in names:
                checks.add(key, f"no [auth.{name}] table")
        verified = isinstance(self.tls, TlsSettings) and self.tls.verify_client is True
        for auth in self.auth:
            if auth.client_cert_names and not verified:
                checks.add(f"auth.{auth.name}.client_cert_names",
                           "needs tls.verify_client (with tls.cafile): without it no client certificate is asked for")

    def _check_open_terminals(self, checks: _Checks) -> None:
        """A pty route hands out a terminal: it needs credentials, or says C{auth = "off"} in so many words."""
        if not isinstance(self.routes, tuple) or not isinstance(self.security, Security):
            return
        for i, route in enumerate(self.routes):
            if (isinstance(route, Route) and isinstance(route.target, ExecTarget) and route.target.pty
                    and route.auth is None and self.security.auth is None):
                checks.add(f"routes[{i}].auth", "a pty route hands out a terminal: name an [auth.NAME] here "
                           f"(or set security.auth), or write auth = \"{AUTH_OFF}\" to let anyone who reaches "
                           "the listener in")

    def auth_for(self, route: Route | None) -> Auth | None:
        """What C{route} (C{None}: the web root) asks for: its own, else the router's; C{None}: nothing."""
        name = self.security.web_auth if route is None else (
            route.auth if route.auth is not None else self.security.auth)
        if name is None or name == AUTH_OFF:
            return None
        return next(auth for auth in self.auth if auth.name == name)

    def origin_policy(self, route: Route) -> OriginPolicy:
        """C{route}'s origin policy: its own, else the router's."""
        return route.origin if route.origin is not None else self.security.origin

