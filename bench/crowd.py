"""Many WebSocket connections held at once by one client process (the concurrency workload).

One ``selectors`` loop (epoll on Linux) drives every connection, non-blocking, through
four phases that the caller runs one after the other, so it can sample the relay
between them:

1. :meth:`Crowd.open_all` — TCP connect, upgrade request, ``101``.  At most
   ``in_flight`` connections are between connect and ``101`` at any time (a burst of
   9,000 SYNs would only measure the listen backlog).  Each has ``handshake_s`` to
   finish; the phase as a whole stops starting new ones (the rest are "not
   attempted") after ``phase_s``, after ``give_up`` failed connections (a relay that
   has failed 1,000 would fail the rest too, only slower: each may wait out its
   handshake timeout), or when the machine runs low on memory (a forking relay at
   9,000 connections could otherwise exhaust it).
2. :meth:`Crowd.echo_all` — one 32-byte binary message on every open connection, then
   wait (bounded) until each is echoed back byte for byte.
3. :meth:`Crowd.hold` — keep everything open for a moment and notice any connection the
   relay drops meanwhile.
4. :meth:`Crowd.close_all` — a Close frame on each, wait (bounded) for the Close reply
   or EOF, close every socket.

Every connection that does not make it to the end of phase 3 is a failure, counted by
kind: ``refused`` (nothing accepting), ``reset`` (connection reset or broken pipe),
``HTTP <status>`` (the upgrade refused, e.g. 503), ``closed during handshake``,
``handshake timeout``, ``closed before echo``, ``no echo (timeout)``, ``wrong echo``,
``dropped while held``, ``client: <errno>`` (the client's own limits, e.g. no free
ephemeral port or out of descriptors), and ``not attempted (...)``.

Frames use a zero mask key like ``wsclient``; the handshake is checked the same way
(status 101 and the ``Sec-WebSocket-Accept`` value).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import os
import resource
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from wsclient import OP_BINARY, OP_CLOSE, FrameParser, accept_key, close_payload, frame

ECHO_PAYLOAD = bytes(range(97, 97 + 32))
MAX_HEAD = 16384
RECV_SIZE = 65536
MEMORY_CHECK_S = 0.5
MIN_AVAILABLE_FRACTION = 0.10

# Connection states.
CONNECTING, HANDSHAKE, OPEN, ECHO_WAIT, ECHOED, CLOSING, DONE = range(7)

ERRNO_KINDS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "TCP timeout",
    errno.EADDRNOTAVAIL: "client: no free ephemeral port",
    errno.EMFILE: "client: out of descriptors",
    errno.ENFILE: "client: system out of descriptors",
}


def error_kind(err: int) -> str:
    """Failure kind for an errno seen while connecting or talking."""
    return ERRNO_KINDS.get(err, f"error {errno.errorcode.get(err, err)}")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft descriptor limit to the hard one; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ephemeral_ports() -> tuple[int, int]:
    """The loopback ephemeral port range, ``(low, high)``, from /proc; (0, -1) if unknown."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 0, -1


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full.

    ``TcpExt: ListenOverflows`` in /proc/net/netstat: system-wide (per network
    namespace), so it also counts other programs' overflows; -1 if unreadable.  An
    overflow is not a failure: the client's SYN or final ACK is dropped and retried
    about a second later, which shows up as time to open.
    """
    try:
        with open("/proc/net/netstat", encoding="ascii") as f:
            lines = [line.split() for line in f]
    except OSError:
        return -1
    for names, values in itertools.pairwise(lines):
        if names and names[0] == "TcpExt:" and values and values[0] == "TcpExt:" and names != values:
            table = dict(zip(names[1:], values[1:], strict=False))
            if "ListenOverflows" in table:
                return int(table["ListenOverflows"])
    return -1


def memory_low() -> bool:
    """True when MemAvailable is under MIN_AVAILABLE_FRACTION of MemTotal."""
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    info[name] = int(rest.split()[0])
    except (OSError, ValueError):
        return False
    if len(info) < 2:
        return False
    return info["MemAvailable"] < MIN_AVAILABLE_FRACTION * info["MemTotal"]


class _Conn:
    """One client connection's socket, state and deadline."""

    __slots__ = ("deadline", "head", "key", "parser", "sock", "state")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.deadline = deadline
        self.key = b""
        self.head = b""
        self.parser = FrameParser(keep_data=True)


@dataclass
class CrowdResult:
    """What happened to the N connections; times in seconds."""

    attempted: int = 0
    opened: int = 0
    echoed: int = 0
    held: int = 0
    open_s: float = 0.0
    last_open_s: float = 0.0
    echo_s: float = 0.0
    close_unanswered: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def failure_text(self) -> str:
        """E.g. ``"412 refused, 3 handshake timeout"``, most frequent first."""
        return ", ".join(f"{n} {kind}" for kind, n in self.failures.most_common())


