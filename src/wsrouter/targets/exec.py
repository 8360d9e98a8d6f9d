"""
Exec targets (C{exec:COMMAND ARGS}): one run of the command per WebSocket
session, websocketd style.  (A "program" is a wrapped server program, see
L{wsrouter.targets.wrapped}; what an C{exec:} route runs is its "command".)

Client messages go to the command's stdin; its stdout comes back as
messages, cut by the route's framer (lines by default); each stderr line
goes to the router's log, prefixed with the command's name and the session
id.  The command sees a CGI-style environment (L{cgi_environment}) and
nothing else of the router's.

Process group
=============
The command runs in a process group of its own, whose id is its pid, so
that stopping it reaches everything it started: a shell script's children,
a pipeline, a forked helper.  (It gets the group by becoming leader of a
new POSIX "process session", C{setsid()}; in this module, as everywhere
in wsrouter, a plain "session" is the life of one WebSocket connection.)  C{reactor.spawnProcess}
has no option for that, and the alternatives are worse:

  - calling C{os.setpgid(pid, pid)} from the router after the spawn is
    racy (the child may fork first) and, since Twisted spawns with
    C{posix_spawnp}, which returns only after the child's exec, fails with
    C{EACCES} on Linux;
  - subclassing Twisted's C{Process} to add C{setsid} to its
    C{posix_spawnp} or fork path relies on private methods that have
    changed before.

So the command is started through a launcher that calls C{setsid()} and
then execs it, keeping the pid: the C{setsid} utility (util-linux, also in
BusyBox), found at start-up, which adds one small exec (about 1.5 ms per
session, measured); where there is none, a few lines of Python run with
the router's interpreter (C{-I -S}; about 25 ms).  The spawned process is never a group
leader, so C{setsid} does not fork and the pid Twisted reaps is the
command's own.  Being a new process session also detaches the command from
the router's terminal, so a Ctrl-C meant for the router does not reach it
directly: the router stops its commands itself.  Commands run in the
router's working directory.

Signals go to the group (C{killpg(pid)}) and, until the command is reaped,
to its pid as well, which covers the instant before the launcher has
called C{setsid()}.  A descendant that starts a process session of its own
leaves the group and is out of reach (only a cgroup would catch it); if it
keeps the command's stdout open, see below.

Ending
======
  - The command exits: its last output is delivered first (Twisted reports
    the exit and the end of stdout in either order; the link waits for
    both), then status 0 ends the session with 1000 and anything else
    with 1011 and "command exited with status N" or "command killed by
    signal S".  What is left of its process group (a background job still
    holding stdout, say) gets SIGTERM at once and SIGKILL after the grace
    period, so the session ends and no orphan outlives it.  If stdout is
    still open when the group is gone (a descendant in a process session of
    its own holds it), it is closed once no output has come for a grace
    period while the client was reading.
  - The command closes stdout but keeps running: if it has not exited
    within the grace period, the session closes with 1000 ("target
    closed the connection"), and the client's close then stops the
    command as below.
  - The client closes (or the router does): stdin is closed, then the
    group gets SIGTERM and, after the grace period (2 s), SIGKILL.
    Twisted reaps the command; L{CommandLink.ended} fires once it is
    reaped and its pipes are closed.

Flow control
============
The command's stdout (and stderr) are read only while the client keeps up:
the link's producer pauses Twisted's process reader, and the command
blocks in write() when the pipe is full.  The other way, the WebSocket
transport is registered as producer on the command's stdin writer, which
pauses it (stops reading from the client) when more than 64 KiB wait for a
command that does not read.  The registration goes through a shim that
ignores C{stopProducing}: Twisted calls it when the stdin pipe closes
(the command exited or closed its stdin), and passing it on would drop the
client's connection without a close frame.  A paused client is resumed
then, and its later messages are discarded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter import __version__
from wsrouter.clientcert import cgi_variables
from wsrouter.config import DEFAULT_COMMAND_KILL_GRACE, ExecTarget, Limits, Route, Sandbox
from wsrouter.interfaces import Link, LinkReceiver, SessionInfo, TargetError
from wsrouter.process.sandbox import SandboxError, allowed_environment, limit_hint, sandbox_command
from wsrouter.targets.process_link import ProcessLink, ProcessTransport, describe_exit
from wsrouter.targets.terminal import DEFAULT_TERM, PtyLink, open_pty

log = Logger(namespace="wsrouter.exec")

#: The commands' PATH unless the router's is passed on (pass_env) or the
#: route sets one.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Seconds between SIGTERM and SIGKILL, and the other waits described in
#: the module docstring (the default lives in the config model).
KILL_GRACE = DEFAULT_COMMAND_KILL_GRACE
#: Longest stderr line logged, in bytes; longer lines are cut.
MAX_STDERR_LINE = 1024
GATEWAY_INTERFACE = "websocketd-CGI/0.1"

#: Used where there is no C{setsid} utility: become a process session leader, then
#: the command (argv[1] is its absolute path, so no PATH search).
_TRAMPOLINE = """
import os, sys
os.setsid()
try:
    os.execv(sys.argv[1], sys.argv[1:])
