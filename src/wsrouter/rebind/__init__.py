"""
Find the C{rebind.so} LD_PRELOAD shim and speak its environment protocol.

The router runs an unmodified TCP server with the shim preloaded; the shim
moves the server's listening socket to a Unix socket in a private directory
(or, in loopback mode, to loopback on a port the kernel picks) and writes
where it went to an inherited pipe (C{rebind.c} documents the protocol).
This module finds a usable shim (shipped next to this file, or compiled
once into the user's cache), builds the child's environment and parses the
report lines. It imports nothing from Twisted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from attrs import frozen

__all__ = [
    "ALL_PORTS",
    "ENV_DIR",
    "ENV_FD",
    "ENV_KEEP",
    "ENV_PORTS",
    "ENV_PROTO",
    "PEER_PREFIX",
    "ShimReport",
    "ShimUnavailable",
    "find_shim",
    "parse_report_line",
    "shim_environment",
]

#: Comma-separated TCP ports to move, or L{ALL_PORTS}.
ENV_PORTS = "WSROUTER_REBIND_PORTS"
#: Decimal number of the inherited, writable fd that receives report lines.
ENV_FD = "WSROUTER_REBIND_FD"
#: "1" keeps the shim (and the fd) in programs the wrapped program execs.
ENV_KEEP = "WSROUTER_REBIND_KEEP"
#: A private directory (mode 0700): moved sockets become Unix sockets there.
ENV_DIR = "WSROUTER_REBIND_DIR"
#: "udp": move a UDP server's binds (always to a loopback port) instead of TCP listeners.
ENV_PROTO = "WSROUTER_REBIND_PROTO"
#: The abstract Unix socket name prefix under which the router passes a
#: WebSocket client's address to a program on a private socket:
#: C{"\0" + PEER_PREFIX + "<ip> <port> <nonce>"}.
PEER_PREFIX = "wsrouter-peer "
#: Move every TCP bind to a non-zero port, for when the port is not known.
ALL_PORTS = "*"

SHIM_NAME = "rebind.so"
SOURCE_NAME = "rebind.c"
#: Seconds a cache build may take before it is given up.
COMPILE_TIMEOUT = 120.0

# A string the shim binary must contain: tells a real build from a stale or
# empty one (such as a build of an empty source file, or one from before
# private mode or UDP, which would silently bind loopback ports or not move UDP).
_SHIM_MARKER = ENV_PROTO.encode("ascii") + b"\0"
_PORTS_PATTERN = re.compile(r"\*|[0-9]{1,5}(,[0-9]{1,5})*")
_BOUND_LINE = re.compile(rb"bound ([0-9]{1,5}) ([0-9a-fA-F.:]+) ([0-9]{1,5})")
_UNIX_LINE = re.compile(rb"bound ([0-9]{1,5}) unix (/[A-Za-z0-9._/+-]{1,107})")
_FAILED_LINE = re.compile(rb"failed ([0-9]{1,5}) ([A-Z][A-Z0-9]*|[0-9]+)")
# ld.so splits LD_PRELOAD on both.
_PRELOAD_SEPARATORS = re.compile(r"[ :]+")


class ShimUnavailable(Exception):
    """
    No usable rebind.so could be found or built; the message says what to
    install or change, so it can be shown to the user as it is.
    """


@frozen
class ShimReport:
    """
    One line the shim wrote: where a requested port was moved, or why the
    moved bind failed (the program saw the same error).

    @ivar requested_port: the port the program asked for.
    @ivar host: the loopback address now bound (C{127.0.0.1} or C{::1}), or
        C{None} if the bind failed or went to a Unix socket.
    @ivar port: the port now bound, or C{None} if the bind failed or went to
        a Unix socket.
    @ivar error: the errno name (such as C{EADDRINUSE}) or number of a failed
        bind, or C{None}.
    @ivar path: the Unix socket the bind went to (private mode), or C{None}.
    """

    requested_port: int
    host: str | None
    port: int | None
    error: str | None
    path: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_report_line(line: bytes) -> ShimReport | None:
    """
    Parse one report line (with or without its newline).

    Returns C{None} for anything that is not a well-formed line naming a
    loopback address: in keep mode any program in the tree can write to the
    pipe, and a garbled line must never make the router connect elsewhere.
    """
    text = line[:-1] if line.endswith(b"\n") else line
    unix = _UNIX_LINE.fullmatch(text)
    if unix is not None:
        path = unix.group(2).decode("ascii")
        if not _valid_port(int(unix.group(1))) or "/../" in path or path.endswith("/.."):
            return None
        return ShimReport(int(unix.group(1)), None, None, None, path=path)
    bound = _BOUND_LINE.fullmatch(text)
    if bound is not None:
        requested, port = int(bound.group(1)), int(bound.group(3))
        host = _loopback_host(bound.group(2))
        if host is None or not (_valid_port(requested) and _valid_port(port)):
            return None
        return ShimReport(requested, host, port, None)
    failed = _FAILED_LINE.fullmatch(text)
    if failed is not None and _valid_port(int(failed.group(1))):
        return ShimReport(int(failed.group(1)), None, None, failed.group(2).decode("ascii"))
    return None


def _valid_port(port: int) -> bool:
    return 1 <= port <= 65535


def _loopback_host(raw: bytes) -> str | None:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        return None
    return str(address) if address.is_loopback else None


def shim_environment(
    ports: str,
    report_fd: int,
    keep: bool = False,
    *,
    base_env: Mapping[str, str],
    shim: str | None = None,
    private_dir: str | None = None,
    protocol: str = "tcp",
) -> dict[str, str]:
    """
    Return a new environment for a child run under the shim.

    The caller passes the environment to start from explicitly, and
    C{os.environ} is never changed, so the shim reaches only this child.
    The shim is put first in C{LD_PRELOAD}, keeping other entries; stale
    C{WSROUTER_REBIND_*} variables in C{base_env} are dropped.

    @param ports: comma-separated ports (C{"5900"}, C{"6000,6001"}) or
        L{ALL_PORTS}.
    @param report_fd: the child's fd number for the write end of the report
        pipe (pass it with C{pass_fds} or Twisted's C{childFDs}).
    @param keep: wrap programs the child execs too (scripts that exec the
        real server); they also inherit the report fd.
    @param shim: path of the shim; L{find_shim} by default, which may
        compile it.
    @param private_dir: a directory only the router's user can enter: the
        moved sockets become Unix sockets there (see L{wsrouter.rebind.private});
        C{None} moves them to loopback ports.
    @param protocol: C{"udp"} moves a UDP server's binds (to a loopback
        port, whatever C{private_dir}) instead of TCP listeners.
    @raise ValueError: C{ports} or C{report_fd} is malformed.
    @raise ShimUnavailable: no usable shim, or its path cannot be preloaded.
    """
    if _PORTS_PATTERN.fullmatch(ports) is None or not all(
        _valid_port(int(p)) for p in ports.split(",") if p != ALL_PORTS
    ):
        raise ValueError(f'ports must be "*" or comma-separated ports 1-65535, not {ports!r}')
    if report_fd < 0:
        raise ValueError(f"report_fd must be a file descriptor number, not {report_fd}")
    path = find_shim() if shim is None else shim
    if _PRELOAD_SEPARATORS.search(path) is not None:
        raise ShimUnavailable(
            f"the shim's path {path!r} contains a space or colon, which LD_PRELOAD "
            "cannot hold: set XDG_CACHE_HOME to a directory without them"
        )
    if private_dir is not None and not os.path.isabs(private_dir):
        raise ValueError(f"private_dir must be an absolute path, not {private_dir!r}")
    env = {k: v for k, v in base_env.items() if k not in (ENV_PORTS, ENV_FD, ENV_KEEP, ENV_DIR, ENV_PROTO)}
    others = [e for e in _PRELOAD_SEPARATORS.split(env.get("LD_PRELOAD", "")) if e and e != path]
    env["LD_PRELOAD"] = ":".join([path, *others])
    env[ENV_PORTS] = ports
    env[ENV_FD] = str(report_fd)
    if keep:
        env[ENV_KEEP] = "1"
    if private_dir is not None:
        env[ENV_DIR] = private_dir
    if protocol == "udp":
        env[ENV_PROTO] = "udp"
    return env


def find_shim() -> str:
    """
    Return the path of a usable rebind.so.

    The one installed next to this module comes first (wheels and
    C{make install} put it there). Otherwise the shim is compiled from the
    packaged C{rebind.c} into C{$XDG_CACHE_HOME/wsrouter} (or
    C{~/.cache/wsrouter}) under a name carrying the source's hash, so an
    upgrade never uses a stale build. Compiling blocks for up to
    L{COMPILE_TIMEOUT} seconds: call this at start-up, not per session.

    @raise ShimUnavailable: with a message saying what to install.
    """
    package = _package_files()
    shipped = package / SHIM_NAME
    if isinstance(shipped, Path) and _is_usable(shipped):
        return str(shipped)
    return str(_cached_shim(package))


def _package_files() -> Traversable:
    """Where the shim and its source are installed (a seam for tests)."""
    return resources.files(__name__)


def _is_usable(path: Path) -> bool:
    try:
        return path.is_file() and _SHIM_MARKER in path.read_bytes()
    except OSError:
        return False


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore relative paths
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError as e:
            raise ShimUnavailable(
                "rebind.so is missing and there is no cache directory to build it in: "
                "set XDG_CACHE_HOME or HOME"
            ) from e
    return Path(base) / "wsrouter"


def _find_compiler() -> str | None:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def _cached_shim(package: Traversable) -> Path:
    try:
        source = (package / SOURCE_NAME).read_bytes()
    except OSError as e:
        raise ShimUnavailable(
            f"rebind.so is missing and so is its source {SOURCE_NAME}: reinstall wsrouter"
        ) from e
    target = _cache_dir() / f"rebind-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if _is_usable(target):
        return target
    compiler = _find_compiler()
    if compiler is None:
        raise ShimUnavailable(
            "rebind.so is missing and no C compiler was found: install gcc "
            "(Debian: apt-get install gcc libc6-dev) or reinstall wsrouter from a wheel"
        )
    _compile(compiler, source, target)
    return target


def _compile(compiler: str, source: bytes, target: Path) -> None:
    """
    Build into a temporary file beside C{target}, then rename it into place,
    so a concurrent router never loads a half-written file.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            src = Path(tmp) / SOURCE_NAME
            out = Path(tmp) / SHIM_NAME
            src.write_bytes(source)
            command = [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"]
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False
            )
            if result.returncode != 0:
                raise ShimUnavailable(
                    f"rebind.so is missing and compiling it with {compiler} failed: "
                    f"{_tail(result.stderr)}; install the C library headers "
                    "(Debian: apt-get install libc6-dev) or reinstall wsrouter from a wheel"
                )
            os.replace(out, target)
    except subprocess.TimeoutExpired as e:
        raise ShimUnavailable(
            f"rebind.so is missing and compiling it with {compiler} took over "
            f"{COMPILE_TIMEOUT:g} seconds: reinstall wsrouter from a wheel"
        ) from e
    except OSError as e:
        raise ShimUnavailable(
            f"rebind.so is missing and could not be built in {target.parent}: {e}; "
            "set XDG_CACHE_HOME to a writable directory or reinstall wsrouter from a wheel"
        ) from e


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " / ".join(kept) or "no error output"
