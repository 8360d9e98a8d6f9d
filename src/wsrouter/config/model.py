"""
The router's configuration: frozen data, parsed from plain values.

Everything the router does is decided by one L{RouterConfig}.  The command
line (L{wsrouter.cli.tap}) and embedding applications build it through
L{build_config}, which checks every field and reports all problems at once,
each with the key path it concerns, instead of stopping at the first.

This module is the only home of defaults and imports nothing from Twisted.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Union

from attrs import field, frozen
from attrs.validators import in_

MiB = 1024 * 1024

DEFAULT_LISTENER = "tcp:8080:interface=127.0.0.1:backlog=1024"
DEFAULT_MAX_MESSAGE_SIZE = 16 * MiB
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_GRACE = 5.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Router processes sharing the listeners (L{wsrouter.service.workers}).
DEFAULT_WORKERS = 1
#: Listener kinds whose sockets several worker processes can share.
SHAREABLE_LISTENERS = ("tcp:", "tcp6:", "unix:")

#: Framings a route may name; see L{wsrouter.framing}.
FRAMINGS = ("binary", "line", "separator", "fixed")

#: Recording formats (L{wsrouter.recording.FORMATS} has their file suffixes).
RECORDING_FORMATS = ("jsonl", "asciicast")
#: Request headers whose values a recording replaces by C{"[redacted]"}.
DEFAULT_RECORD_REDACT = ("cookie", "authorization", "proxy-authorization", "sec-websocket-key")
#: The C{record} value that turns recording off (for a route: even when the
#: router records everything); write C{./off} for a directory of that name.
RECORD_OFF = "off"


class ConfigError(ValueError):
    """
    A configuration has one or more problems.

    @ivar problems: C{(key path, problem)} pairs, in the order found.
    @ivar source: where the configuration came from (a file name, "command
        line"), named in the message so the user knows what to edit.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "configuration"):
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s):"]
        lines += [f"  {key}: {problem}" for key, problem in self.problems]
        super().__init__("\n".join(lines))


# -- targets -----------------------------------------------------------------


@frozen
class TcpTarget:
    """A TCP server; one connection per WebSocket session."""

    host: str
    port: int

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@frozen
class UnixTarget:
    """A Unix stream socket."""

    path: str

    def describe(self) -> str:
        return f"unix://{self.path}"


@frozen
class UdpTarget:
    """A UDP peer; one datagram per WebSocket message, both ways."""

    host: str
    port: int

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"


@frozen
class UnixDatagramTarget:
    """A Unix datagram socket; one datagram per WebSocket message."""

    path: str

    def describe(self) -> str:
        return f"unix-dgram://{self.path}"


@frozen
class EchoTarget:
    """An in-process echo: every message comes back unchanged (demos, tests)."""

    def describe(self) -> str:
        return "echo:"


@frozen
class ExecTarget:
    """A program started per connection: messages to stdin, stdout to messages."""

    argv: tuple[str, ...]

    def describe(self) -> str:
        return "exec:" + shlex.join(self.argv)


#: How a wrapped program is supervised when it exits.
WRAP_MODES = ("respawn", "ignore", "exit")


@frozen
class WrappedTarget:
    """
    A TCP server program started once, under the rebind shim, which moves
    the port it binds to a loopback port the router learns and proxies to.

    @ivar mode: what to do when it exits: C{respawn} (restart with backoff),
        C{ignore} (it daemonized; keep serving) or C{exit} (stop the router
        with the program's status).
    @ivar ports: the ports the shim moves: comma-separated, or C{*} for the
        first port it binds.
    @ivar keep_env: keep the shim for programs it execs (start scripts).
    """

    mode: str
    argv: tuple[str, ...]
    ports: str = "*"
    keep_env: bool = False

    def describe(self) -> str:
        return f"wrap:{self.mode}:" + shlex.join(self.argv)


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

    def describe(self) -> str:
        return f"replay:{self.path}" + (f"?speed={self.speed:g}" if self.speed != 1.0 else "")


Target = Union[TcpTarget, UnixTarget, UdpTarget, UnixDatagramTarget, EchoTarget, ExecTarget, WrappedTarget,
               ReplayTarget]

#: Target kinds whose natural unit is a datagram, not a byte stream.
DATAGRAM_TARGETS = (UdpTarget, UnixDatagramTarget)


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def _split_host_port(text: str) -> tuple[str, int]:
    """
    Split C{host:port}, C{[v6]:port}; the host must not be empty.
    """
    match = re.fullmatch(r"\[([^\]]+)\]:(\w+)|([^:\[\]]+):(\w+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), not {text!r}")
    host = match.group(1) or match.group(3)
    port = _parse_port(match.group(2) or match.group(4))
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"brackets are only for IPv6 addresses, not {host!r}") from None
    return host, port


