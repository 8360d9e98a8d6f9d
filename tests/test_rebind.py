"""
Tests for the rebind.so LD_PRELOAD shim and its Python locator.

The shim is compiled from the current source once per session, then real
programs (tests/programs/tcp_server.py and small inline scripts) run under
it over loopback. Wherever a test asks a program to bind a port, the test
first holds that port itself, as the router would: a bind the shim failed
to move would then fail with EADDRINUSE instead of passing by luck.
"""

from __future__ import annotations

import ctypes.util
import errno
import hashlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import pytest

import wsrouter.rebind as rebind
from wsrouter.rebind import (
    ALL_PORTS,
    ENV_DIR,
    ENV_FD,
    ENV_KEEP,
    ENV_PORTS,
    ENV_PROTO,
    PEER_PREFIX,
    ShimReport,
    ShimUnavailable,
    find_shim,
    parse_report_line,
    shim_environment,
)

from .other_user import connect_as_other_user, needs_root

TIMEOUT = 10.0
SOURCE = Path(rebind.__file__).with_name("rebind.c")
SERVER = Path(__file__).parent / "programs" / "tcp_server.py"
# Replaced, in a wrapped program's arguments, by the report fd's number.
REPORT_FD = "{report_fd}"
# The Makefile's build command, minus the paths.
CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1)")


@attrs.frozen
class BuiltShim:
    path: str
    warnings: str | None  # None when no compiler was found


@pytest.fixture(scope="session")
def built_shim(tmp_path_factory: pytest.TempPathFactory) -> BuiltShim:
    """The shim compiled from the current rebind.c, as the Makefile does."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return BuiltShim(find_shim(), None)
    out = tmp_path_factory.mktemp("shim") / "rebind.so"
    result = subprocess.run(
        [compiler, *CFLAGS, "-o", str(out), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return BuiltShim(str(out), result.stderr)


@pytest.fixture
def shim(built_shim: BuiltShim) -> str:
    return built_shim.path


class Lines:
    """Reads lines from a pipe without ever waiting past a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out reading fd {self.fd}; got {self.buffer!r}")
        ready, _, _ = select.select([self.fd], [], [], remaining)
        if ready:
            chunk = os.read(self.fd, 4096)
            self.eof = not chunk
            self.buffer += chunk

    def readline(self, timeout: float = TIMEOUT) -> bytes:
        """The next line with its newline, or what is left (b"" at EOF)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.eof:
            self._fill(deadline)
        if b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            return line + b"\n"
        line, self.buffer = self.buffer, b""
        return line

    def rest(self, timeout: float = TIMEOUT) -> bytes:
        """Everything up to EOF."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        rest, self.buffer = self.buffer, b""
        return rest


@attrs.define
class Wrapped:
    """A program running under the shim, with its report pipe and stdout."""

    proc: subprocess.Popen[bytes]
    report_fd: int  # the program's fd number for the write end
    reports: Lines
    stdout: Lines

    def report(self) -> ShimReport:
        line = self.reports.readline()
        parsed = parse_report_line(line)
        assert parsed is not None, f"not a report line: {line!r}"
        return parsed

    def line(self) -> str:
        return self.stdout.readline().decode().rstrip("\n")

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def assert_no_reports(self) -> None:
        """After the program exits, the pipe must close with nothing written."""
        self.wait()
        assert self.reports.rest() == b""


def server(*args: str) -> list[str]:
    return [sys.executable, str(SERVER), *args]


def script(source: str, *args: str) -> list[str]:
    return [sys.executable, "-c", source, *args]


@contextmanager
def wrapped(
    shim: str,
    argv: Sequence[str],
    ports: str,
    keep: bool = False,
    base_env: Mapping[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
    private_dir: str | None = None,
    umask: int = -1,
) -> Iterator[Wrapped]:
    """Run argv under the shim (private mode with private_dir); kill its whole process group afterwards."""
    read_end, write_end = os.pipe()
    reports = Lines(read_end)
    proc: subprocess.Popen[bytes] | None = None
    try:
        env = shim_environment(
            ports, write_end, keep, base_env=os.environ if base_env is None else base_env, shim=shim,
            private_dir=private_dir,
        )
        argv = [arg.replace(REPORT_FD, str(write_end)) for arg in argv]
        proc = subprocess.Popen(
            argv,
            env=env,
            pass_fds=(write_end,),
            stdin=stdin,
            stdout=subprocess.PIPE,
            start_new_session=True,
            umask=umask,
        )
        child_fd, write_end = write_end, -1
        os.close(child_fd)
        assert proc.stdout is not None
        yield Wrapped(proc, child_fd, reports, Lines(proc.stdout.fileno()))
    finally:
        if proc is not None:
            _stop(proc)
        if write_end >= 0:
            os.close(write_end)
        reports.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group is this test's child and its children
    proc.wait(timeout=TIMEOUT)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _family(name: str) -> int:
    return socket.AF_INET if name == "4" else socket.AF_INET6


@contextmanager
def held_port(family: str, host: str) -> Iterator[socket.socket]:
    """
    Listen on host at a port the kernel picks, as the router listens on the
    wrapped program's original port; no SO_REUSEADDR, so any other bind of
    that port fails.
    """
    with socket.socket(_family(family), socket.SOCK_STREAM) as sock:
        if family != "4":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if family == "6" else 0)
        sock.bind((host, 0))
        sock.listen(4)
        sock.settimeout(TIMEOUT)
        yield sock


