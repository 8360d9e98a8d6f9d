"""
Session recordings: writing them while the session runs, and reading them.

A recording is one file per session, in JSON Lines (our own documented
format, see C{docs/recording.md}) or in asciicast v2 (so terminal sessions
play in asciinema unchanged).  Writing is buffered and flushed by size or by
a timer, never per frame, and never raises into the relay: the first I/O
error is logged once and the recorder goes silent while the session goes on.

The reader (L{read_recording}, L{parse_recording}) is pure data in, data
out, so replay tools and a replay target can share it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeGuard

from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wsrouter.config import DEFAULT_RECORD_REDACT
from wsrouter.interfaces import Recorder, SessionInfo

#: Version of our JSON Lines format; bumped only for incompatible changes.
FORMAT_VERSION = 1

#: The value of C{"format"} in a JSON Lines header line.
FORMAT_NAME = "wsrouter-recording"

#: Recording formats L{open_recorder} can write, and their file suffixes.
FORMATS = {"jsonl": ".jsonl", "asciicast": ".cast"}

REDACTED = "[redacted]"

#: Flush the in-memory buffer once it holds this many bytes...
FLUSH_BYTES = 64 * 1024
#: ...or this many seconds after the first unflushed line, whichever is first.
FLUSH_INTERVAL = 0.5

#: asciicast terminal size when nothing better is known (the asciinema default).
ASCIICAST_WIDTH = 80
ASCIICAST_HEIGHT = 24

DIRECTIONS = ("client", "target")
KINDS = ("text", "binary", "close", "note")

log = Logger()


class RecordingFormatError(ValueError):
    """
    A file is not a recording we can read.

    @ivar path: the file (or the name given to L{parse_recording}).
    @ivar line_number: 1-based line of the problem, 0 for the file as a whole.
    @ivar problem: what is wrong, in words.
    """

    def __init__(self, path: str, line_number: int, problem: str):
        where = f"{path}, line {line_number}" if line_number else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line_number = line_number
        self.problem = problem


@frozen
class Header:
    """
    What a recording says about its session.

    @ivar format: C{"jsonl"} or C{"asciicast"}.
    @ivar version: the format's version (L{FORMAT_VERSION}, or 2 for asciicast).
    @ivar start: when the session started, in seconds since the epoch (UTC).
    @ivar peer: the client as C{host:port} (IPv6 in brackets).
    @ivar route: the route pattern that matched, as L{Route.describe} says.
    @ivar target: the target's description, e.g. C{tcp://127.0.0.1:5900}.
    @ivar headers: request headers, names lower-cased, secrets redacted.
    @ivar width: asciicast terminal columns; C{None} for JSON Lines.
    @ivar height: asciicast terminal rows; C{None} for JSON Lines.
    @ivar client_cert: the subject of the client's verified certificate
        (RFC 4514); C{None} without one (the field is then absent).
    """

    format: str
    version: int
    start: float
    session_id: str = ""
    route: str = ""
    target: str = ""
    peer: str = ""
    path: str = ""
    query: str = ""
    subprotocol: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    width: int | None = None
    height: int | None = None
    title: str | None = None
    client_cert: str | None = None

    @property
    def start_utc(self) -> str:
        return format_utc(self.start)


@frozen
class Event:
    """
    One thing that happened in a session.

    @ivar offset: seconds since the session started.
    @ivar direction: the side that sent the message, C{"client"} or
        C{"target"}; C{None} for C{close} and C{note} events.
    @ivar kind: C{"text"}, C{"binary"}, C{"close"} or C{"note"}.
    @ivar payload: the message bytes (text as UTF-8); for a note, its text
        as UTF-8; empty for close.
    @ivar code: the close code, if the session ended with one.
    @ivar reason: the close reason.
    """

    offset: float
    direction: str | None
    kind: str
    payload: bytes = b""
    code: int | None = None
    reason: str = ""

    @property
    def text(self) -> str:
        """The payload as text (undecodable bytes replaced)."""
        return self.payload.decode("utf-8", "replace")


# -- names and headers -----------------------------------------------------------


def format_utc(seconds: float) -> str:
    """C{2026-11-21T07:30:12.123Z}: ISO 8601, UTC, milliseconds."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _slug(text: str, limit: int) -> str:
    """Keep letters, digits and dots; anything else (the C{-} separator too) becomes C{_}."""
    return re.sub(r"[^A-Za-z0-9.]", "_", text)[:limit]


