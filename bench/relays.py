"""Start and stop the processes under test: the relays and the targets helper.

Every process here is started by us and stopped by its PID only.  A relay's
per-connection children (websockify forks one per connection) are found through the
``/proc`` parent chain and, if any outlive their parent, killed by PID after checking
their start time so a recycled PID is never hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import proctree

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
STDERR_TAIL_BYTES = 2000


class BenchError(Exception):
    """A benchmark step failed; the message says what and is printed in the report."""


def child_env() -> dict[str, str]:
    """An explicit environment for child processes (a copy; os.environ is not touched)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def bin_path(name: str) -> list[str]:
    """Command prefix for a console script of this interpreter's environment."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", name]


@dataclass(frozen=True)
class RelaySpec:
    """How to start one relay: ``argv(listen_port, target_port, scratch_dir)``.

    ``scratch_dir`` is an empty directory of the relay's own (e.g. for ``--record``);
    the runner empties it after every measured run and reports how many bytes were in
    it, so recordings neither fill the disk nor outlive the benchmark.
    """

    name: str
    argv: Callable[[int, int, Path], list[str]]


#: Every benchmark connection comes from one loopback address, which the
#: router's per-client limits (a safe default against one client taking
#: everything) would refuse with 429 long before 9,000 sessions; raise them.
_ONE_ADDRESS_LOAD = ("--max-connections", "100000", "--max-connections-per-client", "100000",
                     "--max-handshakes-per-client", "100000000")


def _wsrouter(lport: int, tport: int, *extra: str, src: Path = REPO_DIR / "src") -> list[str]:
    """wsrouter from ``src`` (this checkout's by default, not whatever the venv has
    installed); ``env`` execs Python, so the PID we hold is the relay's."""
    return ["env", f"PYTHONPATH={src}", sys.executable, "-m", "wsrouter", *_ONE_ADDRESS_LOAD, *extra,
            f"{HOST}:{lport}", f"{HOST}:{tport}"]


def add_baseline(src: Path) -> None:
    """Register the ``baseline`` variant: wsrouter from another checkout's ``src`` (an
    earlier commit, for before/after figures from one run), in its own main-table column."""
    RELAYS["baseline"] = RelaySpec("baseline", lambda lport, tport, _s: _wsrouter(lport, tport, src=src))
    VARIANTS["baseline"] = Variant("baseline", "baseline")
    # The same over TLS, in the wss table (with a wsrouter / baseline column).
    RELAYS["baseline+tls"] = RelaySpec("baseline+tls", lambda lport, tport, scratch: _wsrouter(
        lport, tport, *_tls_args(scratch), src=src))
    VARIANTS["baseline+tls"] = Variant("baseline+tls", "baseline+tls", tls=True, extra=True, plain="baseline",
                                       only=TLS_WORKLOADS)


def _websockify(lport: int, tport: int, *extra: str) -> list[str]:
    return [*bin_path("websockify"), *extra, f"{HOST}:{lport}", f"{HOST}:{tport}"]


def cert_files(log_dir: Path) -> tuple[Path, Path]:
    """The benchmark's self-signed certificate and key (for 127.0.0.1) in ``log_dir``."""
    return log_dir / "bench-cert.pem", log_dir / "bench-key.pem"


def make_cert(log_dir: Path) -> tuple[Path, Path]:
    """Make the TLS variants' test certificate with the openssl command (once per run)."""
    cert, key = cert_files(log_dir)
    if cert.exists() and key.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BenchError("the TLS variants need the openssl command (Debian package openssl)")
    out = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=False, timeout=60)
    if out.returncode != 0:
        raise BenchError(f"openssl could not make the test certificate: {out.stderr.decode()[-300:]}")
    return cert, key


def _tls_args(scratch: Path) -> tuple[str, ...]:
    cert, key = cert_files(scratch.parent)
    return ("--cert", str(cert), "--key", str(key))


#: lighttpd's mod_wstunnel: a C event-loop server, one process, the issue's anchor.
LIGHTTPD_CONF = """\
server.document-root = "{scratch}"
server.bind = "{host}"
server.port = {lport}
server.modules = ("mod_wstunnel"{modules})
server.errorlog = "{log}"
server.max-fds = {max_fds}
server.max-connections = {max_conns}
wstunnel.server = ( "" => (( "host" => "{host}", "port" => {tport} )) )
wstunnel.frame-type = "binary"
{tls}"""


