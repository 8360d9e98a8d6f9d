"""Wait DELAY seconds, then serve BANNER on PORT to every connection (a slow starter)."""
import socket
import sys
import time

port, delay, banner = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(delay)
s = socket.socket()
s.bind(("0.0.0.0", port))
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(banner.encode() + b"\n")
    conn.close()
