"""
Tools for recordings: a readable transcript, real-time playback, and
conversion of websockify's C{--record} files into our format.

C{main_replay} and C{main_convert} are the C{wsrouter replay} and
C{wsrouter record-convert} commands: they take the arguments after the
command name, print errors (never tracebacks) to stderr and return an exit
status: 0 for success, 1 for a file that cannot be read or is not a
recording, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

from wsrouter.recording import (
    FORMAT_VERSION,
    Event,
    Header,
    RecordingFormatError,
    encode_jsonl_event,
    encode_jsonl_header,
    read_recording,
)

#: Default number of bytes (or characters of text) shown per message.
DEFAULT_DUMP_LIMIT = 256

# -- transcript ----------------------------------------------------------------


def hex_dump(data: bytes, limit: int | None = DEFAULT_DUMP_LIMIT) -> Iterator[str]:
    """C{hexdump -C} style lines, indented; at most C{limit} bytes (C{None}: all)."""
    shown = data if limit is None else data[:limit]
    for at in range(0, len(shown), 16):
        row = shown[at : at + 16]
        hexes = " ".join(f"{b:02x}" for b in row[:8]) + "  " + " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        yield f"    {at:08x}  {hexes:<48}  |{text}|"
    if len(shown) < len(data):
        yield f"    ... {len(data) - len(shown)} more bytes not shown"


def _describe_header(header: Header) -> Iterator[str]:
    version = f"{header.format} v{header.version}"
    yield f"# recording ({version}) started {header.start_utc}"
    if header.session_id or header.peer:
        yield f"# session {header.session_id or '?'} from {header.peer or '?'}"
    if header.client_cert:
        yield f"# client certificate {header.client_cert}"
    if header.route or header.target:
        yield f"# route {header.route or '?'} -> {header.target or '?'}"
    if header.path:
        query = f"?{header.query}" if header.query else ""
        subprotocol = f", subprotocol {header.subprotocol}" if header.subprotocol else ""
        yield f"# request {header.path}{query}{subprotocol}"
    for name, value in header.headers:
        yield f"#   {name}: {value}"


def _describe_event(event: Event, limit: int | None) -> Iterator[str]:
    stamp = f"+{event.offset:.3f}s"
    if event.kind == "text":
        text = event.text
        if limit is not None and len(text) > limit:
            yield f"{stamp} {event.direction}> text {text[:limit]!r}... ({len(text)} characters)"
        else:
            yield f"{stamp} {event.direction}> text {text!r}"
    elif event.kind == "binary":
        yield f"{stamp} {event.direction}> binary {len(event.payload)} bytes"
        yield from hex_dump(event.payload, limit)
    elif event.kind == "close":
        code = "without a code" if event.code is None else str(event.code)
        reason = f" {event.reason!r}" if event.reason else ""
        yield f"{stamp} closed {code}{reason}"
    else:
        yield f"{stamp} note: {event.text}"


def format_transcript(
    header: Header, events: Iterable[Event], *, dump_limit: int | None = DEFAULT_DUMP_LIMIT
) -> Iterator[str]:
    """
    A readable transcript, one line per item (without newlines).

    Events look like C{+0.512s client> text 'hello'} and
    C{+0.600s target> binary 12 bytes} followed by a hex dump.  At most
    C{dump_limit} bytes of each binary message and characters of each text
    message are shown (C{None}: everything), so a screen update does not
    flood the terminal.
    """
    yield from _describe_header(header)
    for event in events:
        yield from _describe_event(event, dump_limit)


# -- real-time playback ----------------------------------------------------------


def play_realtime(
    events: Iterable[Event],
    out: BinaryIO,
    speed: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
    *,
    max_idle: float | None = None,
) -> int:
    """
    Write what the target sent to C{out}, at the recorded pace.

    Before each target message it sleeps for the time since the previous
    one (since the start, for the first) divided by C{speed}, capped at
    C{max_idle} seconds if given.  Client messages, closes and notes only
    pass time.

    @param speed: 2.0 plays twice as fast; must be positive.
    @return: the number of messages written.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, not {speed!r}")
    played = 0
    previous = 0.0
    for event in events:
        if event.direction != "target" or event.kind not in ("text", "binary"):
            continue
        delay = max(0.0, event.offset - previous) / speed
        if max_idle is not None:
            delay = min(delay, max_idle)
        previous = event.offset
        if delay > 0:
            sleep(delay)
        out.write(event.payload)
        out.flush()
        played += 1
    return played


