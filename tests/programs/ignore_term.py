"""
Test program that ignores SIGTERM: binds 127.0.0.1:PORT, prints its pid,
and greets every connection with "stubborn\\n" for at most SECONDS (default
120), so a test that fails cannot leave it running for long.
"""

import os
import signal
import socket
import sys
import time

port = int(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(8)
listener.settimeout(0.5)
print(f"ignoring SIGTERM, pid {os.getpid()}", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        continue
    with conn:
        conn.sendall(b"stubborn\n")
