"""Per-connection test program: echoes each stdin line uppercased, until end of input."""

import sys

for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line.upper())
    sys.stdout.buffer.flush()
