"""
A UDP server that tests run under the shim to exercise the calls beyond
recvfrom/sendto: C{mmsg} answers batches read with recvmmsg() (MSG_WAITFORONE)
and sent with sendmmsg(), each reply C{"<batch size> <host> <port> <data>"};
C{connect} connect()s to its first sender and then talks to it with
send()/recv() only, replying C{"connected <host> <port> <data>"}; C{unknown}
answers each datagram with the result of a sendto() to an address it never
heard from; C{first} copies every datagram to its first sender as well.
Prints C{listening <port>} once bound.  Standard library (ctypes for the two
calls Python lacks), so it runs under the shim.
"""

from __future__ import annotations

import ctypes
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)  # resolves through LD_PRELOAD, as a C program would
MSG_WAITFORONE = 0x10000
BATCH = 8
SIZE = 2048


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def sockaddr_text(raw: bytes) -> tuple[str, int]:
    """(host, port) of a sockaddr_in or sockaddr_in6 as bytes."""
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return f"family-{family}", port


def serve_mmsg(sock: socket.socket) -> None:
    buffers = [ctypes.create_string_buffer(SIZE) for _ in range(BATCH)]
    names = [ctypes.create_string_buffer(128) for _ in range(BATCH)]
    iovs = (Iovec * BATCH)()
    vec = (Mmsghdr * BATCH)()
    while True:
        for i in range(BATCH):
            iovs[i].base, iovs[i].len = ctypes.addressof(buffers[i]), SIZE
            vec[i].hdr = Msghdr(ctypes.addressof(names[i]), 128, ctypes.pointer(iovs[i]), 1, None, 0, 0)
        got = libc.recvmmsg(sock.fileno(), vec, BATCH, MSG_WAITFORONE, None)
        if got < 0:
            raise OSError(ctypes.get_errno(), "recvmmsg")
        replies = []
        for i in range(got):
            host, port = sockaddr_text(names[i].raw[:vec[i].hdr.namelen])
            data = buffers[i].raw[:vec[i].len]
            replies.append(ctypes.create_string_buffer(f"{got} {host} {port} ".encode() + data))
        out_iovs = (Iovec * got)()
        out = (Mmsghdr * got)()
        for i in range(got):
            out_iovs[i].base, out_iovs[i].len = ctypes.addressof(replies[i]), len(replies[i]) - 1
            out[i].hdr = Msghdr(ctypes.addressof(names[i]), vec[i].hdr.namelen, ctypes.pointer(out_iovs[i]), 1,
                                None, 0, 0)
        sent = libc.sendmmsg(sock.fileno(), out, got, 0)
        if sent != got:
            raise OSError(ctypes.get_errno(), f"sendmmsg sent {sent} of {got}")


def serve_connected(sock: socket.socket) -> None:
    data, peer = sock.recvfrom(SIZE)
    sock.connect(peer)
    host, port = sock.getpeername()[:2]
    while True:
        sock.send(f"connected {host} {port} ".encode() + data)
        data = sock.recv(SIZE)


def serve_unknown(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(SIZE)
        try:
            sock.sendto(b"never", ("192.0.2.1", 9))
            result = "sent"
        except OSError as e:
            result = str(e.errno)
        sock.sendto(f"{result} ".encode() + data, peer)


def serve_first(sock: socket.socket) -> None:
    """Copy every datagram to the first sender too (so it must stay remembered); tell each sender how that went."""
    first = None
    while True:
        data, peer = sock.recvfrom(SIZE)
        first = first or peer
        try:
            sock.sendto(b"copy " + data, first)
            result = "copied"
        except OSError as e:
            result = str(e.errno)
        sock.sendto(f"{result} ".encode() + data, peer)


def main(argv: list[str]) -> int:
    mode, port = argv[0], int(argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    print(f"listening {sock.getsockname()[1]}", flush=True)
    {"mmsg": serve_mmsg, "connect": serve_connected, "unknown": serve_unknown,
     "first": serve_first}[mode](sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
