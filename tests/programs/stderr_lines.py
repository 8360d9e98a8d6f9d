"""Per-connection test program: writes two stderr lines, one very long, then "done" to stdout."""

import sys

sys.stderr.write("first problem\n")
sys.stderr.write("y" * 5000 + "\n")
sys.stderr.write("unfinished")
sys.stderr.flush()
sys.stdout.write("done\n")
