"""
Property tests of every framing function in L{wsrouter.framing} (the list
is C{fuzz.checks.FRAMINGS}; a new framing is one line there): any stream
frames the same however it is cut, into messages that framing can make,
and messages made into a stream frame back into themselves.
"""

from __future__ import annotations

from fuzz.checks import FRAMINGS, FramingCase, check_framing_round_trip, check_framing_stream
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import budget

# (pytest-twisted cannot run @given tests that are also parametrized: the framing is drawn)
cases = st.sampled_from(FRAMINGS)
cuts = st.lists(st.integers(min_value=0, max_value=4096), max_size=10)
# Few distinct bytes, so separators, CRs and their prefixes are common.
alphabet = st.sampled_from(b"ab\r\n\0x")
streams = st.lists(alphabet, max_size=400).map(bytes) | st.binary(max_size=400)
sizes = st.integers(min_value=1, max_value=40)


@budget(40 * len(FRAMINGS))
@given(case=cases, data=streams, cuts=cuts, max_size=sizes)
def test_stream_frames_the_same_however_cut(case: FramingCase, data: bytes, cuts: list[int], max_size: int) -> None:
    """A stream gives the same messages whole, byte by byte and randomly cut; each fits the framing."""
    check_framing_stream(case, data, cuts, max_size)


@budget(40 * len(FRAMINGS))
@given(case=cases, messages=st.lists(st.lists(alphabet, max_size=30).map(bytes), max_size=8), cuts=cuts, max_size=sizes)
def test_messages_round_trip_through_the_stream(case: FramingCase, messages: list[bytes], cuts: list[int],
                                                max_size: int) -> None:
    """Messages written as the framing's stream are framed back into the same messages."""
    check_framing_round_trip(case, messages, cuts, max_size)


def test_every_framing_kind_is_fuzzed() -> None:
    """Each framing kind the configuration offers has at least one entry in the fuzz list."""
    from wsrouter.config import FRAMINGS as KINDS

    assert set(KINDS) <= {case.kind for case in FRAMINGS}, set(KINDS) - {case.kind for case in FRAMINGS}


def test_json_whitespace_around_a_value_is_not_part_of_it() -> None:
    """A JSON line with spaces and CRs around its value comes back as the value alone (found by CI's fuzz run)."""
    case = next(case for case in FRAMINGS if case.kind == "json")
    check_framing_round_trip(case, [b'       ""\r\r\r\r', b'\t[1, 2] '], [3, 9], 51)
