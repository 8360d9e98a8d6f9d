"""
Tests for session recordings (L{wsrouter.recording}) and the recording
tools (L{wsrouter.cli.replay}).
"""

from __future__ import annotations

import base64
import calendar
import io
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from wsrouter.cli.replay import (
    convert_websockify,
    format_transcript,
    iter_websockify,
    main_convert,
    main_replay,
    play_realtime,
)
from wsrouter.config import Route, TcpTarget
from wsrouter.interfaces import SessionInfo
from wsrouter.recording import (
    FLUSH_BYTES,
    FORMAT_VERSION,
    Event,
    Header,
    JsonlRecorder,
    NullRecorder,
    RecordingFormatError,
    make_header,
    open_recorder,
    parse_recording,
    read_recording,
    session_file_name,
)

#: 2026-11-21T07:30:12.125Z, exactly representable so round trips compare equal.
START = calendar.timegm((2026, 11, 21, 7, 30, 12)) + 0.125
TARGET = "tcp://127.0.0.1:5900"


def make_session(**changes: Any) -> SessionInfo:
    fields: dict[str, Any] = dict(
        session_id="s1",
        peer_host="127.0.0.1",
        peer_port=51234,
        server_name="localhost",
        server_port=8080,
        secure=False,
        path="/vnc",
        route_path="/vnc",
        query="token=abc",
        headers=(
            ("host", "localhost:8080"),
            ("cookie", "sid=secret"),
            ("authorization", "Bearer xyz"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("user-agent", "tests"),
        ),
        subprotocol="binary",
        route=Route(path="/vnc", target=TcpTarget("127.0.0.1", 5900)),
    )
    fields.update(changes)
    return SessionInfo(**fields)


def start_recording(
    directory: Path, fmt: str = "jsonl", max_bytes: int | None = None, session: SessionInfo | None = None
) -> tuple[Any, Clock, Path]:
    clock = Clock()
    recorder = open_recorder(
        directory, session or make_session(), TARGET, fmt=fmt, max_bytes=max_bytes, clock=clock, now=lambda: START
    )
    (path,) = directory.iterdir()
    return recorder, clock, path


def json_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def errors(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]


# -- writing JSON Lines -------------------------------------------------------------------


def test_jsonl_events_exact(tmp_path: Path) -> None:
    """Known traffic is written as exactly the documented event lines, in order."""
    recorder, clock, path = start_recording(tmp_path)
    big = bytes(range(256)) * 1024
    clock.advance(0.25)
    recorder.client_message(b"hello", False)
    clock.advance(0.25)
    recorder.target_message(b"\x00\xff\xfe RFB", True)
    recorder.target_message(big, True)
    recorder.client_message("h\u00e9llo \u2713".encode(), False)
    recorder.target_message(b"not utf-8 \xff", False)
    clock.advance(1.5)
    recorder.closed(4000, "bye \u2713")

    assert json_lines(path)[1:] == [
        {"t": 0.25, "event": "text", "dir": "client", "text": "hello"},
        {"t": 0.5, "event": "binary", "dir": "target", "data": base64.b64encode(b"\x00\xff\xfe RFB").decode()},
        {"t": 0.5, "event": "binary", "dir": "target", "data": base64.b64encode(big).decode()},
        {"t": 0.5, "event": "text", "dir": "client", "text": "h\u00e9llo \u2713"},
        {"t": 0.5, "event": "text", "dir": "target", "data": base64.b64encode(b"not utf-8 \xff").decode()},
        {"t": 2.0, "event": "close", "code": 4000, "reason": "bye \u2713"},
    ]


def test_jsonl_header_fields_and_redaction(tmp_path: Path) -> None:
    """The header line carries the session's fields, with Cookie, Authorization and the key redacted."""
    recorder, _, path = start_recording(tmp_path)
    recorder.closed(None, "")
    header, close = json_lines(path)
    assert header == {
        "format": "wsrouter-recording",
        "version": FORMAT_VERSION,
        "start": START,
        "start_utc": "2026-11-21T07:30:12.125Z",
        "session": "s1",
        "route": "/vnc",
        "target": TARGET,
        "peer": "127.0.0.1:51234",
        "path": "/vnc",
        "query": "token=abc",
        "subprotocol": "binary",
        "headers": [
            ["host", "localhost:8080"],
            ["cookie", "[redacted]"],
            ["authorization", "[redacted]"],
            ["sec-websocket-key", "[redacted]"],
            ["user-agent", "tests"],
        ],
    }
    assert close == {"t": 0.0, "event": "close", "code": None, "reason": ""}


def test_redaction_is_configurable() -> None:
    """An explicit redact list replaces the default one, matching names case-insensitively."""
    header = make_header(make_session(), TARGET, START, redact=("User-Agent",))
    assert dict(header.headers) == {
        "host": "localhost:8080",
        "cookie": "sid=secret",
        "authorization": "Bearer xyz",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "user-agent": "[redacted]",
    }


def test_odd_header_bytes_still_record(tmp_path: Path) -> None:
    """A header value with undecodable bytes (surrogate escapes) is written escaped, not dropped."""
    session = make_session(headers=(("x-odd", "caf\udce9"),))
    recorder, _, path = start_recording(tmp_path, session=session)
    recorder.closed(1000, "")
    header, events = read_recording(path)
    assert header.headers == (("x-odd", "caf\udce9"),)
    assert list(events) == [Event(0.0, None, "close", code=1000)]


def test_size_limit_writes_note_and_stops(tmp_path: Path) -> None:
    """Past max_bytes one note line is written and nothing more, not even the close."""
    line = b'{"t":0.0,"event":"text","dir":"client","text":"' + b"x" * 100 + b'"}\n'
    probe, _, probe_path = start_recording(tmp_path / "probe")
    header_len = probe_path.stat().st_size
    probe.closed(None, "")

    limit = header_len + 2 * len(line)
    recorder, clock, path = start_recording(tmp_path / "limited", max_bytes=limit)
    for _ in range(5):
        recorder.client_message(b"x" * 100, False)
    clock.advance(1)
    recorder.target_message(b"late", True)
    recorder.closed(1000, "done")

    assert json_lines(path)[1:] == [
        {"t": 0.0, "event": "text", "dir": "client", "text": "x" * 100},
        {"t": 0.0, "event": "text", "dir": "client", "text": "x" * 100},
        {"t": 0.0, "event": "note", "text": f"recording stopped: size limit {limit} bytes reached"},
    ]
    assert path.stat().st_size <= limit + 100


def test_file_mode_and_name(tmp_path: Path) -> None:
    """The recording is created owner-only (0600) under a sortable, descriptive name."""
    recorder, _, path = start_recording(tmp_path)
    recorder.closed(1000, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.name == "20261121T073012.125Z-vnc-127.0.0.1_51234-s1.jsonl"


@pytest.mark.parametrize(
    "route_path, peer, session_id, fmt, expected",
    [
        ("/vnc", "127.0.0.1:51234", "s1", "jsonl", "20261121T073012.125Z-vnc-127.0.0.1_51234-s1.jsonl"),
        ("/", "[::1]:5000", "a-b", "asciicast", "20261121T073012.125Z-root-__1_5000-a_b.cast"),
        ("/my-app/term", "10.0.0.2:1", "x/y", "jsonl", "20261121T073012.125Z-my_app_term-10.0.0.2_1-x_y.jsonl"),
    ],
)
def test_session_file_name(route_path: str, peer: str, session_id: str, fmt: str, expected: str) -> None:
    """File names start with the UTC time and hold only safe characters, '-' only between fields."""
    assert session_file_name(START, route_path, peer, session_id, fmt) == expected


def test_name_collision_gets_new_file(tmp_path: Path) -> None:
    """A second recording with the same name never reuses the first file."""
    first = open_recorder(tmp_path, make_session(), TARGET, max_bytes=None, clock=Clock(), now=lambda: START)
    second = open_recorder(tmp_path, make_session(), TARGET, max_bytes=None, clock=Clock(), now=lambda: START)
    first.closed(1000, "")
    second.closed(1001, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20261121T073012.125Z-vnc-127.0.0.1_51234-s1.jsonl",
        "20261121T073012.125Z-vnc-127.0.0.1_51234-s1~2.jsonl",
    ]


def test_missing_directory_is_created(tmp_path: Path) -> None:
    """A recording directory that does not exist yet is created, owner-only."""
    recorder, _, path = start_recording(tmp_path / "new")
    recorder.closed(1000, "")
    assert path.parent == tmp_path / "new"
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


# -- buffering -------------------------------------------------------------------------


def test_flush_timer(tmp_path: Path) -> None:
    """Events reach the file when the 0.5 s flush timer fires, not per message."""
    recorder, clock, path = start_recording(tmp_path)
    header_only = path.stat().st_size
    recorder.client_message(b"one", False)
    recorder.target_message(b"two", False)
    clock.advance(0.49)
    assert path.stat().st_size == header_only
    clock.advance(0.01)
    assert [e.get("text") for e in json_lines(path)[1:]] == ["one", "two"]
    assert clock.getDelayedCalls() == []


def test_flush_by_size(tmp_path: Path) -> None:
    """A buffer past 64 KiB is written at once, without waiting for the timer."""
    recorder, clock, path = start_recording(tmp_path)
    recorder.target_message(b"\x01" * FLUSH_BYTES, True)
    assert len(json_lines(path)) == 2
    assert clock.getDelayedCalls() == []


def test_close_flushes_and_cancels_timer(tmp_path: Path) -> None:
    """Closing writes everything buffered and leaves no timer behind."""
    recorder, clock, path = start_recording(tmp_path)
    recorder.client_message(b"pending", False)
    recorder.closed(1000, "")
    assert [e["event"] for e in json_lines(path)[1:]] == ["text", "close"]
    assert clock.getDelayedCalls() == []
    recorder.client_message(b"after close", False)
    recorder.closed(1000, "again")
    assert len(json_lines(path)) == 3


# -- failures --------------------------------------------------------------------------


def test_unwritable_directory_logs_once(tmp_path: Path) -> None:
    """A directory that cannot be used is logged once and gives a recorder that accepts every call."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with capturedLogs() as logged:
        recorder = open_recorder(
            blocker / "sub", make_session(), TARGET, max_bytes=None, clock=Clock(), now=lambda: START
        )
        recorder.client_message(b"x", False)
        recorder.target_message(b"y", True)
        recorder.closed(1000, "")
    assert isinstance(recorder, NullRecorder)
    (message,) = errors(list(logged))
    assert "s1" in message and str(blocker / "sub") in message and "Not a directory" in message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_logs_once() -> None:
    """A full disk (ENOSPC) is logged once with the path and errno text; later calls do nothing."""
    clock = Clock()
    header = make_header(make_session(), TARGET, START)
    with capturedLogs() as logged:
        recorder = JsonlRecorder("/dev/full", os.open("/dev/full", os.O_WRONLY), header, clock=clock, max_bytes=None)
        for _ in range(3):
            recorder.client_message(b"x" * 1000, False)
            recorder.target_message(b"y" * FLUSH_BYTES, True)
            clock.advance(1)
        recorder.closed(1000, "")
    (message,) = errors(list(logged))
    assert "/dev/full" in message and "No space left on device" in message
    assert clock.getDelayedCalls() == []


def test_write_failure_mid_session_logs_once() -> None:
    """A write that fails after the header (the reader is gone) is logged once; the recorder goes silent."""
    read_end, write_end = os.pipe()
    clock = Clock()
    header = make_header(make_session(), TARGET, START)
    with capturedLogs() as logged:
        recorder = JsonlRecorder("pipe", write_end, header, clock=clock, max_bytes=None)
        assert json.loads(os.read(read_end, 65536))["format"] == "wsrouter-recording"
        os.close(read_end)
        recorder.client_message(b"x", False)
        clock.advance(1)
        recorder.target_message(b"y", False)
        clock.advance(1)
        recorder.closed(1000, "")
    (message,) = errors(list(logged))
    assert "pipe" in message and "Broken pipe" in message
    with pytest.raises(OSError):
        os.fstat(write_end)  # the recorder closed its descriptor


# -- asciicast -------------------------------------------------------------------------


def test_asciicast_is_valid_v2(tmp_path: Path) -> None:
    """asciicast output is a v2 header then [time, "o"|"i", text] events with non-decreasing times."""
    recorder, clock, path = start_recording(tmp_path, fmt="asciicast")
    recorder.target_message(b"$ ", True)
    clock.advance(0.3)
    recorder.client_message(b"l", False)
    recorder.client_message(b"s\r", False)
    clock.advance(0.2)
    recorder.target_message(b"caf\xc3", True)  # a character split across two messages
    clock.advance(0.1)
    recorder.target_message(b"\xa9\r\n", True)
    recorder.closed(1000, "")

    assert path.name.endswith(".cast")
    header, *events = json_lines(path)
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["timestamp"] == int(START)
    assert header["env"] == {"TERM": "xterm-256color"}
    assert isinstance(header["title"], str)
    assert events == [
        [0.0, "o", "$ "],
        [0.3, "i", "l"],
        [0.3, "i", "s\r"],
        [0.5, "o", "caf"],
        [0.6, "o", "\u00e9\r\n"],
    ]
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert all(isinstance(e[0], float) and e[1] in ("o", "i") and isinstance(e[2], str) for e in events)


def test_asciicast_size_limit_is_a_marker(tmp_path: Path) -> None:
    """In asciicast the size-limit note is an "m" marker, so players still accept the file."""
    recorder, _, path = start_recording(tmp_path, fmt="asciicast", max_bytes=1)
    recorder.target_message(b"output", True)
    recorder.closed(1000, "")
    assert json_lines(path)[1:] == [[0.0, "m", "recording stopped: size limit 1 bytes reached"]]


def test_asciicast_round_trip(tmp_path: Path) -> None:
    """The reader turns asciicast back into text events with the session's header."""
    recorder, clock, path = start_recording(tmp_path, fmt="asciicast")
    recorder.target_message(b"hi", True)
    clock.advance(1)
    recorder.client_message(b"q", False)
    recorder.closed(1000, "")
    header, events = read_recording(path)
    assert header == make_header(make_session(), TARGET, START, fmt="asciicast")
    assert list(events) == [Event(0.0, "target", "text", b"hi"), Event(1.0, "client", "text", b"q")]


# -- reading -------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path: Path) -> None:
    """What the recorder writes, the reader gives back exactly."""
    recorder, clock, path = start_recording(tmp_path)
    clock.advance(0.125)
    recorder.client_message(b"hello", False)
    recorder.target_message(b"\xff\x00", True)
    recorder.target_message(b"\xff text", False)
    clock.advance(1)
    recorder.closed(1006, "gone")
    header, events = read_recording(path)
    assert header == make_header(make_session(), TARGET, START)
    assert list(events) == [
        Event(0.125, "client", "text", b"hello"),
        Event(0.125, "target", "binary", b"\xff\x00"),
        Event(0.125, "target", "text", b"\xff text"),
        Event(1.125, None, "close", code=1006, reason="gone"),
    ]


def test_parse_recording_is_pure_and_skips_unknown_kinds() -> None:
    """parse_recording reads lines from memory and skips event kinds added later."""
    lines = [
        b'{"format":"wsrouter-recording","version":1,"start":10.5}\n',
        b'{"t":0.5,"event":"text","dir":"target","text":"a"}\n',
        b'{"t":0.6,"event":"resize","cols":100}\n',
        b"\n",
        b'{"t":0.7,"event":"note","text":"n"}\n',
    ]
    header, events = parse_recording(lines, "mem")
    assert header == Header(format="jsonl", version=1, start=10.5)
    assert list(events) == [Event(0.5, "target", "text", b"a"), Event(0.7, None, "note", b"n")]


HEADER_V1 = b'{"format":"wsrouter-recording","version":1,"start":0}\n'


@pytest.mark.parametrize(
    "lines, line_number, problem",
    [
        ([b""], 1, "empty file"),
        ([b"not json\n"], 1, "not JSON"),
        ([b'{"format":"wsrouter-recording","version":99,"start":0}\n'], 1, "unsupported recording version 99"),
        ([b'{"some":"object"}\n'], 1, "not a recording header"),
        ([b"var VNC_frame_data = [\n"], 1, "wsrouter record-convert"),
        ([HEADER_V1, b'{"t":0,"event":"binary","dir":"target","data":"!!"}\n'], 2, "base64"),
        ([HEADER_V1, b'{"t":0,"event":"text","text":"a"}\n'], 2, '"dir"'),
        ([HEADER_V1, b'{"t":-1,"event":"note","text":""}\n'], 2, "time must be"),
        ([HEADER_V1, b'[1,"o","x"]\n'], 2, "JSON object"),
        ([b'{"version":2,"width":80,"height":24}\n', b'{"t":1}\n'], 2, "[time, code, data]"),
    ],
)
def test_bad_input_raises_format_error(lines: list[bytes], line_number: int, problem: str) -> None:
    """Bad input raises RecordingFormatError naming the file, the line and the problem."""
    with pytest.raises(RecordingFormatError) as caught:
        _, events = parse_recording(lines, "bad.jsonl")
        list(events)
    assert caught.value.path == "bad.jsonl"
    assert caught.value.line_number == line_number
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"bad.jsonl, line {line_number}: ")


def test_truncated_last_line_becomes_note() -> None:
    """A last line cut short by a crash is reported as a note, keeping everything before it."""
    lines = [
        b'{"format":"wsrouter-recording","version":1,"start":0}\n',
        b'{"t":0.5,"event":"text","dir":"client","text":"kept"}\n',
        b'{"t":0.6,"event":"te',
    ]
    _, events = parse_recording(lines)
    assert list(events) == [
        Event(0.5, "client", "text", b"kept"),
        Event(0.5, None, "note", b"truncated last line ignored"),
    ]


def test_reader_reads_while_recording(tmp_path: Path) -> None:
    """A recording is readable (header and flushed events) while the session is still going."""
    recorder, clock, path = start_recording(tmp_path)
    recorder.client_message(b"live", False)
    clock.advance(0.5)
    header, events = read_recording(path)
    assert header.session_id == "s1"
    assert list(events) == [Event(0.0, "client", "text", b"live")]
    recorder.closed(1000, "")


# -- transcript and playback ------------------------------------------------------------


def test_transcript_format() -> None:
    """The transcript shows the header, then one line per event with a limited hex dump."""
    header = make_header(make_session(), TARGET, START)
    events = [
        Event(0.512, "client", "text", b"hello"),
        Event(0.6, "target", "binary", bytes(range(0x41, 0x4D))),
        Event(0.7, "target", "binary", bytes(40)),
        Event(0.8, "client", "text", b"abcdefghijklmnopqrstuvwxyz"),
        Event(1.0, None, "close", code=1000, reason="bye"),
        Event(1.0, None, "note", b"recording stopped"),
    ]
    assert list(format_transcript(header, events, dump_limit=20)) == [
        "# recording (jsonl v1) started 2026-11-21T07:30:12.125Z",
        "# session s1 from 127.0.0.1:51234",
        "# route /vnc -> tcp://127.0.0.1:5900",
        "# request /vnc?token=abc, subprotocol binary",
        "#   host: localhost:8080",
        "#   cookie: [redacted]",
        "#   authorization: [redacted]",
        "#   sec-websocket-key: [redacted]",
        "#   user-agent: tests",
        "+0.512s client> text 'hello'",
        "+0.600s target> binary 12 bytes",
        "    00000000  41 42 43 44 45 46 47 48  49 4a 4b 4c              |ABCDEFGHIJKL|",
        "+0.700s target> binary 40 bytes",
        "    00000000  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|",
        "    00000010  00 00 00 00                                       |....|",
        "    ... 20 more bytes not shown",
        "+0.800s client> text 'abcdefghijklmnopqrst'... (26 characters)",
        "+1.000s closed 1000 'bye'",
        "+1.000s note: recording stopped",
    ]


def test_play_realtime_sleeps_by_offsets_and_speed() -> None:
    """Realtime play writes only the target's messages, sleeping (offset gap) / speed before each."""
    events = [
        Event(0.5, "target", "text", b"a"),
        Event(1.0, "client", "text", b"ignored"),
        Event(2.0, "target", "binary", b"b"),
        Event(2.0, "target", "binary", b"c"),
        Event(3.0, None, "close", code=1000),
    ]
    slept: list[float] = []
    out = io.BytesIO()
    assert play_realtime(events, out, 2.0, sleep=slept.append) == 3
    assert slept == [0.25, 0.75]
    assert out.getvalue() == b"abc"


def test_play_realtime_max_idle() -> None:
    """max_idle caps each wait, like asciinema's idle time limit."""
    events = [Event(10.0, "target", "text", b"a"), Event(10.5, "target", "text", b"b")]
    slept: list[float] = []
    play_realtime(events, io.BytesIO(), 1.0, sleep=slept.append, max_idle=2.0)
    assert slept == [2.0, 0.5]


def test_main_replay_transcript(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`wsrouter replay FILE` prints the transcript and exits 0."""
    recorder, _, path = start_recording(tmp_path)
    recorder.client_message(b"hello", False)
    recorder.closed(1000, "")
    assert main_replay([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["+0.000s client> text 'hello'", "+0.000s closed 1000"]


def test_main_replay_realtime(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """`wsrouter replay --realtime` writes the target's bytes to stdout."""
    recorder, _, path = start_recording(tmp_path)
    recorder.target_message(b"\x1b[1mbold\x1b[0m", True)
    recorder.client_message(b"not shown", False)
    recorder.closed(1000, "")
    assert main_replay([str(path), "--realtime", "--speed", "100"]) == 0
    assert capsysbinary.readouterr().out == b"\x1b[1mbold\x1b[0m"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        (b"garbage\n", "line 1: not JSON"),
    ],
)
def test_main_replay_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    """A missing or malformed file gives a one-line error on stderr and exit status 1."""
    path = tmp_path / "rec.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert main_replay([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("wsrouter replay: ") and message in captured.err
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == 1


