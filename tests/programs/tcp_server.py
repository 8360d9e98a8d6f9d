"""
A small TCP (or UDP) server that tests run as the "wrapped program".

It binds as an ordinary server would (SO_REUSEADDR, optionally dual-stack),
listens, prints C{listening <port>} with the port getsockname() returns,
then serves: a banner line per connection, optionally an echo, and an exit
after a number of connections. Standard library only, so it runs under the shim
with any Python.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import traceback


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--family", choices=["4", "6", "dual"], default="4")
    parser.add_argument("--udp", action="store_true", help="echo datagrams instead")
    parser.add_argument("--banner", help="line sent to each new connection (UDP: each reply's prefix)")
    parser.add_argument("--echo", action="store_true", help="echo what each client sends")
    parser.add_argument("--tell-peer", action="store_true",
                        help="send each client 'peer HOST PORT' as accept() and getpeername() show it")
    parser.add_argument("--exit-after", type=int, help="exit after N connections (datagrams)")
    parser.add_argument(
        "--exec-child", help="after binding, run this command (fds not closed) and wait"
    )
    parser.add_argument(
        "--bind-in-fork", action="store_true", help="fork first; the child binds and serves"
    )
    return parser.parse_args(argv)


def make_socket(args: argparse.Namespace) -> socket.socket:
    family = socket.AF_INET if args.family == "4" else socket.AF_INET6
    kind = socket.SOCK_DGRAM if args.udp else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.family == "dual":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    elif args.family == "6":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((args.host, args.port))
    if not args.udp:
        sock.listen(8)
    return sock


def serve_tcp(sock: socket.socket, args: argparse.Namespace) -> None:
    served = 0
    while args.exit_after is None or served < args.exit_after:
        conn, peer = sock.accept()
        with conn:
            conn.settimeout(10)
            if args.banner is not None:
                conn.sendall(args.banner.encode() + b"\n")
            if args.tell_peer:
                again = conn.getpeername()
                conn.sendall(f"peer {peer[0]} {peer[1]} {again[0]} {again[1]}\n".encode())
            if args.echo:
                echo_until_eof(conn)
        served += 1


def echo_until_eof(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def serve_udp(sock: socket.socket, args: argparse.Namespace) -> None:
    served = 0
    while args.exit_after is None or served < args.exit_after:
        data, peer = sock.recvfrom(65536)
        prefix = (args.banner or "") + (f"{peer[0]} {peer[1]} " if args.tell_peer else "")
        sock.sendto(prefix.encode() + data, peer)  # the banner (and the peer) prefix each reply
        served += 1


def run(args: argparse.Namespace) -> int:
    sock = make_socket(args)
    print(f"listening {sock.getsockname()[1]}", flush=True)
    if args.exec_child is not None:
        child = subprocess.run(shlex.split(args.exec_child), close_fds=False, check=False)
        print(f"child-exit {child.returncode}", flush=True)
    with sock:
        (serve_udp if args.udp else serve_tcp)(sock, args)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.bind_in_fork:
        return run(args)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(args)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
