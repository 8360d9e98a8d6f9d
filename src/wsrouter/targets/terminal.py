"""
Commands on a pseudo-terminal: an C{exec:} route with C{pty = true}.

The command runs with a pty as its stdin, stdout, stderr and controlling
terminal, so shells give a prompt and job control, and C{top}, editors and
C{login} work.  C{TERM} is C{xterm-256color} unless the route's C{env}
sets it; the window starts at 80x24.

Why Twisted's C{spawnProcess(usePTY=...)}: it forks, calls C{setsid()}
and makes the pty the child's controlling terminal (C{TIOCSCTTY}) before
the exec, reaps the child, and its process transport is a
L{FileDescriptor} on the pty's master side, so pausing, resuming and
producer registration (flow control) are Twisted's, tested code.  A
hand-made C{os.openpty} + fork would redo all of that.  The pty is opened
here (C{os.openpty}) and handed over as C{usePTY=(master, slave, name)},
so its window size is set before the command starts.  The command is a
process session leader of its own (its pid is the session id), so no
C{setsid} launcher is needed.

Messages (see docs/terminal.md)
===============================
  - A B{text} message is typed input: its UTF-8 bytes go to the terminal.
  - A B{binary} message is a control message, a JSON object; C{{"columns":
    C, "rows": R}} (ttyd's resize fields) sets the window size (the kernel
    then sends the foreground job C{SIGWINCH}).  A binary message that is
    not a valid control message is ignored, with a log line (the first
    one of a session only).
  - The terminal's output comes back as binary messages, chunks as read.

The message type is the channel, so no typed or pasted text can ever be
taken for a control message.

Ending
======
An interactive shell puts each job in a process group of its own, so the
command's process group is not enough: signals go to every process of its
process session (found in C{/proc}; the command's group alone where there
is no C{/proc}).

  - The client closes (or the router does): C{SIGHUP} (what a terminal
    hang-up sends; an interactive shell ignores C{SIGTERM}) and C{SIGCONT}
    to the session at once, C{SIGTERM} to whatever is left after half the
    grace period, C{SIGKILL} after the grace period (2 s), then the pty is
    closed.  (C{SIGTERM} together with C{SIGHUP} would kill a program
    before its hang-up handler ran: an editor saving its buffer, say.)
  - The command exits: what is left of its session gets the same (a
    background job does not keep the session open); once its output is
    read and the pty closed, status 0 ends the session with 1000, anything
    else with 1011 and the status, as for other C{exec:} commands.

Flow control
============
The pty is read only while the client keeps up (the command blocks in
C{write()} once the pty's buffer is full), and the client's transport is
registered as producer on the pty, so a command that does not read its
input pauses reading from the client past 64 KiB of waiting input.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import DEFAULT_COMMAND_KILL_GRACE, ExecTarget, RouterConfig
from wsrouter.targets.process_link import ProcessLink, ProcessTransport, describe_exit

log = Logger(namespace="wsrouter.exec")

DEFAULT_TERM = "xterm-256color"
#: The window size before the page sends its own (columns, rows).
DEFAULT_SIZE = (80, 24)
#: Largest window accepted from a control message, each way.
MAX_SIZE = 10000
#: Largest control message read, in bytes; longer ones are ignored.
MAX_CONTROL = 1024
#: Bytes of a terminal's latest output kept for a watcher who joins later (it redraws the screen from them).
RECENT_OUTPUT = 64 * 1024


class RecentOutput:
    """The latest C{limit} bytes of a stream (whole chunks kept, so memory stays under C{limit} plus one chunk)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._chunks and self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def tail(self) -> bytes:
        return b"".join(self._chunks)[-self.limit:]


# -- the configuration -------------------------------------------------------------------


def open_terminal_routes(config: RouterConfig) -> list[str]:
    """The pty routes that ask for no credentials (each hands a terminal to anyone who reaches it)."""
    return [route.describe() for route in config.routes
            if isinstance(route.target, ExecTarget) and route.target.pty and config.auth_for(route) is None]


def warn_open_terminals(config: RouterConfig) -> None:
    """At start-up and reload: say loudly which pty routes have no C{auth}."""
    for route in open_terminal_routes(config):
        log.warn("route {route} runs a command on a pty and asks for no credentials: anyone who can reach "
                 "the listener gets that terminal; give it auth (docs/terminal.md)", route=route)


# -- the pty and its size --------------------------------------------------------------


def set_window_size(fd: int, columns: int, rows: int) -> None:
    """Set the terminal's window size (C{TIOCSWINSZ}); the kernel tells the foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def window_size(fd: int) -> tuple[int, int]:
    """The terminal's window size, C{(columns, rows)}."""
    rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return columns, rows


def open_pty(size: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int, str]:
    """A new pty, C{(master, slave, name)}, its window set to C{size} (columns, rows)."""
    master, slave = os.openpty()
    try:
        set_window_size(master, *size)
        return master, slave, os.ttyname(slave)
    except OSError:
        os.close(master)
        os.close(slave)
        raise


def parse_control(payload: bytes) -> tuple[int, int] | str:
    """
    A control message's new window size, C{(columns, rows)}, or what is
    wrong with the message (for the log line).
    """
    if len(payload) > MAX_CONTROL:
        return f"longer than {MAX_CONTROL} bytes"
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(message, dict) or set(message) != {"columns", "rows"}:
        return 'not {"columns": C, "rows": R}'
    columns, rows = message["columns"], message["rows"]
    for value in (columns, rows):
        if type(value) is not int or not 0 < value <= MAX_SIZE:
            return f"columns and rows must be whole numbers from 1 to {MAX_SIZE}"
    return columns, rows


# -- signalling a process session --------------------------------------------------------


