"""
permessage-deflate's CPU cost end to end: the router's own CPU per GiB of
messages echoed on an ``echo:`` route, compression off against on, for
compressible JSON text and for random bytes (traffic that is already
compressed, such as VNC or SSH).  The client is the ``websockets`` library,
which compresses and inflates on its side; only the router's process is
measured (``proctree``).  The same traffic goes to a peer that compresses too,
Autobahn-Python's echo server (``conformance/autobahn_echo.py``), measured the
same way; websockify and lighttpd's mod_wstunnel do not implement
permessage-deflate.  ``make bench`` runs it after the relay matrix.

Usage: .venv/bin/python bench/deflate_relay.py [--mib N] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proctree
from relays import HOST, REPO_DIR, BenchError, PortPool, child_env, port_open, stop_process, tail

MESSAGE = 4096
IN_FLIGHT = 16
START_TIMEOUT_S = 20.0


def payloads(kind: str, count: int) -> list[str | bytes]:
    """``count`` messages of about MESSAGE bytes: JSON text, or random binary."""
    if kind == "random":
        return [os.urandom(MESSAGE) for _ in range(count)]
    rows = [{"id": i, "name": f"user{i}", "tags": ["a", "b"], "score": i * 1.5} for i in range(64)]
    text = json.dumps(rows)[:MESSAGE]
    return [text[:-8] + f"{i:08d}" for i in range(count)]


async def echo_all(port: int, messages: list[str | bytes], compress: bool) -> None:
    """Send every message with IN_FLIGHT outstanding and check that each comes back unchanged."""
    from websockets.asyncio.client import connect

    uri = f"ws://{HOST}:{port}/echo"
    async with connect(uri, compression="deflate" if compress else None, max_size=None,
                       open_timeout=10, close_timeout=5) as ws:
        if compress and not ws.protocol.extensions:
            raise BenchError("the router did not accept permessage-deflate")
        sent = 0
        for received_count in range(len(messages)):
            while sent < len(messages) and sent - received_count < IN_FLIGHT:
                await ws.send(messages[sent])
                sent += 1
            echoed = await asyncio.wait_for(ws.recv(), 30)
            if echoed != messages[received_count]:
                raise BenchError(f"message {received_count} came back changed")


#: The servers measured: wsrouter's echo: route, and a peer that compresses too:
#: Autobahn-Python's own echo server (conformance/autobahn_echo.py), which accepts
#: permessage-deflate whenever offered (so "off" is the client not offering it).
#: websockify and lighttpd's mod_wstunnel do not implement permessage-deflate.
SERVERS = ("wsrouter", "autobahn")


def start_router(port: int, compress: bool, log: Path, server: str = "wsrouter") -> subprocess.Popen[bytes]:
    if server == "autobahn":
        argv = [sys.executable, str(REPO_DIR / "conformance" / "autobahn_echo.py"), str(port)]
    else:
        argv = [sys.executable, "-m", "wsrouter", "--listen", f"tcp:{port}:interface={HOST}",
                "--route", "/echo=echo:", "--max-message-size", str(1 << 20)]
        if compress:
            argv.append("--permessage-deflate")
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_DIR, env=child_env())
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_open(port, 0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise BenchError(f"{argv[1]} did not start: {tail(log)}")
        time.sleep(0.05)
    return proc


def measure(port: int, compress: bool, kind: str, mib: int, log: Path, server: str = "wsrouter") -> float:
    """The server's CPU seconds per GiB of message payload echoed (counted once)."""
    count = mib * (1 << 20) // MESSAGE
    messages = payloads(kind, count)
    proc = start_router(port, compress, log, server)
    try:
        asyncio.run(echo_all(port, messages[:64], compress))  # warm-up: imports, first handshake
        before = proctree.sample(proc.pid).cpu_s
        asyncio.run(echo_all(port, messages, compress))
        after = proctree.wait_settled(proc.pid).cpu_s
    finally:
        stop_process(proc)
    payload_gib = sum(len(m) for m in messages) / (1 << 30)
    return (after - before) / payload_gib


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB echoed per measurement (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--port-base", type=int, default=18650)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.mib <= 4096 or not 1 <= args.rounds <= 20:
        ap.error("--mib must be 1..4096 and --rounds 1..20")
    ports = PortPool(args.port_base, 40)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="wsrouter-deflate-") as scratch:
        log = Path(scratch) / "router.log"
        for _ in range(args.rounds):
            for kind in ("json", "random"):
                for compress in (False, True):
                    for server in SERVERS:
                        name = f"{server}: {kind}, compression {'on' if compress else 'off'}"
                        results.setdefault(name, []).append(
                            measure(ports.take(), compress, kind, args.mib, log, server))
    print(f"\npermessage-deflate, server CPU-s per GiB echoed ({MESSAGE}-byte messages, "
          f"{IN_FLIGHT} in flight, {args.mib} MiB x {args.rounds} rounds; median).  The peer that "
          "compresses\nis Autobahn-Python's echo server (conformance/autobahn_echo.py); websockify "
          "and lighttpd do not compress.\n")
    medians = {name: statistics.median(values) for name, values in results.items()}
    print("| payload | compression | wsrouter | autobahn echo | wsrouter / autobahn |")
    print("|---|---|---:|---:|---:|")
    for kind in ("json", "random"):
        for mode in ("off", "on"):
            ours, peer = (medians[f"{s}: {kind}, compression {mode}"] for s in SERVERS)
            print(f"| {kind} | {mode} | {ours:.2f} | {peer:.2f} | {ours / peer:.2f} |")
    for kind in ("json", "random"):
        for server in SERVERS:
            on, off = (medians[f"{server}: {kind}, compression {m}"] for m in ("on", "off"))
            print(f"  {server}, {kind}: compression on costs {on / off:.2f}x the CPU of off")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_s_per_gib": results, "median": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
