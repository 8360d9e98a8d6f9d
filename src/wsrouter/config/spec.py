"""
The nested configuration schema: plain data (what C{tomllib} returns for a
file, or what the command line is lowered into) checked key by key and
built into the frozen model of L{wsrouter.config.model}.

Unknown keys are errors with a near-miss suggestion, every problem is
gathered with its key path (C{routes[2].framing}), and the command line's
route and target languages are lowered into the same schema, so a route
written on the command line and one written in a file take one path.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from wsrouter.config.model import (
    DEFAULT_LISTENER,
    FRAMINGS,
    INSTANCE_KEY_USE,
    PROGRAM_NAME,
    RECORD_OFF,
    WRAP_MODES,
    Auth,
    Balance,
    Compression,
    ConfigError,
    EchoTarget,
    ExecTarget,
    Framing,
    Lifetime,
    Limits,
    LogSettings,
    Ops,
    Proxies,
    PythonTarget,
    Recording,
    ReplayTarget,
    Resolver,
    ResolverTarget,
    Route,
    RouterConfig,
    Sandbox,
    Security,
    Target,
    TcpTarget,
    TerminalPage,
    TlsSettings,
    TlsTarget,
    UdpTarget,
    UnixDatagramTarget,
    UnixTarget,
    WebRoot,
    WebSocketTarget,
    WrappedTarget,
    no_resolver_table,
    unused_instance_keys,
)

TOP_KEYS = ("listen", "workers", "pass_env", "follow_program_port", "limits", "lifetime", "log", "web",
            "recording", "programs", "routes", "trusted_proxies", "proxy_protocol",
            "security", "auth", "tls", "compression", "unknown_host", "sandbox", "ops", "resolvers", "terminal")
RESOLVER_KEYS = ("plugin", "source", "host_token", "timeout", "cache_ttl")
LIMITS_KEYS = ("max_message_size", "ping_interval", "ping_timeout", "session_idle_timeout", "handshake_timeout",
               "connect_timeout", "shutdown_grace", "max_forks", "max_header_bytes", "max_connections",
               "max_connections_per_client", "max_handshakes_per_client")
SECURITY_KEYS = ("origin", "auth", "web_auth")
AUTH_KEYS = ("htpasswd", "users", "tokens", "forward_user_header", "forward_from", "realm", "client_cert_names")
TLS_KEYS = ("cert", "key", "min_version", "ciphers", "ssl_only", "verify_client", "cafile", "hosts")
TLS_HOST_KEYS = ("cert", "key")
#: Route keys for several targets (L{Balance}).
BALANCE_KEYS = ("targets", "balance", "down_for")
#: Route keys for tls:// targets, and the TlsTarget fields they set.
TLS_TARGET_KEYS = ("tls_ca", "tls_pin", "tls_verify")
LIFETIME_KEYS = ("run_once", "start_timeout", "idle_exit")
COMPRESSION_KEYS = ("permessage_deflate", "server_no_context_takeover", "client_no_context_takeover",
                    "server_max_window_bits", "client_max_window_bits")
LOG_KEYS = ("file", "level", "traffic", "format")
WEB_KEYS = ("root", "listing", "content_security_policy", "frame_options")
RECORDING_KEYS = ("directory", "format", "max_bytes", "redact")
#: Instances and on-demand starts (issue 13), passed to WrappedTarget as they are.
INSTANCE_KEYS = ("start", "idle_stop", "ready_timeout", "max_instances")
PROGRAM_KEYS = ("mode", "command", "ports", "keep_env", "socket", "protocol", "sandbox", *INSTANCE_KEYS)
#: A [sandbox.NAME] table's keys: the Sandbox fields.
SANDBOX_KEYS = ("user", "group", "cpu_seconds", "memory", "open_files", "processes", "env", "no_new_privs", "cwd")
OPS_KEYS = ("metrics", "status", "healthz", "auth", "watch_queue")
TERMINAL_KEYS = ("mount",)
ROUTE_KEYS = ("path", "subprotocols", "target", "framing", "max_forks", "record", "env", "proxy_protocol",
              "origin", "auth", "host", "sandbox", "watch", *TLS_TARGET_KEYS, *BALANCE_KEYS, "pty",
              "max_instances")
#: Keys holding numbers; a numeric string is accepted there (command-line values).
_INTEGER_KEYS = ("workers", "max_message_size", "max_forks", "max_bytes", "max_header_bytes", "max_connections",
                 "max_connections_per_client", "max_handshakes_per_client")
_NUMBER_KEYS = ("ping_interval", "ping_timeout", "session_idle_timeout", "handshake_timeout", "connect_timeout",
                "shutdown_grace", "start_timeout", "idle_exit", "timeout", "cache_ttl")

#: Keys of the flat settings of earlier versions, and where they live now.
MOVED_KEYS = {
    "idle_timeout": "limits.session_idle_timeout", "follow_wrapped_port": "follow_program_port",
    "web_listing": "web.listing", "record": "recording.directory", "record_format": "recording.format",
    "record_max_bytes": "recording.max_bytes", "record_redact": "recording.redact",
    **{key: f"limits.{key}" for key in LIMITS_KEYS},
}

#: Options a route string may carry in brackets (the file's keys, with '-').
ROUTE_OPTIONS = ("framing", "max-forks", "record", "env", "proxy-protocol", "origin", "auth", "host",
                 "tls-ca", "tls-pin", "tls-verify", "watch", "balance", "down-for", "pty")

TARGET_FORMS = ("tcp://HOST:PORT, HOST:PORT, tls://HOST:PORT, ws[s]://HOST:PORT/PATH, unix:///PATH, "
                "udp://HOST:PORT, unix-dgram:///PATH, "
                "exec:COMMAND, "
                "wrap:MODE:PROGRAM, program:NAME, replay:FILE[?speed=FACTOR], resolve:NAME, "
                "python:MODULE:FACTORY or echo:")


#: The framing language, for error messages.
FRAMING_FORMS = ("binary, line, line:crlf, separator:SEP, fixed:N, auto, text, json, "
                 "length:u16 or length:u32 (optionally :typed)")


# -- the target and route languages ---------------------------------------------


def parse_port(text: str) -> int:
    """A port number from 1 to 65535, written in decimal."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def split_host_port(text: str) -> tuple[str, int]:
    """Split C{host:port}, C{[v6]:port}; the host must not be empty."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\w+)|([^:\[\]]+):(\w+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), not {text!r}")
    host = match.group(1) or match.group(3)
    port = parse_port(match.group(2) or match.group(4))
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"brackets are only for IPv6 addresses, not {host!r}") from None
    return host, port


def listener_from_short_form(text: str) -> str:
    """
    Turn websockify's C{[HOST:]PORT} into a Twisted endpoint string.

    Without a host the listener binds loopback only, unlike websockify,
    which binds every interface: say C{0.0.0.0:PORT} to get that.

    @raise ValueError: for anything else.
    """
    if text.isdigit():
        host, port = "127.0.0.1", parse_port(text)
    else:
        host, port = split_host_port(text)
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}:backlog=1024"


def _split_command(text: str, kind: str, example: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise ValueError(f"{kind}: cannot split the command line: {e}") from None
    if not argv:
        raise ValueError(f"{kind}: needs a command, e.g. {example}")
    return argv


def program_name(argv: Sequence[str]) -> str:
    """A program's automatic name: its file name, with characters a name cannot hold replaced."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(argv[0]) if argv else "")
    return name or "program"