def session_file_name(
    start: float, route_path: str, peer: str, session_id: str, fmt: str = "jsonl"
) -> str:
    """
    A file name that sorts by start time and says the route and the peer.

    C{20261121T073012.123Z-vnc-127.0.0.1_51234-<session id>.jsonl}: the UTC
    start time, then slugs of the route path (C{root} for C{/}), the peer
    and the session id, separated by C{-} (which the slugs never contain).
    """
    stamp = format_utc(start).replace("-", "").replace(":", "")
    route = _slug(route_path.strip("/"), 48).strip("_") or "root"
    peer_slug = _slug(peer.replace("[", "").replace("]", ""), 64) or "unknown"
    session = _slug(session_id, 64) or "session"
    return f"{stamp}-{route}-{peer_slug}-{session}{FORMATS[fmt]}"


def make_header(
    session: SessionInfo,
    target_description: str,
    start: float,
    *,
    fmt: str = "jsonl",
    redact: Iterable[str] = DEFAULT_RECORD_REDACT,
) -> Header:
    """The header for a new recording of C{session}, secrets redacted."""
    hidden = {name.lower() for name in redact}
    headers = tuple(
        (name, REDACTED if name.lower() in hidden else value) for name, value in session.headers
    )
    asciicast = fmt == "asciicast"
    return Header(
        format=fmt,
        version=2 if asciicast else FORMAT_VERSION,
        start=start,
        session_id=session.session_id,
        route=session.route.describe(),
        target=target_description,
        peer=session.peer(),
        path=session.path,
        query=session.query,
        subprotocol=session.subprotocol,
        headers=headers,
        width=ASCIICAST_WIDTH if asciicast else None,
        height=ASCIICAST_HEIGHT if asciicast else None,
        title=f"wsrouter {session.route.describe()} from {session.peer()}" if asciicast else None,
        client_cert=session.client_cert,
    )


# -- encoding ------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    """One JSON line; lone surrogates (from odd header bytes) fall back to \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii") + b"\n"


def _seconds(offset: float) -> float:
    return round(offset, 6)


def _session_fields(header: Header) -> dict[str, Any]:
    fields = {
        "start": round(header.start, 6),
        "start_utc": header.start_utc,
        "session": header.session_id,
        "route": header.route,
        "target": header.target,
        "peer": header.peer,
        "path": header.path,
        "query": header.query,
        "subprotocol": header.subprotocol,
        "headers": [list(pair) for pair in header.headers],
    }
    if header.client_cert is not None:
        fields["client_cert"] = header.client_cert
    return fields


def encode_jsonl_header(header: Header) -> bytes:
    """The first line of a JSON Lines recording."""
    return _dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **_session_fields(header)})


def encode_jsonl_event(event: Event) -> bytes:
    """
    One event line.  Text that is not valid UTF-8 keeps its bytes: it is
    written as C{"data"} (base64) instead of C{"text"}.
    """
    if event.kind == "binary" and event.direction in ("client", "target"):
        # The hot case, built by hand: base64 needs no JSON escaping, and
        # skipping the json module saves two copies of every payload.
        return b"".join((
            b'{"t":', json.dumps(_seconds(event.offset)).encode("ascii"),
            b',"event":"binary","dir":"', event.direction.encode("ascii"),
            b'","data":"', base64.b64encode(event.payload), b'"}\n',
        ))
    line: dict[str, Any] = {"t": _seconds(event.offset), "event": event.kind}
    if event.kind in ("text", "binary"):
        line["dir"] = event.direction
        if event.kind == "text":
            try:
                line["text"] = event.payload.decode("utf-8")
            except UnicodeDecodeError:
                line["data"] = base64.b64encode(event.payload).decode("ascii")
        else:
            line["data"] = base64.b64encode(event.payload).decode("ascii")
    elif event.kind == "close":
        line["code"] = event.code
        line["reason"] = event.reason
    else:
        line["text"] = event.text
    return _dumps(line)