def _lighttpd(lport: int, tport: int, scratch: Path, tls: bool = False) -> list[str]:
    """Write a config of its own next to ``scratch`` (not in it: the runner empties it)
    and return lighttpd's command line (``-D``: stays in the foreground, our child)."""
    exe = shutil.which("lighttpd") or "/usr/sbin/lighttpd"
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    tls_lines = ""
    if tls:
        cert, key = cert_files(scratch.parent)
        tls_lines = (f'ssl.engine = "enable"\nssl.pemfile = "{cert}"\nssl.privkey = "{key}"\n')
    conf = scratch.parent / f"{scratch.name}.lighttpd.conf"
    conf.write_text(LIGHTTPD_CONF.format(
        scratch=scratch, host=HOST, lport=lport, tport=tport, log=scratch.parent / f"{scratch.name}.error.log",
        max_fds=soft, max_conns=max(16, soft // 2 - 16), modules=', "mod_openssl"' if tls else "",
        tls=tls_lines))
    return [exe, "-D", "-f", str(conf)]


def _workers(n: int) -> RelaySpec:
    return RelaySpec(f"wsrouter-w{n}", lambda lport, tport, _s: _wsrouter(lport, tport, "--workers", str(n)))


def worker_counts() -> list[int]:
    """N of the ``--workers N`` variants: 2 up to the cores left free by the load client.

    On this 2-core machine that is just 2 (which cannot scale: the client takes a core);
    on a bigger one, every N up to ``cpu_count - 1``.
    """
    return list(range(2, max(2, (os.cpu_count() or 2) - 1) + 1))


RELAYS: dict[str, RelaySpec] = {
    "wsrouter": RelaySpec("wsrouter", lambda lport, tport, _scratch: _wsrouter(lport, tport)),
    "websockify": RelaySpec("websockify", lambda lport, tport, _scratch: _websockify(lport, tport)),
    "lighttpd": RelaySpec("lighttpd", _lighttpd),
    # The least a Twisted relay can do for the same work (bench/floor.py).
    "floor": RelaySpec("floor", lambda lport, tport, _scratch: [
        sys.executable, str(REPO_DIR / "bench" / "floor.py"), str(lport), str(tport)]),
    "wsrouter+tls": RelaySpec("wsrouter+tls", lambda lport, tport, scratch: _wsrouter(
        lport, tport, *_tls_args(scratch))),
    "websockify+tls": RelaySpec("websockify+tls", lambda lport, tport, scratch: _websockify(
        lport, tport, *_tls_args(scratch))),
    "lighttpd+tls": RelaySpec("lighttpd+tls", lambda lport, tport, scratch: _lighttpd(
        lport, tport, scratch, tls=True)),
    **{f"wsrouter-w{n}": _workers(n) for n in worker_counts()},
    # wsrouter writes one JSON Lines file per session into the directory.
    "wsrouter+record": RelaySpec(
        "wsrouter+record",
        lambda lport, tport, scratch: _wsrouter(lport, tport, "--record", str(scratch)),
    ),
    # websockify writes FILE.<session number> per session (frames as a JavaScript array).
    "websockify+record": RelaySpec(
        "websockify+record",
        lambda lport, tport, scratch: _websockify(lport, tport, "--record", str(scratch / "session")),
    ),
}


@dataclass(frozen=True)
class Variant:
    """One column of the benchmark: a relay (or none: the direct ceiling) and a client mode.

    ``extra`` variants (recording, base64) run fewer rounds, skip the concurrency
    workloads, and are reported in a table of their own against their plain relay.
    """

    name: str
    relay: str | None  # key in RELAYS; None for direct
    base64: bool = False  # the client offers only the "base64" subprotocol
    extra: bool = False
    plain: str = ""  # the variant this one is compared with (extra variants)
    tls: bool = False  # the client speaks TLS (wss://)
    only: tuple[str, ...] = ()  # the workloads it runs (empty: all)
    offer: tuple[str, ...] = ()  # subprotocols the client offers

    def runs(self, workload: str) -> bool:
        return not self.only or workload in self.only


#: The workloads the TLS variants run: streams, echoes, churn.
TLS_WORKLOADS = ("upstream", "downstream", "round_trips", "pipelined", "churn")

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("wsrouter", "wsrouter"),
    Variant("websockify", "websockify"),
    # mod_wstunnel answers every handshake with "Sec-WebSocket-Protocol: binary"
    # (its frame-type), so the client offers it to keep the handshake valid.
    Variant("lighttpd", "lighttpd", offer=("binary",)),
    Variant("direct", None),
    Variant("floor", "floor"),
    Variant("wsrouter+tls", "wsrouter+tls", tls=True, extra=True, plain="wsrouter", only=TLS_WORKLOADS),
    Variant("websockify+tls", "websockify+tls", tls=True, extra=True, plain="websockify",
            only=TLS_WORKLOADS),
    Variant("lighttpd+tls", "lighttpd+tls", tls=True, extra=True, plain="lighttpd", only=TLS_WORKLOADS,
            offer=("binary",)),
    *(Variant(f"wsrouter-w{n}", f"wsrouter-w{n}", extra=True, plain="wsrouter", only=("fanin",))
      for n in worker_counts()),
    Variant("wsrouter+record", "wsrouter+record", extra=True, plain="wsrouter"),
    Variant("wsrouter+base64", "wsrouter", base64=True, extra=True, plain="wsrouter"),
    Variant("websockify+record", "websockify+record", extra=True, plain="websockify"),
    Variant("websockify+base64", "websockify", base64=True, extra=True, plain="websockify"),
)}