def test_main_replay_bad_usage_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments return argparse's status 2 instead of exiting."""
    assert main_replay(["--speed", "0", "x"]) == 2
    assert "must be greater than 0" in capsys.readouterr().err


# -- websockify conversion ---------------------------------------------------------------

# Captured from websockify 0.13 (`websockify --record rec 127.0.0.1:PORT ...`) relaying to a
# server that greets with an RFB banner and echoes in upper case.  websockifyserver.py writes
# "var VNC_frame_data = [" on open, "'{MS{DATA'," in send_frames (target -> client),
# "'}MS}DATA'," in recv_frames (client -> target) and "'EOF'];" in finish(); DATA is
# buf.decode('latin1').encode('unicode_escape').decode('ascii').replace("'", "\\'").
WEBSOCKIFY_SAMPLE = r"""var VNC_frame_data = [
'{2{RFB 003.008\n',
'}2}it\'s a \\ test\x00\xff\n\t\r\'',
'{3{IT\'S A \\ TEST\x00\xff\n\t\r\'',
'}203}\xc3\xa9 caf\xe9',
'{204{\xc3\xa9 CAF\xe9',
'EOF'];
"""

WEBSOCKIFY_EVENTS = [
    Event(0.002, "target", "binary", b"RFB 003.008\n"),
    Event(0.002, "client", "binary", b"it's a \\ test\x00\xff\n\t\r'"),
    Event(0.003, "target", "binary", b"IT'S A \\ TEST\x00\xff\n\t\r'"),
    Event(0.203, "client", "binary", b"\xc3\xa9 caf\xe9"),
    Event(0.204, "target", "binary", b"\xc3\xa9 CAF\xe9"),
    Event(0.204, None, "close"),
]