def encode_asciicast_header(header: Header) -> bytes:
    """
    An asciicast v2 header; our session fields go under the C{"wsrouter"}
    key, which asciicast players ignore.
    """
    return _dumps(
        {
            "version": 2,
            "width": header.width or ASCIICAST_WIDTH,
            "height": header.height or ASCIICAST_HEIGHT,
            "timestamp": int(header.start),
            "title": header.title or "wsrouter session",
            "env": {"TERM": "xterm-256color"},
            "wsrouter": {"format_version": FORMAT_VERSION, **_session_fields(header)},
        }
    )


def size_limit_note(max_bytes: int) -> str:
    return f"recording stopped: size limit {max_bytes} bytes reached"


# -- writing -------------------------------------------------------------------


class NullRecorder:
    """Records nothing: what a session gets when its file cannot be created."""

    #: Counted as a recording error (L{wsrouter.ops.metrics}).
    failed = True

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        pass

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        pass

    def closed(self, code: int | None, reason: str) -> None:
        pass


class _FileRecorder:
    """
    Buffered, bounded, fail-silent writing of lines to one open file.

    Lines collect in memory and go to the file when L{FLUSH_BYTES} are
    buffered, when the L{FLUSH_INTERVAL} timer fires, and at close, so a
    crash loses at most the last half second or 64 KiB.  There is no fsync:
    durability against power loss is not worth slowing the relay for.
    """

    def __init__(
        self, path: str, fd: int, header: Header, *, clock: IReactorTime, max_bytes: int | None
    ):
        self.path = path
        self._fd: int | None = fd
        self._clock = clock
        self._max_bytes = max_bytes
        self._origin = clock.seconds()
        self._last_offset = 0.0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._accepted = 0
        self._timer: IDelayedCall | None = None
        self._recording = True
        self._done = False
        #: Writing failed (L{wsrouter.ops.metrics} counts it).
        self.failed = False
        self._guard(self._start, header)

    # Recorder protocol

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        if self._recording:
            self._guard(self._message, "client", payload, is_binary)

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        if self._recording:
            self._guard(self._message, "target", payload, is_binary)

    def closed(self, code: int | None, reason: str) -> None:
        if self._done:
            return
        self._guard(self._close, code, reason)
        self._done = True
        self._release()

    # subclass hooks

    def _encode_header(self, header: Header) -> bytes:
        raise NotImplementedError

    def _encode_message(self, offset: float, direction: str, payload: bytes, is_binary: bool) -> bytes:
        raise NotImplementedError

    def _encode_close(self, offset: float, code: int | None, reason: str) -> bytes:
        raise NotImplementedError

    def _encode_note(self, offset: float, text: str) -> bytes:
        raise NotImplementedError

    # internals

    def _guard(self, method: Callable[..., None], *args: Any) -> None:
        """Run C{method}; any failure is logged once and silences the recorder."""
        try:
            method(*args)
        except OSError as e:
            self._fail(e)
        except Exception:
            log.failure(
                "Recording {path} stopped by an internal error; the session goes on.",
                path=self.path,
            )
            self.failed = True
            self._silence()

    def _start(self, header: Header) -> None:
        self._put(self._encode_header(header))
        self._flush()  # a file with a header is a valid recording from the start

    def _offset(self) -> float:
        """Seconds since the start, never going backwards (clock steps)."""
        self._last_offset = max(self._last_offset, self._clock.seconds() - self._origin)
        return self._last_offset

    def _message(self, direction: str, payload: bytes, is_binary: bool) -> None:
        line = self._encode_message(self._offset(), direction, payload, is_binary)
        if line:
            self._emit(line)

    def _close(self, code: int | None, reason: str) -> None:
        if self._recording:
            line = self._encode_close(self._offset(), code, reason)
            if line:
                self._emit(line)
        self._recording = False
        self._flush()

    def _emit(self, line: bytes) -> None:
        """Buffer one event line, or the size-limit note if it would not fit."""
        if self._max_bytes is not None and self._accepted + len(line) > self._max_bytes:
            self._recording = False
            self._put(self._encode_note(self._last_offset, size_limit_note(self._max_bytes)))
            return
        self._put(line)

    def _put(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        self._accepted += len(line)
        if self._buffered >= FLUSH_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_INTERVAL, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._guard(self._flush)

    def _flush(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._fd is None or not self._buffer:
            return
        data = memoryview(b"".join(self._buffer))
        self._buffer.clear()
        self._buffered = 0
        while data:
            written = os.write(self._fd, data)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[written:]

    def _fail(self, error: OSError) -> None:
        self.failed = True
        log.error(
            "Recording {path} failed: {error}; nothing more of this session is recorded "
            "(the session goes on). Check the recording directory's free space and permissions.",
            path=self.path,
            error=error.strerror or str(error),
        )
        self._silence()

    def _silence(self) -> None:
        self._recording = False
        self._done = True
        self._buffer.clear()
        self._buffered = 0
        self._release()

    def _release(self) -> None:
        """Cancel the timer and close the file, ignoring errors from closing."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class JsonlRecorder(_FileRecorder):
    """Writes our JSON Lines format (see C{docs/recording.md})."""

    def _encode_header(self, header: Header) -> bytes:
        return encode_jsonl_header(header)

    def _encode_message(self, offset: float, direction: str, payload: bytes, is_binary: bool) -> bytes:
        kind = "binary" if is_binary else "text"
        return encode_jsonl_event(Event(offset, direction, kind, bytes(payload)))

    def _encode_close(self, offset: float, code: int | None, reason: str) -> bytes:
        return encode_jsonl_event(Event(offset, None, "close", code=code, reason=reason))

    def _encode_note(self, offset: float, text: str) -> bytes:
        return encode_jsonl_event(Event(offset, None, "note", text.encode("utf-8")))


class AsciicastRecorder(_FileRecorder):
    """
    Writes asciicast v2: target output as C{"o"}, client input as C{"i"}.

    Both text and binary messages are decoded as UTF-8, one incremental
    decoder per direction so a character split across messages survives;
    invalid bytes become U+FFFD.  The close is not recorded (asciicast has
    no such event); the size-limit note is a C{"m"} marker.
    """

    _CODES = {"target": "o", "client": "i"}

    def __init__(
        self, path: str, fd: int, header: Header, *, clock: IReactorTime, max_bytes: int | None
    ):
        factory = codecs.getincrementaldecoder("utf-8")
        self._decoders = {side: factory("replace") for side in DIRECTIONS}
        super().__init__(path, fd, header, clock=clock, max_bytes=max_bytes)

    def _encode_header(self, header: Header) -> bytes:
        return encode_asciicast_header(header)

    def _encode_message(self, offset: float, direction: str, payload: bytes, is_binary: bool) -> bytes:
        text = self._decoders[direction].decode(payload)
        return _dumps([_seconds(offset), self._CODES[direction], text]) if text else b""

    def _encode_close(self, offset: float, code: int | None, reason: str) -> bytes:
        lines = b""
        for side in DIRECTIONS:
            rest = self._decoders[side].decode(b"", final=True)
            if rest:
                lines += _dumps([_seconds(offset), self._CODES[side], rest])
        return lines

    def _encode_note(self, offset: float, text: str) -> bytes:
        return _dumps([_seconds(offset), "m", text])


_RECORDERS: dict[str, type[_FileRecorder]] = {"jsonl": JsonlRecorder, "asciicast": AsciicastRecorder}


def _create_exclusive(directory: str, name: str) -> tuple[str, int]:
    """Create a new file, owner-only; never follow or reuse an existing one."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    stem, dot, suffix = name.rpartition(".")
    for attempt in range(1, 100):
        candidate = name if attempt == 1 else f"{stem}~{attempt}{dot}{suffix}"
        path = os.path.join(directory, candidate)
        try:
            return path, os.open(path, flags, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.path.join(directory, name))


def open_recorder(
    directory: str | os.PathLike[str],
    session: SessionInfo,
    target_description: str,
    *,
    fmt: str = "jsonl",
    max_bytes: int | None,
    clock: IReactorTime,
    now: Callable[[], float] = time.time,
    redact: Iterable[str] = DEFAULT_RECORD_REDACT,
) -> Recorder:
    """
    Start recording C{session} into a new file in C{directory}.

    The directory is created (mode 0700) if missing.  If the file cannot be
    created the problem is logged once and a L{NullRecorder} is returned: a
    recording never stops a session.

    @param fmt: C{"jsonl"} or C{"asciicast"}.
    @param max_bytes: stop recording (with a note) before the file would
        grow past this size; C{None} for no limit.
    @param clock: schedules the flush timer and measures event offsets.
    @param now: wall-clock time for the start of the recording.
    @raise ValueError: C{fmt} is not a known format (a programming error;
        the configuration rejects unknown formats).
    """
    if fmt not in _RECORDERS:
        raise ValueError(f"unknown recording format {fmt!r}; use one of {', '.join(_RECORDERS)}")
    start = now()
    header = make_header(session, target_description, start, fmt=fmt, redact=redact)
    name = session_file_name(start, session.route.path, session.peer(), session.session_id, fmt)
    folder = os.fspath(directory)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path, fd = _create_exclusive(folder, name)
    except OSError as e:
        log.error(
            "Cannot record session {session} in {directory}: {error}; the session goes on "
            "unrecorded. Check that the directory exists and is writable.",
            session=session.session_id,
            directory=folder,
            error=e.strerror or str(e),
        )
        return NullRecorder()
    return _RECORDERS[fmt](path, fd, header, clock=clock, max_bytes=max_bytes)


# -- reading -------------------------------------------------------------------


_EventParser = Callable[[str, int, Any], "Event | None"]


def _number(value: Any) -> TypeGuard[int | float]:
    """A JSON number (JSON's true and false are bools in Python, not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string(obj: dict[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


def _b64(name: str, line_number: int, text: Any) -> bytes:
    if not isinstance(text, str):
        raise RecordingFormatError(name, line_number, '"data" must be a base64 string')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RecordingFormatError(name, line_number, f'"data" is not valid base64: {e}') from None


def _offset_of(name: str, line_number: int, value: Any) -> float:
    if not _number(value) or value < 0:
        raise RecordingFormatError(name, line_number, f"time must be a number >= 0, not {value!r}")
    return float(value)


def _header_fields(obj: dict[str, Any]) -> dict[str, Any]:
    headers = obj.get("headers")
    if not isinstance(headers, list):  # like the other fields: a wrong type is no value
        headers = []
    pairs = tuple(
        (str(pair[0]), str(pair[1]))
        for pair in headers
        if isinstance(pair, (list, tuple)) and len(pair) == 2
    )
    subprotocol = obj.get("subprotocol")
    client_cert = obj.get("client_cert")
    return {
        "session_id": _string(obj, "session"),
        "route": _string(obj, "route"),
        "target": _string(obj, "target"),
        "peer": _string(obj, "peer"),
        "path": _string(obj, "path"),
        "query": _string(obj, "query"),
        "subprotocol": subprotocol if isinstance(subprotocol, str) else None,
        "headers": pairs,
        "client_cert": client_cert if isinstance(client_cert, str) else None,
    }


def _jsonl_header(name: str, obj: dict[str, Any]) -> Header:
    version = obj.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise RecordingFormatError(
            name, 1, f"unsupported recording version {version!r} (this reader knows 1..{FORMAT_VERSION})"
        )
    start = obj.get("start")
    if not _number(start):
        raise RecordingFormatError(name, 1, '"start" must be a number (seconds since the epoch)')
    return Header(format="jsonl", version=version, start=float(start), **_header_fields(obj))


def _jsonl_event(name: str, line_number: int, obj: Any) -> Event | None:
    if not isinstance(obj, dict):
        raise RecordingFormatError(name, line_number, "an event must be a JSON object")
    offset = _offset_of(name, line_number, obj.get("t"))
    kind = obj.get("event")
    if not isinstance(kind, str):
        raise RecordingFormatError(name, line_number, 'missing "event"')
    if kind in ("text", "binary"):
        direction = obj.get("dir")
        if direction not in DIRECTIONS:
            raise RecordingFormatError(name, line_number, f'"dir" must be "client" or "target", not {direction!r}')
        if kind == "text" and isinstance(obj.get("text"), str):
            payload = obj["text"].encode("utf-8", "surrogatepass")
        elif "data" in obj:
            payload = _b64(name, line_number, obj["data"])
        else:
            wanted = '"text" or "data"' if kind == "text" else '"data"'
            raise RecordingFormatError(name, line_number, f"{kind} event needs {wanted}")
        return Event(offset, direction, kind, payload)
    if kind == "close":
        code = obj.get("code")
        if code is not None and not (isinstance(code, int) and not isinstance(code, bool)):
            raise RecordingFormatError(name, line_number, f'close "code" must be an integer or null, not {code!r}')
        return Event(offset, None, "close", code=code, reason=_string(obj, "reason"))
    if kind == "note":
        return Event(offset, None, "note", _string(obj, "text").encode("utf-8", "surrogatepass"))
    return None  # a kind added after this reader: skipped, as documented


def _asciicast_header(name: str, obj: dict[str, Any]) -> Header:
    for key in ("width", "height"):
        if not isinstance(obj.get(key), int):
            raise RecordingFormatError(name, 1, f'asciicast header needs an integer "{key}"')
    ours = obj.get("wsrouter")
    ours = ours if isinstance(ours, dict) else {}
    start = ours.get("start") if _number(ours.get("start")) else obj.get("timestamp", 0)
    title = obj.get("title")
    return Header(
        format="asciicast",
        version=2,
        start=float(start) if _number(start) else 0.0,
        width=obj["width"],
        height=obj["height"],
        title=title if isinstance(title, str) else None,
        **_header_fields(ours),
    )


def _asciicast_event(name: str, line_number: int, obj: Any) -> Event | None:
    if not isinstance(obj, list) or len(obj) < 3 or not isinstance(obj[1], str):
        raise RecordingFormatError(name, line_number, "an asciicast event must be [time, code, data]")
    offset = _offset_of(name, line_number, obj[0])
    code, data = obj[1], obj[2]
    if code not in ("o", "i", "m"):
        return None  # resize and future event kinds carry no messages
    if not isinstance(data, str):
        raise RecordingFormatError(name, line_number, f'"{code}" event data must be a string')
    payload = data.encode("utf-8", "surrogatepass")
    if code == "m":
        return Event(offset, None, "note", payload)
    return Event(offset, "target" if code == "o" else "client", "text", payload)


def _decode_json(name: str, line_number: int, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordingFormatError(name, line_number, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RecordingFormatError(name, line_number, f"not JSON ({e.msg} at column {e.colno})") from None


def _parse_header(name: str, first: bytes) -> tuple[Header, _EventParser]:
    if not first.strip():
        raise RecordingFormatError(name, 1, "empty file: no header line")
    if first.startswith(b"var VNC_frame_data"):
        raise RecordingFormatError(
            name, 1, "this is a websockify recording; convert it first with 'wsrouter record-convert'"
        )
    obj = _decode_json(name, 1, first)
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        return _jsonl_header(name, obj), _jsonl_event
    if isinstance(obj, dict) and obj.get("version") == 2 and "width" in obj:
        return _asciicast_header(name, obj), _asciicast_event
    raise RecordingFormatError(
        name, 1, f'not a recording header (expected "format": "{FORMAT_NAME}" or an asciicast v2 header)'
    )


def _parse_events(
    name: str, lines: Iterator[bytes], parse: _EventParser, first_line_number: int = 2
) -> Iterator[Event]:
    last_offset = 0.0
    for line_number, raw in enumerate(lines, first_line_number):
        if not raw.strip():
            continue
        try:
            obj = _decode_json(name, line_number, raw)
        except RecordingFormatError:
            if not raw.endswith(b"\n"):
                # The writer stopped mid-line (crash, kill): keep what came before.
                yield Event(last_offset, None, "note", b"truncated last line ignored")
                return
            raise
        event = parse(name, line_number, obj)
        if event is not None:
            last_offset = event.offset
            yield event


def parse_recording(lines: Iterable[bytes], name: str = "<recording>") -> tuple[Header, Iterator[Event]]:
    """
    Parse a recording (JSON Lines or asciicast v2) from its lines.

    The header is parsed at once; events are parsed as the iterator is
    consumed.  Event kinds this reader does not know are skipped.  A final
    line cut short (no newline, not JSON) becomes a C{note} event.

    @param lines: the file's lines as bytes, newlines included.
    @raise RecordingFormatError: bad header now, bad event when reached.
    """
    it = iter(lines)
    header, parse = _parse_header(name, next(it, b""))
    return header, _parse_events(name, it, parse)


def read_recording(path: str | os.PathLike[str]) -> tuple[Header, Iterator[Event]]:
    """
    Read a recording file; see L{parse_recording}.

    The file is opened again, lazily, for the events, so an unconsumed
    iterator holds no open file.

    @raise OSError: the file cannot be read.
    @raise RecordingFormatError: it is not a recording.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        header, _ = _parse_header(name, f.readline())

    def events() -> Iterator[Event]:
        with open(name, "rb") as f:
            _, parse = _parse_header(name, f.readline())
            yield from _parse_events(name, f, parse)

    return header, events()
