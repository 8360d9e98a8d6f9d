"""
Writing without a trip around the reactor when the socket can take it.

Twisted's transports queue every write and send it on the next turn of the
reactor, after asking epoll to report the socket writable and before
asking it to stop: on a relay, where almost every read is followed by one
write, that doubles the system calls and adds a loop iteration of latency
per message.  When nothing is queued on a plain TCP transport, these
functions send at once and queue only what the kernel did not take, so
ordering, flow control (the transport still pauses its producer when its
queue grows) and error handling stay Twisted's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wsrouter.ws.internals import idle_tcp as _idle


def write_through(transport: Any, data: bytes | memoryview) -> None:
    """
    C{transport.write(data)}, sending at once what the socket accepts; a
    C{memoryview} (the TLS layer's scratch buffer) is copied only if the
    socket does not take it all.
    """
    if data and _idle(transport):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # let the transport find and report the error
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data if isinstance(data, bytes) else bytes(data))


def write_sequence_through(transport: Any, parts: Sequence[bytes]) -> None:
    """C{transport.writeSequence(parts)}, sending at once (one sendmsg) what the socket accepts."""
    if _idle(transport):
        try:
            sent = transport.socket.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0
        if sent:
            parts = _after(parts, sent)
            if not parts:
                return
    transport.writeSequence(parts)


def _after(parts: Sequence[bytes], sent: int) -> list[bytes]:
    """What is left of C{parts} once C{sent} bytes of them went out."""
    left: list[bytes] = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        left.append(part[sent:] if sent else part)
        sent = 0
    return left