def parse_wrapped(text: str, ports: str = "*", keep_env: bool = False) -> WrappedTarget:
    """Parse C{MODE:PROGRAM ARGS...} (the part after C{wrap:})."""
    mode, sep, command = text.partition(":")
    if not sep or mode not in WRAP_MODES:
        raise ValueError(f"wrap target must be wrap:MODE:PROGRAM with MODE one of {', '.join(WRAP_MODES)}")
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise ValueError(f"wrap: cannot split the command line: {e}") from None
    if not argv:
        raise ValueError("wrap: needs a program, e.g. wrap:respawn:telnetd -debug 2023")
    return WrappedTarget(mode=mode, argv=argv, ports=ports, keep_env=keep_env)


def parse_replay(text: str) -> ReplayTarget:
    """
    Parse C{FILE} or C{FILE?speed=FACTOR} (the part after C{replay:}).

    Only a final C{?speed=} is read as the speed, so any other C{?} is part
    of the file name.
    """
    path, speed = text, 1.0
    match = re.fullmatch(r"(.*)\?speed=([^?/]*)", text, re.S)
    if match:
        path, factor = match.groups()
        try:
            speed = float(factor)
        except ValueError:
            speed = math.nan
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError(f"replay speed must be a number greater than 0, not {factor!r}")
    if not path:
        raise ValueError("replay: needs a recording file, e.g. replay:session.jsonl or replay:session.jsonl?speed=2")
    return ReplayTarget(path, speed)


def parse_target(text: str) -> Target:
    """
    Parse a target string.

    Accepted forms: C{tcp://HOST:PORT}, C{HOST:PORT} (TCP, websockify's
    form), C{unix:///PATH}, C{udp://HOST:PORT}, C{unix-dgram:///PATH},
    C{echo:}, C{exec:PROGRAM ARGS...} (shell-like quoting, no shell),
    C{wrap:MODE:PROGRAM ARGS...} and C{replay:FILE} (a recording played back
    to each client; C{replay:FILE?speed=2} plays it twice as fast).

    @raise ValueError: with a message that says what is wrong.
    """
    text = text.strip()
    if text.startswith("replay:"):
        return parse_replay(text[len("replay:"):])
    if text.startswith("wrap:"):
        return parse_wrapped(text[len("wrap:"):])
    if text.startswith("exec:"):
        try:
            argv = tuple(shlex.split(text[len("exec:"):]))
        except ValueError as e:
            raise ValueError(f"exec: cannot split the command line: {e}") from None
        if not argv:
            raise ValueError("exec: needs a program, e.g. exec:cat")
        return ExecTarget(argv)
    if text == "echo:" or text == "echo":
        return EchoTarget()
    scheme, sep, rest = text.partition("://")
    if not sep and ":" in text:
        host, port = _split_host_port(text)
        return TcpTarget(host, port)
    if scheme in ("unix", "unix-dgram"):
        path = rest
        if not path.startswith("/"):
            raise ValueError(f"{scheme} target needs an absolute path, e.g. {scheme}:///run/app.sock")
        return UnixTarget(path) if scheme == "unix" else UnixDatagramTarget(path)
    if scheme in ("tcp", "udp"):
        host, port = _split_host_port(rest.rstrip("/"))
        return TcpTarget(host, port) if scheme == "tcp" else UdpTarget(host, port)
    raise ValueError(
        f"unknown target {text!r}; use tcp://HOST:PORT, unix:///PATH, "
        "udp://HOST:PORT, unix-dgram:///PATH, exec:PROGRAM, wrap:MODE:PROGRAM, "
        "replay:FILE[?speed=FACTOR] or echo:"
    )


# -- routes ------------------------------------------------------------------


@frozen
class Framing:
    """
    How a target's byte stream is cut into WebSocket messages.

    @ivar kind: one of L{FRAMINGS}.
    @ivar separator: for C{separator}: the bytes that end each message.
    @ivar length: for C{fixed}: the size of each message in bytes.
    """

    kind: str = "binary"
    separator: bytes = b"\n"
    length: int = 0


