"""
Per-connection test program: writes each argument (hex) to stdout as one
write, a moment apart, then exits with --status (default 0).  Never reads
stdin.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--status", type=int, default=0)
parser.add_argument("chunks", nargs="*")
args = parser.parse_args()
for chunk in args.chunks:
    os.write(1, bytes.fromhex(chunk))
    time.sleep(0.02)
sys.exit(args.status)
