"""
JSON lines logging (C{log.format = "json"}, C{--log-format json}): one
object per event, with the event's own fields -- a session's open and
close lines give C{id}, C{peer}, C{path}, C{target}, C{route},
C{subprotocol}, and at close C{up}, C{down}, C{duration}, C{code},
C{reason}, C{by} -- plus C{time} (ISO 8601, UTC), C{level},
C{namespace}, C{event} (C{session_open}, C{session_close},
C{handshake_refused}, or C{log}) and C{message}, the text line.

Under twistd, give twistd C{--logger wsrouter.ops.logformat.json_logger}.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
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
        "message": formatEvent(event),
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
