"""Bind PORT, listen, wait DELAY seconds, exit with STATUS (a server that dies)."""
import socket
import sys
import time

port, delay, status = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.bind(("0.0.0.0", port))
s.listen()
time.sleep(delay)
sys.exit(status)
