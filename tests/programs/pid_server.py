"""
PORT [DELAY [WORDS...]]: after DELAY seconds (default 0), serve TCP on
127.0.0.1:PORT; each connection gets "pid <PID> <WORDS...>" and then an echo
of what it sends.  Tells tests which instance (process) a client reached.
"""
import os
import socket
import sys
import threading
import time

port = int(sys.argv[1])
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
words = " ".join(sys.argv[3:])
time.sleep(delay)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)
print(f"listening {port}", flush=True)


def serve(conn: socket.socket) -> None:
    with conn:
        conn.sendall(f"pid {os.getpid()} {words}".rstrip().encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)


while True:
    client, _ = server.accept()
    threading.Thread(target=serve, args=(client,), daemon=True).start()
