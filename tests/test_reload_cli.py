"""
Hot reload wiring: SIGHUP re-reads the command line (and config file),
checks it and hands it to the service; `wsrouter reload` finds the running
router through its pid file and signals it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import globalLogPublisher

from wsrouter.cli.reload import (
    Reloader,
    ReloadOptions,
    find_pid,
    main_reload,
    pidfile_path,
    remove_pidfile,
    write_pidfile,
)
from wsrouter.cli.tap import ServeOptions, rebuild_config
from wsrouter.config import ConfigError, build_config, route_from_string

from .support import PYTHON, REPO, child_env, connect, free_port, wait_for_port


class FakeService:
    """Takes every config; C{failure} makes the next reload fail as a service does when a part cannot start."""

    def __init__(self) -> None:
        self.configs: list[object] = []
        self.failure: Exception | None = None

    def reload(self, config: object) -> Deferred[None]:
        self.configs.append(config)
        if self.failure is not None:
            return fail(self.failure)
        return succeed(None)


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_good_config_is_handed_to_the_service():
    """A config that builds and passes the checks reaches service.reload."""
    service = FakeService()
    config = build_config({"routes": [route_from_string("/=echo:")]})
    assert Reloader(service, lambda: config).reload() is True
    assert service.configs == [config]


def test_bad_config_is_refused_naming_every_problem(logged):
    """A config that fails is not handed over, and one log line names every problem."""
    service = FakeService()

    def rebuild():
        raise ConfigError([("routes[0]", "unknown target 'x'"), ("web.root", "'/nope' is not an existing directory")],
                          "reload")

    assert Reloader(service, rebuild).reload() is False
    assert service.configs == []
    (event,) = [e for e in logged if "reload refused" in e.get("log_format", "")]
    assert event["problems"] == ("reload: routes[0]: unknown target 'x'; "
                                 "reload: web.root: '/nope' is not an existing directory")


def test_rebuild_reads_the_command_line_again_and_checks_the_machine(tmp_path):
    """The rebuilt config comes from the original argv; a web root gone since start-up is refused."""
    web = tmp_path / "web"
    web.mkdir()
    options = ServeOptions()
    options.parseOptions(["--web", str(web), "--route", "/ws=echo:"])
    assert rebuild_config(options) == options["config"]
    web.rmdir()
    with pytest.raises(ConfigError, match=r"web\.root"):
        rebuild_config(options)


def test_pidfile_is_keyed_by_the_config_path(tmp_path, monkeypatch):
    """Each config file has its own pid file in XDG_RUNTIME_DIR; relative and absolute names agree."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    monkeypatch.chdir(tmp_path)
    assert pidfile_path("a.toml", env) == pidfile_path(str(tmp_path / "a.toml"), env)
    assert pidfile_path("a.toml", env) != pidfile_path("b.toml", env) != pidfile_path(None, env)
    assert os.path.dirname(pidfile_path(None, env)) == str(tmp_path)
    assert pidfile_path(None, {}).startswith(f"/tmp/wsrouter-{os.getuid()}/")


def test_pidfile_written_and_removed_only_by_its_owner(tmp_path):
    """The pid file holds this process's pid; remove_pidfile leaves another process's file alone."""
    path = str(tmp_path / "run" / "w.pid")
    write_pidfile(path)
    options = ReloadOptions()
    options.parseOptions(["--pidfile", path])
    assert find_pid(options) == os.getpid()
    with open(path, "w") as f:
        f.write("1\n")
    remove_pidfile(path)
    assert os.path.exists(path)


def test_reload_without_a_router_says_where_it_looked(tmp_path, capsys):
    """`wsrouter reload` with no router running names the pid file it tried, exit 2."""
    assert main_reload(["--pidfile", str(tmp_path / "none.pid")]) == 2
    assert "no running router found: cannot read" in capsys.readouterr().err


def test_outcome_is_written_for_wsrouter_reload(tmp_path):
    """Each reload attempt writes its numbered outcome where `wsrouter reload` waits for it."""
    path = str(tmp_path / "run" / "w.reload")
    reloader = Reloader(FakeService(), lambda: build_config({"routes": [route_from_string("/=echo:")]}),
                        outcome=lambda: path)
    reloader.reload()
    assert Path(path).read_text() == "1\nok: new config taken\n"

    def bad():
        raise ConfigError([("listen[0]", "bad")], "reload")

    Reloader(FakeService(), bad, outcome=lambda: path).reload()
    assert Path(path).read_text() == "1\nrefused, keeping the running config: reload: listen[0]: bad\n"