def empty_dir(path: Path) -> int:
    """Delete every file under ``path`` (keeping the directories); return their total size."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            f = Path(dirpath) / name
            try:
                total += f.stat().st_size
                f.unlink()
            except FileNotFoundError:
                pass
    return total


def port_open(port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on HOST:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class PortPool:
    """Hands out listen ports from a fixed range, skipping ones something already listens on.

    The relays take their port on the command line, so we cannot let the kernel pick
    (port 0).  Binding a probe socket and closing it is racy; instead we move through a
    range and let a relay that fails to bind report it (the caller then tries the next).
    """

    def __init__(self, base: int, size: int = 400) -> None:
        self.base = base
        self.size = size
        self.next = 0

    def take(self) -> int:
        for _ in range(self.size):
            port = self.base + self.next % self.size
            self.next += 1
            if not port_open(port, 0.2):
                return port
        raise BenchError(f"no free port in {self.base}..{self.base + self.size - 1}")


def tail(path: Path, nbytes: int = STDERR_TAIL_BYTES) -> str:
    """The last ``nbytes`` of a log file, decoded leniently."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", "replace").strip()
    except OSError as e:
        return f"(no log: {e})"


class Relay:
    """One running relay process listening on ``port`` and forwarding to ``target_port``."""

    def __init__(self, spec: RelaySpec, port: int, target_port: int, log_dir: Path) -> None:
        self.spec = spec
        self.port = port
        self.target_port = target_port
        self.log = log_dir / f"{spec.name}-{port}.log"
        self.scratch = log_dir / f"{spec.name}-{port}.d"
        self.scratch.mkdir(exist_ok=True)
        argv = spec.argv(port, target_port, self.scratch)
        self.argv = argv
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=REPO_DIR,
                env=child_env(),
            )
        self.pid = self.proc.pid
        self._descendants: list[tuple[int, int]] = []

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll the listen port until it accepts, or raise BenchError with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.spec.name} failed to start (exit {self.proc.returncode}): {tail(self.log)}"
                )
            if port_open(self.port, 0.5):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.spec.name} failed to start: port {self.port} not open after "
                         f"{timeout_s:.0f} s: {tail(self.log)}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe_death(self) -> str:
        return f"{self.spec.name} exited with {self.proc.returncode}: {tail(self.log)}"

    def take_scratch(self) -> int:
        """Empty the scratch directory; return how many bytes the relay had written there."""
        return empty_dir(self.scratch)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; then any orphaned descendants.

        The scratch directory goes too.
        """
        self.terminate()
        self.finish_stop()

    def terminate(self) -> None:
        """First half of :meth:`stop`: note the descendants, send SIGTERM; does not wait."""
        self._descendants = [
            (st.pid, st.starttime) for st in proctree.tree(self.pid, proctree.all_stats())[1:]
        ]
        if self.proc.poll() is None:
            self.proc.terminate()

    def finish_stop(self) -> None:
        """Second half of :meth:`stop`: wait (SIGKILL after the grace period), clean up."""
        stop_process(self.proc)
        for pid, starttime in self._descendants:
            st = proctree.read_stat(pid)
            if st is not None and st.starttime == starttime and st.state != "Z":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.scratch, ignore_errors=True)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = STOP_TIMEOUT_S) -> None:
    """Terminate one process we started, by PID, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


