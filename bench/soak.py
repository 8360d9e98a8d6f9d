"""
Soak: many concurrent sessions with random message sizes, slow readers and
abrupt disconnects, through several target kinds, with reloads, for a bounded
time; every delivered byte is checked, and the router's descriptors, child
processes and memory must come back to their baseline afterwards.

Usage (from the repository root; ``make soak`` runs the long form)::

    .venv/bin/python bench/soak.py [--seconds 300] [--connections 2000] [--json FILE]

The router runs as its own process with a config file of four routes:
``/echo`` (``echo:``, every message back whole), ``/tcp`` (a TCP echo server,
bytes back in order), ``/udp`` (a UDP echo server, one datagram per message,
one in flight) and ``/exec`` (``exec:cat`` per session, a few at a time).
Every ``--reload-every`` seconds the file gains or loses a fifth route and the
router gets SIGHUP.  Each of ``--connections`` client slots opens a session,
runs a random script (a number of messages of random sizes; some slots read
slowly; some drop the connection without a close frame), and starts over
until the time is up.

What counts as lost: on a session that ended cleanly, any byte sent but not
echoed, or echoed changed.  A session the client aborted on purpose is not
checked past the abort.  The exit status is 1 if anything was lost or
corrupted, or if descriptors or child processes did not return to the
baseline within the settle time; memory is reported against the baseline
and fails only past ``--rss-slack`` (Python keeps freed memory in its pools,
so RSS settles near, not at, its baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import proctree
from relays import HOST, REPO_DIR, PortPool, TargetsProcess, child_env, port_open, stop_process, tail

ROUTES = ["/echo=echo:", "/tcp={host}:{tcp}", "/udp=udp://{host}:{udp}", "/exec[framing=binary;max-forks=64]=exec:cat"]
#: Weights of the routes a session picks (exec costs a process per session).
WEIGHTS = {"/echo": 45, "/tcp": 40, "/udp": 10, "/exec": 5}
MAX_MESSAGE = 64 * 1024
START_TIMEOUT_S = 30.0


@dataclass
class Tally:
    """What the clients did and saw, summed over every session."""

    sessions: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_checked: int = 0
    bytes_lost: int = 0
    corrupt: int = 0
    aborts: int = 0
    slow_readers: int = 0
    failed_handshakes: int = 0
    refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    peak_open: int = 0
    open_now: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def router_config(path: Path, tcp_port: int, udp_port: int, listen: int, spare: bool) -> None:
    """Write the router's TOML file (with the fifth route when ``spare``)."""
    routes = [r.format(host=HOST, tcp=tcp_port, udp=udp_port) for r in ROUTES]
    if spare:
        routes.append("/spare=echo:")
    path.write_text(
        f'listen = ["tcp:{listen}:interface={HOST}:backlog=1024"]\n'
        f"routes = {json.dumps(routes)}\n"
        "[limits]\n"
        "max_connections = 100000\nmax_connections_per_client = 100000\n"
        "max_handshakes_per_client = 100000000\n"
        f"max_message_size = {MAX_MESSAGE * 2}\n"
    )


def sizes(rng: random.Random, count: int) -> list[int]:
    """Message sizes spread over 0 B to 64 KiB, small ones most often."""
    return [min(MAX_MESSAGE, int(2 ** rng.uniform(0, 16.01)) - 1) for _ in range(count)]


