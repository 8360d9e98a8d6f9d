"""The benchmark workloads: each drives the client side and returns raw measurements.

A workload is a :class:`Workload` in :data:`WORKLOADS`: which target it needs, a
``run(ctx)`` function that does the client side and checks completeness, and a
``figures(raw)`` function turning the raw numbers (plus the CPU times the runner
measured around ``run``) into the reported figures.  To add a workload, write those
two functions and append one entry.

``run`` raises :class:`relays.BenchError` when data does not arrive complete; the
runner then reports the failure instead of figures.  The concurrency workloads are
different: connections that fail are part of what they measure, so they count them
(by kind) instead of raising.
"""

from __future__ import annotations

import array
import json
import os
import selectors
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import proctree
import wsclient
from crowd import Crowd, listen_overflows
from relays import BenchError, TargetsProcess
from wsclient import WSConn

MiB = 1 << 20
GiB = 1 << 30
UP_MSG = 64 * 1024
ECHO_MSG = 32
STALL_S = 15.0


@dataclass(frozen=True)
class Params:
    """Sizes of the workloads; the full run and ``--quick`` differ only here."""

    stream_mib: int
    round_trips: int
    pipelined_msgs: int
    window: int
    fanin_conns: int
    fanin_s: float
    rounds: int
    extra_rounds: int  # rounds of the extra variants (recording, base64)
    concurrency: tuple[int, ...]  # connection counts of the concurrency workloads run
    conc_rounds: int
    conc_in_flight: int = 200  # handshakes in progress at once
    conc_handshake_s: float = 10.0  # per connection, connect to 101
    conc_phase_s: float = 60.0  # then stop starting new connections
    conc_give_up: int = 1000  # failed connections after which the rest are not attempted
    conc_echo_s: float = 30.0
    conc_hold_s: float = 1.0
    conc_close_s: float = 20.0
    churn_clients: int = 4  # client processes, each opening one connection after another
    churn_s: float = 5.0


FULL = Params(stream_mib=256, round_trips=20_000, pipelined_msgs=100_000, window=64,
              fanin_conns=50, fanin_s=10.0, rounds=4, extra_rounds=1,
              concurrency=(1000, 9000), conc_rounds=2)
QUICK = Params(stream_mib=32, round_trips=2_000, pipelined_msgs=10_000, window=64,
               fanin_conns=50, fanin_s=2.0, rounds=2, extra_rounds=1,
               concurrency=(1000,), conc_rounds=1, conc_phase_s=30.0, churn_s=2.0)


@dataclass(frozen=True)
class Endpoint:
    """Where the client connects: a relay's listen port, or a direct WebSocket target."""

    host: str
    port: int
    path: str = "/"
    base64_mode: bool = False  # offer only websockify's "base64" subprotocol
    tls: bool = False  # wss://
    offer: tuple[str, ...] = ()  # subprotocols offered (lighttpd answers "binary" regardless)

    def connect(self, keep_data: bool = False, timeout_s: float = 10.0) -> WSConn:
        return wsclient.connect(self.host, self.port, self.path,
                                ("base64",) if self.base64_mode else self.offer, timeout_s=timeout_s,
                                keep_data=keep_data, base64_mode=self.base64_mode, tls=self.tls)

    def data_frame(self, payload: bytes) -> bytes:
        """One client data frame carrying ``payload`` (binary, or base64 text)."""
        return wsclient.data_frame(payload, self.base64_mode)


@dataclass
class Context:
    """What a workload run gets: endpoint, sizes, and the targets helper for checks."""

    endpoint: Endpoint
    params: Params
    targets: TargetsProcess
    direct: bool
    relay_pid: int

    def relay_cpu_ns(self) -> int:
        """CPU ns used so far by the relay's process tree (see proctree)."""
        return proctree.sample(self.relay_pid).cpu_ns

    def target_kind(self, kind: str) -> str:
        """Name under which the targets helper records connections of ``kind``."""
        return "ws_" + kind if self.direct else kind


@dataclass(frozen=True)
class Metric:
    """One reported figure: key in the figures dict, label, and which way is better."""

    key: str
    label: str
    higher_is_better: bool
    ratio: bool = True  # False for counts where wsrouter / websockify means nothing