def test_reload_options_are_exclusive():
    """Only one way to find the router may be given."""
    with pytest.raises(Exception, match="give one of"):
        ReloadOptions().parseOptions(["--pid", "1", "--config", "a.toml"])


def test_wsrouter_reload_signals_the_running_router(tmp_path):
    """`wsrouter reload` finds the router by its pid file and prints the answer: a command line broken since
    start-up is refused, the old config stays."""
    web = tmp_path / "web"
    web.mkdir()
    port = free_port()
    runtime = tmp_path / "runtime"
    env = child_env(XDG_RUNTIME_DIR=str(runtime))
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "wsrouter", "--web", str(web), "--listen",
                                 f"tcp:{port}:interface=127.0.0.1", "--route", "/ws=echo:"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 15
        while not list(runtime.glob("wsrouter-*.pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        web.rmdir()
        result = subprocess.run([PYTHON, "-m", "wsrouter", "reload"], capture_output=True, check=False, text=True,
                                env=env, cwd=REPO, timeout=30)
        assert result.returncode == 1, result.stderr
        assert f"router (pid {proc.pid}): reload refused, keeping the running config" in result.stdout
        assert "web.root" in result.stdout
        text = log_path.read_text()
        assert "reload refused, keeping the running config" in text and "web.root" in text
        with connect(f"ws://127.0.0.1:{port}/ws") as ws:  # still serving the old config
            ws.send(b"still here")
            assert ws.recv(timeout=10) == b"still here"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert not list(runtime.glob("wsrouter-*.pid"))


def test_reload_finds_twistd_by_its_pidfile(tmp_path):
    """Under `twistd --pidfile FILE wsrouter`, `wsrouter reload --pidfile FILE` reaches the router and answers."""
    web = tmp_path / "web"
    web.mkdir()
    port = free_port()
    pidfile = tmp_path / "twistd.pid"
    env = child_env(XDG_RUNTIME_DIR=str(tmp_path / "runtime"))
    twistd = str(Path(PYTHON).parent / "twistd")
    with open(tmp_path / "router.log", "wb") as log:
        proc = subprocess.Popen([twistd, "--nodaemon", f"--pidfile={pidfile}", "wsrouter", "--web", str(web),
                                 "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/ws=echo:"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for_port(port)
        web.rmdir()
        result = subprocess.run([PYTHON, "-m", "wsrouter", "reload", "--pidfile", str(pidfile)],
                                capture_output=True, check=False, text=True, env=env, cwd=REPO, timeout=30)
        assert result.returncode == 1, result.stderr
        assert f"router (pid {proc.pid}): reload refused" in result.stdout and "web.root" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_outcome_says_when_part_of_a_reload_failed(tmp_path):
    """A reload the service could apply only in part is reported as such, with the service's reason."""
    path = str(tmp_path / "outcome")
    service = FakeService()
    service.failure = RuntimeError("cannot listen on tcp:1")
    Reloader(service, lambda: build_config({"routes": [route_from_string("/=echo:")]}), outcome=lambda: path).reload()
    with open(path) as f:
        assert f.read() == "1\npartly applied: cannot listen on tcp:1\n"


@pytest.mark.parametrize("pid", ["0", "-1", "²", "99999999999999999999999", "abc"])
def test_reload_refuses_what_is_not_one_process(tmp_path, pid):
    """`--pid` or a pid file holding 0, a negative, a non-ASCII digit or a huge number is refused in one line."""
    from wsrouter.cli.reload import ReloadOptions, find_pid

    options = ReloadOptions()
    options.parseOptions(["--pid", pid])
    with pytest.raises(LookupError, match="--pid must be a process id"):
        find_pid(options)
    pidfile = tmp_path / "router.pid"
    pidfile.write_text(pid + "\n")
    options = ReloadOptions()
    options.parseOptions(["--pidfile", str(pidfile)])
    with pytest.raises(LookupError, match="does not hold a process id"):
        find_pid(options)
