"""
Start-up checks of what a valid config still needs from this machine.

A config can be well formed and still name a web root that is not there,
a command or program that is not on PATH or a recording directory the router cannot
write.  These are checked once, before anything listens, and every
problem is reported at once in the config's own C{key.path: problem}
form, instead of showing up later as a traceback, a 502 per connection or
a failure at the first recorded session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping

from OpenSSL import SSL
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from wsrouter.auth import auth_problems
from wsrouter.config import (
    ConfigError,
    ExecTarget,
    PythonTarget,
    RouterConfig,
    TlsTarget,
    WebSocketTarget,
    WrappedTarget,
)
from wsrouter.handlers.loader import HandlerLoadError, load_factory
from wsrouter.interfaces import TargetError
from wsrouter.process.sandbox import sandbox_problems
from wsrouter.resolvers import check_resolvers
from wsrouter.targets.exec import DEFAULT_PATH, resolve_command
from wsrouter.tls import ServerTls, TlsProblem, client_options, ssl_reason

Problem = tuple[str, str]


def preflight(config: RouterConfig, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """
    Every problem the machine has with C{config}, as C{(key path, problem)}.

    @param environ: the router's environment (PATH for wrapped programs,
        and for exec: commands when C{pass_env} passes it); default
        C{os.environ}.
    """
    env = os.environ if environ is None else environ
    return [
        *check_listeners(config.listeners),
        *check_web_root(config),
        *check_executables(config, env),
        *check_recording(config),
        *auth_problems(config),
        *check_tls(config),
        *sandbox_problems(config),
        *check_resolvers(config),
        *check_handlers(config),
    ]


def check_or_raise(config: RouterConfig, source: str = "start-up", environ: Mapping[str, str] | None = None) -> None:
    """
    @raise ConfigError: listing every problem L{preflight} finds.
    """
    problems = preflight(config, environ)
    if problems:
        raise ConfigError(problems, source)


def check_listeners(listeners: Iterable[str]) -> Iterator[Problem]:
    """Each listener is a Twisted endpoint string (parsed only: nothing is bound)."""
    for index, description in enumerate(listeners):
        try:
            serverFromString(MemoryReactor(), description)
        except (OSError, SSL.Error) as e:
            # ssl: endpoints read their certificate files while parsing.
            yield f"listen[{index}]", f"cannot load the certificate of {description!r}: {ssl_reason(e)}"
        except (ValueError, KeyError, TypeError, IndexError) as e:
            systemd = systemd_problem(description) if isinstance(e, (KeyError, IndexError)) else None
            yield f"listen[{index}]", systemd or (
                f"not a Twisted endpoint string ({description!r}: {e or type(e).__name__})")


def initial_environment() -> dict[str, str]:
    """
    The environment this process was started with (C{/proc/self/environ}):
    Twisted removes C{LISTEN_FDS} and C{LISTEN_PID} from C{os.environ} when
    it reads them.  C{os.environ} where C{/proc} cannot be read.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            items = [item.partition(b"=") for item in f.read().split(b"\0") if b"=" in item]
    except OSError:
        return dict(os.environ)
    return {os.fsdecode(key): os.fsdecode(value) for key, _, value in items}


def systemd_problem(description: str, environ: Mapping[str, str] | None = None) -> str | None:
    """
    Why a C{systemd:} listener names no socket systemd passed, in one line
    (Twisted's own error is an C{IndexError} or C{KeyError}); C{None} for
    other listeners.

    @param environ: the environment the router started with (default
        L{initial_environment}).
    """
    if not description.startswith("systemd:"):
        return None
    env = initial_environment() if environ is None else environ
    count = env.get("LISTEN_FDS", "")
    if env.get("LISTEN_PID") != str(os.getpid()) or not count.isdigit() or int(count) == 0:
        return (f"{description!r}: systemd passed no socket (LISTEN_FDS and LISTEN_PID are not set for this "
                "process): start the router from a .socket unit or with systemd-socket-activate")
    names = env.get("LISTEN_FDNAMES")
    if not names:
        return (f"{description!r}: systemd passed {count} socket(s) but no LISTEN_FDNAMES, which Twisted needs to "
                "adopt them: give systemd-socket-activate --fdname NAME (in a .socket unit: FileDescriptorName=NAME)")
    return (f"{description!r}: no such socket among the {count} systemd passed (LISTEN_FDNAMES={names}; "
            "index counts from 0)")