def test_iter_websockify_sample(tmp_path: Path) -> None:
    """websockify's entries decode to binary events: '{' sent by the target, '}' by the client."""
    source = tmp_path / "rec.1"
    source.write_text(WEBSOCKIFY_SAMPLE, encoding="ascii")
    assert list(iter_websockify(source)) == WEBSOCKIFY_EVENTS


def test_convert_websockify(tmp_path: Path) -> None:
    """Conversion writes a 0600 JSON Lines file that reads back as the same events after a note."""
    source, target = tmp_path / "rec.1", tmp_path / "rec.jsonl"
    source.write_text(WEBSOCKIFY_SAMPLE, encoding="ascii")
    count = convert_websockify(source, target, start=START, peer="127.0.0.1:5555", target="tcp://vnc:5900")
    assert count == 7
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    header, events = read_recording(target)
    assert header == Header(format="jsonl", version=1, start=START, peer="127.0.0.1:5555", target="tcp://vnc:5900")
    assert list(events) == [Event(0.0, None, "note", b"converted from websockify recording rec.1"), *WEBSOCKIFY_EVENTS]
    with pytest.raises(FileExistsError):
        convert_websockify(source, target)


def test_convert_websockify_default_start(tmp_path: Path) -> None:
    """Without --start, the start is the input's modification time minus the recording's length."""
    source, target = tmp_path / "rec.1", tmp_path / "rec.jsonl"
    source.write_text(WEBSOCKIFY_SAMPLE, encoding="ascii")
    os.utime(source, (START, START))
    convert_websockify(source, target)
    header, _ = read_recording(target)
    assert header.start == pytest.approx(START - 0.204)


