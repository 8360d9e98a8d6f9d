"""
Hot reload from the outside: SIGHUP makes the running router re-read its
config file and command line; C{wsrouter reload} finds the router and
sends it that signal.

Finding the router: C{wsrouter [serve]} writes its pid to
L{pidfile_path}(its C{--config} file), in C{$XDG_RUNTIME_DIR} or else
C{/tmp/wsrouter-UID/}; under twistd, give twistd's C{--pidfile} to
C{wsrouter reload --pidfile FILE}, or C{--pid PID}.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from wsrouter.config import ConfigError, RouterConfig

log = Logger(namespace="wsrouter")


class Reloadable(Protocol):
    """A service that applies a new config: fires when done, fails if part of it could not start."""

    def reload(self, config: RouterConfig) -> Deferred[None]: ...


def runtime_dir(environ: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if environ is None else environ
    return env.get("XDG_RUNTIME_DIR") or f"/tmp/wsrouter-{os.getuid()}"


def outcome_path(pid: int, environ: dict[str, str] | None = None) -> str:
    """Where the router with this pid writes the outcome of its last reload (for C{wsrouter reload})."""
    return os.path.join(runtime_dir(environ), f"wsrouter-{pid}.reload")


def pidfile_path(config_path: str | None, environ: dict[str, str] | None = None) -> str:
    """Where C{wsrouter serve --config CONFIG_PATH} keeps its pid: one file per config file."""
    runtime = runtime_dir(environ)
    key = os.path.abspath(config_path) if config_path else "(no config file)"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(runtime, f"wsrouter-{digest}.pid")


def write_pidfile(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


def remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError:
        pass


class Reloader:
    """
    Rebuilds the config (file and original command line, then start-up
    checks) and hands it to the service; a config that fails is refused
    with one log line naming every problem, and the running one stays.
    """

    def __init__(self, service: Reloadable, rebuild: Callable[[], RouterConfig],
                 outcome: Callable[[], str] | None = None):
        self._service = service
        self._rebuild = rebuild
        #: Where the outcome of each reload is written (see L{main_reload});
        #: asked each time, since twistd forks after the service is built.
        self.outcome = outcome
        self.attempts = 0

    def reload(self) -> bool:
        """@return: whether the new config was handed to the service."""
        self.attempts += 1
        try:
            config = self._rebuild()
        except ConfigError as e:
            problems = "; ".join(f"{e.source}: {key}: {problem}" for key, problem in e.problems)
            log.error("reload refused, keeping the running config: {problems}", problems=problems)
            self._tell(f"refused, keeping the running config: {problems}")
            return False
        log.info("reloading the config")
        applying = self._service.reload(config)
        applying.addCallbacks(self._applied, self._not_applied)
        return True

    def _applied(self, _: object) -> None:
        log.info("reload done: new config in use")
        self._tell("ok: new config taken")

    def _not_applied(self, reason: Failure) -> None:
        # The service has logged what failed; it keeps the parts that started.
        self._tell(f"partly applied: {reason.getErrorMessage()}")

    def _tell(self, text: str) -> None:
        if self.outcome is None:
            return
        path = self.outcome()
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path + ".new", "w") as f:
                f.write(f"{self.attempts}\n{text}\n")
            os.replace(path + ".new", path)
        except OSError as e:
            log.warn("cannot write the reload outcome to {path}: {error}", path=path, error=e.strerror)

    def install(self, reactor: Any) -> None:
        """Reload on SIGHUP (in the reactor thread, not in the signal handler)."""
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(self.reload))
        if self.outcome is not None:
            reactor.addSystemEventTrigger("after", "shutdown", self._forget)

    def _forget(self) -> None:
        if self.outcome is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.outcome())


class ReloadOptions(usage.Options):
    synopsis = "[--config FILE | --pidfile FILE | --pid PID]"
    longdesc = ("Tell the running router to re-read its config file and command line (SIGHUP). "
                "Without options, finds the router started without --config.")
    optParameters = [
        ["config", "c", None, "The router started with this --config FILE."],
        ["pidfile", None, None, "The pid file of the router (twistd's --pidfile)."],
        ["pid", None, None, "The router's process id."],
        ["wait", None, "10", "Seconds to wait for the router's answer (0: do not wait)."],
    ]

    def postOptions(self) -> None:
        given = [name for name in ("config", "pidfile", "pid") if self[name] is not None]
        if len(given) > 1:
            raise usage.UsageError(f"give one of --config, --pidfile, --pid, not {' and '.join(given)}")


def find_pid(options: ReloadOptions) -> int:
    """@raise LookupError: saying where it looked."""
    if options["pid"] is not None:
        pid = _process_id(str(options["pid"]))
        if pid is None:
            raise LookupError(f"--pid must be a process id, not {options['pid']!r}")
        return pid
    path = options["pidfile"] or pidfile_path(options["config"])
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise LookupError(f"no running router found: cannot read {path} ({e.strerror})") from None
    pid = _process_id(text)
    if pid is None:
        raise LookupError(f"{path} does not hold a process id")
    return pid


def _process_id(text: str) -> int | None:
    """C{text} as a process id, or C{None}: 0 and negatives would signal whole process groups."""
    if not (text.isascii() and text.isdigit()):
        return None
    pid = int(text)
    return pid if 0 < pid < 2**31 else None


def main_reload(argv: list[str]) -> int:
    options = ReloadOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(argv)  # type: ignore[no-untyped-call]
        pid = find_pid(options)
    except (usage.UsageError, LookupError) as e:
        print(f"wsrouter reload: {e}", file=sys.stderr)
        return 2
    try:
        wait = float(options["wait"])
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):
        print(f"wsrouter reload: --wait must be seconds, not {options['wait']!r}", file=sys.stderr)
        return 2
    outcome = outcome_path(pid)
    before = _read(outcome)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"wsrouter reload: no process {pid} (a stale pid file?)", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"wsrouter reload: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    if not wait:
        print(f"sent SIGHUP to the router (pid {pid}); its log says whether the new config was taken")
        return 0
    deadline = time.monotonic() + wait
    answer = _read(outcome)
    while answer == before and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = _read(outcome)
    if answer == before or answer is None:
        print(f"wsrouter reload: sent SIGHUP to pid {pid}, no answer within {wait:g} s; see the router's log",
              file=sys.stderr)
        return 1
    text = answer.split("\n", 1)[-1].strip()
    print(f"router (pid {pid}): reload {text}")
    return 0 if text.startswith("ok") else 1


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
