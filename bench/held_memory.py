"""
Python heap per held connection, by allocation site: a router in this
process (tracemalloc on), a TCP echo target, and a child process that opens
N WebSocket connections through it, echoes one message on each and holds
them.  Prints the heap growth per connection and the top allocation sites.

    PYTHONPATH=src .venv/bin/python bench/held_memory.py [N] [--src DIR]

``--src DIR`` measures another checkout's ``src`` (a baseline made with
``git archive``).  Loopback only; the child is ended by its PID.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

CLIENT = r"""
import asyncio, sys
from websockets.asyncio.client import connect

async def main(url, n):
    held = []
    for _ in range(n):
        ws = await connect(url, max_size=None, compression=None)
        await ws.send(b"x" * 32)
        await ws.recv()
        held.append(ws)
    print("held", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for ws in held:
        await ws.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--src", default=None)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))

    from twisted.internet import protocol, reactor, threads

    from wsrouter.config import build_config
    from wsrouter.service import build_service

    class Echo(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    factory = protocol.Factory.forProtocol(Echo)
    factory.noisy = False
    target = reactor.listenTCP(0, factory, interface="127.0.0.1")
    target_port = target.getHost().port
    config = build_config({"listen": ["tcp:0:interface=127.0.0.1"],
                           "routes": [{"path": "/", "target": f"127.0.0.1:{target_port}"}],
                           "limits": {"max_connections": 100000, "max_connections_per_client": 100000,
                                      "max_handshakes_per_client": 100000000}})
    service = build_service(config, reactor)
    service.startService()
    port = service.ports()[0].getHost().port
    result: dict[str, float] = {}

    def run_client() -> None:
        child = subprocess.Popen([sys.executable, "-c", CLIENT, f"ws://127.0.0.1:{port}/", str(args.n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline() if child.stdout else ""
            if line.strip() != "held":
                raise SystemExit(f"client failed: {line!r}")
            threads.blockingCallFromThread(reactor, measure)
        finally:
            if child.stdin:
                child.stdin.close()
            child.wait(timeout=60)
        reactor.callFromThread(reactor.stop)

    def measure() -> None:
        gc.collect()
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(result["before"], "lineno")  # type: ignore[arg-type]
        growth = sum(stat.size_diff for stat in stats)
        print(f"{args.n} held connections: {growth / args.n / 1024:.2f} KiB of Python heap each")
        for stat in stats[:args.top]:
            frame = stat.traceback[0]
            print(f"  {stat.size_diff / args.n:8.0f} B/conn  {stat.count_diff / args.n:6.2f} blocks/conn  "
                  f"{Path(frame.filename).name}:{frame.lineno}")

    def start() -> None:
        gc.collect()
        tracemalloc.start(1)
        result["before"] = tracemalloc.take_snapshot()  # type: ignore[assignment]
        reactor.callInThread(run_client)

    reactor.callWhenRunning(start)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