def session_members(sid: int, proc: str = "/proc") -> list[int] | None:
    """
    The live (not zombie) processes of process session C{sid}, from
    C{/proc}; C{None} where there is no C{/proc}.  One pass over the
    process table.
    """
    try:
        names = os.listdir(proc)
    except OSError:
        return None
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 3 and fields[0] != b"Z" and fields[3] == str(sid).encode():
            members.append(int(name))
    return members


def signal_session(sid: int, signums: tuple[int, ...], leader_alive: bool) -> bool:
    """
    Send each of C{signums} to every process of process session C{sid}
    (its own process group as well, and C{sid} itself while not reaped).

    @return: whether any process of the session is left.
    """
    members = session_members(sid) or []
    left = bool(members)
    for signum in signums:
        try:
            os.killpg(sid, signum)
            left = True
        except ProcessLookupError:
            pass
        except PermissionError:
            left = True
        targets = set(members) | ({sid} if leader_alive else set())
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
    return left


# -- the link --------------------------------------------------------------------------------


class _PtyTransport(ProcessTransport, Protocol):
    """What Twisted's C{PTYProcess} offers: a file descriptor (the pty's master side) and a producer."""

    def fileno(self) -> int: ...

    def loseConnection(self) -> None: ...


class PtyLink(ProcessLink):
    """
    One command on a pty, as a paused message L{Link}; see the module
    docstring, and L{ProcessLink} for what it shares with
    L{wsrouter.targets.exec.CommandLink}, so the exec connector counts and
    stops both alike.

    @param clock: for the grace period (the reactor, or a test's Clock).
    @param signaller: signals a process session (L{signal_session}).
    @ivar ended: fires once the command is reaped and the pty closed.
    """

    message_oriented = True
    #: Hang-up (with SIGCONT for a stopped job) at once, SIGTERM at half the grace, SIGKILL at the grace.
    STOP_STAGES = ((signal.SIGHUP, signal.SIGCONT), (signal.SIGTERM,), (signal.SIGKILL,))

    def __init__(
        self,
        clock: Any,
        label: str,
        *,
        grace: float = DEFAULT_COMMAND_KILL_GRACE,
        signaller: Callable[[int, tuple[int, ...], bool], bool] = signal_session,
        on_exit: Callable[[PtyLink], None] = lambda link: None,
        describe_exit: Callable[[Failure], str | None] = describe_exit,
    ):
        super().__init__(clock, label, grace, on_exit)
        self._signal = signaller
        self._describe_exit = describe_exit
        self._recent = RecentOutput(RECENT_OUTPUT)
        self.pty_closed = False
        self._told_bad_control = False
        self._force_call: IDelayedCall | None = None

    @property
    def pty(self) -> _PtyTransport | None:
        """The process transport, while the pty is open."""
        return None if self.pty_closed else cast("_PtyTransport | None", self.transport)

    def read_side(self) -> ProcessTransport | None:
        return self.pty

    def recent_output(self) -> bytes:
        """The last L{RECENT_OUTPUT} bytes the terminal wrote: a new watcher gets them first, to draw the screen."""
        return self._recent.tail()

    def window_size(self) -> tuple[int, int] | None:
        """The pty's window size now, C{(columns, rows)}; C{None} once it is closed (watch pages follow it)."""
        pty = self.pty
        if pty is None:
            return None
        try:
            return window_size(pty.fileno())
        except (OSError, ValueError):
            return None

    # -- Link -----------------------------------------------------------------------

    def write_message(self, payload: bytes, is_binary: bool) -> None:
        """Text is typed input; binary is a control message (module docstring)."""
        if not is_binary:
            self.write(payload)
            return
        size = parse_control(payload)
        if isinstance(size, str):
            if not self._told_bad_control:  # once per session: a client cannot flood the log
                self._told_bad_control = True
                log.info("{label}: control message ignored: {problem} (further ones are not logged)",
                         label=self.label, problem=size)
            return
        if self.pty is None:
            return
        try:
            set_window_size(self.pty.fileno(), *size)
        except OSError as e:
            log.info("{label}: cannot resize the terminal: {error}", label=self.label, error=e)

    def write_eof(self) -> None:
        """A pty has no half-close; L{close} hangs it up."""

    def abort(self) -> None:
        """SIGKILL the session and close the pty now."""
        super().abort()
        self._force_close()

    # -- ProcessProtocol -----------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if not self._draining:
            self._recent.add(data)
        self._deliver(data)

    def processEnded(self, reason: Failure) -> None:
        """Reaped and the pty read to its end: report the exit."""
        self.pty_closed = True
        self._input.lost()
        self._cancel("_kill_call")
        self._cancel("_force_call")
        if self._receiver is not None:
            self._receiver.link_lost(self._describe_exit(self.exit or reason))
        self._fire_ended()

    # -- ending -------------------------------------------------------------------------

    def _send(self, pid: int, signums: tuple[int, ...], leader_alive: bool) -> bool:
        """Signal every process of the command's process session (L{signal_session})."""
        return self._signal(pid, signums, leader_alive)

    def _killed(self) -> None:
        self._schedule_force_close()

    def _outlived(self) -> None:
        self._schedule_force_close()

    def _schedule_force_close(self) -> None:
        """
        A process outside the session (it called C{setsid}) may still hold the
        pty open: close it after a grace period with no end.
        """
        if self._force_call is None and not self.pty_closed:
            self._force_call = self._clock.callLater(self._grace, self._force_close)

    def _force_close(self) -> None:
        self._force_call = None
        if self.pty is None:
            return
        if self.exit is None:
            self._schedule_force_close()  # the command is not reaped yet: wait for it
            return
        log.info("{label}: the pty is still held open after the command's session ended; closing it",
                 label=self.label)
        self.pty.loseConnection()