@dataclass(frozen=True)
class Workload:
    """One workload; ``crowd`` marks the concurrency ones.

    A crowd workload runs the plain variants only (``--record`` would add a file per
    session, 27,000 descriptors at 9,000 connections), on a fresh relay every round
    (so memory per connection is measured from a relay that has never held
    connections), counts failed connections as figures, and runs when its connection
    count is in ``Params.concurrency``.
    """

    name: str
    title: Callable[[Params], str]
    target: str
    run: Callable[[Context], dict[str, Any]]
    figures: Callable[[dict[str, Any]], dict[str, float]]
    metrics: tuple[Metric, ...]
    crowd: int = 0  # connection count of a concurrency workload, else 0

    def enabled(self, params: Params) -> bool:
        return not self.crowd or self.crowd in params.concurrency

    def rounds(self, params: Params, extra_variant: bool) -> int:
        if self.crowd:
            return 0 if extra_variant else params.conc_rounds
        return params.extra_rounds if extra_variant else params.rounds


def percentile(sorted_values: list[int] | array.array[int], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[idx])


def _recv_or_fail(conn: WSConn, what: str) -> None:
    """Receive once; raise BenchError on EOF or a stall longer than STALL_S."""
    try:
        n = conn.recv_some()
    except TimeoutError:
        raise BenchError(f"{what}: stalled, nothing received for {STALL_S:.0f} s") from None
    if n == 0:
        raise BenchError(f"{what}: connection closed early (close code {conn.parser.close_code})")


def _close_note(conn: WSConn, wait_s: float = 5.0) -> list[str]:
    """Close the WebSocket cleanly; return notes about anything unusual."""
    code, eof = conn.close(wait_s=wait_s)
    if code is None and not eof:
        return [f"no Close reply or EOF within {wait_s:.0f} s"]
    return []


# --- upstream: client -> relay -> TCP sink -------------------------------------------