def check_web_root(config: RouterConfig) -> Iterator[Problem]:
    if config.web is not None and not os.path.isdir(config.web.directory):
        yield "web.root", f"{config.web.directory!r} is not an existing directory"


def check_executables(config: RouterConfig, environ: Mapping[str, str]) -> Iterator[Problem]:
    """exec: commands are found on the PATH they will get; wrapped programs on the router's."""
    reported: set[object] = set()
    for index, route in enumerate(config.routes):
        target = route.target
        if target in reported:
            continue
        if isinstance(target, ExecTarget):
            try:
                resolve_command(target.argv[0], _exec_path(config, dict(route.env), environ))
            except TargetError as e:
                reported.add(target)
                yield f"routes[{index}].target", str(e)
        elif (isinstance(target, WrappedTarget)
              and shutil.which(target.argv[0], path=environ.get("PATH", os.defpath)) is None):
            reported.add(target)
            yield f"routes[{index}].target", (f"wrapped program {target.argv[0]!r} not found or not "
                                              "executable (the router's PATH is searched)")


def _exec_path(config: RouterConfig, route_env: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """The PATH an exec: command gets (see C{cgi_environment})."""
    if "PATH" in route_env:
        return route_env["PATH"]
    if "PATH" in config.pass_env and "PATH" in environ:
        return environ["PATH"]
    return DEFAULT_PATH


def check_recording(config: RouterConfig) -> Iterator[Problem]:
    """Every directory sessions will be recorded into can be created and written."""
    directories: dict[str, str] = {}
    if config.recording.directory is not None:
        directories.setdefault(config.recording.directory, "recording.directory")
    for index, route in enumerate(config.routes):
        directory = config.recording_directory(route)
        if directory is not None:
            directories.setdefault(directory, f"routes[{index}].record")
    for directory, key in directories.items():
        problem = directory_problem(directory)
        if problem is not None:
            yield key, problem


def directory_problem(directory: str) -> str | None:
    """Why the router could not create or write files in C{directory}; C{None} if it can."""
    path = os.path.abspath(directory)
    if os.path.exists(path):
        if not os.path.isdir(path):
            return (f"{directory!r} exists and is not a directory (recordings go into a directory, "
                    "one file per session; websockify's --record FILE prefix: write a directory)")
        if not os.access(path, os.W_OK | os.X_OK):
            return f"directory {directory!r} is not writable"
        return None
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create {directory!r}: {parent!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {directory!r}: {parent!r} is not writable"
    return None


def check_tls(config: RouterConfig) -> Iterator[Problem]:
    """The listeners' certificate and key load and fit; each tls:// target's CA file is readable."""
    if config.tls is not None and not config.follow_program_port and not any(
            listener.startswith(("tcp:", "tcp6:")) for listener in config.listeners):
        yield "tls", "no tcp: listener to put TLS on (unix: and ssl: listeners are not affected by [tls])"
    if config.tls is not None:
        try:
            ServerTls(config.tls)
        except TlsProblem as e:
            yield "tls", str(e)
    for index, route in enumerate(config.routes):
        target = route.target.tls() if isinstance(route.target, WebSocketTarget) else route.target
        if isinstance(target, TlsTarget) and target.ca is not None:
            try:
                client_options(target)
            except TlsProblem as e:
                yield f"routes[{index}].tls_ca", str(e)


def check_handlers(config: RouterConfig) -> Iterator[Problem]:
    """Each python: target's factory imports and is callable (it is called later, once per route)."""
    for index, route in enumerate(config.routes):
        target = route.target
        if isinstance(target, PythonTarget) and target.factory is None:
            try:
                load_factory(target.name)
            except HandlerLoadError as e:
                yield f"routes[{index}].target", f"python:{target.name}: {e}"
