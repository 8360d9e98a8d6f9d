"""
What the two command links share: L{wsrouter.targets.exec.CommandLink}
(a command on pipes) and L{wsrouter.targets.terminal.PtyLink} (a command
on a pty).  Each is a paused L{wsrouter.interfaces.Link} and a Twisted
C{ProcessProtocol}; they differ in which side of the process transport they
read and write, which signals stop the command and what closes its output
in the end, and this module leaves exactly those to them.

Flow control
============
The link's producer (L{LinkOutput}) is the client's say: pausing it stops
reading the command's output, so the command blocks in C{write()} once its
pipe or pty buffer is full.  The other way, the client's transport is
registered as producer on the process transport's input side through
L{PauseOnly}, which passes pause and resume on but turns C{stopProducing}
(Twisted calls it when stdin or the pty closes) into "resume": passing it
on would drop the client's connection without a close frame.  Before
L{ProcessLink.start} the output is not read; what was read before it is
delivered first.  Once the link is closing, output is read and dropped, so
the pipes or the pty can reach their end even if the client had paused
them.

Stopping in stages
==================
L{ProcessLink.STOP_STAGES} names the signals of each stage: the first is
sent at once, the others one step apart, the grace period divided evenly
among them, the last being C{SIGKILL}.  On a client close the first stage
is sent to the command (its pid included, not reaped yet); after the
command's own exit the first stage goes to what is left of it, and stopping
goes on only while something is left.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrouter.interfaces import LinkReceiver


def describe_exit(reason: Failure) -> str | None:
    """C{None} for exit status 0, else what happened, for the close reason."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return None
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = f" ({signal.Signals(value.signal).name})"
            except ValueError:
                name = ""
            return f"command killed by signal {value.signal}{name}"
        if value.exitCode == 0:
            return None
        return f"command exited with status {value.exitCode}"
    return str(value) or type(value).__name__


class ProcessTransport(Protocol):
    """
    What Twisted's process transports (pipes or a pty) offer beyond
    C{IProcessTransport}: the output side pauses as a producer, the input
    side is written and takes a producer.
    """

    pid: int | None

    def write(self, data: bytes) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


@implementer(IPushProducer)
class PauseOnly:
    """
    The client's producer as registered on the command's input: pause and
    resume pass through; C{stopProducing} (the input closed) only undoes a
    pause, it does not close the client (the bridge does, with a close frame).
    """

    def __init__(self, producer: IPushProducer):
        self._producer: IPushProducer | None = producer
        self._paused = False

    def pauseProducing(self) -> None:
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self._producer is not None and self._paused:
            self._paused = False
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self.release()

    def release(self) -> None:
        """Resume the client if paused and forget it."""
        self.resumeProducing()
        self._producer = None


@implementer(IConsumer)
class LinkInput:
    """The link's consumer (the command's input side), for the client's producer."""

    def __init__(self, link: ProcessLink):
        self._link = link
        self._shim: PauseOnly | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        side = self._link.write_side()
        if side is None or self._shim is not None:
            return
        # The bridge registers the client's transport, a streaming (push) producer.
        self._shim = PauseOnly(cast(IPushProducer, producer))
        side.registerProducer(self._shim, True)

    def unregisterProducer(self) -> None:
        shim, self._shim = self._shim, None
        if shim is None:
            return
        side = self._link.write_side()
        if side is not None:
            side.unregisterProducer()
        shim.release()

    def write(self, data: bytes) -> None:
        self._link.write(data)

    def lost(self) -> None:
        """The input side is closed: never leave the client paused."""
        shim, self._shim = self._shim, None
        if shim is not None:
            shim.release()


@implementer(IPushProducer)
class LinkOutput:
    """The link's producer: pausing it stops reading the command's output."""

    def __init__(self, link: ProcessLink):
        self._link = link

    def pauseProducing(self) -> None:
        self._link.client_paused(True)

    def resumeProducing(self) -> None:
        self._link.client_paused(False)

    def stopProducing(self) -> None:
        """The client's connection is gone."""
        self._link.close()


