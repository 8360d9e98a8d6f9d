"""
websockify's C{--traffic}: one debug log line per message relayed, either
way, written as a L{Recorder} so the bridge needs no second hook.
"""

from __future__ import annotations

from twisted.logger import Logger

from wsrouter.interfaces import Recorder

log = Logger(namespace="wsrouter.traffic")


class TrafficLog:
    """Logs each message's direction, size and kind at debug level."""

    def __init__(self, session_id: str):
        self._id = session_id

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        log.debug("session {id} traffic: client -> target {size} bytes ({kind})", id=self._id,
                  size=len(payload), kind="binary" if is_binary else "text")

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        log.debug("session {id} traffic: target -> client {size} bytes ({kind})", id=self._id,
                  size=len(payload), kind="binary" if is_binary else "text")

    def closed(self, code: int | None, reason: str) -> None:
        pass


class Both:
    """Two recorders fed the same traffic (the traffic log and a recording)."""

    def __init__(self, first: Recorder, second: Recorder):
        self._first, self._second = first, second

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        self._first.client_message(payload, is_binary)
        self._second.client_message(payload, is_binary)

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        self._first.target_message(payload, is_binary)
        self._second.target_message(payload, is_binary)

    def closed(self, code: int | None, reason: str) -> None:
        self._first.closed(code, reason)
        self._second.closed(code, reason)


def with_traffic_log(recorder: Recorder | None, session_id: str) -> Recorder:
    traffic = TrafficLog(session_id)
    return traffic if recorder is None else Both(traffic, recorder)
