"""Benchmark targets in one helper process, controlled by JSON lines on stdin/stdout.

Plain TCP targets (what a relay connects to):

* ``sink``   reads and discards, counting bytes and noting first/last arrival times;
* ``source`` sends ``source_bytes`` bytes on each connection, then closes;
* ``echo``   writes back whatever it reads.

The same three behind a minimal WebSocket server (``ws_sink``, ``ws_source``,
``ws_echo``) let the load client talk to a target with no relay in the path: the
"direct" ceiling.  That server is deliberately minimal: it accepts any upgrade
request, chooses the first offered subprotocol, counts sink payload without unmasking
it, echoes each frame back as one unmasked frame, and sends source data as 64 KiB
binary frames.  Echo has a fast path for whole unfragmented data frames (the only
kind the client sends before closing), so that the ceiling measures the client, not
this server's frame parser; the first control or fragmented frame hands the
connection to the general parser.

All listeners bind port 0 on 127.0.0.1; the first stdout line reports the ports.
Then each stdin line is one command and gets one stdout line in reply:

``{"cmd": "reset"}``  forget past connections;
``{"cmd": "set_source", "bytes": N}``  size of later source connections;
``{"cmd": "stats"}``  per-connection counters (see :meth:`Targets.stats`);
``{"cmd": "open_counts"}``  how many connections of each kind are open now;
``{"cmd": "quit"}``  close listeners and exit.

Times are ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux), comparable with the
client process on the same machine.  Run: ``python bench/targets.py``.

The concurrency workload holds up to 9,000 echo connections here at once, so the
helper raises its soft descriptor limit to the hard one at start and listens with a
backlog of 1024 (the kernel caps it at ``net.core.somaxconn``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    ZERO_MASK,
    FrameParser,
    accept_key,
    frame,
    unmask,
)

HOST = "127.0.0.1"
SOURCE_CHUNK = 1 << 20
WS_SOURCE_FRAME = 64 * 1024
SINK_BUFFER = 1 << 20
BACKLOG = 1024


@dataclass
class ConnStats:
    """Counters of one target connection; times in perf_counter_ns, 0 if never."""

    kind: str
    bytes: int = 0
    t_open: int = 0
    t_first: int = 0
    t_last: int = 0
    t_closed: int = 0
    eof: bool = False
    error: str = ""


class Targets:
    """Shared state: the source size and every connection's stats since the last reset."""

    def __init__(self) -> None:
        self.source_bytes = 0
        self.conns: list[ConnStats] = []
        self._payload = bytes(range(256)) * (SOURCE_CHUNK // 256)

    def new_conn(self, kind: str) -> ConnStats:
        st = ConnStats(kind=kind, t_open=time.perf_counter_ns())
        self.conns.append(st)
        return st

    def chunk(self, n: int) -> bytes:
        """Source payload of ``n`` <= SOURCE_CHUNK bytes."""
        return self._payload if n == SOURCE_CHUNK else self._payload[:n]

    def stats(self) -> dict[str, Any]:
        """``{"conns": [ConnStats as dict, ...]}`` for connections since the last reset."""
        return {"conns": [asdict(c) for c in self.conns]}

    def open_counts(self) -> dict[str, Any]:
        """``{"open": {kind: connections not yet closed}}`` since the last reset."""
        counts: dict[str, int] = {}
        for c in self.conns:
            if not c.t_closed:
                counts[c.kind] = counts.get(c.kind, 0) + 1
        return {"open": counts}


class SinkProtocol(asyncio.BufferedProtocol):
    """Reads into one reused buffer and counts; never writes."""

    def __init__(self, targets: Targets) -> None:
        self.st = targets.new_conn("sink")
        self.buf = bytearray(SINK_BUFFER)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        now = time.perf_counter_ns()
        if not self.st.t_first:
            self.st.t_first = now
        self.st.t_last = now
        self.st.bytes += nbytes

    def eof_received(self) -> bool:
        self.st.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.t_closed = time.perf_counter_ns()
        if exc is not None:
            self.st.error = repr(exc)


class SourceProtocol(asyncio.Protocol):
    """Sends the configured number of bytes, honouring flow control, then closes."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.st = targets.new_conn("source")
        self.left = targets.source_bytes
        self.paused = False
        self.transport: asyncio.Transport  # set by connection_made, before any other call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.st.t_first = time.perf_counter_ns()
        self._fill()

    def _fill(self) -> None:
        tr = self.transport
        while self.left > 0 and not self.paused:
            n = min(self.left, SOURCE_CHUNK)
            tr.write(self.targets.chunk(n))
            self.left -= n
            self.st.bytes += n
        if self.left == 0 and not tr.is_closing():
            self.st.t_last = time.perf_counter_ns()
            tr.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.t_closed = time.perf_counter_ns()
        if exc is not None:
            self.st.error = repr(exc)


class EchoProtocol(asyncio.Protocol):
    """Writes back what it reads."""

    def __init__(self, targets: Targets) -> None:
        self.st = targets.new_conn("echo")
        self.transport: asyncio.Transport  # set by connection_made, before any other call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.st.bytes += len(data)
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.st.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.t_closed = time.perf_counter_ns()
        if exc is not None:
            self.st.error = repr(exc)


class WSServerProtocol(asyncio.Protocol):
    """Minimal WebSocket server in front of sink, source or echo behaviour (the ceiling)."""

    def __init__(self, targets: Targets, mode: str) -> None:
        self.targets = targets
        self.mode = mode
        self.st = targets.new_conn("ws_" + mode)
        self.head = b""
        self.upgraded = False
        self.parser = FrameParser(keep_data=(mode == "echo"))
        self.fast_echo = mode == "echo"
        self.pending = b""
        self.left = 0
        self.paused = False
        self.closing = False
        self.transport: asyncio.Transport  # set by connection_made, before any other call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self._handshake(data)
            return
        self._frames(data)

    def _handshake(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 16384:
                self.transport.close()
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "").encode()
        reply = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: " + accept_key(key).decode(),
        ]
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if offered:
            reply.append("Sec-WebSocket-Protocol: " + offered[0])
        self.transport.write(("\r\n".join(reply) + "\r\n\r\n").encode())
        self.upgraded = True
        self.st.t_first = time.perf_counter_ns()
        if self.mode == "source":
            self.left = self.targets.source_bytes
            self._fill()
        if rest:
            self._frames(rest)

    def _frames(self, data: bytes) -> None:
        if self.fast_echo:
            self._echo_fast(data)
            return
        p = self.parser
        before = p.data_bytes
        p.feed(data)
        if self.mode == "sink":
            self.st.bytes += p.data_bytes - before
            self.st.t_last = time.perf_counter_ns()
        elif self.mode == "echo":
            self._echo()
        self._control()

    def _echo_fast(self, data: bytes) -> None:
        """Echo whole data frames straight from the bytes; see the module docstring."""
        buf = self.pending + data if self.pending else data
        n, pos, out, nbytes = len(buf), 0, [], 0
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x0F >= 0x8 or not b0 & 0x80:  # control or fragmented: general parser
                self.fast_echo, self.pending = False, b""
                self._write_echo(out, nbytes)
                self._frames(buf[pos:])
                return
            plen, off = b1 & 0x7F, 2
            if plen == 126:
                if n - pos < 4:
                    break
                plen, off = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif plen == 127:
                if n - pos < 10:
                    break
                plen, off = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            key_len = 4 if b1 & 0x80 else 0
            end = pos + off + key_len + plen
            if end > n:
                break
            payload = buf[end - plen : end]
            key = buf[pos + off : pos + off + key_len]
            if key_len and key != ZERO_MASK:
                payload = unmask(payload, key)
            out.append(bytes((b0, plen)) + payload if plen < 126 else frame(b0 & 0x0F, payload, mask=None))
            nbytes += plen
            pos = end
        self.pending = buf[pos:]
        self._write_echo(out, nbytes)

    def _write_echo(self, out: list[bytes], nbytes: int) -> None:
        if out:
            self.transport.write(b"".join(out))
            self.st.bytes += nbytes

    def _echo(self) -> None:
        if not self.parser.messages:
            return
        out = b"".join(frame(op, payload, mask=None) for op, payload in self.parser.messages)
        self.st.bytes += sum(len(m[1]) for m in self.parser.messages)
        self.parser.messages.clear()
        self.transport.write(out)

    def _control(self) -> None:
        for op, payload in self.parser.control:
            if op == OP_PING:
                self.transport.write(frame(OP_PONG, payload, mask=None))
            elif op == OP_CLOSE:
                self.st.eof = True
                if not self.closing:
                    self.closing = True
                    self.transport.write(frame(OP_CLOSE, payload[:2], mask=None))
                self.transport.close()
        self.parser.control.clear()

    def _fill(self) -> None:
        tr = self.transport
        while self.left > 0 and not self.paused and not self.closing:
            n = min(self.left, WS_SOURCE_FRAME)
            tr.write(frame(OP_BINARY, self.targets.chunk(n), mask=None))
            self.left -= n
            self.st.bytes += n
        if self.left == 0 and not self.closing:
            self.closing = True
            self.st.t_last = time.perf_counter_ns()
            tr.write(frame(OP_CLOSE, b"\x03\xe8", mask=None))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == "source":
            self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        self.st.t_closed = time.perf_counter_ns()
        if exc is not None:
            self.st.error = repr(exc)


def _factories(targets: Targets) -> dict[str, Any]:
    return {
        "sink": lambda: SinkProtocol(targets),
        "source": lambda: SourceProtocol(targets),
        "echo": lambda: EchoProtocol(targets),
        "ws_sink": lambda: WSServerProtocol(targets, "sink"),
        "ws_source": lambda: WSServerProtocol(targets, "source"),
        "ws_echo": lambda: WSServerProtocol(targets, "echo"),
    }


def handle_command(targets: Targets, line: bytes) -> tuple[dict[str, Any], bool]:
    """Apply one control command; return (reply, quit?)."""
    try:
        cmd = json.loads(line)
        name = cmd["cmd"]
    except (ValueError, KeyError, TypeError) as e:
        return {"error": f"bad command {line[:100]!r}: {e}"}, False
    if name == "reset":
        targets.conns.clear()
        return {"ok": True}, False
    if name == "set_source":
        targets.source_bytes = int(cmd["bytes"])
        return {"ok": True}, False
    if name == "stats":
        return targets.stats(), False
    if name == "open_counts":
        return targets.open_counts(), False
    if name == "quit":
        return {"ok": True}, True
    return {"error": f"unknown command {name!r}"}, False


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft descriptor limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def main() -> None:
    nofile = raise_nofile_limit()
    targets = Targets()
    loop = asyncio.get_running_loop()
    servers = {}
    for name, factory in _factories(targets).items():
        servers[name] = await loop.create_server(factory, HOST, 0, backlog=BACKLOG)
    ports = {name: srv.sockets[0].getsockname()[1] for name, srv in servers.items()}
    print(json.dumps({"ready": True, "ports": ports, "nofile": nofile}), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        reply, stop = handle_command(targets, line)
        print(json.dumps(reply), flush=True)
        if stop:
            break
    for srv in servers.values():
        srv.close()


if __name__ == "__main__":
    asyncio.run(main())
