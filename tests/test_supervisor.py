"""
The one process supervisor on a fake clock with a fake spawner and fake
process groups: restart backoff, SIGTERM then SIGKILL, exit-status text,
output lines, and a wrapped program's "gone for good" answer.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from wsrouter.config import WrappedTarget
from wsrouter.interfaces import TargetError
from wsrouter.process.supervisor import (
    GROUP_POLL_INTERVAL,
    KILL_GRACE,
    MAX_RESTART_DELAY,
    ChildOwner,
    ExitStatus,
    Launch,
    Supervisor,
)
from wsrouter.process.wrapped import ProgramSet, WrappedProgram


class FakeProcess:
    """What the supervisor uses of a process transport."""

    def __init__(self, pid: int):
        self.pid = pid
        self.signals: list[int] = []
        self.stdin_closed = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)


class FakeSystem:
    """A spawner and a group signaller over made-up processes; groups exist while their leader is alive."""

    def __init__(self) -> None:
        self.spawned: list[tuple[Any, FakeProcess, str, list[str]]] = []
        self.groups: dict[int, bool] = {}
        self.group_signals: list[tuple[int, int]] = []
        self.fail_next = False
        self._next_pid = 100

    def spawn(self, protocol: Any, executable: str, args: list[str], env: dict[str, str],
              child_fds: dict[int, Any]) -> FakeProcess:
        if self.fail_next:
            self.fail_next = False
            raise OSError("no more processes")
        self._next_pid += 1
        process = FakeProcess(self._next_pid)
        self.groups[process.pid] = True
        protocol.makeConnection(process)
        self.spawned.append((protocol, process, executable, args))
        return process

    def signal_group(self, pid: int, signum: int) -> bool:
        if not self.groups.get(pid):
            return False
        if signum:
            self.group_signals.append((pid, signum))
        return True

    def exit(self, index: int, reason: Exception, group_left: bool = False) -> None:
        """Make spawned process number C{index} exit (its group stays if C{group_left})."""
        protocol, process, _, _ = self.spawned[index]
        self.groups[process.pid] = group_left
        protocol.processExited(Failure(reason))
        protocol.processEnded(Failure(reason))


class Recorder(ChildOwner):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lines: list[tuple[int, bytes]] = []

    def child_started(self, child: Any) -> None:
        self.events.append(("started", child.pid))

    def child_line(self, child: Any, fd: int, line: bytes) -> None:
        self.lines.append((fd, line))
        super().child_line(child, fd, line)

    def child_exited(self, child: Any, status: ExitStatus) -> None:
        self.events.append(("exited", status.describe()))


def make(restart: bool = True) -> tuple[Clock, FakeSystem, Recorder, Any]:
    clock, system, owner = Clock(), FakeSystem(), Recorder()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    child = supervisor.add("demo", lambda: Launch("/bin/demo", ("demo", "-x"), {}, {0: "w", 1: "r", 2: "r"}),
                           owner, restart=restart)
    return clock, system, owner, child


def young_death(status: int = 1) -> ProcessTerminated:
    return ProcessTerminated(exitCode=status)


def test_restart_delay_doubles_to_the_cap_and_resets_after_a_stable_run():
    """A child dying young is restarted after 1, 2, 4 ... s up to 60 s; after a long run, at once, delay reset."""
    clock, system, _owner, child = make()
    child.start()
    delays = []
    for n in range(9):
        system.exit(n, young_death())
        assert child.restart_pending and not child.running
        before = len(system.spawned)
        waited = 0.0
        while len(system.spawned) == before:
            clock.advance(0.5)
            waited += 0.5
            assert waited <= MAX_RESTART_DELAY
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert child.restarts == 9
    clock.advance(30.0)
    system.exit(9, young_death())
    clock.advance(0)
    assert len(system.spawned) == 11, "a child that ran long is restarted at once"
    assert child.next_delay == 1.0


def test_no_restart_when_not_wanted():
    """A child made with restart=False stays down after it exits, and says why it ended."""
    clock, system, owner, child = make(restart=False)
    child.start()
    system.exit(0, young_death(3))
    clock.advance(120)
    assert len(system.spawned) == 1 and not child.running and not child.restart_pending
    assert owner.events == [("started", 101), ("exited", "exited with status 3")]


def test_stop_sends_sigterm_to_the_group_and_fires_when_it_is_empty():
    """Stopping SIGTERMs the group and fires once the child is reaped and its group empty; no restart follows."""
    clock, system, _owner, child = make()
    child.start()
    stopped = child.stop(grace=5)
    assert system.group_signals == [(101, signal.SIGTERM)]
    system.exit(0, ProcessTerminated(signal=signal.SIGTERM), group_left=True)  # a grandchild lingers
    clock.advance(GROUP_POLL_INTERVAL)
    assert not stopped.called
    system.groups[101] = False
    clock.advance(GROUP_POLL_INTERVAL)
    assert stopped.called
    clock.advance(120)
    assert len(system.spawned) == 1, "a stopped child is not restarted"


def test_stop_sends_sigkill_after_the_grace_period():
    """A child ignoring SIGTERM gets SIGKILL once the grace period is over."""
    clock, system, _owner, child = make()
    child.start()
    stopped = child.stop(grace=2)
    clock.pump([GROUP_POLL_INTERVAL] * int(1.9 / GROUP_POLL_INTERVAL))
    assert system.group_signals == [(101, signal.SIGTERM)]
    clock.pump([GROUP_POLL_INTERVAL] * 4)
    assert system.group_signals == [(101, signal.SIGTERM), (101, signal.SIGKILL)]
    system.exit(0, ProcessTerminated(signal=signal.SIGKILL))
    clock.advance(GROUP_POLL_INTERVAL)
    assert stopped.called


def test_stop_gives_up_on_a_group_that_survives_sigkill():
    """A group that outlives SIGKILL by the kill grace is given up on, so shutdown cannot hang."""
    clock, _system, _owner, child = make()
    child.start()
    stopped = child.stop(grace=1)
    clock.pump([GROUP_POLL_INTERVAL] * int((1 + KILL_GRACE + 1) / GROUP_POLL_INTERVAL))
    assert stopped.called


def test_stop_signals_the_child_itself_before_it_leads_a_group():
    """A child that has not made its own group yet is signalled directly."""
    clock, system, _owner, child = make()
    child.start()
    system.groups[101] = False
    process = system.spawned[0][1]
    stopped = child.stop(grace=5)
    assert process.signals == [signal.SIGTERM] and system.group_signals == []
    system.exit(0, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(GROUP_POLL_INTERVAL)
    assert stopped.called


def test_stop_while_a_restart_is_pending_cancels_it():
    """Stopping a child waiting to be restarted cancels the restart and fires at once."""
    clock, system, _owner, child = make()
    child.start()
    system.exit(0, young_death())
    assert child.restart_pending
    assert child.stop(grace=5).called
    clock.advance(120)
    assert len(system.spawned) == 1 and not child.restart_pending


def test_a_failed_restart_is_tried_again_later():
    """When spawning fails on a restart the error is logged and the restart tried again after a delay."""
    clock, system, _owner, child = make()
    child.start()
    system.exit(0, young_death())
    system.fail_next = True
    clock.advance(1.0)
    assert len(system.spawned) == 1 and child.restart_pending
    clock.advance(2.0)
    assert len(system.spawned) == 2 and child.running


def test_a_failed_first_start_raises():
    """A spawn failure on the first start is the caller's to report."""
    _clock, system, _owner, child = make()
    system.fail_next = True
    with pytest.raises(OSError):
        child.start()
    assert not child.running and not child.restart_pending


