"""The drain watches of one clock share one timer, and keep their times (L{wsrouter.ws.closing})."""

from __future__ import annotations

from twisted.internet.task import Clock

from wsrouter.ws.closing import CHECK_INTERVAL, DrainWatch


class Queue:
    """A transport whose send queue the test sets."""

    def __init__(self, size: int = 0) -> None:
        self.dataBuffer = b"x" * size
        self.offset = 0
        self._tempDataLen = 0


def watch(clock: Clock, events: list[str], name: str, done: list[bool], queued: int = 0) -> DrainWatch:
    return DrainWatch(clock, Queue(queued), lambda: done[0], lambda: events.append(name + " abort"),
                      timeout=1.0, stall=2.0, finish=lambda: events.append(name + " finish")).start()


def test_many_watches_one_timer() -> None:
    """Three watches on one clock arm one reactor timer, and none once they are all done."""
    clock = Clock()
    events: list[str] = []
    done = [False]
    for name in "abc":
        watch(clock, events, name, done)
    assert len(clock.getDelayedCalls()) == 1
    done[0] = True
    clock.advance(CHECK_INTERVAL)
    assert clock.getDelayedCalls() == [] and events == []


def test_a_later_watch_keeps_its_own_times() -> None:
    """A watch started between two rounds is finished no earlier than its timeout after its own start."""
    clock = Clock()
    events: list[str] = []
    first_done, second_done = [False], [False]
    watch(clock, events, "first", first_done)
    clock.advance(0.125)
    watch(clock, events, "second", second_done)  # started at 0.125: not checked in the round at 0.25
    clock.pump([0.125] * 8)  # to 1.125 s
    assert events == []
    clock.pump([0.125] * 1)  # 1.25 s: empty since its first check (0.25), plus the 1 s timeout
    assert events == ["first finish"]
    first_done[0] = True
    clock.pump([0.125] * 1)  # 1.375 s
    assert events == ["first finish"]
    clock.pump([0.125] * 1)  # 1.5 s: its first check was at 0.5
    assert events == ["first finish", "second finish"]
    second_done[0] = True
    clock.advance(CHECK_INTERVAL)
    assert clock.getDelayedCalls() == []


def test_stalled_watch_aborts_while_others_are_done() -> None:
    """A stalled queue is aborted after the stall time even though the other watches of the clock ended long ago."""
    clock = Clock()
    events: list[str] = []
    done_a, done_b = [False], [False]
    watch(clock, events, "a", done_a)
    watch(clock, events, "b", done_b, queued=100)
    done_a[0] = True
    clock.pump([CHECK_INTERVAL] * 7)  # 1.75 s
    assert events == []
    clock.pump([CHECK_INTERVAL] * 1)  # 2.0 s: the queue did not move for the stall time
    assert events == ["b abort"]