def test_websockify_without_eof(tmp_path: Path) -> None:
    """A websockify file cut off before 'EOF' (killed proxy) converts without a close event."""
    source = tmp_path / "rec.1"
    source.write_text("var VNC_frame_data = [\n'{7{abc',\n", encoding="ascii")
    assert list(iter_websockify(source)) == [Event(0.007, "target", "binary", b"abc")]


@pytest.mark.parametrize(
    "text, line_number",
    [
        ("not websockify\n", 1),
        ("var VNC_frame_data = [\n'{1{ok',\n'<1<bad',\n", 3),
        ("var VNC_frame_data = [\n'{1{unescaped ' quote',\n", 2),
        ("var VNC_frame_data = [\n'EOF'];\n'{1{after',\n", 3),
        ("", 0),
    ],
)
def test_websockify_bad_input(tmp_path: Path, text: str, line_number: int) -> None:
    """Malformed websockify files raise RecordingFormatError at the offending line."""
    source = tmp_path / "rec.1"
    source.write_text(text, encoding="ascii")
    with pytest.raises(RecordingFormatError) as caught:
        list(iter_websockify(source))
    assert caught.value.line_number == line_number


def test_websockify_real_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by websockify's own send_frames/recv_frames code convert to the right events."""
    websockifyserver = pytest.importorskip("websockify.websockifyserver")
    handler_class = websockifyserver.WebSockifyRequestHandler
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(websockifyserver, "time", SimpleNamespace(time=lambda: clock.now))
    incoming = [b"client's \\ \x00\xfe\x7f"]
    handler = handler_class.__new__(handler_class)
    handler.traffic = False
    handler.send_parts = []
    handler.start_time = 1000 * 1000
    handler.request = SimpleNamespace(sendmsg=lambda buf: None, recvmsg=incoming.pop, pending=lambda: False)
    source = tmp_path / "rec.1"
    with open(source, "w+") as handler.rec:
        handler.rec.write("var VNC_frame_data = [\n")  # as in handle_websocket
        clock.now = 1000.25
        handler.send_frames([b"from target '\xe9'\n", b"\x00\x01"])
        clock.now = 1001.5
        assert handler.recv_frames() == ([b"client's \\ \x00\xfe\x7f"], False)
        handler.rec.write("'EOF'];\n")  # as in finish
    assert list(iter_websockify(source)) == [
        Event(0.25, "target", "binary", b"from target '\xe9'\n"),
        Event(0.25, "target", "binary", b"\x00\x01"),
        Event(1.5, "client", "binary", b"client's \\ \x00\xfe\x7f"),
        Event(1.5, None, "close"),
    ]


def test_main_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`wsrouter record-convert IN OUT` converts, refuses to overwrite without --force, and reports errors."""
    source, target = tmp_path / "rec.1", tmp_path / "out.jsonl"
    source.write_text(WEBSOCKIFY_SAMPLE, encoding="ascii")
    assert main_convert([str(source), str(target), "--start", str(START)]) == 0
    assert "wrote 7 events" in capsys.readouterr().out
    assert main_convert([str(source), str(target)]) == 1
    assert "exists; use --force" in capsys.readouterr().err
    assert main_convert([str(source), str(target), "--force"]) == 0
    assert main_convert([str(tmp_path / "missing"), str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "No such file or directory" in err and "Traceback" not in err
    assert main_convert([str(target), str(tmp_path / "y.jsonl")]) == 1
    assert "not a websockify recording" in capsys.readouterr().err


def test_headers_that_are_not_a_list_are_no_headers() -> None:
    """A header line whose "headers" is a number reads as no headers, not a TypeError (found by atheris)."""
    lines = [b'{"format":"wsrouter-recording","version":1,"start":1.5,"headers":0.1}\n']
    header, _events = parse_recording(lines, "fuzz")
    assert header.headers == ()