@pytest.mark.parametrize("reason, text, shell", [
    (ProcessDone(None), "exited with status 0", 0),
    (ProcessTerminated(exitCode=3), "exited with status 3", 3),
    (ProcessTerminated(signal=9), "killed by signal 9", 137),
])
def test_exit_status_text(reason, text, shell):
    """Exit statuses read as a person would say them, and as a shell's status."""
    status = ExitStatus.from_reason(Failure(reason))
    assert status.describe() == text
    assert status.shell_status == shell


def test_output_lines_reach_the_owner_and_the_log_with_the_name():
    """Output split across reads arrives as whole lines, logged with the child's name; a last partial line too."""
    _clock, system, owner, child = make()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        child.start()
        protocol = system.spawned[0][0]
        for chunk in (b"hel", b"lo\nwor", b"ld\n", b"tail"):
            protocol.childDataReceived(1, chunk)
        protocol.childDataReceived(2, b"oops\n")
        system.exit(0, ProcessDone(None))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert owner.lines == [(1, b"hello"), (1, b"world"), (2, b"oops"), (1, b"tail")]
    texts = [event.get("line") for event in seen if event.get("name") == "demo" and "line" in event]
    assert texts == ["hello", "world", "oops", "tail"]
    assert system.spawned[0][1].stdin_closed