class ProcessLink(ProcessProtocol):
    """
    One running command as a paused link: output delivery and flow control
    (module docstring), and stopping it in L{STOP_STAGES}.

    Subclasses say which side of the transport is read (L{read_side}) and
    written (L{write_side}), how a stage's signals are sent (L{_send}), and
    what happens once the command's processes are gone (L{_outlived}) or
    killed (L{_killed}).

    @param clock: for the grace period (the reactor, or a test's Clock).
    @param label: names the command and session in log lines.
    @param grace: seconds from the first stop signal to C{SIGKILL}.
    @param on_exit: called once with the link when the command has exited.
    @ivar ended: fires once the command is reaped and its output closed.
    """

    message_oriented: bool
    #: The signals of each stop stage, first to last (the last one SIGKILL).
    STOP_STAGES: ClassVar[tuple[tuple[int, ...], ...]]

    def __init__(self, clock: Any, label: str, grace: float, on_exit: Callable[[Any], None]):
        self._clock = clock
        self.label = label
        self._grace = grace
        self._on_exit = on_exit
        self._receiver: LinkReceiver | None = None
        self._early: list[bytes] = []
        self.pid: int | None = None
        self.exit: Failure | None = None
        self._paused_by_client = False
        self._closing = False
        self._draining = False
        self._kill_call: IDelayedCall | None = None
        self.ended: Deferred[None] = Deferred()
        self.producer: IPushProducer | None = LinkOutput(self)
        self._input = LinkInput(self)
        self.consumer: IConsumer | None = self._input

    # -- what the subclass says ------------------------------------------------------

    def read_side(self) -> ProcessTransport | None:
        """The transport whose output is read, while there is one."""
        raise NotImplementedError

    def write_side(self) -> ProcessTransport | None:
        """The transport that takes the client's input, while it is open."""
        return self.read_side()

    def _send(self, pid: int, signums: tuple[int, ...], leader_alive: bool) -> bool:
        """Send one stage's signals to the processes of the command C{pid}; whether any is left."""
        raise NotImplementedError

    def _outlived(self) -> None:
        """Nothing of the command is left to signal, yet its output may still be held open."""
        raise NotImplementedError

    def _killed(self) -> None:
        """The last stage (SIGKILL) has been sent."""
        raise NotImplementedError

    # -- Link -----------------------------------------------------------------------

    def start(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        early, self._early = self._early, []
        for data in early:
            receiver.data_received(data)
        self._update_reading()

    def write(self, data: bytes) -> None:
        side = self.write_side()
        if side is not None:
            side.write(data)

    def write_eof(self) -> None:
        """No half-close unless the subclass has one."""

    def close(self) -> None:
        """
        Stop the command: the first stage now, the next ones later.  Called
        once the client is gone: output is read and dropped from now on.
        """
        if self._closing:
            return
        self._closing = True
        self._drain()
        self.write_eof()
        if self.exit is None and self.pid is not None:
            self._send(self.pid, self.STOP_STAGES[0], True)
            self._schedule_stage(1)

    def abort(self) -> None:
        """Send the last stage (SIGKILL) now."""
        self._closing = True
        self._drain()
        self._cancel("_kill_call")
        self._stage(len(self.STOP_STAGES) - 1)

    # -- flow control ---------------------------------------------------------------

    def client_paused(self, paused: bool) -> None:
        self._paused_by_client = paused
        self._update_reading()

    def _reading(self) -> bool:
        return self._draining or (self._receiver is not None and not self._paused_by_client)

    def _drain(self) -> None:
        self._draining = True
        self._early.clear()
        self._update_reading()

    def _update_reading(self) -> None:
        side = self.read_side()
        if side is None:
            return
        if self._reading():
            side.resumeProducing()
        else:
            side.pauseProducing()

    # -- ProcessProtocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        side = self.read_side()
        if side is None:  # makeConnection sets the transport before calling this
            return
        self.pid = side.pid
        side.pauseProducing()

    def _deliver(self, data: bytes) -> None:
        """Output read from the command: to the client, kept until start, or dropped once closing."""
        if self._draining:
            return
        if self._receiver is None:
            self._early.append(data)
        else:
            self._receiver.data_received(data)

    def processExited(self, reason: Failure) -> None:
        self.exit = reason
        self._on_exit(self)
        self._wind_down()

    # -- ending -------------------------------------------------------------------------

    def _wind_down(self) -> None:
        """The command has exited: stop what is left of it, unless it is being stopped already."""
        if self._kill_call is not None or self.pid is None:
            return
        if self._send(self.pid, self.STOP_STAGES[0], False):
            self._schedule_stage(1)
        else:
            self._outlived()

    def _schedule_stage(self, stage: int) -> None:
        if self._kill_call is None:
            step = self._grace / (len(self.STOP_STAGES) - 1)
            self._kill_call = self._clock.callLater(step, self._stage, stage)

    def _stage(self, stage: int) -> None:
        self._kill_call = None
        left = self.pid is None or self._send(self.pid, self.STOP_STAGES[stage], self.exit is None)
        if stage == len(self.STOP_STAGES) - 1:
            self._killed()
        elif left:
            self._schedule_stage(stage + 1)
        else:
            self._outlived()

    def _fire_ended(self) -> None:
        if not self.ended.called:
            self.ended.callback(None)

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()