def parse_wrapped(text: str, ports: str = "*", keep_env: bool = False) -> WrappedTarget:
    """Parse C{MODE:PROGRAM ARGS...} (the part after C{wrap:}); the program is named after its file."""
    mode, sep, command = text.partition(":")
    if not sep or mode not in WRAP_MODES:
        raise ValueError(f"wrap target must be wrap:MODE:PROGRAM with MODE one of {', '.join(WRAP_MODES)}")
    argv = _split_command(command, "wrap", "wrap:respawn:telnetd -debug 2023")
    return WrappedTarget(mode=mode, argv=argv, ports=ports, keep_env=keep_env, name=program_name(argv))


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
    Parse a target string (all forms but C{program:NAME}, which needs the
    configuration's programs).

    Accepted forms: C{tcp://HOST:PORT}, C{HOST:PORT} (TCP, websockify's
    form), C{unix:///PATH}, C{udp://HOST:PORT}, C{unix-dgram:///PATH},
    C{echo:}, C{exec:COMMAND ARGS...} (shell-like quoting, no shell),
    C{wrap:MODE:PROGRAM ARGS...}, C{replay:FILE} (a recording played back
    to each client; C{replay:FILE?speed=2} plays it twice as fast) and
    C{python:MODULE:FACTORY} (in-process handlers, L{wsrouter.handlers}).

    @raise ValueError: with a message that says what is wrong.
    """
    text = text.strip()
    if text.startswith("replay:"):
        return parse_replay(text[len("replay:"):])
    if text.startswith("wrap:"):
        return parse_wrapped(text[len("wrap:"):])
    if text.startswith("exec:"):
        return ExecTarget(_split_command(text[len("exec:"):], "exec", "exec:cat"))
    if text == "echo:" or text == "echo":
        return EchoTarget()
    if text.startswith("resolve:"):
        return ResolverTarget(text[len("resolve:"):])
    if text.startswith("python:"):
        return PythonTarget(text[len("python:"):])
    scheme, sep, rest = text.partition("://")
    if not sep and ":" in text and not text.startswith("program:"):
        host, port = split_host_port(text)
        return TcpTarget(host, port)
    if scheme in ("unix", "unix-dgram"):
        if not rest.startswith("/"):
            raise ValueError(f"{scheme} target needs an absolute path, e.g. {scheme}:///run/app.sock")
        return UnixTarget(rest) if scheme == "unix" else UnixDatagramTarget(rest)
    if scheme == "tls":
        return TlsTarget(*split_host_port(rest.rstrip("/")))
    if scheme in ("ws", "wss"):
        return parse_websocket_target(scheme, rest)
    if scheme in ("tcp", "udp"):
        host, port = split_host_port(rest.rstrip("/"))
        return TcpTarget(host, port) if scheme == "tcp" else UdpTarget(host, port)
    raise ValueError(f"unknown target {text!r}; use {TARGET_FORMS}")


def parse_websocket_target(scheme: str, rest: str) -> WebSocketTarget:
    """C{HOST:PORT/PATH} after C{ws://} or C{wss://}; the path defaults to C{/}."""
    slash = rest.find("/", rest.find("]") + 1)
    address, path = (rest, "/") if slash == -1 else (rest[:slash], rest[slash:])
    host, port = split_host_port(address)
    return WebSocketTarget(scheme == "wss", host, port, path)


def parse_framing(text: str) -> Framing:
    """
    Parse C{binary}, C{line}, C{separator:SEP} (C{\\n}, C{\\0} escapes
    allowed) or C{fixed:N}.
    """
    kind, _, arg = text.partition(":")
    if kind in ("binary", "line", "auto", "text", "json") and not arg:
        return Framing(kind)
    if text in ("crlf", "line:crlf"):
        return Framing("line", separator=b"\r\n")
    if kind == "length" and arg in ("u16", "u32", "u16:typed", "u32:typed"):
        return Framing(kind, width=2 if arg.startswith("u16") else 4, typed=arg.endswith(":typed"))
    if kind == "separator" and arg:
        try:
            separator = arg.encode("utf-8").decode("unicode_escape").encode("latin-1")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise ValueError(
                f"separator {arg!r} must be bytes: plain characters or escapes like \\n, \\0, \\x1e"
            ) from None
        return Framing(kind, separator=separator)
    if kind == "fixed" and arg.isascii() and arg.isdigit() and int(arg) > 0:
        return Framing(kind, length=int(arg))
    raise ValueError(f"framing must be {FRAMING_FORMS}, not {text!r}")


def framing_to_string(framing: Framing) -> str:
    """The inverse of L{parse_framing}."""
    if framing.kind == "separator":
        escaped = framing.separator.decode("latin-1").encode("unicode_escape").decode("ascii")
        return "separator:" + escaped
    if framing.kind == "fixed":
        return f"fixed:{framing.length}"
    if framing.kind == "length":
        return f"length:u{8 * framing.width}" + (":typed" if framing.typed else "")
    if framing.kind == "line" and framing.separator == b"\r\n":
        return "line:crlf"
    return framing.kind


_ROUTE = re.compile(r"(?P<path>[^\[@=]*)(?:\[(?P<options>[^\]]*)\])?(?:@(?P<protocols>[^=]*))?=(?P<target>.*)", re.S)


def route_from_string(text: str) -> dict[str, Any]:
    """
    Lower the command line's route language into a C{routes[]} entry.

    C{PATH[[OPTIONS]][@PROTO[,PROTO...]]=TARGET}; OPTIONS are C{key=value}
    pairs separated by C{;}: C{framing}, C{max-forks}, C{record}, C{host} (vhosts) and C{env}
    (C{NAME:VALUE}, repeatable), e.g. C{/term[framing=line;max-forks=4]@tty=exec:login}.
    Values are checked by L{build_config}, as a file's are.

    @raise ValueError: if C{text} is not in that shape.
    """
    match = _ROUTE.fullmatch(text)
    if not match or text.startswith("="):
        raise ValueError(f"expected PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET, not {text!r}")
    entry: dict[str, Any] = {"path": match.group("path"), "target": match.group("target").strip()}
    if match.group("protocols") is not None:
        entry["subprotocols"] = [p.strip() for p in match.group("protocols").split(",") if p.strip()]
    env: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (match.group("options") or "").split(";"))):
        key, sep, value = item.partition("=")
        if not sep or key not in ROUTE_OPTIONS:
            raise ValueError(f"route option must be one of {', '.join(ROUTE_OPTIONS)} as KEY=VALUE, "
                             f"not {item!r}{_did_you_mean(key, ROUTE_OPTIONS, ' ')}")
        if key == "env":
            name, sep, env_value = value.partition(":")
            if not sep or not name:
                raise ValueError(f"env must be NAME:VALUE, not {value!r}")
            env[name] = env_value
        elif key == "max-forks":
            entry["max_forks"] = int(value) if value.isascii() and value.isdigit() else value
        elif key in ("tls-verify", "pty"):
            entry[key.replace("-", "_")] = {"true": True, "false": False}.get(value, value)
        elif key == "down-for":
            entry["down_for"] = _number(value, False)
        else:
            entry[key.replace("-", "_")] = value
    if env:
        entry["env"] = env
    if "balance" in entry or "down_for" in entry:
        # Several targets, comma-separated, only when the route balances
        # (an exec: command may hold commas).
        entry["targets"] = [target.strip() for target in entry.pop("target").split(",")]
    return entry


def _several_targets_hint(text: str) -> str | None:
    """For a target that does not parse: when it is several targets in a row, how to say that."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) < 2 or not all("://" in part or part.startswith("unix:") for part in parts):
        return None
    return (f"{len(parts)} targets ({text}) need a balance policy: [balance=round-robin] in a --route, "
            "or targets = [...] and balance = \"round-robin\" in a file (docs/config.md)")


def parse_route(text: str) -> Route:
    """
    Parse a command-line route string into a L{Route}.

    @raise ConfigError: (a ValueError) naming each problem.
    """
    builder = _Builder()
    try:
        raw = route_from_string(text)
    except ValueError as e:
        raise ConfigError([("route", str(e))], "route") from None
    route = builder.route(raw, "route")
    if route is None:
        raise ConfigError(builder.problems, "route")
    return route


def origin_value(value: Any) -> Any:
    """An origin policy as written: a word, a list, or (command line) space-separated origins."""
    if isinstance(value, str) and "://" in value:
        return tuple(value.split())
    if isinstance(value, str):
        return value.strip()
    return tuple(value) if isinstance(value, list) else value


def _did_you_mean(key: str, allowed: Sequence[str], lead: str = " ") -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"{lead}(did you mean {close[0]}?)" if close else ""


# -- plain data to the model ----------------------------------------------------------


def _key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _number(value: Any, integer: bool) -> Any:
    """A numeric string (a command-line value) as its number; anything else as is, for the model to judge."""
    if isinstance(value, str):
        try:
            return int(value) if integer else float(value)
        except ValueError:
            return value
    return value


class _Builder:
    """Builds the model from plain data, gathering every problem with its key path."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.programs: dict[str, WrappedTarget] = {}
        self.inline: list[WrappedTarget] = []
        self.sandboxes: dict[str, Sandbox] = {}
        #: Program, sandbox and resolver tables already reported as wrong: a
        #: reference to one is not reported again (only the real problem is listed).
        self.failed: set[tuple[str, str]] = set()
        #: References to those tables met so far (each fails its entry, unreported).
        self.skipped = 0

    def add(self, key: str, problem: str) -> None:
        self.problems.append((key, problem))

    def table(self, raw: Any, path: str, allowed: Sequence[str]) -> dict[str, Any] | None:
        """C{raw} as a table with only C{allowed} keys (unknown ones reported); C{None} if not a table."""
        if not isinstance(raw, Mapping):
            self.add(path, f"must be a table, not {raw!r}")
            return None
        for key in raw:
            if key not in allowed:
                moved = MOVED_KEYS.get(str(key)) if not path else None
                hint = (f" (did you mean {moved}?)" if moved else _did_you_mean(str(key), allowed)
                        or f" (expected {', '.join(allowed)})")
                self.add(_key(path, str(key)), "unknown key" + hint)
        return {key: raw[key] for key in allowed if key in raw}

    def make(self, cls: Callable[..., Any], values: Mapping[str, Any], path: str) -> Any:
        """C{cls(**values)}; its own problems are reported under C{path}; C{None} if it has any."""
        try:
            return cls(**values)
        except ConfigError as e:
            for key, problem in e.problems:
                self.add(_key(path, key) if key else path, problem)
            return None

    def simple(self, cls: Callable[..., Any], raw: Any, path: str, allowed: Sequence[str],
               rename: Mapping[str, str] = {}) -> Any:
        """A table whose keys are C{cls}'s fields (numbers coerced); the default object if absent."""
        if raw is None:
            return cls()
        values = self.table(raw, path, allowed)
        if values is None:
            return cls()
        fields = {rename.get(key, key): _number(value, key in _INTEGER_KEYS) if key in _INTEGER_KEYS + _NUMBER_KEYS
                  else value for key, value in values.items()}
        made = self.make(cls, fields, path)
        return cls() if made is None else made

    def strings(self, raw: Any, path: str, what: str) -> tuple[str, ...] | None:
        if not isinstance(raw, list):
            self.add(path, f"must be a list of {what}s, not {raw!r}")
            return None
        return tuple(raw)

    # -- tables ---------------------------------------------------------

    def web(self, raw: Any) -> WebRoot | None:
        if raw is None:
            return None
        values = self.table(raw, "web", WEB_KEYS)
        if values is None:
            return None
        if "root" not in values:
            self.add("web.root", "required: the directory of static files to serve")
            return None
        fields = {"directory": values["root"], **{key: value for key, value in values.items() if key != "root"}}
        made: WebRoot | None = self.make(WebRoot, fields, "web")
        return made

    def recording(self, raw: Any) -> Recording:
        if isinstance(raw, Mapping) and isinstance(raw.get("redact"), list):
            raw = {**raw, "redact": [name.lower() if isinstance(name, str) else name for name in raw["redact"]]}
        made: Recording = self.simple(Recording, raw, "recording", RECORDING_KEYS)
        return made

    def security(self, raw: Any) -> Security:
        if isinstance(raw, Mapping) and "origin" in raw:
            raw = {**raw, "origin": origin_value(raw["origin"])}
        made: Security = self.simple(Security, raw, "security", SECURITY_KEYS)
        return made

    def auth(self, raw: Any) -> list[Auth]:
        if not isinstance(raw, Mapping):
            self.add("auth", f"must be a table of [auth.NAME] tables, not {raw!r}")
            return []
        made = []
        for name, table in raw.items():
            values = self.table(table, f"auth.{name}", AUTH_KEYS)
            if values is not None:
                auth = self.make(Auth, {"name": str(name), **values}, f"auth.{name}")
                if auth is not None:
                    made.append(auth)
        return made

    def program(self, name: str, raw: Any) -> None:
        path = f"programs.{name}"
        if not PROGRAM_NAME.fullmatch(name):
            self.add(path, "a program name must be letters, digits, '_', '.' or '-'")
            return
        self.failed.add(("programs", name))  # until it is made
        values = self.table(raw, path, PROGRAM_KEYS)
        if values is None:
            return
        missing = [key for key in ("mode", "command") if key not in values]
        for key in missing:
            self.add(f"{path}.{key}", "required")
        command = values.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as e:
                self.add(f"{path}.command", f"cannot split the command line: {e}")
                return
        if missing:
            return
        fields = {"name": name, "mode": values["mode"], "argv": command}
        if "ports" in values:
            ports = values["ports"]
            fields["ports"] = str(ports) if isinstance(ports, int) and not isinstance(ports, bool) else ports
        if "keep_env" in values:
            fields["keep_env"] = values["keep_env"]
        if "socket" in values:
            fields["socket"] = values["socket"]
        if "protocol" in values:
            fields["protocol"] = values["protocol"]
        if "sandbox" in values:
            fields["sandbox"] = self.sandbox_named(values["sandbox"], f"{path}.sandbox")
            if fields["sandbox"] is None:
                return
        given = {key: key in values for key in INSTANCE_KEYS}
        unused = unused_instance_keys(values["mode"], values.get("start"), given)
        for key in unused:
            self.add(f"{path}.{key}", INSTANCE_KEY_USE[key])
        fields.update({key: _number(values[key], key == "max_instances") if key != "start" else values[key]
                       for key in INSTANCE_KEYS if key in values and key not in unused})
        made = self.make(WrappedTarget, fields, path)
        if made is not None:
            self.programs[name] = made
            self.failed.discard(("programs", name))

    def sandbox_tables(self, raw: Any) -> None:
        """The C{[sandbox.NAME]} tables, kept by name for programs and routes to refer to."""
        if not isinstance(raw, Mapping):
            self.add("sandbox", f"must be a table of [sandbox.NAME] tables, not {raw!r}")
            return
        for name, table in raw.items():
            values = self.table(table, f"sandbox.{name}", SANDBOX_KEYS)
            made = None if values is None else self.make(Sandbox, {"name": str(name), **values}, f"sandbox.{name}")
            if made is not None:
                self.sandboxes[str(name)] = made
            else:
                self.failed.add(("sandbox", str(name)))

    def sandbox_named(self, name: Any, path: str) -> Sandbox | None:
        if isinstance(name, str) and name in self.sandboxes:
            return self.sandboxes[name]
        if ("sandbox", str(name)) in self.failed:
            self.skipped += 1
            return None
        self.add(path, f"no sandbox {name!r} in [sandbox]{_did_you_mean(str(name), list(self.sandboxes))}")
        return None

    def inline_program(self, target: WrappedTarget) -> WrappedTarget:
        """An inline C{wrap:} program, the same object for the same command, with a name no other program has."""
        for known in self.inline:
            if (known.mode, known.argv, known.ports, known.keep_env, known.socket) == (
                    target.mode, target.argv, target.ports, target.keep_env, target.socket):
                return known
        taken = set(self.programs) | {known.name for known in self.inline}
        name, number = target.name, 1
        while name in taken:
            number += 1
            name = f"{target.name}-{number}"
        named = attrs.evolve(target, name=name)
        self.inline.append(named)
        return named

    def target(self, text: Any, path: str) -> Target | None:
        if isinstance(text, PythonTarget):  # from Python, a handler factory object
            return text
        if not isinstance(text, str):
            self.add(path, f"must be a target string ({TARGET_FORMS}), not {text!r}")
            return None
        stripped = text.strip()
        if stripped.startswith("program:"):
            name = stripped[len("program:"):]
            if name in self.programs:
                return self.programs[name]
            if ("programs", name) in self.failed:
                self.skipped += 1
                return None
            self.add(path, f"no program {name!r} in [programs]{_did_you_mean(name, list(self.programs))}")
            return None
        try:
            target = parse_target(stripped)
        except ConfigError as e:
            for _, problem in e.problems:
                self.add(path, _several_targets_hint(stripped) or problem)
            return None
        except ValueError as e:
            self.add(path, _several_targets_hint(stripped) or str(e))
            return None
        return self.inline_program(target) if isinstance(target, WrappedTarget) else target

    def route(self, raw: Any, path: str) -> Route | None:
        if isinstance(raw, str):
            # The command line's route language (also accepted in a file).
            try:
                raw = route_from_string(raw)
            except ValueError as e:
                self.add(path, str(e))
                return None
        values = self.table(raw, path, ROUTE_KEYS)
        if values is None:
            return None
        failed, skipped = len(self.problems), self.skipped
        if "path" not in values:
            self.add(f"{path}.path", "required")
        if "target" not in values and "targets" not in values:
            self.add(f"{path}.target", "required")
        fields: dict[str, Any] = {}
        pattern = values.get("path")
        if isinstance(pattern, str):
            prefix = pattern.endswith("/*")
            fields["path"] = (pattern[:-2] or "/") if prefix else pattern
            fields["prefix"] = prefix
        elif pattern is not None:
            self.add(f"{path}.path", f"must be a path string, not {pattern!r}")
        if "target" in values:
            fields["target"] = self.target(values["target"], f"{path}.target")
        if "subprotocols" in values:
            fields["subprotocols"] = self.strings(values["subprotocols"], f"{path}.subprotocols", "subprotocol name")
        framing = values.get("framing")
        if isinstance(framing, str):
            try:
                fields["framing"] = parse_framing(framing)
            except ValueError as e:
                self.add(f"{path}.framing", str(e))
        elif framing is not None:
            self.add(f"{path}.framing", f"must be {FRAMING_FORMS}, not {framing!r}")
        if "max_forks" in values:
            fields["max_forks"] = _number(values["max_forks"], True)
        if "max_instances" in values:
            fields["max_instances"] = _number(values["max_instances"], True)
        if "record" in values:
            fields["record"] = values["record"]
        if "proxy_protocol" in values:
            fields["proxy_protocol"] = values["proxy_protocol"]
        if "origin" in values:
            fields["origin"] = origin_value(values["origin"])
        if "auth" in values:
            fields["auth"] = values["auth"]
        if "host" in values:
            fields["host"] = values["host"]
        if "watch" in values:
            fields["watch"] = values["watch"]
        env = values.get("env")
        if isinstance(env, Mapping):
            fields["env"] = tuple(env.items())
        elif env is not None:
            self.add(f"{path}.env", f"must be a table of NAME = \"value\", not {env!r}")
        self.tls_target(values, fields, path)
        if "sandbox" in values:
            sandbox, target = self.sandbox_named(values["sandbox"], f"{path}.sandbox"), fields.get("target")
            if isinstance(target, ExecTarget):
                fields["target"] = attrs.evolve(target, sandbox=sandbox)
            elif target is not None:
                self.add(f"{path}.sandbox", "is only for exec: targets (a wrapped program names its sandbox itself)")
        self.balance(values, fields, path)
        self.pty_target(values, fields, path)
        if len(self.problems) > failed or self.skipped > skipped:
            return None
        made: Route | None = self.make(Route, fields, path)
        return made

    def balance(self, values: Mapping[str, Any], fields: dict[str, Any], path: str) -> None:
        """A route's C{targets}, C{balance} and C{down_for} keys as its L{Balance}; C{target} is the first."""
        if "targets" not in values:
            for key in ("balance", "down_for"):
                if key in values:
                    self.add(f"{path}.{key}", "is only for a route with several targets (targets = [...])")
            return
        if "target" in values:
            self.add(f"{path}.targets", "give target or targets, not both")
            return
        raw = values["targets"]
        if not isinstance(raw, list | tuple) or not raw:
            self.add(f"{path}.targets", f"must be a list of target strings, not {raw!r}")
            return
        targets = [self.target(text, f"{path}.targets[{index}]") for index, text in enumerate(raw)]
        if any(target is None for target in targets):
            return
        if any(key in values for key in TLS_TARGET_KEYS):
            # tls_* apply to every target; each must be tls:// or wss://.
            for index, target in enumerate(targets):
                one = {"target": target}
                self.tls_target({key: values[key] for key in TLS_TARGET_KEYS if key in values}, one,
                                f"{path}.targets[{index}]")
                targets[index] = one["target"]
            if any(target is None for target in targets):
                return
        given = {"targets": tuple(targets)}
        if "balance" in values:
            given["policy"] = values["balance"]
        if "down_for" in values:
            given["down_for"] = _number(values["down_for"], False)
        balance = self.make(Balance, given, path)
        if balance is not None:
            fields["target"], fields["balance"] = targets[0], balance

    def tls_target(self, values: Mapping[str, Any], fields: dict[str, Any], path: str) -> None:
        """A route's C{tls_*} keys go into its C{tls://} target (and are refused for other kinds)."""
        given = {key: values[key] for key in TLS_TARGET_KEYS if key in values}
        if not given or "targets" in values:
            return  # a balanced route's targets get them in balance()
        target = fields.get("target")
        if not isinstance(target, TlsTarget) and not (isinstance(target, WebSocketTarget) and target.secure):
            for key in given:
                self.add(f"{path}.{key}", "is only for tls:// and wss:// targets")
            return
        changes = {key[len("tls_"):]: value for key, value in given.items()}
        fields["target"] = self.make(lambda **kw: attrs.evolve(target, **kw), changes, path)

    def pty_target(self, values: Mapping[str, Any], fields: dict[str, Any], path: str) -> None:
        """A route's C{pty} key goes into its C{exec:} target (and is refused for other kinds)."""
        if "pty" not in values:
            return
        target = fields.get("target")
        if not isinstance(target, ExecTarget):
            self.add(f"{path}.pty", "is only for exec: targets")
            return
        fields["target"] = self.make(lambda **kw: attrs.evolve(target, **kw), {"pty": values["pty"]}, path)

    def tls(self, raw: Any) -> TlsSettings | None:
        if raw is None:
            return None
        values = self.table(raw, "tls", TLS_KEYS)
        if values is None:
            return None
        if "cert" not in values:
            self.add("tls.cert", "required: the PEM file with the certificate (and the key, unless tls.key)")
            return None
        if "hosts" in values:
            values["hosts"] = self.tls_hosts(values["hosts"])
        made: TlsSettings | None = self.make(TlsSettings, values, "tls")
        return made

    def tls_hosts(self, raw: Any) -> tuple[tuple[str, Any, Any], ...]:
        """C{[tls.hosts."NAME"]} tables of cert and key: C{(name, cert, key)}."""
        if not isinstance(raw, Mapping):
            self.add("tls.hosts", f"must be a table of [tls.hosts.\"NAME\"] tables, not {raw!r}")
            return ()
        hosts = []
        for name, entry in raw.items():
            values = self.table(entry, f"tls.hosts.{name}", TLS_HOST_KEYS)
            if values is None:
                continue
            if "cert" not in values:
                self.add(f"tls.hosts.{name}.cert", "required")
                continue
            hosts.append((str(name), values["cert"], values.get("key")))
        return tuple(hosts)

    # -- the whole --------------------------------------------------------

    def config(self, raw: Mapping[str, Any]) -> RouterConfig | None:
        values = self.table(raw, "", TOP_KEYS)
        if values is None:
            return None
        follow = values.get("follow_program_port", attrs.fields(RouterConfig).follow_program_port.default)
        listen: Any = values.get("listen")
        if listen is None:
            listen = [] if follow is True else [DEFAULT_LISTENER]
        elif isinstance(listen, list) and not listen and follow is not True:
            self.add("listen", "must list at least one endpoint (or set follow_program_port)")
        listeners = self.strings(listen, "listen", "Twisted endpoint string") or ()
        pass_env = self.strings(values.get("pass_env", []), "pass_env", "environment variable name") or ()
        limits = self.simple(Limits, values.get("limits"), "limits", LIMITS_KEYS)
        lifetime = self.simple(Lifetime, values.get("lifetime"), "lifetime", LIFETIME_KEYS)
        log = self.simple(LogSettings, values.get("log"), "log", LOG_KEYS)
        compression = self.simple(Compression, values.get("compression"), "compression", COMPRESSION_KEYS)
        web = self.web(values.get("web"))
        recording = self.recording(values.get("recording"))
        security = self.security(values.get("security"))
        tls = self.tls(values.get("tls"))
        self.sandbox_tables(values.get("sandbox", {}))
        programs = values.get("programs", {})
        if isinstance(programs, Mapping):
            for name, program in programs.items():
                self.program(str(name), program)
        else:
            self.add("programs", f"must be a table of [programs.NAME] tables, not {programs!r}")
        routes, places = self.routes(values.get("routes", []))
        before = len(self.problems)
        fields: dict[str, Any] = {
            "listeners": listeners, "routes": routes, "web": web, "limits": limits, "recording": recording,
            "lifetime": lifetime, "log": log, "programs": (*self.programs.values(), *self.inline),
            "pass_env": pass_env, "follow_program_port": follow, "security": security,
            "auth": self.auth(values.get("auth", {})), "tls": tls, "compression": compression,
            "terminal": self.simple(TerminalPage, values.get("terminal"), "terminal", TERMINAL_KEYS),
        }
        if "workers" in values:
            fields["workers"] = _number(values["workers"], True)
        if "unknown_host" in values:
            fields["unknown_host"] = values["unknown_host"]
        fields["resolvers"] = self.resolvers(values.get("resolvers", {}))
        fields["proxies"] = self.proxies(values)
        if "ops" in values:
            fields["ops"] = self.simple(Ops, values["ops"], "ops", OPS_KEYS)
        config: RouterConfig | None = self.make(RouterConfig, fields, "")
        routes_given = values.get("routes")
        some_failed = (len(places) < (len(routes_given) if isinstance(routes_given, list) else 0)
                       or (values.get("web") is not None and web is None))
        self._renumber(before, places, some_failed)
        self._drop_failed_references(before)
        return config

    def _drop_failed_references(self, start: int) -> None:
        """
        A route naming a C{[resolvers.NAME]} table that is there but was
        refused: the table's own problem says it (as for programs and
        sandboxes, L{failed}).  The whole config's check makes that
        reference problem, so it is taken out here.
        """
        refused = {no_resolver_table(name) for kind, name in self.failed if kind == "resolvers"}
        self.problems[start:] = [(key, problem) for key, problem in self.problems[start:]
                                 if not (key.startswith("routes[") and key.endswith("].target") and problem in refused)]

    def resolvers(self, raw: Any) -> list[Resolver]:
        """The C{[resolvers.NAME]} tables (L{wsrouter.resolvers})."""
        if not isinstance(raw, Mapping):
            self.add("resolvers", f"must be a table of [resolvers.NAME] tables, not {raw!r}")
            return []
        made = []
        for name, table in raw.items():
            path = f"resolvers.{name}"
            self.failed.add(("resolvers", str(name)))  # until it is made
            values = self.table(table, path, RESOLVER_KEYS)
            if values is None:
                continue
            if "plugin" not in values:
                self.add(f"{path}.plugin", "required: TokenFile, ReadOnlyTokenFile, TokenRedis, template, ...")
                continue
            fields = {key: _number(value, False) if key in _NUMBER_KEYS else value for key, value in values.items()}
            resolver = self.make(Resolver, {"name": str(name), **fields}, path)
            if resolver is not None:
                made.append(resolver)
                self.failed.discard(("resolvers", str(name)))
        return made

    def proxies(self, values: Mapping[str, Any]) -> Proxies:
        """The top-level C{trusted_proxies} and C{proxy_protocol} lists."""
        lists = {key: self.strings(values[key], key, what) for key, what in
                 (("trusted_proxies", "IP network"), ("proxy_protocol", "listener")) if key in values}
        made: Proxies | None = self.make(Proxies, {k: v for k, v in lists.items() if v is not None}, "")
        return made or Proxies()

    def routes(self, raw: Any) -> tuple[list[Route], list[int]]:
        """The routes that could be built, and the index each had in C{raw}."""
        routes: list[Route] = []
        places: list[int] = []
        if not isinstance(raw, list):
            self.add("routes", f"must be a list of [[routes]] tables, not {raw!r}")
            return routes, places
        for index, entry in enumerate(raw):
            route = self.route(entry, f"routes[{index}]")
            if route is not None:
                routes.append(route)
                places.append(index)
        return routes, places

    def _renumber(self, start: int, places: list[int], some_failed: bool) -> None:
        """
        Problems the whole config found speak of the built routes: give them
        their indices in the data; "nothing to serve" is no news when a route
        or the web root was refused.
        """
        def place(match: re.Match[str]) -> str:
            return f"routes[{places[int(match.group(1))]}]"

        renumbered = []
        for key, problem in self.problems[start:]:
            if some_failed and key == "routes" and problem.startswith("nothing to serve"):
                continue
            renumbered.append((re.sub(r"routes\[(\d+)\]", place, key), re.sub(r"routes\[(\d+)\]", place, problem)))
        self.problems[start:] = renumbered


def build_config(raw: Mapping[str, Any], source: str = "configuration") -> RouterConfig:
    """
    Build a L{RouterConfig} from the nested schema (C{docs/config.md}).

    @param raw: plain data, as C{tomllib} returns it.
    @param source: named in the error (a file name, "command line").
    @raise ConfigError: listing every problem found, each with its key path.
    """
    builder = _Builder()
    config = builder.config(raw)
    if builder.problems or config is None:
        raise ConfigError(builder.problems or [("", "not a configuration")], source)
    return config


# -- the model to plain data ------------------------------------------------------


def target_to_string(target: Target) -> str:
    """A target in the target language; a wrapped program as C{program:NAME}."""
    if isinstance(target, WrappedTarget):
        return f"program:{target.name}"
    return target.describe()


def _route_data(route: Route) -> dict[str, Any]:
    data: dict[str, Any] = {"path": route.pattern(), "target": target_to_string(route.target)}
    if route.subprotocols:
        data["subprotocols"] = list(route.subprotocols)
    if route.framing is not None:
        data["framing"] = framing_to_string(route.framing)
    if route.max_forks is not None:
        data["max_forks"] = route.max_forks
    if route.max_instances is not None:
        data["max_instances"] = route.max_instances
    if route.record is not None:
        data["record"] = route.record
    if route.env:
        data["env"] = dict(route.env)
    if route.proxy_protocol is not None:
        data["proxy_protocol"] = route.proxy_protocol
    if route.auth is not None:
        data["auth"] = route.auth
    if route.host is not None:
        data["host"] = route.host
    if isinstance(route.target, ExecTarget) and route.target.sandbox is not None:
        data["sandbox"] = route.target.sandbox.name
    if route.watch != "read":
        data["watch"] = route.watch
    if route.origin is not None:
        data["origin"] = route.origin if isinstance(route.origin, str) else list(route.origin)
    if route.balance is not None:
        del data["target"]
        data["targets"] = [target_to_string(target) for target in route.balance.targets]
        data["balance"] = route.balance.policy
        data["down_for"] = route.balance.down_for
    if isinstance(route.target, TlsTarget | WebSocketTarget):
        target = route.target
        data.update({key: value for key, value in
                     (("tls_ca", target.ca), ("tls_pin", target.pin), ("tls_verify", target.verify))
                     if value is not None and value is not True})
    if isinstance(route.target, ExecTarget) and route.target.pty:
        data["pty"] = True
    return data


def _sandbox_data(config: RouterConfig) -> dict[str, Any]:
    """The sandboxes the programs and exec routes use, by name (unused tables are not kept)."""
    used = [program.sandbox for program in config.programs] + [
        route.target.sandbox for route in config.routes if isinstance(route.target, ExecTarget)]
    return {sandbox.name: {key: value for key, value in _fields(sandbox, SANDBOX_KEYS).items() if value is not None}
            for sandbox in used if sandbox is not None}


def _fields(obj: Any, names: Sequence[str]) -> dict[str, Any]:
    values = {name: getattr(obj, name) for name in names}
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in values.items() if value is not None}


