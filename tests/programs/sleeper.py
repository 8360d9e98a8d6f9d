"""
Per-connection test program that never reads stdin.

Prints one JSON line with its pid (and, with --grandchild, the pid of a
child it starts that inherits stdout and sleeps), then, depending on the
options, closes stdout and keeps running, exits at once (leaving the
grandchild holding stdout), or sleeps.  Every sleep is bounded, so a test
that fails cannot leave it running for long.
"""

import argparse
import json
import os
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--grandchild", action="store_true", help="start a child that inherits stdout")
parser.add_argument("--close-stdout", action="store_true", help="close stdout after the line, keep running")
parser.add_argument("--exit", action="store_true", help="exit 0 right after the line")
parser.add_argument("--seconds", type=float, default=60.0)
args = parser.parse_args()

info = {"pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0)}
if args.grandchild:
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.seconds})"])
    info["grandchild"] = child.pid
sys.stdout.write(json.dumps(info) + "\n")
sys.stdout.flush()
if args.close_stdout:
    sys.stdout.close()
    os.close(1)
if not args.exit:
    time.sleep(args.seconds)
os._exit(0)