def unused_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free port (bind-then-close: tolerable in tests only)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def talk(host: str, port: int, payload: bytes | None = None) -> tuple[bytes, bytes]:
    """Read the banner line, send payload (if any), half-close, read the rest."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn, conn.makefile("rb") as reader:
        banner = reader.readline()
        if payload is not None:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        return banner, reader.read()


def assert_port_reaches(holder: socket.socket, host: str, port: int) -> None:
    """A connection to host:port is accepted by holder, not by the program."""
    with socket.create_connection((host, port), timeout=TIMEOUT):
        accepted, _ = holder.accept()
        accepted.close()


# --- the C source -----------------------------------------------------------


def test_compiles_without_warnings(built_shim: BuiltShim) -> None:
    """rebind.c compiles with the Makefile's -Wall -Wextra without a single warning."""
    if built_shim.warnings is None:
        pytest.skip("no C compiler")
    assert built_shim.warnings == ""


def test_variable_names_agree_with_c_source() -> None:
    """The environment variable names in rebind.c are the ones the Python side sets."""
    defines = dict(re.findall(r'#define (ENV_\w+) "([^"]*)"', SOURCE.read_text()))
    assert defines["ENV_PORTS"] == ENV_PORTS
    assert defines["ENV_FD"] == ENV_FD
    assert defines["ENV_KEEP"] == ENV_KEEP
    assert defines["ENV_DIR"] == ENV_DIR
    assert defines["ENV_PROTO"] == ENV_PROTO
    assert re.findall(r'#define PEER_PREFIX "([^"]*)"', SOURCE.read_text()) == [PEER_PREFIX]


# --- moving binds -------------------------------------------------------------

MOVES = [
    pytest.param("4", "0.0.0.0", "127.0.0.1", id="ipv4-any"),
    pytest.param("4", "127.0.0.1", "127.0.0.1", id="ipv4-loopback"),
    pytest.param("6", "::", "::1", id="ipv6-any", marks=needs_ipv6),
    pytest.param("dual", "::", "::1", id="dual-stack", marks=needs_ipv6),
    pytest.param("dual", "::ffff:0.0.0.0", "127.0.0.1", id="ipv4-mapped", marks=needs_ipv6),
]


@pytest.mark.parametrize("mode", ["listed", "all"])
@pytest.mark.parametrize(("family", "host", "moved_host"), MOVES)
def test_bind_moves_to_loopback(
    shim: str, mode: str, family: str, host: str, moved_host: str
) -> None:
    """
    A listed (or, with "*", any) TCP bind lands on loopback at a kernel-chosen port, is reported, and leaves the
    original port to its holder.
    """
    with held_port(family, host) as holder:
        port = holder.getsockname()[1]
        ports = ALL_PORTS if mode == "all" else f"7,{port},9"
        argv = server("--host", host, "--port", str(port), "--family", family, "--banner", "hi")
        with wrapped(shim, [*argv, "--echo"], ports) as prog:
            report = prog.report()
            assert report == ShimReport(port, moved_host, report.port, None)
            assert report.port != port
            assert prog.line() == f"listening {port}"  # getsockname shows the request
            assert report.port is not None
            assert talk(moved_host, report.port, b"ping\n") == (b"hi\n", b"ping\n")
            assert_port_reaches(holder, moved_host, port)


def test_forked_child_still_moves(shim: str) -> None:
    """A child that forks (without exec) before binding is still moved, as it shares the shim's state."""
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        argv = server("--host", "0.0.0.0", "--port", str(port), "--banner", "forked")
        with wrapped(shim, [*argv, "--bind-in-fork", "--exit-after", "1"], str(port)) as prog:
            report = prog.report()
            assert (report.requested_port, report.host) == (port, "127.0.0.1")
            assert report.port is not None
            # The report comes at bind(); the line, after listen().
            assert prog.line() == f"listening {port}"
            assert talk("127.0.0.1", report.port) == (b"forked\n", b"")
            assert prog.wait() == 0


BIND_TWICE = r"""
import errno, socket, sys
sock = socket.socket()
sock.bind(("0.0.0.0", int(sys.argv[1])))
try:
    sock.bind(("0.0.0.0", int(sys.argv[1])))
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"""


