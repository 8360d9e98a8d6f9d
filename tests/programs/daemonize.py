"""Fork a server on PORT that says 'daemon', print its pid, and exit (like vncserver)."""
import os
import socket
import sys

port = int(sys.argv[1])
pid = os.fork()
if pid:
    print(f"daemon pid {pid}", flush=True)
    os._exit(0)
os.close(1)
os.close(2)
s = socket.socket()
s.bind(("0.0.0.0", port))
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(b"daemon\n")
    conn.close()
