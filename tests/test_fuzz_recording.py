"""
Property tests of the recording reader (L{wsrouter.recording.parse_recording}):
any lines give a header and events or a L{RecordingFormatError} naming the
line, and what the recorder writes is read back the same.
"""

from __future__ import annotations

import json

from fuzz.checks import check_recording_lines, check_recording_round_trip
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import budget
from wsrouter.recording import Event, Header

GOOD_HEADER = b'{"format":"wsrouter-recording","version":1,"start":1.5}\n'
CAST_HEADER = b'{"version":2,"width":80,"height":24}\n'
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
json_values = st.recursive(json_scalars,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["t", "event", "dir", "data", "text", "code", "reason", "x"]), inner,
                               max_size=5), max_leaves=8)
events = st.fixed_dictionaries({}, optional={
    "t": st.floats(allow_nan=True) | st.integers(min_value=-1, max_value=10) | st.text(max_size=3),
    "event": st.sampled_from(["text", "binary", "close", "note", "other", 1]),
    "dir": st.sampled_from(["client", "target", "x", None]),
    "data": st.binary(max_size=20).map(lambda b: __import__("base64").b64encode(b).decode()) | st.text(max_size=8),
    "text": st.text(max_size=10), "code": st.none() | st.integers() | st.text(max_size=3),
    "reason": st.text(max_size=5)})
cast_events = st.tuples(st.floats() | st.integers(), st.sampled_from(["o", "i", "m", "r", "x"]),
                        st.text(max_size=5) | st.integers()).map(list)


def line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


lines = (
    st.tuples(st.sampled_from([GOOD_HEADER, CAST_HEADER]) | json_values.map(line) | st.binary(max_size=40),
              st.lists(events.map(line) | cast_events.map(line) | json_values.map(line) | st.binary(max_size=30),
                       max_size=6)).map(lambda t: [t[0], *t[1]])
)


@budget(200)
@given(lines=lines)
@example(lines=[])
@example(lines=[GOOD_HEADER, b'{"t":0,"event":"close","code":1e400}\n'])
@example(lines=[CAST_HEADER, b'[1e400, "o", "x"]\n'])
def test_any_lines_give_events_or_a_format_error(lines: list[bytes]) -> None:
    """Any lines give a header and events, or RecordingFormatError naming a line that exists."""
    check_recording_lines(lines)


recorded = st.builds(
    Event,
    offset=st.floats(min_value=0, max_value=1e6).map(lambda t: round(t, 6)),
    direction=st.sampled_from(["client", "target"]),
    kind=st.sampled_from(["text", "binary"]),
    payload=st.binary(max_size=50) | st.text(max_size=20).map(str.encode),
)
others = st.builds(Event, offset=st.just(1.0), direction=st.none(), kind=st.just("note"),
                   payload=st.text(max_size=20).map(str.encode)) | st.builds(
    Event, offset=st.just(2.0), direction=st.none(), kind=st.just("close"),
    code=st.none() | st.integers(min_value=1000, max_value=4999), reason=st.text(max_size=20))


@budget(100)
@given(events=st.lists(recorded | others, max_size=8),
       peer=st.text(max_size=10), headers=st.lists(st.tuples(st.text(max_size=5), st.text(max_size=8)), max_size=3))
def test_what_the_recorder_writes_is_read_back(events: list[Event], peer: str,
                                               headers: list[tuple[str, str]]) -> None:
    """Recorded messages (any bytes, text or not), notes and closes are read back as written."""
    check_recording_round_trip(Header("jsonl", 1, 1.5, peer=peer, headers=tuple(headers)), events)