def run_upstream(ctx: Context) -> dict[str, Any]:
    """Send N MiB as 64 KiB binary messages; the sink must receive exactly N MiB."""
    total = ctx.params.stream_mib * MiB
    one = ctx.endpoint.data_frame(bytes(range(256)) * (UP_MSG // 256))
    batch = one * 16
    nmsg = total // UP_MSG
    cpu0 = ctx.relay_cpu_ns()
    t0 = time.perf_counter_ns()
    conn = ctx.endpoint.connect()
    conn.sock.settimeout(STALL_S)
    try:
        for _ in range(nmsg // 16):
            conn.sock.sendall(batch)
        for _ in range(nmsg % 16):
            conn.sock.sendall(one)
    except TimeoutError:
        raise BenchError(f"upstream: send stalled for {STALL_S:.0f} s") from None
    t_sent = time.perf_counter_ns()
    sink = _wait_sink(ctx, lambda c: c["bytes"] >= total)
    window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    notes = _close_note(conn, wait_s=30.0)
    sink = _wait_sink(ctx, lambda c: bool(c["eof"] or c["t_closed"]))
    if sink["bytes"] != total:
        raise BenchError(f"upstream: sink received {sink['bytes']} of {total} bytes")
    if not (sink["eof"] or sink["t_closed"]):
        notes.append("relay did not close the target connection after the client's Close")
    return {"bytes": total, "elapsed_s": (sink["t_last"] - t0) / 1e9, "window_cpu_s": window_cpu_s,
            "client_send_s": (t_sent - t0) / 1e9, "notes": notes}


def _wait_sink(ctx: Context, done: Callable[[dict[str, Any]], bool],
               timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll the targets helper until the one sink connection satisfies ``done``.

    Returns that connection's stats even on timeout (the caller checks them); raises
    BenchError if there is not exactly one sink connection.
    """
    kind = ctx.target_kind("sink")
    deadline = time.monotonic() + timeout_s
    conns: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        conns = [c for c in ctx.targets.conns() if c["kind"] == kind]
        if len(conns) == 1 and done(conns[0]):
            break
        time.sleep(0.01)
    if len(conns) != 1:
        raise BenchError(f"upstream: expected 1 sink connection, saw {len(conns)}")
    return conns[0]


def figures_stream(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "mib_s": raw["bytes"] / MiB / raw["elapsed_s"],
        "cpu_s_gib": raw["window_cpu_s"] / (raw["bytes"] / GiB),
    }


STREAM_METRICS = (
    Metric("mib_s", "throughput, MiB/s", True),
    Metric("cpu_s_gib", "relay CPU-s per GiB", False),
)


# --- downstream: TCP source -> relay -> client ---------------------------------------

def run_downstream(ctx: Context) -> dict[str, Any]:
    """Receive N MiB sent by the source; the client must count exactly N MiB of payload."""
    total = ctx.params.stream_mib * MiB
    ctx.targets.set_source(total)
    cpu0 = ctx.relay_cpu_ns()
    t0 = time.perf_counter_ns()
    conn = ctx.endpoint.connect()
    conn.sock.settimeout(STALL_S)
    p = conn.parser
    deadline = time.monotonic() + 600
    while p.data_bytes < total and p.close_code is None and time.monotonic() < deadline:
        try:
            if conn.recv_some() == 0:
                break
        except TimeoutError:
            raise BenchError(f"downstream: stalled at {p.data_bytes} of {total} bytes") from None
    t_last = time.perf_counter_ns()
    window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    if p.data_bytes != total:
        conn.sock.close()
        raise BenchError(f"downstream: client received {p.data_bytes} of {total} bytes "
                         f"(close code {p.close_code})")
    notes = []
    if p.close_code is None:
        eof = conn.drain_until_close(5.0)
        if p.close_code is None:
            notes.append("relay closed TCP without a Close frame after the target closed" if eof
                         else "relay did not close the WebSocket within 5 s of the target closing")
    conn.close(wait_s=2.0)
    return {"bytes": total, "elapsed_s": (t_last - t0) / 1e9, "window_cpu_s": window_cpu_s,
            "frames": p.data_frames,
            "notes": notes}


# --- round trips: one 32-byte message at a time through the TCP echo ------------------

def run_round_trips(ctx: Context) -> dict[str, Any]:
    """K sequential echoes of a 32-byte message; checks the echoed bytes are identical."""
    k = ctx.params.round_trips
    payload = bytes(range(65, 65 + ECHO_MSG))
    msg = ctx.endpoint.data_frame(payload)
    conn = ctx.endpoint.connect(keep_data=True)
    conn.sock.settimeout(STALL_S)
    p = conn.parser
    lat = array.array("q", bytes(8 * k))
    clock = time.perf_counter_ns
    cpu0 = ctx.relay_cpu_ns()
    t0 = clock()
    for i in range(k):
        want = (i + 1) * ECHO_MSG
        t = clock()
        conn.sock.sendall(msg)
        while p.data_bytes < want:
            _recv_or_fail(conn, f"round trip {i + 1} of {k}")
        lat[i] = clock() - t
    elapsed = (clock() - t0) / 1e9
    window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    echoed = b"".join(m[1] for m in p.messages)
    if echoed != payload * k:
        raise BenchError(f"round trips: echoed data differs from what was sent "
                         f"({len(echoed)} bytes back for {k * ECHO_MSG} sent)")
    notes = _close_note(conn)
    ordered = sorted(lat)
    return {"round_trips": k, "elapsed_s": elapsed, "window_cpu_s": window_cpu_s,
            "p50_ns": percentile(ordered, 50),
            "p99_ns": percentile(ordered, 99), "max_ns": float(ordered[-1]), "notes": notes}


def figures_round_trips(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "p50_us": raw["p50_ns"] / 1e3,
        "p99_us": raw["p99_ns"] / 1e3,
        "cpu_us_rt": raw["window_cpu_s"] * 1e6 / raw["round_trips"],
    }


# --- pipelined: 32-byte messages with a fixed number in flight ------------------------

def run_pipelined(ctx: Context) -> dict[str, Any]:
    """M echoes with ``window`` messages in flight; counts echoed bytes exactly."""
    m, window = ctx.params.pipelined_msgs, ctx.params.window
    one = ctx.endpoint.data_frame(bytes(range(65, 65 + ECHO_MSG)))
    burst = memoryview(one * window)
    conn = ctx.endpoint.connect()
    conn.sock.settimeout(STALL_S)
    p = conn.parser
    cpu0 = ctx.relay_cpu_ns()
    t0 = time.perf_counter_ns()
    sent = min(window, m)
    conn.sock.sendall(burst[: sent * len(one)])
    while p.data_bytes < m * ECHO_MSG:
        _recv_or_fail(conn, f"pipelined, {p.data_bytes // ECHO_MSG} of {m} echoed")
        more = min(m, p.data_bytes // ECHO_MSG + window) - sent
        if more > 0:
            conn.sock.sendall(burst[: more * len(one)])
            sent += more
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    if p.data_bytes != m * ECHO_MSG:
        raise BenchError(f"pipelined: {p.data_bytes} bytes echoed for {m * ECHO_MSG} sent")
    notes = _close_note(conn)
    return {"messages": m, "elapsed_s": elapsed, "window_cpu_s": window_cpu_s,
            "frames_back": p.data_frames, "notes": notes}


def figures_pipelined(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "msg_s": raw["messages"] / raw["elapsed_s"],
        "cpu_us_msg": raw["window_cpu_s"] * 1e6 / raw["messages"],
    }


# --- fan-in: many connections echoing at once -----------------------------------------

@dataclass
class _FanConn:
    conn: WSConn
    sent: int = 0
    t_sent: int = 0


def run_fanin(ctx: Context) -> dict[str, Any]:
    """C connections each keep one 32-byte echo in flight for S seconds."""
    n, dur = ctx.params.fanin_conns, ctx.params.fanin_s
    msg = ctx.endpoint.data_frame(bytes(range(65, 65 + ECHO_MSG)))
    conns = [_FanConn(ctx.endpoint.connect()) for _ in range(n)]
    sel = selectors.DefaultSelector()
    lat = array.array("q")
    try:
        for fc in conns:
            fc.conn.sock.setblocking(False)
            sel.register(fc.conn.sock, selectors.EVENT_READ, fc)
        cpu0 = ctx.relay_cpu_ns()
        t0 = time.perf_counter_ns()
        t_end = t0 + int(dur * 1e9)
        for fc in conns:
            _fan_send(fc, msg, t0)
        done_in_window = _fan_loop(sel, msg, lat, t_end)
        _fan_drain(sel, conns)
        window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    finally:
        sel.close()
    notes = _close_all(conns)
    for i, fc in enumerate(conns):
        got = fc.conn.parser.data_bytes
        if got != fc.sent * ECHO_MSG:
            raise BenchError(f"fan-in: connection {i} got {got} bytes back for {fc.sent * ECHO_MSG} sent")
    ordered = sorted(lat)
    return {"connections": n, "duration_s": dur, "window_cpu_s": window_cpu_s,
            "messages_in_window": done_in_window, "messages_total": sum(fc.sent for fc in conns),
            "p50_ns": percentile(ordered, 50), "p99_ns": percentile(ordered, 99), "notes": notes}


def _fan_send(fc: _FanConn, msg: bytes, now: int) -> None:
    if fc.conn.sock.send(msg) != len(msg):
        raise BenchError(f"fan-in: partial send of a {len(msg)}-byte frame")
    fc.sent += 1
    fc.t_sent = now


def _fan_loop(sel: selectors.BaseSelector, msg: bytes, lat: array.array[int], t_end: int) -> int:
    """Until t_end: on each completed echo record its latency and send the next."""
    clock = time.perf_counter_ns
    done = 0
    last_progress = clock()
    while (now := clock()) < t_end:
        events = sel.select(timeout=0.5)
        if not events and now - last_progress > STALL_S * 1e9:
            raise BenchError(f"fan-in: stalled, no echo for {STALL_S:.0f} s")
        for key, _ in events:
            fc: _FanConn = key.data
            if fc.conn.recv_some() == 0:
                raise BenchError("fan-in: relay closed a connection")
            if fc.conn.parser.data_bytes >= fc.sent * ECHO_MSG:
                now = clock()
                lat.append(now - fc.t_sent)
                done += 1
                last_progress = now
                if now < t_end:
                    _fan_send(fc, msg, now)
    return done


def _fan_drain(sel: selectors.BaseSelector, conns: list[_FanConn], wait_s: float = STALL_S) -> None:
    """Receive the echoes still in flight when the window closed."""
    deadline = time.monotonic() + wait_s
    pending = {id(fc) for fc in conns if fc.conn.parser.data_bytes < fc.sent * ECHO_MSG}
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            fc = key.data
            if fc.conn.recv_some() == 0:
                raise BenchError("fan-in: relay closed a connection while draining")
            if fc.conn.parser.data_bytes >= fc.sent * ECHO_MSG:
                pending.discard(id(fc))


def _close_all(conns: list[_FanConn], wait_s: float = 5.0) -> list[str]:
    """Close every connection; the waits overlap so the total stays under ``wait_s``."""
    close = wsclient.frame(wsclient.OP_CLOSE, wsclient.close_payload(1000))
    for fc in conns:
        try:
            fc.conn.sock.setblocking(True)
            fc.conn.sock.sendall(close)
        except OSError:
            pass
    deadline = time.monotonic() + wait_s
    unanswered = 0
    for fc in conns:
        left = max(0.0, deadline - time.monotonic())
        if fc.conn.parser.close_code is None and not fc.conn.drain_until_close(left):
            unanswered += fc.conn.parser.close_code is None
        fc.conn.sock.close()
    return [f"{unanswered} of {len(conns)} connections got no Close reply"] if unanswered else []


def figures_fanin(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "msg_s": raw["messages_in_window"] / raw["duration_s"],
        "p99_us": raw["p99_ns"] / 1e3,
        "cpu_us_msg": raw["window_cpu_s"] * 1e6 / raw["messages_total"],
    }


# --- concurrency: N connections held at once, one echo each ----------------------------

def run_concurrency(n: int) -> Callable[[Context], dict[str, Any]]:
    """The run function for N connections: open, echo once each, hold, sample, close.

    Memory is the relay tree's VmRSS (and Pss) while all are held, minus the same
    before the first connection; CPU is the relay's from before the first connect to
    the last echo.  The targets helper is asked how many echo connections it holds at
    that moment, to check that each relayed connection has its own.
    """
    def run(ctx: Context) -> dict[str, Any]:
        p = ctx.params
        ep = ctx.endpoint
        crowd = Crowd(ep.host, ep.port, ep.path, in_flight=p.conc_in_flight,
                      handshake_s=p.conc_handshake_s, give_up=p.conc_give_up)
        mem0 = proctree.tree_memory(ctx.relay_pid)
        try:
            cpu0 = ctx.relay_cpu_ns()
            overflows0 = listen_overflows()
            crowd.open_all(n, p.conc_phase_s)
            overflows = listen_overflows() - overflows0
            crowd.echo_all(p.conc_echo_s)
            cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
            held = crowd.hold(p.conc_hold_s)
            mem1 = proctree.tree_memory(ctx.relay_pid)
            target_open = ctx.targets.open_counts().get(ctx.target_kind("echo"), 0)
            crowd.close_all(p.conc_close_s)
        except BaseException:
            crowd.abort()
            raise
        r = crowd.result
        notes = []  # failed connections are figures, reported by kind from failure_kinds
        if target_open != held and not ctx.direct:
            notes.append(f"echo target held {target_open} connections for {held} client connections")
        if r.close_unanswered:
            notes.append(f"{r.close_unanswered} of {held} connections got no Close reply or EOF "
                         f"within {p.conc_close_s:.0f} s")
        return {"connections": n, "held": held, "direct": ctx.direct, "attempted": r.attempted, "opened": r.opened,
                "echoed": r.echoed, "failure_kinds": dict(r.failures),
                "open_s": r.open_s, "last_open_s": r.last_open_s, "echo_s": r.echo_s,
                "window_cpu_s": cpu_s, "rss0_kib": mem0.rss_kib, "rss1_kib": mem1.rss_kib,
                "pss0_kib": mem0.pss_kib, "pss1_kib": mem1.pss_kib,
                "processes_held": mem1.processes, "target_open": target_open,
                "close_unanswered": r.close_unanswered, "listen_overflows": overflows,
                "notes": notes}
    return run


def figures_concurrency(raw: dict[str, Any]) -> dict[str, float]:
    """Figures of one concurrency run; no memory figures for direct (see below)."""
    held = raw["held"]
    # The direct server lives in the long-running targets helper, which reuses memory
    # freed by earlier rounds, so its growth per connection means little.
    per = (lambda kib: kib / held) if held and not raw["direct"] else (lambda kib: float("nan"))
    return {
        "open_s": raw["open_s"],
        "rss_kib_conn": per(raw["rss1_kib"] - raw["rss0_kib"]),
        "pss_kib_conn": per(raw["pss1_kib"] - raw["pss0_kib"]),
        "failures": float(raw["connections"] - held),
        "processes": float(raw["processes_held"]),
        "listen_overflows": float(raw["listen_overflows"]),
        "cpu_us_conn": raw["window_cpu_s"] * 1e6 / raw["echoed"] if raw["echoed"] else float("nan"),
    }


CONCURRENCY_METRICS = (
    Metric("open_s", "time to open all (or give up), s", False),
    Metric("failures", "failed connections", False, ratio=False),
    Metric("rss_kib_conn", "relay RSS per connection, KiB", False),
    Metric("pss_kib_conn", "relay PSS per connection, KiB", False),
    Metric("processes", "relay processes while held", False, ratio=False),
    Metric("listen_overflows", "listen queue overflows while opening (system-wide)", False,
           ratio=False),
    Metric("cpu_us_conn", "relay CPU-µs per connection (open + 1 echo)", False),
)


# --- churn: open, one echo, close, as fast as the relay allows -------------------------

CHURN_GIVE_UP = 200  # failed connections after which a churn client stops


def _churn_kind(e: BaseException) -> str:
    if isinstance(e, wsclient.HandshakeError):
        text = str(e)
        return text.split(":", maxsplit=1)[0][:40] if text else "handshake"
    if isinstance(e, BenchError):
        return str(e)[:60]
    return type(e).__name__


def _churn_client(ep: Endpoint, t_start: float, t_end: float) -> dict[str, Any]:
    """One client's loop: connection after connection until ``t_end`` (perf_counter s)."""
    payload = bytes(range(65, 65 + ECHO_MSG))
    msg = ep.data_frame(payload)
    lat: list[int] = []
    fails: dict[str, int] = {}
    unanswered = 0
    cpu0 = time.process_time()
    while time.perf_counter() < t_start:
        time.sleep(0.001)
    clock = time.perf_counter_ns
    while time.perf_counter() < t_end and sum(fails.values()) < CHURN_GIVE_UP:
        t = clock()
        try:
            conn = ep.connect(keep_data=True, timeout_s=STALL_S)
        except (OSError, wsclient.HandshakeError) as e:
            fails[_churn_kind(e)] = fails.get(_churn_kind(e), 0) + 1
            continue
        try:
            conn.sock.settimeout(STALL_S)
            conn.sock.sendall(msg)
            while conn.parser.data_bytes < ECHO_MSG:
                if conn.recv_some() == 0:
                    raise BenchError("closed before echo")
            if conn.parser.messages[0][1] != payload:
                raise BenchError("wrong echo")
            code, eof = conn.close(wait_s=5.0)
            unanswered += code is None and not eof
            lat.append(clock() - t)
        except (OSError, BenchError, ValueError) as e:
            conn.sock.close()
            fails[_churn_kind(e)] = fails.get(_churn_kind(e), 0) + 1
    return {"done": len(lat), "t_last": time.perf_counter(), "fails": fails, "lat": lat,
            "unanswered": unanswered, "cpu_s": time.process_time() - cpu0}


def run_churn(ctx: Context) -> dict[str, Any]:
    """C client processes each open a connection, echo one 32-byte message, close, repeat, for S s.

    The clients are forked (the load client's Python, not the relay, must not be the
    limit); they start together at an agreed instant and report over a pipe.  Relay
    CPU is read before the fork and after the last client reported (the relay is
    idle before and after), so it covers every connection's open, echo and close.
    """
    p = ctx.params
    cpu0 = ctx.relay_cpu_ns()
    t_start = time.perf_counter() + 0.3
    t_end = t_start + p.churn_s
    children: list[tuple[int, int]] = []
    for _ in range(p.churn_clients):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run, report, exit without the parent's cleanup
            code = 0
            try:
                os.close(rfd)
                out = json.dumps(_churn_client(ctx.endpoint, t_start, t_end)).encode()
                with os.fdopen(wfd, "wb") as f:
                    f.write(out)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        children.append((pid, rfd))
    reports = []
    for pid, rfd in children:
        with os.fdopen(rfd, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        if not data:
            raise BenchError(f"churn: client process {pid} failed")
        reports.append(json.loads(data))
    window_cpu_s = (ctx.relay_cpu_ns() - cpu0) / 1e9
    done = sum(r["done"] for r in reports)
    fails: dict[str, int] = {}
    for r in reports:
        for k, n in r["fails"].items():
            fails[k] = fails.get(k, 0) + n
    if not done:
        raise BenchError(f"churn: no connection completed ({fails})")
    notes = []
    if fails:
        notes.append("churn: failed connections: " + ", ".join(f"{n} {k}" for k, n in fails.items()))
    unanswered = sum(r["unanswered"] for r in reports)
    if unanswered:
        notes.append(f"churn: {unanswered} of {done} connections got no Close reply or EOF")
    lat = sorted(x for r in reports for x in r["lat"])
    return {"connections": done, "failed": sum(fails.values()), "failure_kinds_churn": fails,
            "elapsed_s": max(r["t_last"] for r in reports) - t_start, "window_cpu_s": window_cpu_s,
            "p50_ns": percentile(lat, 50), "p99_ns": percentile(lat, 99),
            "client_children_cpu_s": sum(r["cpu_s"] for r in reports), "notes": notes}


def figures_churn(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "conn_s": raw["connections"] / raw["elapsed_s"],
        "p50_ms": raw["p50_ns"] / 1e6,
        "cpu_ms_conn": raw["window_cpu_s"] * 1e3 / raw["connections"],
        "failures": float(raw["failed"]),
    }


def _concurrency(n: int) -> Workload:
    return Workload(f"concurrent_{n}", lambda p: f"concurrency, {n:,} connections held, one echo each",
                    "echo", run_concurrency(n), figures_concurrency, CONCURRENCY_METRICS, crowd=n)


WORKLOADS: list[Workload] = [
    Workload("upstream", lambda p: f"upstream {p.stream_mib} MiB as 64 KiB msgs", "sink",
             run_upstream, figures_stream, STREAM_METRICS),
    Workload("downstream", lambda p: f"downstream {p.stream_mib} MiB", "source",
             run_downstream, figures_stream, STREAM_METRICS),
    Workload("round_trips", lambda p: f"round trips, {p.round_trips} x 32 B sequential", "echo",
             run_round_trips, figures_round_trips,
             (Metric("p50_us", "latency p50, µs", False),
              Metric("p99_us", "latency p99, µs", False),
              Metric("cpu_us_rt", "relay CPU-µs per round trip", False))),
    Workload("pipelined", lambda p: f"pipelined, {p.pipelined_msgs} x 32 B, {p.window} in flight",
             "echo", run_pipelined, figures_pipelined,
             (Metric("msg_s", "messages/s", True),
              Metric("cpu_us_msg", "relay CPU-µs per message", False))),
    _concurrency(1000),
    _concurrency(9000),
    Workload("fanin", lambda p: f"fan-in, {p.fanin_conns} conns echoing {p.fanin_s:g} s", "echo",
             run_fanin, figures_fanin,
             (Metric("msg_s", "messages/s", True),
              Metric("p99_us", "latency p99, µs", False),
              Metric("cpu_us_msg", "relay CPU-µs per message", False))),
    Workload("churn", lambda p: f"churn, {p.churn_clients} clients open/echo/close {p.churn_s:g} s",
             "echo", run_churn, figures_churn,
             (Metric("conn_s", "connections/s", True),
              Metric("p50_ms", "open + echo + close p50, ms", False),
              Metric("cpu_ms_conn", "relay CPU-ms per connection", False),
              Metric("failures", "failed connections", False, ratio=False))),
]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