def test_failed_bind_is_reported_and_returned(shim: str) -> None:
    """A moved bind that fails is reported as "failed" with the errno name, and the program gets the same error."""
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, script(BIND_TWICE, str(port)), str(port)) as prog:
            assert prog.report().ok
            assert prog.report() == ShimReport(port, None, None, "EINVAL")
            assert prog.line() == "EINVAL"
            assert prog.wait() == 0


SIGPIPE_BIND = r"""
import signal, socket, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
sys.stdin.readline()
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("bound", sock.getsockname()[1], signal.SIGPIPE in signal.sigpending(), flush=True)
"""


def test_closed_report_pipe_does_not_kill(shim: str) -> None:
    """A report to a pipe nobody reads any more neither kills the program with SIGPIPE nor leaves one pending."""
    with held_port("4", "127.0.0.1") as holder:
        port = holder.getsockname()[1]
        argv = script(SIGPIPE_BIND, str(port))
        with wrapped(shim, argv, str(port), stdin=subprocess.PIPE) as prog:
            prog.reports.close()
            assert prog.proc.stdin is not None
            prog.proc.stdin.write(b"go\n")
            prog.proc.stdin.close()
            assert prog.line() == f"bound {port} False"
            assert prog.wait() == 0


NO_V6_LOOPBACK = r"""
import errno, socket, sys
with socket.socket(socket.AF_INET6) as probe:
    try:
        probe.bind(("::1", 0))
        print("has-ipv6-loopback", flush=True)
        sys.exit(0)
    except OSError:
        pass
results = []
for v6only in (0, 1):
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    try:
        sock.bind(("::", int(sys.argv[1])))
        sock.listen()
        results.append(str(sock.getsockname()[1]))
    except OSError as e:
        results.append(errno.errorcode[e.errno])
print(*results, flush=True)
"""


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], timeout=TIMEOUT, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_dual_stack_without_ipv6_loopback_uses_127(shim: str) -> None:
    """
    Where ::1 is missing (a fresh network namespace), a dual-stack bind moves to 127.0.0.1 and an IPv6-only one
    fails cleanly.
    """
    if not _can_unshare_network():
        pytest.skip("needs `unshare -n` (root or user namespaces)")
    port = 5999  # a fresh namespace has no other listeners
    argv = ["unshare", "-n", "--", *script(NO_V6_LOOPBACK, str(port))]
    # keep: the shim must pass through unshare to reach Python.
    with wrapped(shim, argv, str(port), keep=True) as prog:
        output = prog.line()
        if output == "has-ipv6-loopback":
            pytest.skip("this namespace has ::1")
        assert output == f"{port} EADDRNOTAVAIL"
        first = prog.report()
        assert (first.requested_port, first.host) == (port, "127.0.0.1")
        assert prog.report() == ShimReport(port, None, None, "EADDRNOTAVAIL")
        assert prog.wait() == 0


# --- binds left alone -------------------------------------------------------


def test_unlisted_port_passes_through(shim: str) -> None:
    """A bind to a port not in the list is untouched: the program really listens there and nothing is reported."""
    port = unused_port()
    other = port + 1 if port < 65535 else port - 1
    argv = server("--host", "127.0.0.1", "--port", str(port), "--banner", "direct")
    with wrapped(shim, [*argv, "--exit-after", "1"], str(other)) as prog:
        assert prog.line() == f"listening {port}"
        assert talk("127.0.0.1", port) == (b"direct\n", b"")
        prog.assert_no_reports()


def test_port_zero_passes_through(shim: str) -> None:
    """Even with "*", a bind to port 0 is untouched: the kernel picks a port on the requested address."""
    argv = server("--host", "0.0.0.0", "--port", "0", "--banner", "zero", "--exit-after", "1")
    with wrapped(shim, argv, ALL_PORTS) as prog:
        port = int(prog.line().split()[1])
        assert port != 0
        assert talk("127.0.0.1", port) == (b"zero\n", b"")
        prog.assert_no_reports()


@pytest.mark.parametrize("mode", ["listed", "all"])
def test_udp_passes_through(shim: str, mode: str) -> None:
    """A UDP bind is untouched even on a listed port or with "*"."""
    port = unused_port(socket.SOCK_DGRAM)
    argv = server("--host", "127.0.0.1", "--port", str(port), "--udp", "--exit-after", "1")
    with wrapped(shim, argv, ALL_PORTS if mode == "all" else str(port)) as prog:
        assert prog.line() == f"listening {port}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"datagram", ("127.0.0.1", port))
            assert client.recvfrom(100)[0] == b"datagram"
        prog.assert_no_reports()


