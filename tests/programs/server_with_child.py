"""Serve 'parent' on PORT and keep a child process running (to test group kill)."""
import socket
import subprocess
import sys

port = int(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"child pid {child.pid}", flush=True)
s = socket.socket()
s.bind(("0.0.0.0", port))
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(b"parent\n")
    conn.close()