async def one_session(port: int, rng: random.Random, tally: Tally, deadline: float) -> None:
    """One session's random script, checking everything that comes back."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    route = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    count = rng.randint(1, 40)
    slow = rng.random() < 0.15
    abort_after = rng.randint(0, count) if rng.random() < 0.10 else None
    lengths = sizes(rng, count)
    if route == "/udp":
        lengths = [max(1, min(n, 8192)) for n in lengths]
    as_text = route == "/echo" and rng.random() < 0.5
    try:
        ws = await asyncio.wait_for(connect(f"ws://{HOST}:{port}{route}", max_size=None, open_timeout=20,
                                            close_timeout=10, compression=None, ping_interval=None), 30)
    except InvalidStatus as e:
        # A limit (exec's max-forks) says 503 with a reason: that is the
        # documented answer, counted apart from failures.
        if e.response.status_code != 503:
            tally.failed_handshakes += 1
        tally.error(f"connect {route}: HTTP {e.response.status_code}")
        tally.refused += e.response.status_code == 503
        return
    except Exception as e:  # every kind is counted by name
        tally.failed_handshakes += 1
        tally.error(f"connect {route}: {type(e).__name__}")
        return
    tally.sessions += 1
    tally.open_now += 1
    tally.peak_open = max(tally.peak_open, tally.open_now)
    tally.slow_readers += slow
    sent: list[bytes] = []
    try:
        if route in ("/echo", "/udp"):
            await _message_script(ws, rng, tally, lengths, as_text, slow, abort_after, sent, deadline)
        else:
            await _stream_script(ws, rng, tally, lengths, slow, abort_after, sent, deadline)
    except _Aborted:
        tally.aborts += 1
    except ConnectionClosed as e:
        tally.error(f"{route}: closed early {e.rcvd.code if e.rcvd else 'no close frame'}"
                    f"{' after ' + str(e.sent.code) + ' sent' if e.sent else ''}")
        tally.bytes_lost += sum(map(len, sent))
    except TimeoutError:
        tally.error(f"{route}: no echo within the timeout")
        tally.bytes_lost += sum(map(len, sent))
    finally:
        tally.open_now -= 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 10)


class _Aborted(Exception):
    """The script dropped the connection on purpose."""


def _abort(ws: Any) -> None:
    ws.transport.abort()
    raise _Aborted


# The client sends no pings of its own (ping_interval=None): behind a stream
# the router has paused for backpressure a ping waits its turn, and under
# this load websockets' 20 s keepalive would close sessions the router is
# serving correctly.  The router's own keepalive (30 s) still runs.


def _payload(rng: random.Random, n: int, as_text: bool) -> bytes:
    if as_text:
        return "".join(rng.choice("abcdéf€ 𝄞\n") for _ in range(max(0, n // 2))).encode()
    return rng.randbytes(n)


async def _message_script(ws: Any, rng: random.Random, tally: Tally, lengths: list[int], as_text: bool,
                          slow: bool, abort_after: int | None, sent: list[bytes], deadline: float) -> None:
    """Send each message and expect it back whole, with its type (one in flight for UDP)."""
    for i, n in enumerate(lengths):
        if i == abort_after or time.monotonic() > deadline:
            if i == abort_after:
                _abort(ws)
            break
        data = _payload(rng, n, as_text)
        await ws.send(data.decode() if as_text else data)
        sent.append(data)
        tally.messages += 1
        tally.bytes_sent += len(data)
        if slow:
            await asyncio.sleep(rng.uniform(0.01, 0.3))
        echoed = await asyncio.wait_for(ws.recv(), 30)
        got = echoed.encode() if isinstance(echoed, str) else echoed
        if got != data or isinstance(echoed, str) != as_text:
            tally.corrupt += 1
            tally.error(f"{ws.request.path}: message changed or type lost "
                        f"(sent {len(data)} {'text' if as_text else 'binary'}, "
                        f"got {len(got)} {'text' if isinstance(echoed, str) else 'binary'})")
        else:
            tally.bytes_checked += len(data)
        sent.pop()


async def _stream_script(ws: Any, rng: random.Random, tally: Tally, lengths: list[int], slow: bool,
                         abort_after: int | None, sent: list[bytes], deadline: float) -> None:
    """Send everything from one task and read from another: the bytes must come back in order."""
    expected = bytearray()
    received = bytearray()
    total = sum(lengths) if abort_after is None else sum(lengths[:abort_after])

    async def reader() -> None:
        while len(received) < total:
            if slow and rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0.05, 0.5))
            chunk = await asyncio.wait_for(ws.recv(), 30)
            received.extend(chunk if isinstance(chunk, bytes) else chunk.encode())

    reading = asyncio.ensure_future(reader())
    try:
        for i, n in enumerate(lengths):
            if i == abort_after:
                reading.cancel()
                _abort(ws)
            data = rng.randbytes(n)
            await ws.send(data)
            sent.append(data)
            expected.extend(data)
            tally.messages += 1
            tally.bytes_sent += n
        await reading
    finally:
        reading.cancel()
    if bytes(received) != bytes(expected):
        tally.corrupt += 1
        tally.error(f"{ws.request.path}: stream bytes changed")
    else:
        tally.bytes_checked += len(expected)
    sent.clear()
    del deadline


async def slot(port: int, seed: int, tally: Tally, deadline: float) -> None:
    """One client slot: sessions one after another until the deadline."""
    rng = random.Random(seed)
    await asyncio.sleep(rng.uniform(0, 2))  # spread the first handshakes
    for _ in range(100_000):
        if time.monotonic() > deadline:
            return
        await one_session(port, rng, tally, deadline)


#: The ``/udp`` route's target, a process of its own so that the busy client
#: loop never delays it: each datagram straight back.  It prints its port.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"""


def start_udp_echo() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-c", UDP_ECHO, HOST], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@dataclass
class Footprint:
    """The router process tree at one moment."""

    rss_kib: int
    descriptors: int
    children: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        tree = proctree.tree(pid, proctree.all_stats())
        descriptors = len(os.listdir(f"/proc/{pid}/fd"))
        return cls(rss_kib=proctree.tree_memory(pid).rss_kib, descriptors=descriptors, children=len(tree) - 1)


async def reloader(pid: int, config: Path, args: argparse.Namespace, ports: tuple[int, int, int],
                   deadline: float, counter: list[int]) -> None:
    """Add or drop the spare route and send SIGHUP, every ``--reload-every`` seconds."""
    spare = False
    while time.monotonic() + args.reload_every < deadline:
        await asyncio.sleep(args.reload_every)
        spare = not spare
        router_config(config, ports[0], ports[1], ports[2], spare)
        os.kill(pid, signal.SIGHUP)
        counter[0] += 1