UNIX_BIND = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
print("bound", flush=True)
"""


def test_unix_socket_passes_through(shim: str, tmp_path: Path) -> None:
    """A unix socket bind is untouched with "*"."""
    path = tmp_path / "sock"
    with wrapped(shim, script(UNIX_BIND, str(path)), ALL_PORTS) as prog:
        assert prog.line() == "bound"
        prog.assert_no_reports()
    assert path.is_socket()


GUARDED_BIND = r"""
import ctypes, errno, mmap, socket, struct, sys
family, length, port = (int(arg) for arg in sys.argv[1:4])
libc = ctypes.CDLL(None, use_errno=True)
libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
area = mmap.mmap(-1, 2 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
# The address ends where an unreadable page begins: reading past it faults.
if libc.mprotect(base + page, page, 0) != 0:
    sys.exit("mprotect failed")
start = page - length
struct.pack_into("=H", area, start, family)
if length >= 4:
    struct.pack_into("!H", area, start + 2, port)
sock = socket.socket(family, socket.SOCK_STREAM)
rc = libc.bind(sock.fileno(), base + start, length)
print("0" if rc == 0 else errno.errorcode[ctypes.get_errno()], flush=True)
"""

ADDRLENS = [
    pytest.param(socket.AF_INET, 2, "EINVAL", id="ipv4-family-only"),
    pytest.param(socket.AF_INET, 8, "EINVAL", id="ipv4-short"),
    pytest.param(socket.AF_INET, 16, "0", id="ipv4-full"),
    pytest.param(socket.AF_INET6, 20, "EINVAL", id="ipv6-short", marks=needs_ipv6),
    pytest.param(socket.AF_INET6, 24, "0", id="ipv6-rfc2133", marks=needs_ipv6),
    pytest.param(socket.AF_INET6, 27, "0", id="ipv6-odd", marks=needs_ipv6),
]


@pytest.mark.parametrize(("family", "length", "result"), ADDRLENS)
def test_addrlen_is_honoured(shim: str, family: int, length: int, result: str) -> None:
    """
    The shim never reads past addrlen: too short for the family passes through (the kernel says EINVAL), long enough
    is moved.
    """
    host = "0.0.0.0" if family == socket.AF_INET else "::"
    with held_port("4" if family == socket.AF_INET else "6", host) as holder:
        port = holder.getsockname()[1]
        argv = script(GUARDED_BIND, str(int(family)), str(length), str(port))
        with wrapped(shim, argv, str(port)) as prog:
            assert prog.line() == result
            if result == "0":
                assert prog.report().requested_port == port
            prog.assert_no_reports()


# --- the environment handed on --------------------------------------------

SHOW_CHILD = r"""
import json, os, socket, sys
fd, port = int(sys.argv[1]), int(sys.argv[2])
try:
    target = os.readlink(f"/proc/self/fd/{fd}")
except OSError:
    target = None
bound = None
if port:
    sock = socket.socket()
    sock.bind(("0.0.0.0", port))
    bound = sock.getsockname()[1]
env = {k: v for k, v in os.environ.items() if k.startswith("WSROUTER_") or k == "LD_PRELOAD"}
print("child", json.dumps({"env": env, "fd": target, "bound": bound}), flush=True)
"""


def _other_preload() -> str:
    name = ctypes.util.find_library("m")
    if name is None:
        pytest.skip("no libm to preload alongside the shim")
    return name


@contextmanager
def _server_with_child(
    shim: str, keep: bool
) -> Iterator[tuple[Wrapped, int, str, dict[str, Any]]]:
    """
    Run the server under the shim (LD_PRELOAD also holding another library);
    once bound it execs SHOW_CHILD, which binds the same port if keep.
    """
    other = _other_preload()
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        child = shlex.join(script(SHOW_CHILD, REPORT_FD, str(port) if keep else "0"))
        argv = server("--host", "0.0.0.0", "--port", str(port), "--exec-child", child)
        base = {**os.environ, "LD_PRELOAD": other}
        with wrapped(shim, argv, str(port), keep=keep, base_env=base) as prog:
            assert prog.line() == f"listening {port}"
            words = prog.line().split(" ", 1)
            assert words[0] == "child"
            assert prog.line() == "child-exit 0"
            yield prog, port, other, json.loads(words[1])


def _pipe_name(prog: Wrapped) -> str:
    return f"pipe:[{os.fstat(prog.reports.fd).st_ino}]"


def test_exec_child_is_not_wrapped(shim: str) -> None:
    """
    Without keep, a program the wrapped one execs sees no WSROUTER_ variables, only the other LD_PRELOAD entries,
    and no report fd.
    """
    with _server_with_child(shim, keep=False) as (prog, port, other, child):
        assert child["env"] == {"LD_PRELOAD": other}
        assert child["fd"] != _pipe_name(prog)
        assert prog.report().requested_port == port
        prog.proc.kill()
        prog.wait()
        assert prog.reports.rest() == b""


def test_exec_child_is_wrapped_with_keep(shim: str) -> None:
    """
    With keep, an exec'd program inherits the variables, LD_PRELOAD and report fd, and its own bind is moved and
    reported.
    """
    with _server_with_child(shim, keep=True) as (prog, port, other, child):
        assert child["env"] == {
            "LD_PRELOAD": f"{shim}:{other}",
            ENV_PORTS: str(port),
            ENV_FD: str(prog.report_fd),
            ENV_KEEP: "1",
        }
        assert child["fd"] == _pipe_name(prog)
        assert child["bound"] == port
        server_report, child_report = prog.report(), prog.report()
        assert server_report.requested_port == child_report.requested_port == port
        assert server_report.port != child_report.port


# --- shim_environment ---------------------------------------------------------


def test_shim_environment_builds_a_new_env() -> None:
    """
    shim_environment returns a new dict with the shim first in LD_PRELOAD, other entries kept, stale variables
    dropped and the base untouched.
    """
    base = {"PATH": "/bin", "LD_PRELOAD": "liba.so libb.so:libc2.so", ENV_KEEP: "1"}
    before = dict(base)
    env = shim_environment("5900,5901", 7, base_env=base, shim="/opt/x/rebind.so")
    assert base == before
    assert env == {
        "PATH": "/bin",
        "LD_PRELOAD": "/opt/x/rebind.so:liba.so:libb.so:libc2.so",
        ENV_PORTS: "5900,5901",
        ENV_FD: "7",
    }
    kept = shim_environment(ALL_PORTS, 3, True, base_env={}, shim="/opt/x/rebind.so")
    assert kept == {"LD_PRELOAD": "/opt/x/rebind.so", ENV_PORTS: "*", ENV_FD: "3", ENV_KEEP: "1"}


@pytest.mark.parametrize("ports", ["", "0", "70000", "1,,2", "5900,", "*,5900", " 5900", "x"])
def test_shim_environment_rejects_bad_ports(ports: str) -> None:
    """Malformed port lists are refused before any child is started."""
    with pytest.raises(ValueError, match="ports"):
        shim_environment(ports, 3, base_env={}, shim="/opt/rebind.so")


def test_shim_environment_rejects_unpreloadable_path() -> None:
    """A shim path with a colon or space, which LD_PRELOAD would split, is refused with advice."""
    with pytest.raises(ShimUnavailable, match="XDG_CACHE_HOME"):
        shim_environment("80", 3, base_env={}, shim="/home/a b/rebind.so")


# --- parse_report_line --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "report"),
    [
        (b"bound 5900 127.0.0.1 41234\n", ShimReport(5900, "127.0.0.1", 41234, None)),
        (b"bound 23 ::1 5\n", ShimReport(23, "::1", 5, None)),
        (b"bound 23 ::1 5", ShimReport(23, "::1", 5, None)),
        (b"failed 5900 EADDRINUSE\n", ShimReport(5900, None, None, "EADDRINUSE")),
        (b"failed 5900 98\n", ShimReport(5900, None, None, "98")),
        (b"", None),
        (b"\n", None),
        (b"hello world\n", None),
        (b"bound 5900 10.0.0.1 41234\n", None),
        (b"bound 5900 localhost 41234\n", None),
        (b"bound 5900 127.0.0.1 0\n", None),
        (b"bound 0 127.0.0.1 41234\n", None),
        (b"bound 5900 127.0.0.1 70000\n", None),
        (b"bound 5900 127.0.0.1 41234 extra\n", None),
        (b"bound 5900 127.0.0.1 41234\n\n", None),
        (b"failed 5900\n", None),
        (b"bound 5900 unix /run/user/0/wsrouter-x/4-5900-12-1.sock\n",
         ShimReport(5900, None, None, None, path="/run/user/0/wsrouter-x/4-5900-12-1.sock")),
        (b"bound 0 unix /tmp/d/4-0-1-1.sock\n", None),
        (b"bound 5900 unix relative/4-5900-1-1.sock\n", None),
        (b"bound 5900 unix /tmp/d/../4-5900-1-1.sock\n", None),
        (b"bound 5900 unix /tmp/d/with space.sock\n", None),
        (b"bound 5900 unix /tmp/d/" + b"x" * 120 + b"\n", None),
        (b"failed 5900 eaddrinuse\n", None),
    ],
)
def test_parse_report_line(line: bytes, report: ShimReport | None) -> None:
    """Well-formed lines naming loopback parse; anything else is None, never an exception."""
    assert parse_report_line(line) == report


def test_report_ok() -> None:
    """A report is ok exactly when it carries no error."""
    assert ShimReport(1, "::1", 2, None).ok
    assert not ShimReport(1, None, None, "EINVAL").ok


# --- find_shim ----------------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for the installed package directory, and an empty cache."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.setattr(rebind, "_package_files", lambda: pkg)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return pkg


def test_find_shim_prefers_the_installed_one(package: Path, shim: str) -> None:
    """A built shim next to the package is used as it is."""
    shutil.copy(shim, package / "rebind.so")
    assert find_shim() == str(package / "rebind.so")


def test_find_shim_builds_into_cache(package: Path, tmp_path: Path) -> None:
    """
    Without a usable installed shim (here an empty build), one is compiled into the cache under the source's hash,
    and then reused.
    """
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shutil.copy(SOURCE, package / "rebind.c")
    (package / "rebind.so").write_bytes(b"\x7fELF stale build of an empty file")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    expected = tmp_path / "cache" / "wsrouter" / f"rebind-{digest}.so"
    assert find_shim() == str(expected)
    assert [p.name for p in expected.parent.iterdir()] == [expected.name]  # no temp left
    with held_port("4", "127.0.0.1") as holder:
        port = holder.getsockname()[1]
        with wrapped(str(expected), script(BIND_TWICE, str(port)), str(port)) as prog:
            assert prog.report().host == "127.0.0.1"
    mtime = expected.stat().st_mtime_ns
    assert find_shim() == str(expected)
    assert expected.stat().st_mtime_ns == mtime


def test_find_shim_without_compiler(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no shim and no compiler, ShimUnavailable says what to install."""
    shutil.copy(SOURCE, package / "rebind.c")
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ShimUnavailable) as caught:
        find_shim()
    message = str(caught.value)
    assert "no C compiler was found" in message
    assert "apt-get install gcc" in message
    assert "wheel" in message