except OSError as e:
    sys.stderr.write("cannot run %s: %s\\n" % (sys.argv[1], e.strerror))
    os._exit(127)
"""

_HEADER_NAME = re.compile(r"[a-z0-9-]+")


# -- the environment ---------------------------------------------------------------


def cgi_environment(session: SessionInfo, pass_env: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """
    The complete environment of a session's command, CGI style.

    Request variables (as websocketd sets them, plus C{REMOTE_HOST} and
    C{UNIQUE_ID}, the session id), one C{HTTP_*} per request header, a
    minimal C{PATH}; then the names in C{pass_env} copied from C{environ}
    (the router's environment; C{PATH} among them replaces the default),
    then the route's C{env} pairs.  Configured names win over the
    request's, so a client header can never replace a variable the
    operator set.  Nothing else of C{environ} is used.  A verified client
    certificate adds C{SSL_CLIENT_S_DN}, C{SSL_CLIENT_S_DN_CN} and
    C{SSL_CLIENT_VERIFY} (L{wsrouter.clientcert.cgi_variables}).

    Headers whose names have characters other than letters, digits and
    C{-} are left out, so C{X_User} cannot pose as C{X-User} after a proxy
    that filters only the latter (Apache does the same); so is C{Proxy},
    which would become C{HTTP_PROXY} (httpoxy).  Values have line breaks
    and NULs replaced by spaces; repeated headers are joined with C{", "}.
    """
    env = {
        "GATEWAY_INTERFACE": GATEWAY_INTERFACE,
        "SERVER_SOFTWARE": f"wsrouter/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": session.server_name,
        "SERVER_PORT": str(session.server_port) if session.server_port else "",
        "REMOTE_ADDR": session.peer_host,
        "REMOTE_HOST": session.peer_host,
        "REMOTE_PORT": str(session.peer_port) if session.peer_port else "",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": session.script_name,
        "PATH_INFO": session.path_info,
        "QUERY_STRING": session.query,
        "REQUEST_URI": session.request_uri,
        "UNIQUE_ID": session.session_id,
    }
    if session.secure:
        env["HTTPS"] = "on"
    env.update(cgi_variables(session.client_cert))
    env.update(header_variables(session.headers))
    env["PATH"] = DEFAULT_PATH
    for name in pass_env:
        if name in environ:
            env[name] = environ[name]
    env.update(session.route.env)
    return {name: _clean(value) for name, value in env.items()}


def header_variables(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """C{HTTP_*} variables for request headers; see L{cgi_environment}."""
    variables: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if not _HEADER_NAME.fullmatch(name) or name == "proxy":
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        value = _clean(raw_value).strip()
        variables[key] = f"{variables[key]}, {value}" if key in variables else value
    return variables


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ").replace("\0", " ")


# -- finding the command --------------------------------------------------------------


def resolve_command(name: str, path: str) -> str:
    """
    The absolute path of the command's executable, found like a shell would.

    Checked before spawning because a failed exec shows up only later, as
    an exit status; this way the client gets 502 with a reason instead.

    @param path: the command's C{PATH}, searched when C{name} has no C{/}.
    @raise TargetError: 502, saying what to fix.
    """
    if "/" in name:
        candidate = os.path.abspath(name)
        if not os.path.exists(candidate):
            raise TargetError(f"command {name} does not exist; check the route's exec: path", 502)
        if os.path.isdir(candidate):
            raise TargetError(f"command {name} is a directory, not an executable file", 502)
        if not os.access(candidate, os.X_OK):
            raise TargetError(
                f"command {name} is not executable; make it so (chmod +x) "
                "or name its interpreter (exec:python3 SCRIPT)", 502,
            )
        return candidate
    found = shutil.which(name, path=path)
    if found is None:
        raise TargetError(
            f"command {name!r} not found on the commands' PATH; give its full path, "
            "or set PATH (pass_env, or the route's env=PATH:...)", 502,
        )
    return os.path.abspath(found)


def default_launcher() -> tuple[str, ...]:
    """
    The argv prefix that starts a command in a process session of its
    own: the C{setsid} utility if there is one, else L{python_launcher}.
    """
    setsid = shutil.which("setsid")
    if setsid is not None:
        return (os.path.abspath(setsid),)
    return python_launcher()


def python_launcher() -> tuple[str, ...]:
    """A launcher made of the router's own interpreter, for systems without C{setsid}."""
    return (sys.executable, "-I", "-S", "-c", _TRAMPOLINE)


def signal_command(pid: int, signum: int, leader_alive: bool) -> bool:
    """
    Send C{signum} to the process group C{pid} and, while the command has
    not been reaped (its pid cannot have been reused), to C{pid} itself.

    @return: whether the group still has members.
    """
    group = True
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        group = False
    except PermissionError:  # some member changed its user; the rest were signalled
        pass
    if leader_alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    return group


# -- stderr ---------------------------------------------------------------------------


class StderrLines:
    """
    Cuts a command's stderr into lines for the log, each at most
    C{max_line} bytes: the rest of a longer line is dropped, so a command
    that never writes a newline cannot make the router buffer much.
    """

    def __init__(self, emit: Callable[[str], None], max_line: int = MAX_STDERR_LINE):
        self._emit = emit
        self._max = max_line
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            if not self._skipping:
                self._line(bytes(self._buffer[start:end]))
            self._skipping = False
            start = end + 1
        del self._buffer[:start]
        if self._skipping:
            self._buffer.clear()
        elif len(self._buffer) > self._max:
            self._line(bytes(self._buffer))
            self._buffer.clear()
            self._skipping = True

    def flush(self) -> None:
        """End of stderr: log an unfinished last line."""
        if self._buffer and not self._skipping:
            self._line(bytes(self._buffer))
        self._buffer.clear()
        self._skipping = False

    def _line(self, line: bytes) -> None:
        cut = len(line) > self._max
        text = line[: self._max].rstrip(b"\r").decode("utf-8", "replace")
        self._emit(text + (f" [line cut at {self._max} bytes]" if cut else ""))


# -- the link -----------------------------------------------------------------------------


class CommandLink(ProcessLink):
    """
    One running command on pipes, as a paused L{Link}; see the module
    docstring for how it ends, and L{ProcessLink} for what it shares with
    the pty link.

    @param clock: for the grace periods (the reactor, or a test's Clock).
    @param label: names the command and session in log lines.
    @param signaller: sends signals; L{signal_command} unless testing.
    @param on_exit: called once when the command has been reaped.
    @ivar ended: fires once the command is reaped and its pipes closed.
    """

    message_oriented = False
    STOP_STAGES = ((signal.SIGTERM,), (signal.SIGKILL,))
    #: The command's sandbox: its limits are named in the log when they may explain an exit.
    sandbox: Sandbox | None = None

    def __init__(
        self,
        clock: Any,
        label: str,
        *,
        grace: float = KILL_GRACE,
        signaller: Callable[[int, int, bool], bool] = signal_command,
        on_exit: Callable[[CommandLink], None] = lambda link: None,
    ):
        super().__init__(clock, label, grace, on_exit)
        self._signal = signaller
        self._stderr = StderrLines(self._log_stderr)
        self.stdin_open = True
        self._stdout_open = True
        self._stderr_open = True
        self._reported = False
        self._eof_reported = False
        self._activity = 0
        self._eof_call: IDelayedCall | None = None
        self._watch_call: IDelayedCall | None = None

    @property
    def pipes(self) -> ProcessTransport | None:
        """The process transport, with its pipe controls (see L{ProcessTransport})."""
        return cast("ProcessTransport | None", self.transport)

    def read_side(self) -> ProcessTransport | None:
        return self.pipes

    def write_side(self) -> ProcessTransport | None:
        return self.pipes if self.stdin_open else None

    # -- Link ---------------------------------------------------------------------

    def start(self, receiver: LinkReceiver) -> None:
        super().start(receiver)
        self._maybe_report()

    def write_eof(self) -> None:
        if self.stdin_open and self.transport is not None:
            self.transport.closeStdin()

    # -- ProcessProtocol ----------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self._activity += 1
        self._deliver(data)

    def errReceived(self, data: bytes) -> None:
        self._activity += 1
        self._stderr.feed(data)

    def inConnectionLost(self) -> None:
        self.stdin_open = False
        self._input.lost()

    def outConnectionLost(self) -> None:
        self._stdout_open = False
        self._maybe_report()

    def errConnectionLost(self) -> None:
        self._stderr_open = False
        self._stderr.flush()

    def processExited(self, reason: Failure) -> None:
        value = reason.value
        if self.sandbox is not None and isinstance(value, ProcessTerminated) and (
                hint := limit_hint(self.sandbox, value.exitCode, value.signal)):
            log.warn("{label} {status}: {hint}", label=self.label, status=describe_exit(reason), hint=hint)
        self._cancel("_eof_call")
        super().processExited(reason)
        self._maybe_report()

    def processEnded(self, reason: Failure) -> None:
        self._cancel("_eof_call")
        self._cancel("_watch_call")
        if self._kill_call is not None and self.pid is not None and not self._signal(self.pid, 0, False):
            self._cancel("_kill_call")
        self._fire_ended()

    # -- ending ---------------------------------------------------------------------------

    def _send(self, pid: int, signums: tuple[int, ...], leader_alive: bool) -> bool:
        """Signal the command's process group (L{signal_command}); whether it has members."""
        return any([self._signal(pid, signum, leader_alive) for signum in signums])

    def _maybe_report(self) -> None:
        """Tell the bridge the link is gone once all output is delivered and the exit known."""
        if self._receiver is None or self._reported or self._stdout_open:
            return
        if self.exit is not None:
            self._reported = True
            self._receiver.link_lost(describe_exit(self.exit))
        elif not self._eof_reported and self._eof_call is None:
            self._eof_call = self._clock.callLater(self._grace, self._kept_running)

    def _kept_running(self) -> None:
        self._eof_call = None
        if self.exit is None and self._receiver is not None and not self._reported:
            log.info("{label}: closed its output but keeps running; ending the session", label=self.label)
            self._eof_reported = True
            self._receiver.eof_received()

    def _killed(self) -> None:
        if self.transport is not None and self.stdin_open:
            self.transport.closeStdin()
        if self.exit is not None:
            self._watch_pipes()

    def _outlived(self) -> None:
        self._watch_pipes()

    def _watch_pipes(self) -> None:
        """
        The whole group is gone, yet output pipes may still be open, held by
        a process outside it: close them once they stay quiet while read.
        """
        if not (self._stdout_open or self._stderr_open) or self._watch_call is not None:
            return
        mark = self._activity
        self._watch_call = self._clock.callLater(self._grace, self._check_pipes, mark)

    def _check_pipes(self, mark: int) -> None:
        self._watch_call = None
        if not (self._stdout_open or self._stderr_open):
            return
        if self._activity != mark or not self._reading():
            self._watch_pipes()
            return
        log.info("{label}: output still held open after the command's group ended; closing it", label=self.label)
        if self.transport is not None:
            self.transport.closeStdout()
            self.transport.closeStderr()

    def _log_stderr(self, line: str) -> None:
        log.info("{label} stderr: {line}", label=self.label, line=line)


# -- the connector ---------------------------------------------------------------------------


class ExecConnector:
    """
    Starts a command per session, within the fork limit.

    @param pass_env: names of the router's environment variables that
        commands get (see L{cgi_environment}).
    @param environ: the router's environment; C{os.environ} unless testing.
    @param launcher: the argv prefix that runs a command in a process
        session of its own (L{default_launcher}).
    """

    def __init__(
        self,
        reactor: Any,
        limits: Limits,
        pass_env: Iterable[str] = (),
        *,
        environ: Mapping[str, str] | None = None,
        launcher: Iterable[str] | None = None,
        grace: float = KILL_GRACE,
        signaller: Callable[[int, int, bool], bool] = signal_command,
    ):
        self._reactor = reactor
        self._limits = limits
        self._pass_env = tuple(pass_env)
        self._environ = os.environ if environ is None else environ
        self._launcher = tuple(launcher) if launcher is not None else default_launcher()
        self._grace = grace
        self._signaller = signaller
        self._running: dict[Route, int] = {}
        self._links: set[ProcessLink] = set()

    def running(self, route: Route) -> int:
        """How many commands of C{route} have not exited yet."""
        return self._running.get(route, 0)

    def use_settings(self, limits: Limits, pass_env: Sequence[str]) -> None:
        """Commands started from now on get these limits and variables (a reload)."""
        self._limits = limits
        self._pass_env = tuple(pass_env)

    def connect(self, session: SessionInfo) -> Deferred[Link]:
        try:
            return succeed(self._spawn(session))
        except TargetError:
            return fail()

    def _spawn(self, session: SessionInfo) -> CommandLink | PtyLink:
        route = session.route
        target = route.target
        if not isinstance(target, ExecTarget):
            raise TypeError(f"not an exec: target: {target!r}")
        limit = route.max_forks if route.max_forks is not None else self._limits.max_forks
        if limit is not None and self.running(route) >= limit:
            raise TargetError(
                f"route {route.describe()} already runs {limit} command(s), its max-forks limit; retry later", 503,
            )
        env = allowed_environment(cgi_environment(session, self._pass_env, self._environ), target.sandbox,
                                  always=[name for name, _ in route.env])
        executable = resolve_command(target.argv[0], env.get("PATH", ""))
        label = f"{os.path.basename(target.argv[0])}[{session.session_id}]"
        link: CommandLink | PtyLink
        if target.pty:
            # On a pty the command becomes a process session leader itself (see terminal.py).
            link = PtyLink(self._reactor, label, grace=self._grace,
                           on_exit=lambda link: self._exited(route))
            args = [executable, *target.argv[1:]]
            if "TERM" not in dict(route.env):
                env["TERM"] = DEFAULT_TERM
        else:
            link = CommandLink(self._reactor, label, grace=self._grace, signaller=self._signaller,
                               on_exit=lambda link: self._exited(route))
            args = [*self._launcher, executable, *target.argv[1:]]
        if target.sandbox is not None:
            if isinstance(link, CommandLink):
                link.sandbox = target.sandbox
            try:
                args = sandbox_command(target.sandbox, [executable, *target.argv[1:]])
            except SandboxError as e:
                raise TargetError(str(e), 502) from None
        self._running[route] = self.running(route) + 1
        pty: tuple[int, int, str] | None = None
        try:
            pty = open_pty() if target.pty else None
            self._reactor.spawnProcess(link, args[0], args, env=env, path=None, usePTY=pty or False)
        except (OSError, ValueError) as e:
            if pty is not None:
                for fd in pty[:2]:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._exited(route)
            raise TargetError(f"cannot start {target.describe()}: {e}", 502) from None
        self._links.add(link)
        link.ended.addBoth(lambda _: self._links.discard(link))
        return link

    def _exited(self, route: Route) -> None:
        count = self.running(route) - 1
        if count > 0:
            self._running[route] = count
        else:
            self._running.pop(route, None)

    def terminate_all(self) -> Deferred[Any]:
        """
        Stop every command (as a client close would) and fire once all are
        reaped and their pipes closed; for the router's shutdown.
        """
        links = list(self._links)
        for link in links:
            link.close()
        return DeferredList([link.ended for link in links])
