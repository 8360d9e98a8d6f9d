"""PORT MIB: serve TCP on 127.0.0.1:PORT; each connection gets MIB mebibytes, then is closed."""
import socket
import sys

port, mib = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(4)
block = b"x" * (1024 * 1024)
while True:
    conn, _ = server.accept()
    with conn:
        for _ in range(mib):
            conn.sendall(block)
