"""
Per-session instances and on-demand programs on a fake clock with the
supervisor's fake spawner (tests/test_supervisor.py): slots and the cap,
the template reaching the command line, stopping on release, the idle timer.
The real processes are in tests/test_instances.py.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from wsrouter.config import Route, WrappedTarget
from wsrouter.interfaces import SessionInfo
from wsrouter.process import wrapped
from wsrouter.process.instances import InstancePool, Lease, OnDemandProgram, make_program
from wsrouter.process.supervisor import Supervisor
from wsrouter.process.wrapped import WrappedProgram
from wsrouter.rebind.private import make_private_dir, remove_private_dir

from .test_supervisor import FakeSystem

ENV = {"PATH": "/usr/bin:/bin"}
SHIM = "/opt/rebind.so"


def session(target: WrappedTarget, query: str = "", session_id: str = "s1") -> SessionInfo:
    return SessionInfo(session_id=session_id, peer_host="127.0.0.1", peer_port=5, server_name="localhost",
                       server_port=80, secure=False, path="/r", route_path="/r", query=query, headers=(),
                       subprotocol=None, route=Route(path="/r", target=target))


def lease_of(deferred: Any) -> Lease:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results and isinstance(results[0], Lease), results
    return results[0]


def failure_of(deferred: Any) -> Failure:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


@pytest.fixture(autouse=True)
def private_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """
    The private socket directories this test's programs make.  The fake
    processes here never exit unless told, so a program left running keeps
    its directory, as it would for real; those are removed afterwards
    (only these: never others' directories by pattern).
    """
    made_dirs: list[str] = []

    def recording(name: str) -> str:
        path = make_private_dir(name)
        made_dirs.append(path)
        return path

    monkeypatch.setattr(wrapped, "make_private_dir", recording)
    yield made_dirs
    for path in made_dirs:
        remove_private_dir(path)


def made(target: WrappedTarget) -> tuple[Clock, FakeSystem, WrappedProgram]:
    clock, system = Clock(), FakeSystem()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    program = make_program(clock, target, supervisor=supervisor, environ=ENV, shim=SHIM)
    program.start()
    return clock, system, program


def test_pool_fills_slots_renders_the_command_and_caps():
    """Each lease starts an instance in the lowest free slot with the template filled in; past the cap, 503."""
    target = WrappedTarget("per-session", (sys.executable, "srv", "{instance}", "{session.id}", "{query.t}"),
                           name="g", max_instances=2)
    clock, system, pool = made(target)
    assert isinstance(pool, InstancePool) and system.spawned == []
    first = lease_of(pool.lease(session(target, "t=a", "S1")))
    lease_of(pool.lease(session(target, "t=b", "S2")))
    assert [args[-4:] for _, _, _, args in system.spawned] == [["srv", "1", "S1", "a"], ["srv", "2", "S2", "b"]]
    refused = failure_of(pool.lease(session(target, "t=c")))
    assert refused.value.status == 503 and "max_instances" in refused.value.reason
    first.release()
    first.release()  # once only
    leader = system.spawned[0][1].pid
    assert system.group_signals == [(leader, signal.SIGTERM)]
    assert failure_of(pool.lease(session(target, "t=c"))).value.status == 503  # still stopping: counted
    system.exit(0, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(0.1)  # the group is polled until empty
    lease_of(pool.lease(session(target, "t=c", "S3")))
    assert system.spawned[-1][3][-3:] == ["1", "S3", "c"]


def test_pool_refuses_bad_query_values_with_400_and_starts_nothing():
    """A {query.NAME} value that is missing or not the strict pattern is a 400; nothing is spawned."""
    target = WrappedTarget("per-session", (sys.executable, "{query.t}"), name="g")
    _clock, system, pool = made(target)
    for query in ("", "t=--help", "t=a;b", "t=a&t=b"):
        assert failure_of(pool.lease(session(target, query))).value.status == 400
    assert system.spawned == []


def test_pool_stop_stops_every_instance_and_refuses_new_ones(private_dirs):
    """Stopping the pool signals every instance's group and later leases get 503."""
    target = WrappedTarget("per-session", (sys.executable, "srv"), name="g")
    clock, system, pool = made(target)
    for n in range(3):
        lease_of(pool.lease(session(target, session_id=f"S{n}")))
    stopped: list[Any] = []
    pool.stop().addCallback(stopped.append)
    assert sorted(pid for pid, _ in system.group_signals) == [p.pid for _, p, _, _ in system.spawned]
    assert failure_of(pool.lease(session(target))).value.status == 503
    for index in range(3):
        system.exit(index, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(0.1)
    assert stopped and pool.instances == {}
    assert len(private_dirs) == 3 and not any(os.path.exists(path) for path in private_dirs)


def test_instance_exiting_before_bind_fails_its_waiter_with_502():
    """An instance that exits before it reports a bind fails its client at once (502), saying how it ended."""
    target = WrappedTarget("per-session", (sys.executable, "srv"), name="g")
    _clock, system, pool = made(target)
    lease = lease_of(pool.lease(session(target)))
    waiting = lease.program.when_ready(30)
    system.exit(0, ProcessTerminated(exitCode=3))
    error = failure_of(waiting).value
    assert error.status == 502 and "exited with status 3 before it bound its port" in error.reason


def test_on_demand_starts_with_first_lease_and_stops_after_idle():
    """Nothing runs until the first lease; the idle timer starts with the last release and a new lease cancels it."""
    target = WrappedTarget("respawn", (sys.executable, "srv"), name="od", start="on-demand", idle_stop=60)
    clock, system, program = made(target)
    assert isinstance(program, OnDemandProgram) and system.spawned == []
    one, two = lease_of(program.lease(session(target))), lease_of(program.lease(session(target)))
    assert len(system.spawned) == 1
    one.release()
    two.release()
    clock.advance(59)
    lease_of(program.lease(session(target))).release()  # comes in time: the timer starts again
    clock.advance(59)
    assert system.group_signals == []
    clock.advance(1)
    assert system.group_signals == [(system.spawned[0][1].pid, signal.SIGTERM)]


def test_on_demand_lease_during_idle_stop_waits_for_it_then_starts_again(private_dirs):
    """A lease while an idle stop is under way fires only once the old run is gone and a new one is spawned."""
    target = WrappedTarget("respawn", (sys.executable, "srv"), name="od", start="on-demand", idle_stop=5)
    clock, system, program = made(target)
    lease_of(program.lease(session(target))).release()
    clock.advance(5)
    results: list[Any] = []
    program.lease(session(target)).addBoth(results.append)
    assert results == [] and len(system.spawned) == 1
    system.exit(0, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(1)
    assert len(system.spawned) == 2 and results and isinstance(results[0], Lease)
    assert len(private_dirs) == 2 and not os.path.exists(private_dirs[0])  # the idle-stopped run's is removed


def test_idle_stop_off_keeps_the_program():
    """With idle_stop = 0 an on-demand program, once started, is never stopped for idleness."""
    target = WrappedTarget("respawn", (sys.executable, "srv"), name="od", start="on-demand", idle_stop=0)
    clock, system, program = made(target)
    lease_of(program.lease(session(target))).release()
    clock.advance(10 ** 6)
    assert system.group_signals == [] and program.running


def test_on_demand_ignore_mode_forgets_the_address_after_an_idle_stop():
    """In ignore mode (which keeps an address across exits), an idle stop forgets it, so the next run is waited for."""
    target = WrappedTarget("ignore", (sys.executable, "srv"), name="od", start="on-demand", idle_stop=5,
                           socket="loopback")
    clock, system, program = made(target)
    lease_of(program.lease(session(target))).release()
    system.spawned[0][0].childDataReceived(3, b"bound 2023 127.0.0.1 40000\n")
    assert program.address == ("127.0.0.1", 40000)
    clock.advance(5)
    system.exit(0, ProcessTerminated(signal=signal.SIGTERM))
    clock.advance(0.1)
    assert program.address is None
    lease_of(program.lease(session(target)))
    waiting: list[Any] = []
    program.when_ready(30).addBoth(waiting.append)
    assert waiting == [] and len(system.spawned) == 2


def test_instance_exiting_before_bind_is_released_and_its_directory_removed(private_dirs):
    """The session's release of an instance that already exited removes its private directory at once."""
    target = WrappedTarget("per-session", (sys.executable, "srv"), name="g")
    _clock, system, pool = made(target)
    lease = lease_of(pool.lease(session(target)))
    system.exit(0, ProcessTerminated(exitCode=3))
    assert os.path.isdir(private_dirs[0])
    lease.release()
    assert not os.path.exists(private_dirs[0]) and pool.instances == {}


def test_a_failed_spawn_removes_the_private_directory(private_dirs):
    """When spawning the program fails (fork refused), its new private directory is removed."""
    target = WrappedTarget("respawn", (sys.executable, "srv"), name="w")
    clock, system = Clock(), FakeSystem()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    program = make_program(clock, target, supervisor=supervisor, environ=ENV, shim=SHIM)
    system.fail_next = True
    with pytest.raises(OSError):
        program.start()
    assert len(private_dirs) == 1 and not os.path.exists(private_dirs[0]) and program.private_dir is None