class Crowd:
    """N connections to ``host:port`` driven by one selector; see the module docstring."""

    def __init__(self, host: str, port: int, path: str = "/", in_flight: int = 200,
                 handshake_s: float = 10.0, give_up: int = 1000) -> None:
        self.host, self.port, self.path = host, port, path
        self.in_flight = in_flight
        self.handshake_s = handshake_s
        self.give_up = give_up
        self.sel = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self.result = CrowdResult()
        self._echo_frame = frame(OP_BINARY, ECHO_PAYLOAD)
        self._buf = bytearray(RECV_SIZE)
        self._t0 = time.monotonic()

    # --- bookkeeping ---------------------------------------------------------------

    def _fail(self, c: _Conn, kind: str) -> None:
        """Count a failure and release the connection's socket now (descriptors are scarce)."""
        self.result.failures[kind] += 1
        self._drop(c)

    def _drop(self, c: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
        c.state = DONE

    def _live(self, state: int) -> list[_Conn]:
        return [c for c in self.conns if c.state == state]

    def _recv(self, c: _Conn) -> bytes | None:
        """Read what is there; b"" on EOF, None if nothing yet; failure kinds raise OSError."""
        try:
            n = c.sock.recv_into(self._buf)
        except BlockingIOError:
            return None
        return bytes(self._buf[:n])

    # --- phase 1: open ---------------------------------------------------------------

    def _start_one(self) -> _Conn | None:
        """Begin one non-blocking connect; None (and a counted failure) if it fails at once."""
        self.result.attempted += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            self.result.failures[error_kind(e.errno or 0)] += 1
            return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(sock, time.monotonic() + self.handshake_s)
        self.conns.append(c)
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(c, error_kind(err))
            return None
        self.sel.register(sock, selectors.EVENT_WRITE, c)
        return c

    def _connected(self, c: _Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, error_kind(err))
            return
        c.key = base64.b64encode(os.urandom(16))
        request = (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {c.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        try:
            sent = c.sock.send(request)
        except OSError as e:
            self._fail(c, error_kind(e.errno or 0))
            return
        if sent != len(request):
            self._fail(c, "client: short send of the upgrade request")
            return
        c.state = HANDSHAKE
        self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def _handshake_data(self, c: _Conn, data: bytes) -> None:
        if not data:
            self._fail(c, "closed during handshake")
            return
        c.head += data
        if b"\r\n\r\n" not in c.head:
            if len(c.head) > MAX_HEAD:
                self._fail(c, "oversized response head")
            return
        head, _, rest = c.head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = parts[1] if len(parts) > 1 else "?"
        if status != "101":
            self._fail(c, f"HTTP {status}")
            return
        accept = b""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-accept":
                accept = value.strip().encode()
        if accept != accept_key(c.key):
            self._fail(c, "bad Sec-WebSocket-Accept")
            return
        c.head = b""
        c.state = OPEN
        self.result.opened += 1
        self.result.last_open_s = time.monotonic() - self._t0
        if rest:
            c.parser.feed(rest)

    def open_all(self, n: int, phase_s: float) -> None:
        """Open ``n`` connections, at most ``in_flight`` handshakes at a time (phase 1)."""
        t0 = self._t0 = time.monotonic()
        stop_reason = ""
        pending: set[_Conn] = set()
        next_memory_check = t0
        while True:
            now = time.monotonic()
            if not stop_reason and now - t0 > phase_s:
                stop_reason = f"not attempted (phase cap {phase_s:.0f} s)"
            if not stop_reason and sum(self.result.failures.values()) >= self.give_up:
                stop_reason = f"not attempted (gave up after {self.give_up:,} failures)"
            if not stop_reason and now >= next_memory_check:
                next_memory_check = now + MEMORY_CHECK_S
                if memory_low():
                    stop_reason = "not attempted (machine low on memory)"
            while not stop_reason and len(pending) < self.in_flight and self.result.attempted < n:
                c = self._start_one()
                if c is not None:
                    pending.add(c)
            if not pending and (stop_reason or self.result.attempted >= n):
                break
            for key, _ in self.sel.select(timeout=0.05):
                self._open_event(key.data)
            now = time.monotonic()
            for c in list(pending):
                if c.state == HANDSHAKE or c.state == CONNECTING:
                    if now > c.deadline:
                        self._fail(c, "handshake timeout")
                        pending.discard(c)
                else:
                    pending.discard(c)
        if self.result.attempted < n:
            self.result.failures[stop_reason] += n - self.result.attempted
        self.result.open_s = time.monotonic() - t0

    def _open_event(self, c: _Conn) -> None:
        try:
            if c.state == CONNECTING:
                self._connected(c)
            elif c.state == HANDSHAKE:
                data = self._recv(c)
                if data is not None:
                    self._handshake_data(c, data)
            elif c.state == OPEN:
                self._early_data(c)
        except OSError as e:
            self._fail(c, error_kind(e.errno or 0))

    def _early_data(self, c: _Conn) -> None:
        """Data on an open connection before its echo: a Close frame or EOF from the relay."""
        data = self._recv(c)
        if data is None:
            return
        if not data:
            self._fail(c, "closed before echo")
            return
        c.parser.feed(data)
        if c.parser.close_code is not None:
            self._fail(c, f"closed before echo (code {c.parser.close_code})")

    # --- phase 2: one echo each --------------------------------------------------------

    def echo_all(self, timeout_s: float) -> None:
        """Send one message on every open connection and wait until each is echoed (phase 2)."""
        t0 = time.monotonic()
        waiting = 0
        for c in self._live(OPEN):
            try:
                if c.sock.send(self._echo_frame) != len(self._echo_frame):
                    self._fail(c, "client: short send of the echo message")
                    continue
            except OSError as e:
                self._fail(c, error_kind(e.errno or 0))
                continue
            c.state = ECHO_WAIT
            waiting += 1
        deadline = t0 + timeout_s
        while waiting and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=0.1):
                c = key.data
                if c.state != ECHO_WAIT:
                    continue
                try:
                    self._echo_data(c)
                except (OSError, ValueError) as e:
                    self._fail(c, error_kind(e.errno or 0) if isinstance(e, OSError) else "wrong echo")
                if c.state != ECHO_WAIT:
                    waiting -= 1
        for c in self._live(ECHO_WAIT):
            self._fail(c, "no echo (timeout)")
        self.result.echo_s = time.monotonic() - t0

    def _echo_data(self, c: _Conn) -> None:
        data = self._recv(c)
        if data is None:
            return
        if not data:
            self._fail(c, "closed before echo")
            return
        p = c.parser
        p.feed(data)
        if p.close_code is not None:
            self._fail(c, f"closed before echo (code {p.close_code})")
        elif p.data_bytes >= len(ECHO_PAYLOAD):
            if b"".join(m[1] for m in p.messages) != ECHO_PAYLOAD:
                self._fail(c, "wrong echo")
                return
            p.messages.clear()
            c.state = ECHOED
            self.result.echoed += 1

    # --- phase 3: hold -----------------------------------------------------------------

    def hold(self, seconds: float) -> int:
        """Keep every echoed connection open for ``seconds``; count the ones still up (phase 3)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in self.sel.select(timeout=min(left, 0.1)):
                c = key.data
                if c.state != ECHOED:
                    continue
                try:
                    data = self._recv(c)
                except OSError as e:
                    self._fail(c, f"dropped while held ({error_kind(e.errno or 0)})")
                    continue
                if data == b"" or (data and self._feed_close(c, data)):
                    self._fail(c, "dropped while held")
        self.result.held = len(self._live(ECHOED))
        return self.result.held

    @staticmethod
    def _feed_close(c: _Conn, data: bytes) -> bool:
        c.parser.feed(data)
        return c.parser.close_code is not None

    # --- phase 4: close ----------------------------------------------------------------

    def close_all(self, wait_s: float) -> None:
        """Close every connection still up: Close frame, bounded wait for the reply (phase 4)."""
        close = frame(OP_CLOSE, close_payload(1000))
        closing = 0
        for c in self.conns:
            if c.state == DONE:
                continue
            try:
                c.sock.send(close)
            except OSError:
                self._drop(c)
                continue
            c.state = CLOSING
            closing += 1
        deadline = time.monotonic() + wait_s
        while closing and (left := deadline - time.monotonic()) > 0:
            for key, _ in self.sel.select(timeout=min(left, 0.1)):
                c = key.data
                try:
                    data = self._recv(c)
                except OSError:
                    data = b""
                if data is None:
                    continue
                if data:
                    c.parser.feed(data)
                if not data or c.parser.close_code is not None:
                    self._drop(c)
                    closing -= 1
        for c in self._live(CLOSING):
            self.result.close_unanswered += 1
            self._drop(c)
        self.sel.close()

    def abort(self) -> None:
        """Close every socket at once, without a closing handshake (error paths)."""
        for c in self.conns:
            if c.state != DONE:
                self._drop(c)
        self.sel.close()