def test_find_shim_reports_compiler_errors(package: Path) -> None:
    """When compiling fails, ShimUnavailable carries the compiler's complaint and advice."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    (package / "rebind.c").write_text('#error "headers missing"\n')
    with pytest.raises(ShimUnavailable, match=r"headers missing.*libc6-dev"):
        find_shim()


def test_find_shim_without_source(package: Path) -> None:
    """With neither shim nor source, ShimUnavailable asks for a reinstall."""
    with pytest.raises(ShimUnavailable, match="reinstall wsrouter"):
        find_shim()


def test_find_shim_unwritable_cache(package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache directory that cannot be created gives ShimUnavailable, not an OSError."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shutil.copy(SOURCE, package / "rebind.c")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(ShimUnavailable, match="XDG_CACHE_HOME"):
        find_shim()


def test_errno_is_used_by_name() -> None:
    """The errno names the shim writes are the standard ones the router can look up."""
    names = set(re.findall(r'return "(E[A-Z]+)"', SOURCE.read_text()))
    assert names and all(hasattr(errno, name) for name in names)


# --- private mode ---------------------------------------------------------------

PROBE_SOURCE = Path(__file__).parent / "programs" / "accept_probe.c"


@pytest.fixture(scope="session")
def accept_probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/programs/accept_probe.c, compiled: a plain C server calling accept(), getsockname, getpeername."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("probe") / "accept_probe"
    result = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-o", str(out), str(PROBE_SOURCE)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return str(out)


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """
    A directory only this user can enter, as the router makes for a program; in the system temp dir, as pytest's
    are too long to hold a Unix socket name.
    """
    path = Path(tempfile.mkdtemp(prefix="wsr-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def sockets_in(path: Path) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if entry.is_socket())


def unix_talk(path: str, name: str | None = None) -> bytes:
    """Connect to a Unix socket (from one bound to name, if given) and read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        if name is not None:
            conn.bind(name)
        conn.connect(path)
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


