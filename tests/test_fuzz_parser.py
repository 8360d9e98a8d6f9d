"""
Property tests of the client frame parser (L{wsrouter.ws.parser}): any bytes
are parsed the same whole, byte by byte and cut at random places, and valid
frames give back exactly the messages they carry.
"""

from __future__ import annotations

from fuzz.checks import Frame, Message, check_parser_any_bytes, check_parser_messages, encode_frame
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import budget

cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


def frame_bytes() -> st.SearchStrategy[bytes]:
    """Frames close to valid (any opcode, bits and lengths), so the parser's branches are reached."""
    frame = st.builds(
        Frame,
        opcode=st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]),
        payload=st.binary(max_size=300) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
        fin=st.booleans(),
        rsv1=st.booleans(),
        mask=st.binary(min_size=4, max_size=4),
        length_form=st.sampled_from([0, 0, 1, 2]),
    )
    return st.lists(frame.map(encode_frame), max_size=6).map(b"".join)


@budget(150)
@given(data=st.binary(max_size=600) | frame_bytes(), cuts=cuts,
       max_message_size=st.sampled_from([0, 0, 1, 64, 1000]), deflate=st.booleans())
@example(data=b"\x81\x80\0\0\0\0", cuts=[], max_message_size=0, deflate=False)
@example(data=b"\xc1\x80\0\0\0\0", cuts=[1], max_message_size=0, deflate=True)
@example(data=b"\x88\x81\0\0\0\0\x03", cuts=[3], max_message_size=0, deflate=False)
def test_any_bytes_parse_the_same_however_cut(data: bytes, cuts: list[int], max_message_size: int,
                                              deflate: bool) -> None:
    """Arbitrary client bytes never raise and give the same events whole, byte by byte and randomly cut."""
    check_parser_any_bytes(data, cuts, max_message_size, deflate)


def message(compressed: bool) -> st.SearchStrategy[Message]:
    return st.builds(
        Message,
        is_binary=st.booleans(),
        payload=st.binary(max_size=2000),
        fragments=st.lists(st.integers(min_value=0, max_value=400), max_size=5).map(tuple),
        pings=st.lists(st.integers(min_value=0, max_value=5), max_size=3).map(tuple),
        compressed=st.just(compressed),
        length_form=st.sampled_from([0, 1, 2]),
    ).map(lambda m: m if m.is_binary else Message(
        False, m.payload.decode("latin-1").encode("utf-8"), m.fragments, m.pings, m.compressed, m.length_form))


@budget(100)
@given(messages=st.lists(message(False), max_size=5), cuts=cuts,
       close=st.none() | st.sampled_from([1000, 1001, 4000]), mask=st.binary(min_size=4, max_size=4))
def test_valid_frames_give_back_their_messages(messages: list[Message], cuts: list[int], close: int | None,
                                               mask: bytes) -> None:
    """Fragmented messages with pings between fragments come back whole, in order, however the bytes are cut."""
    check_parser_messages(messages, cuts, close, mask)


@budget(50)
@given(messages=st.lists(message(True), min_size=1, max_size=4), cuts=cuts)
def test_compressed_frames_give_back_their_messages(messages: list[Message], cuts: list[int]) -> None:
    """permessage-deflate messages, fragmented after compression, inflate to the payload sent."""
    check_parser_messages(messages, cuts, None)


def test_the_check_sees_a_parser_that_depends_on_chunking(monkeypatch) -> None:
    """The property fails for a parser that loses bytes across reads (so it can catch that bug)."""
    from wsrouter.ws import parser

    original = parser.FrameParser.feed

    def forgetful(self: parser.FrameParser, data: bytes) -> None:
        self._pending = b""
        original(self, data)

    monkeypatch.setattr(parser.FrameParser, "feed", forgetful)
    frame = encode_frame(Frame(2, b"hello"))
    try:
        check_parser_any_bytes(frame, [3], 0, False)
    except AssertionError:
        return
    raise AssertionError("the check passed a parser that drops a split header")