@frozen
class Route:
    """
    Where WebSocket connections for one path (and subprotocol) go.

    @ivar path: the URL path, without query.
    @ivar prefix: match C{path} and everything below it, not only C{path}.
    @ivar subprotocols: the subprotocols this route speaks; empty means any.
    @ivar framing: how target output becomes messages; C{None} picks the
        target kind's default (binary chunks; lines for exec).
    @ivar max_forks: for program targets, how many may run at once for this
        route (C{None}: the router-wide limit).
    @ivar record: a directory to record this route's sessions into
        (C{None}: the router-wide setting; L{RECORD_OFF}: not recorded).
    @ivar env: extra environment for program targets, C{(name, value)}.
    """

    path: str
    target: Target
    prefix: bool = False
    subprotocols: tuple[str, ...] = ()
    framing: Framing | None = None
    max_forks: int | None = None
    record: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        pattern = (self.path.rstrip("/") + "/*") if self.prefix else self.path
        if self.subprotocols:
            pattern += "@" + ",".join(self.subprotocols)
        return pattern


_ROUTE = re.compile(r"(?P<path>[^\[@=]*)(?:\[(?P<options>[^\]]*)\])?(?:@(?P<protocols>[^=]*))?=(?P<target>.*)", re.S)

#: Options a route string may carry in brackets, and how each is read.
ROUTE_OPTIONS = ("framing", "max-forks", "record", "env")


def _route_options(text: str) -> dict[str, Any]:
    """Parse C{key=value;key=value} from a route string's brackets."""
    options: dict[str, Any] = {}
    env: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or key not in ROUTE_OPTIONS:
            raise ValueError(f"route option must be one of {', '.join(ROUTE_OPTIONS)} as KEY=VALUE, not {item!r}")
        if key == "framing":
            options["framing"] = parse_framing(value)
        elif key == "max-forks":
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise ValueError(f"max-forks must be a whole number of at least 1, not {value!r}")
            options["max_forks"] = int(value)
        elif key == "record":
            options["record"] = _record_directory(value)
        else:
            name, sep, env_value = value.partition(":")
            if not sep or not name:
                raise ValueError(f"env must be NAME:VALUE, not {value!r}")
            env.append((name, env_value))
    if env:
        options["env"] = tuple(env)
    return options


def _record_directory(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"record must be a directory (or {RECORD_OFF}), not {value!r}")
    return value


def parse_route(text: str) -> Route:
    """
    Parse C{PATH[[OPTIONS]][@PROTO[,PROTO...]]=TARGET}.

    A path ending in C{/*} matches that path and everything below it;
    otherwise the match is exact.  C{/*} alone matches every path.  OPTIONS
    are C{key=value} pairs separated by C{;}: C{framing}, C{max-forks},
    C{record} (a directory, or C{off}) and C{env} (C{NAME:VALUE}, repeatable), e.g.
    C{/term[framing=line;max-forks=4]@tty=exec:login}.
    """
    match = _ROUTE.fullmatch(text)
    if not match or text.startswith("="):
        raise ValueError(f"expected PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET, not {text!r}")
    pattern = match.group("path")
    protocols = match.group("protocols") or ""
    options = _route_options(match.group("options") or "")
    target_text = match.group("target")
    if not pattern.startswith("/"):
        raise ValueError(f"route path must start with '/', not {pattern!r}")
    prefix = pattern.endswith("/*")
    path = pattern[:-2] or "/" if prefix else pattern
    if "*" in path:
        raise ValueError(f"'*' is only allowed as a final '/*' in a route path, not {pattern!r}")
    subprotocols = tuple(p.strip() for p in protocols.split(",") if p.strip())
    return Route(path=path, prefix=prefix, subprotocols=subprotocols, target=parse_target(target_text), **options)


def parse_framing(text: str) -> Framing:
    """
    Parse C{binary}, C{line}, C{separator:SEP} (C{\\n}, C{\\0} escapes
    allowed) or C{fixed:N}.
    """
    kind, _, arg = text.partition(":")
    if kind in ("binary", "line") and not arg:
        return Framing(kind)
    if kind == "separator" and arg:
        try:
            separator = arg.encode("utf-8").decode("unicode_escape").encode("latin-1")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise ValueError(
                f"separator {arg!r} must be bytes: plain characters or escapes like \\n, \\0, \\x1e"
            ) from None
        return Framing(kind, separator=separator)
    if kind == "fixed" and arg.isdigit() and int(arg) > 0:
        return Framing(kind, length=int(arg))
    raise ValueError(f"framing must be binary, line, separator:SEP or fixed:N, not {text!r}")


# -- the whole router ----------------------------------------------------------


@frozen
class Limits:
    """
    Per-session limits and timers; times in seconds, sizes in bytes.

    C{None} for a timer turns it off.
    """

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ping_interval: float | None = None
    ping_timeout: float | None = None
    idle_timeout: float | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_forks: int | None = None