def _limits_data(limits: Limits) -> dict[str, Any]:
    data = _fields(limits, LIMITS_KEYS)
    if limits.ping_timeout is None and limits.ping_interval is not None:
        data["ping_timeout"] = 0  # off, unlike absent (which means ping_interval)
    return data


def _instance_data(program: WrappedTarget) -> dict[str, Any]:
    """A program's L{INSTANCE_KEYS}; C{idle_stop} off is 0."""
    data = {key: getattr(program, key) for key in INSTANCE_KEYS}
    data["idle_stop"] = data["idle_stop"] or 0
    for key in unused_instance_keys(program.mode, program.start, dict.fromkeys(INSTANCE_KEYS, True)):
        del data[key]  # keys that do nothing for this program are refused
    return data


def _resolver_data(resolver: Resolver) -> dict[str, Any]:
    """A resolver's table; a Python object as plugin is named by its class's C{module:name}."""
    plugin = resolver.plugin
    if not isinstance(plugin, str):
        plugin = f"{type(plugin).__module__}:{type(plugin).__qualname__}"
    data = {"plugin": plugin, **_fields(resolver, RESOLVER_KEYS[1:])}
    return data


def to_data(config: RouterConfig) -> dict[str, Any]:
    """
    The normalised nested schema of C{config}: every setting written out,
    C{None} left out (TOML has no null), inline programs named in
    C{programs}.  JSON-able, and C{build_config(to_data(c)) == c}.
    """
    data: dict[str, Any] = {
        "listen": list(config.listeners),
        "workers": config.workers,
        "pass_env": list(config.pass_env),
        "follow_program_port": config.follow_program_port,
        "limits": _limits_data(config.limits),
        "lifetime": _fields(config.lifetime, LIFETIME_KEYS),
        "log": _fields(config.log, LOG_KEYS),
        "compression": _fields(config.compression, COMPRESSION_KEYS),
    }
    if config.web is not None:
        data["web"] = {"root": config.web.directory, **_fields(config.web, WEB_KEYS[1:])}
    data["recording"] = _fields(config.recording, RECORDING_KEYS)
    data["security"] = _fields(config.security, SECURITY_KEYS)
    data["auth"] = {auth.name: _fields(auth, AUTH_KEYS) for auth in config.auth}
    data["programs"] = {program.name: {"mode": program.mode, "command": list(program.argv), "ports": program.ports,
                                       "keep_env": program.keep_env, "socket": program.socket,
                                       "protocol": program.protocol,
                                       **({"sandbox": program.sandbox.name} if program.sandbox else {}),
                                       **_instance_data(program)}
                          for program in config.programs}
    data["sandbox"] = _sandbox_data(config)
    data["routes"] = [_route_data(route) for route in config.routes]
    if config.terminal.mount is not None:
        data["terminal"] = _fields(config.terminal, TERMINAL_KEYS)
    if config.unknown_host != "default":
        data["unknown_host"] = config.unknown_host
    data["ops"] = _fields(config.ops, OPS_KEYS)
    if config.proxies.trusted_proxies:
        data["trusted_proxies"] = list(config.proxies.trusted_proxies)
    if config.proxies.proxy_protocol:
        data["proxy_protocol"] = list(config.proxies.proxy_protocol)
    if config.resolvers:
        data["resolvers"] = {resolver.name: _resolver_data(resolver) for resolver in config.resolvers}
    if config.tls is not None:
        data["tls"] = _fields(config.tls, TLS_KEYS[:-1])
        if config.tls.hosts:
            data["tls"]["hosts"] = {name: {"cert": cert, **({"key": key} if key else {})}
                                    for name, cert, key in config.tls.hosts}
    return data


__all__ = [
    "FRAMINGS",
    "RECORD_OFF",
    "build_config",
    "framing_to_string",
    "listener_from_short_form",
    "parse_framing",
    "parse_port",
    "parse_replay",
    "parse_route",
    "parse_target",
    "parse_wrapped",
    "program_name",
    "route_from_string",
    "split_host_port",
    "target_to_string",
    "to_data",
]
