"""
JSON lines logging (C{log.format = "json"}, C{--log-format json}): one
object per event, with the event's own fields -- a session's open and
close lines give C{id}, C{peer}, C{path}, C{target}, C{route},
C{subprotocol}, and at close C{up}, C{down}, C{duration}, C{code},
C{reason}, C{by} -- plus C{time} (ISO 8601, UTC), C{level},
C{namespace}, C{event} (C{session_open}, C{session_close},
C{handshake_refused}, or C{log}) and C{message}, the text line.

Under twistd, give twistd C{--logger wsrouter.ops.logformat.json_logger}.

L{TextLinesObserver} writes the same text lines as Twisted's
C{FilteringLogObserver(textFileLogObserver(stream), [LogLevelFilterPredicate(level)])},
for less: the time prefix is formatted once per second, a format string
with plain field names is filled by C{str.format_map} (parsed once), and
the level filter is one set lookup.  Anything else (a failure's
traceback, C{log_flattened}, calls and attribute paths in a format, a
missing field) takes Twisted's own formatting, so the text never differs.
"""

from __future__ import annotations

import json
import string
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python.compat import ioType
from zope.interface import implementer

#: Event name by the start of the event's format string.
_EVENTS = (("session {id} open", "session_open"), ("session {id} closed", "session_close"),
           ("refused ", "handshake_refused"))


def event_name(event: dict[str, Any]) -> str:
    text = str(event.get("log_format") or "")
    return next((name for prefix, name in _EVENTS if text.startswith(prefix)), "log")


def _plain(value: Any) -> Any:
    """A field value as JSON has it (anything else as its text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One line of JSON for a Twisted log event."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(float(event.get("log_time") or 0.0), UTC).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "event": event_name(event),
        "message": event_text(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and not key.startswith("_"):
            record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one line of JSON to C{stream}."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self._stream.write(event_as_json(event) + "\n")
        self._stream.flush()


def json_logger() -> JsonLinesObserver:
    """For twistd's C{--logger}: JSON lines on standard output."""
    return JsonLinesObserver(sys.stdout)


#: Format strings seen, and whether every field is a plain name (C{{id}},
#: C{{duration:.3f}}, C{{reason!r}}): those C{str.format_map} fills exactly as
#: Twisted's formatter does.  Bounded: cleared when it grows past L{_PLAIN_MAX}.
_plain_formats: dict[str, bool] = {}
_PLAIN_MAX = 512
_parse = string.Formatter().parse


def _is_plain(format: str) -> bool:
    try:
        return _plain_formats[format]
    except KeyError:
        pass
    try:
        plain = all(name is None or (name.isidentifier() and "{" not in (spec or ""))
                    for _, name, spec, _ in _parse(format))
    except ValueError:  # a malformed format: Twisted's formatter says so
        plain = False
    if len(_plain_formats) >= _PLAIN_MAX:
        _plain_formats.clear()
    _plain_formats[format] = plain
    return plain


def event_text(event: dict[str, Any]) -> str:
    """
    The event's message, as Twisted's C{formatEvent} makes it (same text);
    a plain format string is filled with C{str.format_map} instead of
    Twisted's formatter, which wraps and looks up every field in Python.
    """
    format = event.get("log_format")
    if isinstance(format, str) and "log_flattened" not in event and _is_plain(format):
        try:
            return format.format_map(event)
        except Exception:  # e.g. a missing field: Twisted gives its own text for it
            pass
    return formatEvent(event)


class _SecondStamp:
    """
    C{formatTime(when)} (RFC 3339, local time, whole seconds) remembered
    for the last second seen: the local offset only changes on a whole
    second.  A time within a microsecond of the next second is formatted
    afresh (C{datetime} rounds it up).
    """

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if when - second >= 0.999999 or when < 0:
            return formatTime(when)
        if second != self._second:
            self._second, self._text = second, formatTime(when)
        return self._text


@implementer(ILogObserver)
class TextLinesObserver:
    """
    Text lines, the same as Twisted's C{textFileLogObserver(stream)} behind
    a C{FilteringLogObserver} with C{LogLevelFilterPredicate(level)} (events
    below C{level}, or with no level or namespace, are dropped), written
    and flushed one event at a time.
    """

    def __init__(self, stream: IO[Any], level: LogLevel = LogLevel.info):
        self._stream = stream
        self._encoding = "utf-8" if ioType(stream) is not str else None
        self._wanted = frozenset(each for each in LogLevel.iterconstants() if not each < level)
        self._stamp = _SecondStamp()

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level not in self._wanted or not event.get("log_namespace"):
            return
        if "log_trace" in event:
            event["log_trace"].append((self, self._stream))
        text = self.format(event)
        if text:
            stream = self._stream
            stream.write(text if self._encoding is None else text.encode(self._encoding))
            stream.flush()

    def format(self, event: dict[str, Any]) -> str | None:
        """One event's text, or C{None} for none (C{formatEventAsClassicLogText}'s)."""
        if "log_failure" in event:
            return formatEventAsClassicLogText(event, formatTime=self._stamp)
        text = event_text(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        else:
            try:
                system = str(system)
            except Exception:  # as Twisted does
                system = "UNFORMATTABLE"
        line = f"{self._stamp(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"


def text_logger(stream: IO[Any], level: LogLevel = LogLevel.info) -> TextLinesObserver:
    """The router's text log (C{log.format = "text"}): L{TextLinesObserver} on C{stream} at C{level}."""
    return TextLinesObserver(stream, level)