@frozen
class WebRoot:
    """Static files served on the same port as the WebSocket routes."""

    directory: str
    listing: bool = False


@frozen
class Recording:
    """
    Session recording, router-wide (see C{docs/recording.md}).

    @ivar directory: record every session into this directory; C{None}
        records only the routes that name a directory of their own.
    @ivar format: one of L{RECORDING_FORMATS}.
    @ivar max_bytes: stop recording a session before its file would grow
        past this many bytes; C{None}: no limit.
    @ivar redact: request headers (lower case) whose values are not recorded.
    """

    directory: str | None = None
    format: str = field(default="jsonl", validator=in_(RECORDING_FORMATS))
    max_bytes: int | None = None
    redact: tuple[str, ...] = DEFAULT_RECORD_REDACT


@frozen
class RouterConfig:
    """Everything one router needs: where to listen, what to route, limits."""

    listeners: tuple[str, ...] = (DEFAULT_LISTENER,)
    routes: tuple[Route, ...] = ()
    web: WebRoot | None = None
    limits: Limits = field(factory=Limits)
    recording: Recording = field(factory=Recording)
    pass_env: tuple[str, ...] = ()
    follow_wrapped_port: bool = False
    workers: int = DEFAULT_WORKERS


    def recording_directory(self, route: Route) -> str | None:
        """Where C{route}'s sessions are recorded: its own directory, else the router's; C{None}: nowhere."""
        if route.record == RECORD_OFF:
            return None
        return route.record or self.recording.directory


# -- building from plain values -------------------------------------------------