def stop_relays(started: list[Relay]) -> None:
    """Stop several relays; their shutdowns overlap."""
    for relay in started:
        relay.terminate()
    for relay in started:
        relay.finish_stop()


def start_relays(wanted: list[tuple[RelaySpec, int]], ports: PortPool,
                 log_dir: Path) -> list[Relay | BenchError]:
    """Start several relays (spec, target port) at once, so their start-ups (mostly imports)
    overlap; each entry of the result is the running relay or why it did not start."""
    spawned = [Relay(spec, ports.take(), tport, log_dir) for spec, tport in wanted]
    out: list[Relay | BenchError] = []
    for (spec, tport), relay in zip(wanted, spawned, strict=True):
        try:
            relay.wait_ready()
            out.append(relay)
            continue
        except BenchError as e:
            relay.stop()
            if "in use" not in str(e).lower():
                out.append(e)
                continue
        try:
            out.append(start_relay(spec, tport, ports, log_dir))
        except BenchError as e:
            out.append(e)
    return out


def start_relay(spec: RelaySpec, target_port: int, ports: PortPool, log_dir: Path) -> Relay:
    """Start a relay and wait until it listens; retries on a new port if binding lost a race."""
    last: BenchError | None = None
    for _ in range(3):
        relay = Relay(spec, ports.take(), target_port, log_dir)
        try:
            relay.wait_ready()
            return relay
        except BenchError as e:
            relay.stop()
            last = e
            if "in use" not in str(e).lower():
                break
    raise last if last is not None else BenchError(f"{spec.name} failed to start")


class TargetsProcess:
    """The ``targets.py`` helper: ports of each target, and its JSON-lines control channel."""

    def __init__(self, log_dir: Path) -> None:
        self.log = log_dir / "targets.log"
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "targets.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logf,
                cwd=BENCH_DIR,
                env=child_env(),
            )
        self.pid = self.proc.pid
        self._buf = b""
        first = self._read_line(START_TIMEOUT_S)
        self.ports: dict[str, int] = first["ports"]
        self.nofile: tuple[int, int] = tuple(first["nofile"])  # type: ignore[assignment]

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self.proc.stdin is None or self.proc.stdout is None:
            raise BenchError("targets helper started without pipes")
        return self.proc.stdin, self.proc.stdout

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        fd = self._pipes()[1].fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise BenchError(f"targets helper not answering: {tail(self.log)}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"targets helper exited: {tail(self.log)}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"targets helper: {reply['error']}")
        return reply

    def request(self, cmd: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send one command and return its reply."""
        stdin = self._pipes()[0]
        stdin.write(json.dumps(cmd).encode() + b"\n")
        stdin.flush()
        return self._read_line(timeout_s)

    def reset(self) -> None:
        self.request({"cmd": "reset"})

    def set_source(self, nbytes: int) -> None:
        self.request({"cmd": "set_source", "bytes": nbytes})

    def conns(self) -> list[dict[str, Any]]:
        return list(self.request({"cmd": "stats"})["conns"])

    def open_counts(self) -> dict[str, int]:
        """Connections of each kind open right now (since the last reset)."""
        return dict(self.request({"cmd": "open_counts"})["open"])

    def stop(self) -> None:
        with contextlib.suppress(BenchError, OSError, ValueError):
            self.request({"cmd": "quit"}, timeout_s=2.0)
        stop_process(self.proc)


def make_log_dir(keep: str | None) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The directory for relay and helper logs: the given one, or a temporary one."""
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="wsrouter-bench-")
    return Path(tmp.name), tmp