# -- wrapped programs on the fake -----------------------------------------------------------


def wrapped(mode: str) -> tuple[Clock, FakeSystem, WrappedProgram]:
    clock, system = Clock(), FakeSystem()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    target = WrappedTarget(mode=mode, argv=(sys.executable, "server.py"), socket="loopback")  # reports ports
    program = WrappedProgram(clock, target, name="telnetd", supervisor=supervisor)
    program.start()
    return clock, system, program


def report(system: FakeSystem, index: int, port: int) -> None:
    system.spawned[index][0].childDataReceived(3, b"bound 2023 127.0.0.1 %d\n" % port)


def test_ignore_mode_program_gone_fails_waiting_clients_at_once_with_502():
    """In ignore mode, once the program exited without listening, waiting and new clients get 502 at once, with why."""
    _clock, system, program = wrapped("ignore")
    waiting = program.when_ready(9)
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    system.exit(0, ProcessDone(None))
    assert failures and isinstance(failures[0].value, TargetError)
    assert failures[0].value.status == 502
    assert failures[0].value.reason == ("wrapped program telnetd exited with status 0 and is not restarted"
                                        " (mode ignore)")
    later: list[Failure] = []
    program.when_ready(9).addErrback(later.append)
    assert later and later[0].value.status == 502


def test_respawn_mode_keeps_clients_waiting_through_a_restart():
    """In respawn mode a client waits while a restart is coming, and is served by the new run."""
    clock, system, program = wrapped("respawn")
    system.exit(0, ProcessTerminated(exitCode=1))
    assert program.gone_reason() is None
    waiting = program.when_ready(9)
    clock.advance(1.0)
    assert len(system.spawned) == 2 and not waiting.called
    report(system, 1, 40001)
    assert waiting.result == ("127.0.0.1", 40001)


def test_program_set_keeps_equal_programs_and_stops_removed_ones():
    """Bringing a ProgramSet to new targets keeps an equal target's program, makes new ones, and stops removed ones."""
    clock, system = Clock(), FakeSystem()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    one = WrappedTarget(mode="respawn", argv=(sys.executable, "one.py"), socket="loopback")  # no directory to leave
    two = WrappedTarget(mode="respawn", argv=(sys.executable, "two.py"), socket="loopback")
    three = WrappedTarget(mode="ignore", argv=(sys.executable, "two.py"), socket="loopback")
    programs = ProgramSet(lambda target: WrappedProgram(clock, target, supervisor=supervisor))
    for program in programs.add([one, two]):
        program.start()
    kept = programs.by_target[one]
    removed = programs.remove_others([three, one])
    assert system.group_signals == [(102, signal.SIGTERM)]
    system.exit(1, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(GROUP_POLL_INTERVAL)
    assert removed.called
    added = programs.add([three, one])
    programs.reorder([three, one])
    assert [program.target for program in added] == [three]
    assert programs.by_target[one] is kept and kept.running
    assert list(programs.by_target) == [three, one]