class _Problems:
    """Collects problems with their key paths while a config is built."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, problem: str) -> None:
        self.items.append((key, problem))


def _positive_number(raw: Mapping[str, Any], key: str, problems: _Problems, *, integer: bool = False) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        problems.add(key, f"must be a {'whole ' if integer else ''}number, not {value!r}")
        return None
    if not math.isfinite(number) or number <= 0:
        problems.add(key, f"must be a finite number greater than 0, not {value!r}")
        return None
    return number


def _build_limits(raw: Mapping[str, Any], problems: _Problems) -> Limits:
    values: dict[str, Any] = {}
    for key in ("max_message_size", "max_forks"):
        number = _positive_number(raw, key, problems, integer=True)
        if number is not None:
            values[key] = number
    for key in ("ping_interval", "ping_timeout", "idle_timeout", "handshake_timeout",
                "connect_timeout", "shutdown_grace"):
        number = _positive_number(raw, key, problems)
        if number is not None:
            values[key] = number
    if "ping_interval" in values and "ping_timeout" not in values:
        values["ping_timeout"] = values["ping_interval"]
    return Limits(**values)


def _build_route(raw: Any, key: str, problems: _Problems) -> Route | None:
    if isinstance(raw, Route):
        return raw
    try:
        if isinstance(raw, str):
            return parse_route(raw)
        if isinstance(raw, Mapping):
            route = parse_route(f"{raw.get('path', '')}={raw.get('target', '')}")
            framing = raw.get("framing")
            protocols = raw.get("subprotocols", route.subprotocols)
            if isinstance(protocols, str):
                protocols = (protocols,)
            if not isinstance(protocols, (list, tuple)) or not all(isinstance(p, str) for p in protocols):
                raise ValueError(f"subprotocols must be a list of strings, not {protocols!r}")
            return Route(
                path=route.path,
                prefix=route.prefix,
                target=route.target,
                subprotocols=tuple(protocols),
                framing=parse_framing(framing) if isinstance(framing, str) else framing,
                record=None if raw.get("record") is None else _record_directory(raw["record"]),
            )
    except ValueError as e:
        problems.add(key, str(e))
        return None
    problems.add(key, f"must be a route string or table, not {type(raw).__name__}")
    return None


def _build_recording(raw: Mapping[str, Any], problems: _Problems) -> Recording:
    values: dict[str, Any] = {}
    directory = raw.get("record")
    if isinstance(directory, os.PathLike):
        directory = os.fspath(directory)
    if directory is not None and directory != RECORD_OFF:
        if isinstance(directory, str) and directory:
            values["directory"] = directory
        else:
            problems.add("record", f"must be a directory (or {RECORD_OFF}), not {directory!r}")
    fmt = raw.get("record_format")
    if fmt is not None:
        if isinstance(fmt, str) and fmt in RECORDING_FORMATS:
            values["format"] = fmt
        else:
            problems.add("record_format", f"must be {' or '.join(RECORDING_FORMATS)}, not {fmt!r}")
    max_bytes = _positive_number(raw, "record_max_bytes", problems, integer=True)
    if max_bytes is not None:
        values["max_bytes"] = max_bytes
    redact = raw.get("record_redact")
    if redact is not None:
        names = (redact,) if isinstance(redact, str) else redact
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
            problems.add("record_redact", f"must be a list of request header names, not {redact!r}")
        else:
            values["redact"] = tuple(name.lower() for name in names)
    return Recording(**values)


def build_config(raw: Mapping[str, Any], source: str = "configuration") -> RouterConfig:
    """
    Build a L{RouterConfig} from plain values (from the command line, a
    TOML file or Python code).

    Keys: C{listen} (list of Twisted endpoint strings), C{routes} (list of
    route strings, tables or L{Route}s), C{web}, C{web_listing},
    C{pass_env} (names of the router's environment variables that program
    targets inherit), C{follow_wrapped_port} (with no listener, listen on
    the loopback port the wrapped program asks for), C{record} (a
    directory to record every session into), C{record_format},
    C{record_max_bytes}, C{record_redact} (request headers to hide; replaces
    the default list), C{workers} (router processes sharing the listeners),
    and the L{Limits} field names.

    @raise ConfigError: listing every problem found, each with its key.
    """
    problems = _Problems()
    follow = bool(raw.get("follow_wrapped_port"))
    raw_listen = raw.get("listen") or (() if follow else (DEFAULT_LISTENER,))
    listeners = (raw_listen,) if isinstance(raw_listen, str) else tuple(raw_listen)
    for index, listener in enumerate(listeners):
        if not isinstance(listener, str) or not listener:
            problems.add(f"listen[{index}]", "must be a Twisted endpoint string, e.g. tcp:8080:interface=127.0.0.1")
    routes = []
    seen: dict[tuple[str, bool, frozenset[str]], int] = {}
    for index, raw_route in enumerate(raw.get("routes") or ()):
        route = _build_route(raw_route, f"routes[{index}]", problems)
        if route is None:
            continue
        identity = (route.path, route.prefix, frozenset(route.subprotocols))
        if identity in seen:
            problems.add(f"routes[{index}]", f"duplicates routes[{seen[identity]}] ({route.describe()})")
        seen.setdefault(identity, index)
        routes.append(route)
    web = None
    if raw.get("web"):
        web = WebRoot(directory=str(raw["web"]), listing=bool(raw.get("web_listing")))
    elif raw.get("web_listing"):
        problems.add("web_listing", "needs a web root (web)")
    limits = _build_limits(raw, problems)
    recording = _build_recording(raw, problems)
    if not routes and web is None and not raw.get("routes"):
        problems.add("routes", "nothing to serve: give at least one route (or a web root)")
    pass_env = raw.get("pass_env") or ()
    if isinstance(pass_env, str):
        pass_env = (pass_env,)
    for index, name in enumerate(pass_env):
        if not isinstance(name, str) or not name or "=" in name:
            problems.add(f"pass_env[{index}]", f"must be an environment variable name, not {name!r}")
    if follow and not any(isinstance(route.target, WrappedTarget) for route in routes):
        problems.add("follow_wrapped_port", "needs a wrapped program (a wrap: target)")
    workers = _build_workers(raw, listeners, problems)
    if problems.items:
        raise ConfigError(problems.items, source)
    return RouterConfig(listeners=listeners, routes=tuple(routes), web=web, limits=limits, recording=recording,
                        pass_env=tuple(pass_env), follow_wrapped_port=follow, workers=workers)


def _build_workers(raw: Mapping[str, Any], listeners: Sequence[Any], problems: _Problems) -> int:
    """The number of router processes; more than one needs listeners whose sockets can be shared."""
    workers = _positive_number(raw, "workers", problems, integer=True)
    if workers is None:
        return DEFAULT_WORKERS
    if workers > 1:
        for index, listener in enumerate(listeners):
            if isinstance(listener, str) and not listener.startswith(SHAREABLE_LISTENERS):
                problems.add(f"listen[{index}]", f"workers cannot share {listener!r}; with workers > 1 use "
                             f"{', '.join(kind + '...' for kind in SHAREABLE_LISTENERS)} listeners")
    return int(workers)


def listener_from_short_form(text: str) -> str:
    """
    Turn websockify's C{[HOST:]PORT} into a Twisted endpoint string.

    Without a host the listener binds loopback only, unlike websockify,
    which binds every interface: say C{0.0.0.0:PORT} to get that.
    """
    if text.isdigit():
        host, port = "127.0.0.1", _parse_port(text)
    else:
        host, port = _split_host_port(text)
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}:backlog=1024"