# -- websockify conversion -------------------------------------------------------

_WEBSOCKIFY_START = "var VNC_frame_data = ["
_WEBSOCKIFY_END = "'EOF'];"
# websockify writes "'{<ms>{<data>',"  (target -> client, in send_frames)
#               and "'}<ms>}<data>',"  (client -> target, in recv_frames)
# where <data> is bytes.decode('latin1').encode('unicode_escape') with ' as \'.
_WEBSOCKIFY_ENTRY = re.compile(r"'([{}])(\d+)\1((?:[^'\\]|\\.)*)',")


def _websockify_payload(name: str, line_number: int, data: str) -> bytes:
    """Undo websockify's escaping: unicode_escape of latin-1, then ' as \\'."""
    try:
        return data.encode("ascii").decode("unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError) as e:
        raise RecordingFormatError(name, line_number, f"bad escape in websockify data: {e}") from None


def iter_websockify(path: str | os.PathLike[str]) -> Iterator[Event]:
    """
    The events of a websockify C{--record} file.

    websockify relays binary messages only, so every message is C{binary};
    C{{} entries are data the target sent, C{}} entries data the client
    sent, with offsets in whole milliseconds.  The closing C{'EOF'} becomes a
    close event without a code (websockify does not record it); a file
    without it (websockify was killed) simply ends.

    @raise RecordingFormatError: the file is not in websockify's format.
    """
    name = os.fspath(path)
    with open(name, encoding="latin-1", newline="\n") as f:
        started = ended = False
        offset = 0.0
        for line_number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if ended:
                raise RecordingFormatError(name, line_number, "data after the final 'EOF'];")
            if not started:
                if line.strip() != _WEBSOCKIFY_START:
                    raise RecordingFormatError(
                        name, line_number, f"not a websockify recording (expected {_WEBSOCKIFY_START!r})"
                    )
                started = True
                continue
            if line == _WEBSOCKIFY_END:
                ended = True
                yield Event(offset, None, "close")
                continue
            match = _WEBSOCKIFY_ENTRY.fullmatch(line)
            if match is None:
                raise RecordingFormatError(name, line_number, "not a websockify entry ('{MS{DATA', or '}MS}DATA',)")
            marker, millis, data = match.groups()
            offset = int(millis) / 1000
            direction = "target" if marker == "{" else "client"
            yield Event(offset, direction, "binary", _websockify_payload(name, line_number, data))
        if not started:
            raise RecordingFormatError(name, 0, "empty file, not a websockify recording")


def convert_websockify(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    start: float | None = None,
    route: str = "",
    target: str = "",
    peer: str = "",
    overwrite: bool = False,
) -> int:
    """
    Convert a websockify C{--record} file into a JSON Lines recording.

    The input is read twice: once to check it all (so a bad file leaves no
    half-written output) and to find its length, once to write.  A note
    naming the source is the first event.

    @param start: the session's start (seconds since the epoch); websockify
        does not record it, so by default it is the input's modification
        time minus the recording's length (websockify writes until the end).
    @param overwrite: replace C{out_path} if it exists, instead of failing.
    @return: the number of events written, the note included.
    @raise RecordingFormatError: the input is not a websockify recording.
    @raise OSError: a file cannot be read or created (C{FileExistsError}
        when C{out_path} exists and C{overwrite} is false).
    """
    source = os.fspath(in_path)
    length = max((event.offset for event in iter_websockify(source)), default=0.0)
    if start is None:
        start = os.stat(source).st_mtime - length
    header = Header(
        format="jsonl", version=FORMAT_VERSION, start=start, route=route, target=target, peer=peer
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    count = 0
    with os.fdopen(os.open(os.fspath(out_path), flags, 0o600), "wb") as out:
        out.write(encode_jsonl_header(header))
        note = f"converted from websockify recording {os.path.basename(source)}"
        out.write(encode_jsonl_event(Event(0.0, None, "note", note.encode("utf-8"))))
        count += 1
        for event in iter_websockify(source):
            out.write(encode_jsonl_event(event))
            count += 1
    return count


# -- commands ------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text!r}")
    return int(text)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse, returning argparse's exit status (2, or 0 for --help) instead of exiting."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def _error(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return 1


def _quiet_broken_pipe() -> int:
    """The reader went away (C{| head}): stop without a traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 1


def _file_problem(e: OSError) -> str:
    return f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")


def replay_parser(prog: str = "wsrouter replay") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show a session recording as a transcript, or play the target's side in real time.",
    )
    parser.add_argument("file", metavar="FILE", help="a recording (.jsonl or asciicast .cast)")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="write what the target sent to stdout at the recorded pace (e.g. a terminal session)",
    )
    parser.add_argument(
        "--speed", type=_positive, default=1.0, metavar="FACTOR", help="with --realtime: 2 plays twice as fast"
    )
    parser.add_argument(
        "--max-idle",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="with --realtime: never wait longer than this between messages",
    )
    parser.add_argument(
        "--dump-limit",
        type=_count,
        default=DEFAULT_DUMP_LIMIT,
        metavar="N",
        help=f"show at most N bytes (or characters) of each message (default {DEFAULT_DUMP_LIMIT})",
    )
    parser.add_argument("--full", action="store_true", help="show every message in full")
    return parser


def main_replay(argv: Sequence[str] | None = None, prog: str = "wsrouter replay") -> int:
    """C{wsrouter replay FILE [--realtime [--speed F]] [--dump-limit N | --full]}."""
    args = _parse(replay_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        header, events = read_recording(args.file)
        if args.realtime:
            play_realtime(events, sys.stdout.buffer, args.speed, max_idle=args.max_idle)
        else:
            limit = None if args.full else args.dump_limit
            for line in format_transcript(header, events, dump_limit=limit):
                print(line)
        sys.stdout.flush()
    except RecordingFormatError as e:
        return _error(prog, str(e))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        return _error(prog, f"cannot read {_file_problem(e)}")
    except KeyboardInterrupt:
        return 130
    return 0


def convert_parser(prog: str = "wsrouter record-convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a websockify --record file into a wsrouter JSON Lines recording."
    )
    parser.add_argument("input", metavar="IN", help="websockify recording (e.g. session.1)")
    parser.add_argument("output", metavar="OUT", help="the .jsonl file to write (created mode 0600)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--start",
        type=float,
        default=None,
        metavar="EPOCH",
        help="session start in seconds since the epoch (default: IN's modification time minus its length)",
    )
    parser.add_argument("--route", default="", help="route to put in the header")
    parser.add_argument("--target", default="", help="target to put in the header, e.g. tcp://host:5900")
    parser.add_argument("--peer", default="", help="client address to put in the header")
    return parser


def main_convert(argv: Sequence[str] | None = None, prog: str = "wsrouter record-convert") -> int:
    """C{wsrouter record-convert IN OUT [--force] [--start EPOCH] [--route R] [--target T] [--peer P]}."""
    args = _parse(convert_parser(prog), argv)
    if isinstance(args, int):
        return args
    try:
        count = convert_websockify(
            args.input,
            args.output,
            start=args.start,
            route=args.route,
            target=args.target,
            peer=args.peer,
            overwrite=args.force,
        )
    except RecordingFormatError as e:
        return _error(prog, str(e))
    except FileExistsError:
        return _error(prog, f"{args.output} exists; use --force to overwrite it")
    except OSError as e:
        return _error(prog, _file_problem(e))
    print(f"wrote {count} events to {args.output}")
    return 0
