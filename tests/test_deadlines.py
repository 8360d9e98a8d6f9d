"""The opening handshake's deadline: coarse, shared per clock, never early (L{wsrouter.ws.deadlines})."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import txaio
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from wsrouter.gateway import Gateway
from wsrouter.ws.deadlines import TICK, Deadlines, deadlines_for

from .test_gateway import ROUTES, Client, FakeConnectors, FakeLink, config


def test_deadline_fires_never_early_and_at_most_a_tick_late() -> None:
    """A deadline fires at the first tick at or after its time, and a cancelled one never."""
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    clock.advance(0.3)
    deadlines.call_later(2.0, lambda: fired.append("a"))  # due at 2.3
    cancelled = deadlines.call_later(2.0, lambda: fired.append("b"))
    cancelled.cancel()
    cancelled.cancel()  # twice: nothing
    clock.pump([0.1] * 19)  # to 2.2
    assert fired == []
    clock.pump([0.1] * 11)  # to 3.3: the first tick at or after 2.3 is the one at 3.3
    assert fired == ["a"]
    clock.advance(TICK)
    assert clock.getDelayedCalls() == [] and deadlines.pending() == 0


def test_many_deadlines_one_timer() -> None:
    """A hundred pending deadlines of one clock arm one reactor timer."""
    clock = Clock()
    deadlines = deadlines_for(clock)
    assert deadlines_for(clock) is deadlines
    pending = [deadlines.call_later(10.0, lambda: None) for _ in range(100)]
    assert len(clock.getDelayedCalls()) == 1 and deadlines.pending() == 100
    for deadline in pending:
        deadline.cancel()
    assert deadlines.pending() == 0


@pytest.fixture
def clock() -> Iterator[MemoryReactorClock]:
    """A fake reactor, also used by txaio (where Autobahn's own timers would run)."""
    reactor = MemoryReactorClock()
    previous = txaio.config.loop
    txaio.config.loop = reactor
    yield reactor
    txaio.config.loop = previous


def test_pending_handshakes_share_one_timer_and_time_out(clock: MemoryReactorClock) -> None:
    """Handshakes waiting for their targets arm no timer each; past the timeout each is dropped, not before."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES, handshake_timeout=3.0), clock, connectors)  # type: ignore[arg-type]
    first = Client(gateway)
    timers = len(clock.getDelayedCalls())
    clients = [first] + [Client(gateway) for _ in range(4)]
    assert len(clock.getDelayedCalls()) == timers  # none per connection
    assert deadlines_for(clock).pending() == 5
    clock.advance(2.9)
    assert not any(client.transport.disconnecting for client in clients)
    clock.advance(1.2)
    assert all(client.transport.disconnecting for client in clients)
    link = FakeLink()
    connectors.pending[0][1].callback(link)
    assert link.events == ["abort"]


def test_answered_handshake_drops_its_deadline(clock: MemoryReactorClock) -> None:
    """An accepted handshake cancels its deadline, and the open session outlives the timeout."""
    connectors = FakeConnectors()
    gateway = Gateway(config(*ROUTES, handshake_timeout=2.0), clock, connectors)  # type: ignore[arg-type]
    client = Client(gateway)
    connectors.pending[0][1].callback(FakeLink())
    assert client.status() == 101
    assert deadlines_for(clock).pending() == 0
    clock.advance(5.0)
    assert not client.transport.disconnecting and len(gateway.sessions) == 1
