"""
The CPU cost of permessage-deflate per byte, for docs/conformance.md: the
router's own Deflater and Inflater over 4 KiB messages of compressible JSON
text and of random bytes (already-compressed traffic such as VNC or SSH).

Usage: python bench/deflate_cost.py   (not part of bench/run.py's matrix)
"""

from __future__ import annotations

import json
import os
import time

from wsrouter.ws.deflate import Deflater, Inflater, Negotiated

MESSAGE = 4096


def measure(data: bytes) -> tuple[float, float, float]:
    """(compressed/original ratio, deflate MB/s, inflate MB/s) in process CPU time."""
    messages = [data[i:i + MESSAGE] for i in range(0, len(data), MESSAGE)]
    deflater = Deflater(Negotiated())
    started = time.process_time()
    compressed = [deflater.compress(m) for m in messages]
    deflating = time.process_time() - started
    inflater = Inflater(Negotiated())
    started = time.process_time()
    for m in compressed:
        inflater.begin()
        b"".join([*inflater.feed(m), *inflater.end()])
    inflating = time.process_time() - started
    megabytes = len(data) / 1e6
    return sum(map(len, compressed)) / len(data), megabytes / deflating, megabytes / inflating


def main() -> None:
    text = json.dumps([{"id": i, "name": f"user{i}", "tags": ["a", "b"], "score": i * 1.5}
                       for i in range(40000)]).encode()
    for name, data in [("JSON text", text), ("random bytes", os.urandom(len(text)))]:
        ratio, deflate, inflate = measure(data)
        print(f"{name}: {len(data) / 1e6:.1f} MB in {MESSAGE}-byte messages: size ratio {ratio:.2f}, "
              f"deflate {deflate:.0f} MB/s, inflate {inflate:.0f} MB/s (one core's CPU time)")


if __name__ == "__main__":
    main()
