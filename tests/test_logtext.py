"""The text log observer (L{wsrouter.ops.logformat.TextLinesObserver}) writes exactly Twisted's lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)

from wsrouter.ops import logformat
from wsrouter.ops.logformat import TextLinesObserver, event_as_json, event_text

OPEN = ("session {id} open: {peer} {path} -> {target} (route {route}, subprotocol {subprotocol})"
        ", client certificate {client_cert}")
CLOSED = ("session {id} closed: {peer} {path} -> {target} (subprotocol {subprotocol}): "
          "{up} bytes to target, {down} bytes to client, {duration:.3f} s, "
          "close {code} {reason!r} by {by}")


class Both:
    """Feeds every event to Twisted's filtered text observer and to ours, each on its own stream."""

    def __init__(self, level: LogLevel = LogLevel.info, binary: bool = False):
        self.twisted_out: Any = io.BytesIO() if binary else io.StringIO()
        self.our_out: Any = io.BytesIO() if binary else io.StringIO()
        self.twisted = FilteringLogObserver(textFileLogObserver(self.twisted_out), [LogLevelFilterPredicate(level)])
        self.ours = TextLinesObserver(self.our_out, level)

    def __call__(self, event: dict[str, Any]) -> None:
        self.twisted(dict(event))
        self.ours(dict(event))

    def texts(self) -> tuple[Any, Any]:
        return self.twisted_out.getvalue(), self.our_out.getvalue()


def test_session_lines_are_twisted_lines() -> None:
    """The session's open and close lines come out as Twisted's observer writes them."""
    both = Both()
    log = Logger(namespace="wsrouter", observer=both)
    log.info(OPEN, id="5ab1", peer="[::1]:4000", path="/vnc?x=1", target="tcp://127.0.0.1:5900",
             route="/vnc", subprotocol="binary", client_cert="CN=me")
    log.info(CLOSED, id="5ab1", peer="127.0.0.1:4000", path="/", target="echo:", subprotocol="none",
             up=12, down=3400, duration=1.23456, code=1000, reason="bye 'x'\n", by="client")
    twisted, ours = both.texts()
    assert ours == twisted
    assert ours.count("\n") == 2  # the reason is repr()ed: no continuation line
    assert "session 5ab1 closed: 127.0.0.1:4000 / -> echo: (subprotocol none): 12 bytes" in ours


@pytest.mark.parametrize("fmt, fields", [
    ("missing {nope}", {}),
    ("call {f()} and attribute {o.real} and index {d[k]}", {"f": lambda: 3, "o": 5, "d": {"k": "v"}}),
    ("positional {0}", {}),
    ("broken {", {"x": 1}),
    ("nested {x:{width}}", {"x": 7, "width": 5}),
    ("conversions {a!s} {a!r} {a!a} {n:>6.2f}", {"a": "é'\x00", "n": 3.14159}),
    ("", {}),
    ("multi\nline {b!r}", {"b": b"\x00\xff"}),
])
def test_unusual_formats_fall_back_to_the_same_text(fmt: str, fields: dict[str, Any]) -> None:
    """Formats that are not plain field names, bad formats and missing fields give Twisted's text too."""
    both = Both()
    Logger(namespace="wsrouter", observer=both).warn(fmt, **fields)
    twisted, ours = both.texts()
    assert ours == twisted


def test_levels_namespaces_systems_and_failures() -> None:
    """The level filter, events without level or namespace, log_system and tracebacks match Twisted."""
    both = Both(LogLevel.warn)
    log = Logger(namespace="wsrouter.ops", observer=both)
    log.info("below the level {x}", x=1)
    log.warn("at the level {x}", x=1)
    log.critical("above it")
    both({"log_format": "no level", "log_namespace": "n", "log_time": 1e9})
    both({"log_format": "no namespace", "log_level": LogLevel.error, "log_time": 1e9})
    both({"log_format": "own system", "log_level": LogLevel.error, "log_namespace": "n", "log_system": "sys#1",
          "log_time": 1e9})
    both({"log_format": "no time", "log_level": LogLevel.error, "log_namespace": "n"})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("it failed for {who}", who="me")
    twisted, ours = both.texts()
    assert ours == twisted
    assert "below the level" not in ours and "ZeroDivisionError" in ours and "[sys#1] own system" in ours


def test_bytes_stream() -> None:
    """A binary stream gets the same lines, UTF-8 encoded."""
    both = Both(binary=True)
    Logger(namespace="wsrouter", observer=both).info("caf\u00e9 {x}", x="\u2603")
    twisted, ours = both.texts()
    assert ours == twisted and "\u2603".encode() in ours


def test_time_stamp_is_remembered_per_second_and_exact_at_the_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time prefix is formatted once per whole second, and a time rounding up to the next second is not cached."""
    calls: list[float] = []
    real = logformat.formatTime

    def counting(when: float | None, *args: Any) -> str:
        calls.append(when)  # type: ignore[arg-type]
        return real(when, *args)

    monkeypatch.setattr(logformat, "formatTime", counting)
    both = Both()
    times = [1e9, 1e9 + 0.25, 1e9 + 0.5, 1e9 + 0.9999996, 1e9 + 1.2, 1e9 + 1.7, 1e9 + 3.0, -0.5, 0.0]
    for when in times:
        both({"log_format": "t {v}", "v": when, "log_level": LogLevel.info, "log_namespace": "n", "log_time": when})
    twisted, ours = both.texts()
    assert ours == twisted
    # Seconds 1e9, 1e9+1, 1e9+3, 0 once each; the rounding edge and the negative time on their own.
    assert calls == [1e9, 1e9 + 0.9999996, 1e9 + 1.2, 1e9 + 3.0, -0.5, 0.0]


def test_json_message_is_twisted_text() -> None:
    """The JSON line's message is Twisted's formatEvent text, plain format or not."""
    events: list[dict[str, Any]] = []
    log = Logger(namespace="wsrouter", observer=events.append)
    log.info(CLOSED, id="1", peer="p", path="/", target="t", subprotocol="none", up=1, down=2, duration=0.5,
             code=1000, reason="", by="target")
    log.info("call {f()}", f=lambda: "yes")
    log.info("missing {nope}")
    for event in events:
        assert json.loads(event_as_json(event))["message"] == formatEvent(event) == event_text(event)


field_names = st.sampled_from(["id", "peer", "x", "log_time", "nope"])
pieces = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=5),
    st.builds(lambda name, spec: "{" + name + spec + "}", field_names,
              st.sampled_from(["", "!r", "!s", ":>5", ":.2f", ":d", "()", ".real", "[0]"])),
    st.sampled_from(["{", "}", "{{", "}}"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=6).map("".join),
       st.dictionaries(st.sampled_from(["id", "peer", "x"]),
                       st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=4), st.binary(max_size=3)),
                       max_size=3))
def test_any_format_gives_twisted_text(fmt: str, fields: dict[str, Any]) -> None:
    """For generated format strings and fields, the message equals Twisted's formatEvent's."""
    event = {**fields, "log_format": fmt, "log_time": 1e9}
    assert event_text(event) == formatEvent(event)
