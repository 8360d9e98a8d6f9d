"""Per-connection test program: writes MIB mebibytes of LINE-byte lines (default 1024) to stdout, then exits."""

import sys

mib = int(sys.argv[1])
length = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
line = b"x" * (length - 1) + b"\n"
total = mib * 1024 * 1024
out = sys.stdout.buffer
block = line * max(1, (1024 * 1024) // length)
written = 0
while written + len(block) <= total:
    out.write(block)
    written += len(block)
out.write(line * ((total - written) // length))
out.flush()