async def run_load(args: argparse.Namespace, port: int, pid: int, config: Path,
                   ports: tuple[int, int, int]) -> tuple[Tally, int, Footprint]:
    tally = Tally()
    reloads = [0]
    deadline = time.monotonic() + args.seconds
    peak = Footprint.of(pid)

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            now = Footprint.of(pid)
            peak = Footprint(max(peak.rss_kib, now.rss_kib), max(peak.descriptors, now.descriptors),
                             max(peak.children, now.children))

    tasks = [asyncio.ensure_future(slot(port, args.seed * 1_000_003 + i, tally, deadline))
             for i in range(args.connections)]
    extra = [asyncio.ensure_future(reloader(pid, config, args, ports, deadline, reloads)),
             asyncio.ensure_future(watch())]
    await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + 120)
    for task in extra:
        task.cancel()
    return tally, reloads[0], peak


async def amain(args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    udp_echo, udp_port = start_udp_echo()
    with tempfile.TemporaryDirectory(prefix="wsrouter-soak-") as scratch:
        targets = TargetsProcess(Path(scratch))
        tcp_port = int(targets.ports["echo"])
        port = PortPool(args.port_base, 20).take()
        config = Path(scratch) / "soak.toml"
        router_config(config, tcp_port, udp_port, port, spare=False)
        log = Path(args.router_log) if args.router_log else Path(scratch) / "router.log"
        with log.open("wb") as out:
            router = subprocess.Popen([sys.executable, "-m", "wsrouter", "--config", str(config)],
                                      stdout=out, stderr=subprocess.STDOUT, cwd=REPO_DIR, env=child_env())
        try:
            started = time.monotonic()
            while not port_open(port, 0.5):
                if router.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                    print(f"soak: the router did not start: {tail(log)}", file=sys.stderr)
                    return 2
                await asyncio.sleep(0.1)
            warm = Tally()
            await asyncio.gather(*(one_session(port, random.Random(i), warm, time.monotonic() + 10)
                                   for i in range(20)))
            await asyncio.sleep(1)
            before = Footprint.of(router.pid)
            print(f"soak: {args.connections} slots for {args.seconds} s against pid {router.pid}; "
                  f"baseline {before}", file=sys.stderr, flush=True)
            tally, reloads, peak = await run_load(args, port, router.pid, config, (tcp_port, udp_port, port))
            after = await settle(router.pid, before, args.settle)
            alive = router.poll() is None
        finally:
            stop_process(router)
            targets.stop()
            stop_process(udp_echo)
    return report(args, tally, reloads, before, peak, after, alive, log_tail="")


async def settle(pid: int, before: Footprint, seconds: float) -> Footprint:
    """Wait (bounded) for descriptors and children to come back down; the last footprint."""
    deadline = time.monotonic() + seconds
    now = Footprint.of(pid)
    while time.monotonic() < deadline:
        now = Footprint.of(pid)
        if now.descriptors <= before.descriptors and now.children <= before.children:
            break
        await asyncio.sleep(0.5)
    return now


def report(args: argparse.Namespace, tally: Tally, reloads: int, before: Footprint, peak: Footprint,
           after: Footprint, alive: bool, log_tail: str) -> int:
    problems = []
    if not alive:
        problems.append("the router died")
    if tally.failed_handshakes:
        problems.append(f"{tally.failed_handshakes} handshakes failed (other than 503 at a limit)")
    if tally.bytes_lost or tally.corrupt:
        problems.append(f"{tally.bytes_lost} bytes lost, {tally.corrupt} sessions with changed data")
    if after.descriptors > before.descriptors:
        problems.append(f"descriptors {before.descriptors} -> {after.descriptors}")
    if after.children > before.children:
        problems.append(f"child processes {before.children} -> {after.children}")
    if after.rss_kib > before.rss_kib + args.rss_slack * 1024:
        problems.append(f"RSS {before.rss_kib} KiB -> {after.rss_kib} KiB (slack {args.rss_slack} MiB)")
    summary = {"seconds": args.seconds, "connection_slots": args.connections, "reloads": reloads,
               "tally": asdict(tally), "before": asdict(before), "peak": asdict(peak),
               "after": asdict(after), "problems": problems}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print("soak: " + ("PASSED" if not problems else "FAILED: " + "; ".join(problems)), file=sys.stderr)
    del log_tail
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="load time (default 300)")
    ap.add_argument("--connections", type=int, default=2000, help="concurrent client slots (default 2000)")
    ap.add_argument("--reload-every", type=float, default=10.0, help="seconds between reloads (default 10)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds allowed to return to baseline")
    ap.add_argument("--rss-slack", type=int, default=64, help="MiB of RSS above the baseline still passed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--port-base", type=int, default=18600)
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")
    ap.add_argument("--router-log", metavar="FILE", help="keep the router's log here")
    args = ap.parse_args(argv)
    if not (1 <= args.seconds <= 86400 and 1 <= args.connections <= 20000 and args.reload_every >= 1):
        ap.error("--seconds 1..86400, --connections 1..20000, --reload-every >= 1")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