PRIVATE_MOVES = [
    pytest.param("4", "0.0.0.0", "4", "127.0.0.1", socket.AF_INET, id="ipv4-any"),
    pytest.param("6", "::", "6", "::1", socket.AF_INET6, id="ipv6-any", marks=needs_ipv6),
    pytest.param("dual", "::ffff:0.0.0.0", "m", "::ffff:127.0.0.1", socket.AF_INET6, id="ipv4-mapped",
                 marks=needs_ipv6),
]


@pytest.mark.parametrize(("family", "host", "tag", "loopback", "domain"), PRIVATE_MOVES)
def test_private_mode_replaces_the_socket_with_a_unix_one(
    shim: str, accept_probe: str, private_dir: Path, family: str, host: str, tag: str, loopback: str, domain: int
) -> None:
    """
    In private mode a C server's TCP bind becomes a Unix socket in the directory, on the same fd with its flags,
    while getsockname, accept, getpeername, TCP_NODELAY and SO_DOMAIN all still look like TCP.
    """
    with held_port(family, host) as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, [accept_probe, family, host, str(port)], str(port), private_dir=str(private_dir)) as prog:
            report = prog.report()
            assert report.path is not None and report.host is None and report.port is None
            assert Path(report.path).parent == private_dir
            assert re.fullmatch(rf"{tag}-{port}-{prog.proc.pid}-1\.sock", Path(report.path).name)
            assert sockets_in(private_dir) == [Path(report.path)]
            assert prog.line() == f"listening {host} {port} nonblock=1 cloexec=1"
            assert unix_talk(report.path) == b"hi\n"
            accepted = prog.line().split()
            assert accepted[0:2] == ["accepted", loopback]
            assert 1024 <= int(accepted[2]) <= 65535  # a made-up peer port, looking like an ephemeral one
            assert accepted[3:] == ["local", loopback, str(port), "peer", loopback, accepted[2],
                                    "nodelay=0", f"domain={int(domain)}"]
            assert prog.wait() == 0
            assert_port_reaches(holder, "127.0.0.1" if family != "6" else "::1", port)


