"""
The private-UDP shim beyond recvfrom/sendto (issue 13): recvmmsg() and
sendmmsg() are translated like recvmsg()/sendmsg(), connect() to a sender's
address reaches that sender, an unknown address fails with EHOSTUNREACH and
a line on stderr, and the remembered senders are the most recently used.
tests/programs/udp_batch.py runs under the real shim; the test's Unix
datagram sockets stand in for the router's.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from wsrouter.rebind import find_shim, parse_report_line, shim_environment

from .support import REPO
from .test_udp_wrap import PYTHON, TIMEOUT, held_udp_port

PROGRAM = str(REPO / "tests" / "programs" / "udp_batch.py")


@contextmanager
def shimmed(mode: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """udp_batch.py in C{mode} under the shim, private UDP: yields its Unix socket path and the process."""
    directory = Path(tempfile.mkdtemp(prefix="wsr-udpb-"))
    with held_udp_port() as (_, port):
        read_end, write_end = os.pipe()
        env = shim_environment(str(port), write_end, base_env=dict(os.environ), shim=find_shim(),
                               private_dir=str(directory), protocol="udp")
        proc = subprocess.Popen([PYTHON, PROGRAM, mode, str(port)], env=env, pass_fds=(write_end,),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as reports:
                report = parse_report_line(reports.readline())
            assert report is not None and report.path is not None
            assert proc.stdout is not None and proc.stdout.readline() == f"listening {port}\n".encode()
            yield report.path, proc
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(directory)


def client(stack: ExitStack, path: str, name: str) -> socket.socket:
    """A datagram socket bound to the abstract C{name}, connected to the program's socket."""
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    sock.bind("\0" + name)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def test_recvmmsg_and_sendmmsg_show_and_answer_each_client():
    """A batch read with recvmmsg shows each sender's client address; sendmmsg's replies reach each sender."""
    with shimmed("mmsg") as (path, _), ExitStack() as stack:
        one = client(stack, path, "wsrouter-peer 203.0.113.7 4242 n1")
        two = client(stack, path, "wsrouter-peer 198.51.100.2 80 n2")
        one.send(b"a")
        two.send(b"b")
        one.send(b"c")
        replies = [one.recv(200), two.recv(200), one.recv(200)]
        parts = [reply.split() for reply in replies]
        assert [p[1:] for p in parts] == [[b"203.0.113.7", b"4242", b"a"], [b"198.51.100.2", b"80", b"b"],
                                          [b"203.0.113.7", b"4242", b"c"]]
        assert all(1 <= int(p[0]) <= 3 for p in parts)  # batch sizes: what had arrived


def test_connect_to_a_sender_then_send_and_recv():
    """connect() to the address recvfrom showed reaches that client; send() and recv() then work with it."""
    with shimmed("connect") as (path, _), ExitStack() as stack:
        one = client(stack, path, "wsrouter-peer 203.0.113.9 5000 n3")
        one.send(b"hello")
        assert one.recv(200) == b"connected 203.0.113.9 5000 hello"
        one.send(b"again")
        assert one.recv(200) == b"connected 203.0.113.9 5000 again"


def test_sending_to_an_unknown_address_fails_loudly():
    """sendto() an address never heard from fails with EHOSTUNREACH and says so once on stderr."""
    with shimmed("unknown") as (path, proc), ExitStack() as stack:
        one = client(stack, path, "wsrouter-peer 203.0.113.1 1 n4")
        one.send(b"x")
        one.send(b"y")
        assert one.recv(200) == f"{errno.EHOSTUNREACH} x".encode()
        assert one.recv(200) == f"{errno.EHOSTUNREACH} y".encode()
        proc.kill()
        assert proc.stderr is not None
        assert proc.stderr.read().count(b"fails with EHOSTUNREACH") == 1


def test_a_sender_in_use_is_not_forgotten_past_256_others():
    """A sender answered all along stays reachable while 300 other senders come and go (least recently used out)."""
    with shimmed("first") as (path, _), ExitStack() as stack:
        first = client(stack, path, "wsrouter-peer 203.0.113.5 5 first")
        first.send(b"0")
        assert first.recv(200) == b"copy 0" and first.recv(200) == b"copied 0"
        for n in range(1, 301):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
                other.bind(f"\0wsrouter-peer 192.0.2.{n % 250} {n} o{n}")
                other.settimeout(TIMEOUT)
                other.connect(path)
                other.send(str(n).encode())
                assert other.recv(200) == f"copied {n}".encode()
            assert first.recv(200) == f"copy {n}".encode()