PYTHON_ACCEPT = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.listen(1)
print("listening", sock.getsockname()[1], flush=True)
conn, peer = sock.accept()   # accept4() in CPython
print("accepted", peer[0], conn.getpeername()[0], conn.getsockname()[1], flush=True)
conn.sendall(b"py\n")
conn.close()
"""


def test_private_mode_fakes_accept4(shim: str, private_dir: Path) -> None:
    """accept4(), which CPython and many servers call instead of accept(), also reports a loopback TCP peer."""
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, script(PYTHON_ACCEPT, str(port)), str(port), private_dir=str(private_dir)) as prog:
            report = prog.report()
            assert report.path is not None
            assert prog.line() == f"listening {port}"
            assert unix_talk(report.path) == b"py\n"
            assert prog.line() == f"accepted 127.0.0.1 127.0.0.1 {port}"


@needs_root
def test_private_socket_refuses_another_user(shim: str, private_dir: Path) -> None:
    """
    A process of another uid cannot connect to the moved socket (EACCES from the 0700 directory, even when the
    program's umask leaves the socket file itself open to all); this user can, and so could the other user if the
    directory were open.
    """
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        argv = server("--host", "0.0.0.0", "--port", str(port), "--banner", "hi")
        with wrapped(shim, argv, str(port), private_dir=str(private_dir), umask=0) as prog:
            report = prog.report()
            assert report.path is not None
            assert prog.line() == f"listening {port}"
            assert Path(report.path).stat().st_mode & 0o777 == 0o777
            assert connect_as_other_user(report.path) == errno.EACCES
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT)
                conn.connect(report.path)
                assert conn.recv(10) == b"hi\n"
            private_dir.chmod(0o711)  # the control: only the directory stood in the way
            assert connect_as_other_user(report.path) == 0


def test_private_mode_leaves_other_binds_alone(shim: str, private_dir: Path) -> None:
    """In private mode, UDP and unlisted TCP binds still pass through to real ports, with nothing in the directory."""
    udp = unused_port(socket.SOCK_DGRAM)
    argv = server("--host", "127.0.0.1", "--port", str(udp), "--udp", "--exit-after", "1")
    with wrapped(shim, argv, ALL_PORTS, private_dir=str(private_dir)) as prog:
        assert prog.line() == f"listening {udp}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"datagram", ("127.0.0.1", udp))
            assert client.recvfrom(100)[0] == b"datagram"
        prog.assert_no_reports()
    tcp = unused_port()
    argv = server("--host", "127.0.0.1", "--port", str(tcp), "--banner", "direct", "--exit-after", "1")
    with wrapped(shim, argv, str(tcp + 1 if tcp < 65535 else tcp - 1), private_dir=str(private_dir)) as prog:
        assert prog.line() == f"listening {tcp}"
        assert talk("127.0.0.1", tcp) == (b"direct\n", b"")
        prog.assert_no_reports()
    assert sockets_in(private_dir) == []


BIND_THEN_ANY = r"""
import errno, socket, sys
sock = socket.socket()
try:
    sock.bind(("0.0.0.0", int(sys.argv[1])))
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
sock.bind(("127.0.0.1", 0))
print(sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN), flush=True)
"""


def test_private_mode_failed_bind_keeps_the_tcp_socket(shim: str, private_dir: Path) -> None:
    """A private directory that does not exist fails the bind (reported, returned), leaving a usable TCP socket."""
    missing = private_dir / "missing"
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, script(BIND_THEN_ANY, str(port)), str(port), private_dir=str(missing)) as prog:
            assert prog.report() == ShimReport(port, None, None, "ENOENT")
            assert prog.line() == "ENOENT"
            assert prog.line() == str(socket.AF_INET)  # the same socket, still TCP, binds port 0
            assert sockets_in(private_dir) == []


def test_private_dir_too_long_is_refused(shim: str) -> None:
    """A directory too long for a Unix socket name inside it is refused at start-up, with a message, moving nothing."""
    port = unused_port()
    argv = server("--host", "127.0.0.1", "--port", str(port), "--banner", "direct", "--exit-after", "1")
    env = shim_environment(str(port), 2, base_env=os.environ, shim=shim, private_dir="/" + "d" * 90)
    result = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert result.stdout is not None and result.stdout.readline() == f"listening {port}\n".encode()
        assert talk("127.0.0.1", port) == (b"direct\n", b"")
        _, err = result.communicate(timeout=TIMEOUT)
    finally:
        _stop(result)
    assert f"{ENV_DIR}=/ddd".encode() in err and b"binds are not moved" in err


def test_shim_environment_sets_the_private_dir() -> None:
    """shim_environment passes an absolute private directory, drops a stale one, and refuses a relative one."""
    env = shim_environment("23", 3, base_env={ENV_DIR: "/stale"}, shim="/x/rebind.so", private_dir="/run/p")
    assert env[ENV_DIR] == "/run/p"
    assert ENV_DIR not in shim_environment("23", 3, base_env={ENV_DIR: "/stale"}, shim="/x/rebind.so")
    with pytest.raises(ValueError, match="absolute"):
        shim_environment("23", 3, base_env={}, shim="/x/rebind.so", private_dir="run/p")


def test_find_shim_skips_a_build_from_before_private_mode(package: Path, tmp_path: Path) -> None:
    """An installed shim without private mode (it would silently bind loopback ports) is passed over for a new build."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shutil.copy(SOURCE, package / "rebind.c")
    (package / "rebind.so").write_bytes(b"\x7fELF old build: " + ENV_FD.encode() + b"\0" + ENV_PORTS.encode() + b"\0")
    assert Path(find_shim()).parent == tmp_path / "cache" / "wsrouter"


CLIENTS = [
    pytest.param("4", "0.0.0.0", "192.0.2.7", "192.0.2.7", id="ipv4-client-ipv4-socket"),
    pytest.param("6", "::", "192.0.2.7", "::ffff:192.0.2.7", id="ipv4-client-ipv6-socket", marks=needs_ipv6),
    pytest.param("dual", "::ffff:0.0.0.0", "192.0.2.7", "::ffff:192.0.2.7", id="ipv4-client-mapped",
                 marks=needs_ipv6),
    pytest.param("6", "::", "2001:db8::1", "2001:db8::1", id="ipv6-client-ipv6-socket", marks=needs_ipv6),
    pytest.param("4", "0.0.0.0", "2001:db8::1", None, id="ipv6-client-ipv4-socket"),
]


@pytest.mark.parametrize(("family", "host", "client", "shown"), CLIENTS)
def test_private_mode_shows_the_client_the_router_names(
    shim: str, accept_probe: str, private_dir: Path, family: str, host: str, client: str, shown: str | None
) -> None:
    """
    A connection from a socket bound to the abstract name "wsrouter-peer IP PORT NONCE" shows that client to accept()
    and getpeername() (IPv4 as ::ffff: on IPv6 sockets); an IPv6 client on an IPv4 socket falls back to loopback.
    """
    with held_port(family, host) as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, [accept_probe, family, host, str(port)], str(port), private_dir=str(private_dir)) as prog:
            report = prog.report()
            assert report.path is not None
            prog.line()
            assert unix_talk(report.path, f"\0{PEER_PREFIX}{client} 4242 0123abcd") == b"hi\n"
            accepted = prog.line().split()
            if shown is None:
                assert accepted[1] == "127.0.0.1" and accepted[2] != "4242"
            else:
                assert accepted[1:3] == [shown, "4242"]
            assert accepted[6:9] == ["peer", *accepted[1:3]]


@pytest.mark.parametrize("name", [
    "\0wsrouter-peer 192.0.2.7",
    "\0wsrouter-peer 192.0.2.7 70000 x",
    "\0wsrouter-peer 192.0.2.7 42x y",
    "\0wsrouter-peer host.example 42 x",
    "\0someone-else 192.0.2.7 42 x",
])
def test_private_mode_ignores_other_peer_names(shim: str, accept_probe: str, private_dir: Path, name: str) -> None:
    """A peer name that is not a well-formed client address leaves the loopback stand-in."""
    with held_port("4", "0.0.0.0") as holder:
        port = holder.getsockname()[1]
        with wrapped(shim, [accept_probe, "4", "0.0.0.0", str(port)], str(port), private_dir=str(private_dir)) as prog:
            report = prog.report()
            assert report.path is not None
            prog.line()
            assert unix_talk(report.path, name) == b"hi\n"
            assert prog.line().split()[1] == "127.0.0.1"
