"""
Tests for the wrapping, sandbox and operations defects a new-user trial
found (issues 11 and 13): each problem reported once, keys that would do
nothing refused, health of idle programs, clean-up after a failed start,
the sandbox environment, and quiet UDP sessions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed

from wsrouter.cli.lower import options_to_raw
from wsrouter.config import ConfigError, Sandbox, WrappedTarget, build_config
from wsrouter.process.instances import make_program
from wsrouter.process.supervisor import Supervisor
from wsrouter.process.wrapped import ProgramNotFound, WrappedProgram

from .support import connect, router_process
from .test_instance_pool import lease_of, session
from .test_supervisor import FakeSystem


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A new 0700 directory with a short path (a Unix socket name must fit under it); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="wt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def problems_of(raw: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    return list(caught.value.problems)


# -- item 4: one error, not a misleading second one -------------------------------------


@pytest.mark.parametrize("sandbox, key", [({"user": "nobdy-xyz"}, "sandbox.j.user"),
                                          ({"memory": 10}, "sandbox.j.memory")])
def test_a_bad_sandbox_is_not_reported_again_by_its_program(sandbox, key):
    """A sandbox table that fails is the only problem listed, not also the program naming it."""
    raw = {"sandbox": {"j": sandbox}, "programs": {"p": {"mode": "respawn", "command": ["srv"], "sandbox": "j"}},
           "routes": [{"path": "/", "target": "program:p"}, {"path": "/e", "target": "exec:cat", "sandbox": "j"}]}
    assert [k for k, _ in problems_of(raw)] == [key]


def test_a_bad_program_is_not_reported_again_by_its_route():
    """A program table that fails is the only problem listed, not also the route naming it."""
    raw = {"programs": {"p": {"mode": "per-session", "start": "on-demand", "command": ["srv"]}},
           "routes": [{"path": "/", "target": "program:p"}]}
    assert [k for k, _ in problems_of(raw)] == ["programs.p.start"]


def test_a_missing_program_or_sandbox_is_still_reported():
    """A reference to a table that does not exist at all is still an error naming the reference."""
    raw = {"programs": {"p": {"mode": "respawn", "command": ["srv"], "sandbox": "nope"}},
           "routes": [{"path": "/", "target": "program:q"}]}
    assert {k for k, _ in problems_of(raw)} == {"programs.p.sandbox", "routes[0].target"}


@pytest.mark.parametrize("options, key", [
    ({"wrap-user": "nobdy-xyz"}, "sandbox.python3.user"),
    ({"wrap-memory": "10"}, "sandbox.python3.memory"),
    ({"wrap-start": "on-demand", "wrap": "per-session"}, "programs.python3.start"),
])
def test_one_command_line_mistake_gives_one_problem(options, key):
    """--wrap-user nobdy, --wrap-memory 10 and per-session with on-demand each give only their own problem."""
    raw = options_to_raw({"wrap": "respawn", **options, "short_form": ["23001"],
                          "program": ["python3", "-m", "http.server"]})
    assert [k for k, _ in problems_of(raw)] == [key]


# -- item 5: keys that would do nothing are errors ----------------------------------------


@pytest.mark.parametrize("extra, key, says", [
    ({"idle_stop": 5}, "idle_stop", 'applies only with start = "on-demand"'),
    ({"idle_stop": 300}, "idle_stop", 'applies only with start = "on-demand"'),
    ({"max_instances": 3}, "max_instances", 'applies only with mode = "per-session"'),
    ({"ready_timeout": 2}, "ready_timeout", 'applies only with mode = "per-session" or start = "on-demand"'),
    ({"command": ["srv", "--log", "/tmp/{session.id}.log"]}, "command", 'only with mode = "per-session"'),
    ({"command": ["srv", "{query.player}", "{instance}"]}, "command", "uses {query.player}, {instance}"),
])
def test_instance_keys_that_do_nothing_are_refused(extra, key, says):
    """Instance keys or a session field on a respawn program is an error naming where it applies."""
    raw = {"programs": {"p": {"mode": "respawn", "command": ["srv"], **extra}},
           "routes": [{"path": "/", "target": "program:p"}]}
    problems = problems_of(raw)
    assert [k for k, _ in problems] == [f"programs.p.{key}"] and says in problems[0][1]


def test_instance_keys_that_apply_and_literal_braces_pass():
    """The same keys pass where they apply, and {{ }} literal braces in a respawn command are no template."""
    build_config({"programs": {"o": {"mode": "respawn", "start": "on-demand", "idle_stop": 5, "ready_timeout": 2,
                                     "command": ["srv", "{{session.id}}"]},
                               "s": {"mode": "per-session", "max_instances": 3, "ready_timeout": 2,
                                     "command": ["srv", "{session.id}"]}},
                  "routes": [{"path": "/o", "target": "program:o"}, {"path": "/s", "target": "program:s"}]})


def test_a_respawn_program_built_in_python_is_held_to_the_same_rule():
    """A WrappedTarget made in Python with a non-default idle_stop on a respawn program is refused too."""
    with pytest.raises(ConfigError) as caught:
        WrappedTarget("respawn", ("srv",), idle_stop=5, max_instances=3)
    assert {k for k, _ in caught.value.problems} == {"idle_stop", "max_instances"}


def test_wrap_idle_stop_without_on_demand_is_refused():
    """--wrap respawn --wrap-idle-stop 5 is an error naming the key, not a silent no-op."""
    raw = options_to_raw({"wrap": "respawn", "wrap-idle-stop": "5", "short_form": ["23001"], "program": ["srv"]})
    assert [k for k, _ in problems_of(raw)] == ["programs.srv.idle_stop"]


# -- item 2: a failed start leaves no private socket directory -----------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the directory to nobody needs root")
def test_a_start_refused_by_the_sandbox_removes_its_private_directory(short_dir, monkeypatch):
    """XDG_RUNTIME_DIR closed to the sandbox user: the start fails with 'cannot enter' and its directory is gone."""
    runtime = short_dir
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    target = WrappedTarget("respawn", (sys.executable, "srv"), name="prog", sandbox=Sandbox(name="j", user="nobody"))
    clock, system = Clock(), FakeSystem()
    program = WrappedProgram(clock, target, supervisor=Supervisor(clock, spawner=system.spawn),
                             environ={"PATH": os.defpath}, shim=__file__)
    with pytest.raises(ProgramNotFound, match="cannot enter"):
        program.start()
    assert list(runtime.iterdir()) == [] and program.private_dir is None and system.spawned == []


# -- item 1: an idle on-demand program is healthy -------------------------------------------


def test_health_is_ok_for_idle_on_demand_and_per_session_programs_only():
    """Idle on-demand and session-less per-session programs are healthy (200); a respawn one that is down is 503."""
    from wsrouter.gateway import Gateway
    from wsrouter.ops.pages import OpsPages

    clock, system = Clock(), FakeSystem()
    supervisor = Supervisor(clock, spawner=system.spawn, signaller=system.signal_group)
    idle = WrappedTarget("respawn", (sys.executable, "srv"), name="od", start="on-demand", idle_stop=5,
                         socket="loopback")
    pool = WrappedTarget("per-session", (sys.executable, "srv"), name="ps", socket="loopback")
    always = WrappedTarget("respawn", (sys.executable, "srv"), name="web", socket="loopback")
    programs = [make_program(clock, target, supervisor=supervisor, environ={"PATH": os.defpath}, shim=__file__)
                for target in (idle, pool, always)]
    for program in programs[:2]:
        program.start()
    pages = OpsPages(Gateway(build_config({"routes": ["/e=echo:"], "ops": {"healthz": "/h"}}), clock), clock)
    pages.programs = lambda: programs
    assert pages.health() == (503, "unhealthy: wrapped program web is not running\n")
    programs[2].start()
    assert pages.health() == (200, "ok\n")
    lease = lease_of(programs[0].lease(session(idle)))  # type: ignore[attr-defined]
    assert programs[0].running and pages.health() == (200, "ok\n")
    system.exit(1, ProcessTerminated(exitCode=1))  # the on-demand program dies while a client holds it
    assert pages.health() == (503, "unhealthy: wrapped program od is not running\n")
    clock.advance(10)  # restarted (respawn)
    assert len(system.spawned) == 3 and pages.health() == (200, "ok\n")
    lease.release()
    clock.advance(5)  # idle stop
    system.exit(2, ProcessTerminated(signal=15))
    clock.advance(1)
    assert not programs[0].running and pages.health() == (200, "ok\n")
    pages.stop()


# -- item 3: wsrouter check makes the sandbox start-up checks ------------------------------


def test_check_refuses_a_sandbox_cwd_that_is_not_there(tmp_path):
    """wsrouter check exits 1 naming sandbox.j.cwd for a missing directory, as serve does; an existing one passes."""
    from wsrouter.cli.check import main_check

    config = tmp_path / "c.toml"
    route = '[[routes]]\npath = "/"\ntarget = "exec:cat"\nsandbox = "j"\n'
    config.write_text(f'[sandbox.j]\ncwd = "{tmp_path}/nonexist"\n' + route)
    out, err = io.StringIO(), io.StringIO()
    assert main_check([str(config)], out, err) == 1
    assert err.getvalue() == f"{config}: sandbox.j.cwd: no directory '{tmp_path}/nonexist' on this machine\n"
    config.write_text(f'[sandbox.j]\ncwd = "{tmp_path}"\n' + route)
    assert main_check([str(config)], io.StringIO(), io.StringIO()) == 0


# -- item 7: the sandbox's env allowlist is exactly what the command gets ------------------


def test_exec_in_a_sandbox_gets_only_the_allowlisted_environment(tmp_path, monkeypatch):
    """With env = ["PATH", "HTTP_*"] and LANG set for the router, env(1) in the sandbox prints only PATH and HTTP_*."""
    monkeypatch.setenv("LANG", "C.UTF-8")
    for name in ("LC_ALL", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "c.toml"
    config.write_text('pass_env = ["PATH", "LANG"]\n[sandbox.j]\nenv = ["PATH", "HTTP_*"]\n'
                      '[[routes]]\npath = "/env"\ntarget = "exec:env"\nsandbox = "j"\n')
    with router_process(tmp_path, "--config", str(config)) as router, connect(router.url + "/env") as ws:
        lines: list[str] = []  # one message per line of output
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = ws.recv(timeout=15)
                lines.append(message.decode() if isinstance(message, bytes) else message)
    names = {line.split("=", 1)[0] for line in lines if "=" in line}
    assert "PATH" in names and "HTTP_HOST" in names
    assert {name for name in names if name != "PATH" and not name.startswith("HTTP_")} == set()


# -- item 8: systemd without LISTEN_FDNAMES says so -----------------------------------------


@pytest.mark.parametrize("environ, says", [
    ({"LISTEN_FDS": "1"}, "systemd passed 1 socket(s) but no LISTEN_FDNAMES, which Twisted needs to adopt them: "
                          "give systemd-socket-activate --fdname NAME (in a .socket unit: FileDescriptorName=NAME)"),
    ({}, "systemd passed no socket"),
    ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, "no such socket among the 1 systemd passed (LISTEN_FDNAMES=web"),
])
def test_systemd_listener_problems_say_what_is_missing(environ, says):
    """A systemd: listener with no socket, no LISTEN_FDNAMES or a wrong name gets one line saying which."""
    from wsrouter.preflight import systemd_problem

    env = {**environ, "LISTEN_PID": str(os.getpid())} if environ else {}
    problem = systemd_problem("systemd:domain=INET:index=0", env)
    assert problem is not None and says in problem and "\n" not in problem


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_socket_activation_without_fdname_says_how_to_set_it(tmp_path):
    """systemd-socket-activate without --fdname: the router's start-up error names LISTEN_FDNAMES and --fdname."""
    import socket
    import subprocess

    from .support import PYTHON, REPO, child_env, free_port

    port = free_port()
    env = child_env()
    process = subprocess.Popen(
        [str(shutil.which("systemd-socket-activate")), f"--listen=127.0.0.1:{port}",
         f"--setenv=PYTHONPATH={env['PYTHONPATH']}", "--", PYTHON, "-m", "wsrouter",
         "--listen", "systemd:domain=INET:index=0", "--route", "/e=echo:"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        for _ in range(300):  # it binds at once; the router starts with the first connection
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
                break
            time.sleep(0.05)
        status = process.wait(30)  # the router refuses to start (exit status 2, as for any config error)
    finally:
        if process.poll() is None:
            process.terminate()
        output = process.communicate(timeout=15)[0].decode(errors="replace")
    assert status != 0 and "but no LISTEN_FDNAMES" in output and "--fdname NAME" in output, output
    assert "list index out of range" not in output


# -- item 9: a UDP session logs no Twisted port lines ---------------------------------------


def test_udp_sessions_log_no_twisted_port_lines(tmp_path):
    """Sessions to a private and a loopback UDP program and a udp:// target leave no 'starting on'/'protocol' lines."""
    from .test_udp_wrap import held_udp_port, udp_server

    with held_udp_port() as (_, port), held_udp_port() as (echo, echo_port):
        config = tmp_path / "c.toml"
        config.write_text(
            "".join(f'[programs.{where}]\nmode = "respawn"\ncommand = {json.dumps(udp_server(port, "--banner", "u:"))}'
                    f'\nprotocol = "udp"\nsocket = "{where}"\n' for where in ("private", "loopback"))
            + "".join(f'[[routes]]\npath = "/{name}"\ntarget = "program:{name}"\n' for name in ("private", "loopback"))
            + f'[[routes]]\npath = "/udp"\ntarget = "udp://127.0.0.1:{echo_port}"\n')
        echo.settimeout(15)
        with router_process(tmp_path, "--config", str(config)) as router:
            for where in ("private", "loopback", "private"):
                with connect(f"{router.url}/{where}") as ws:
                    ws.send(b"hi")
                    assert ws.recv(timeout=15) == b"u:hi"
            with connect(f"{router.url}/udp") as ws:
                ws.send(b"ping")
                data, sender = echo.recvfrom(100)
                echo.sendto(b"pong:" + data, sender)
                assert ws.recv(timeout=15) == b"pong:ping"
            time.sleep(0.5)  # the ports of the closed sessions are closed a reactor turn later
            log = router.log()
    assert log.count("session") >= 4, log  # the sessions are logged (so the log is the right one)
    noise = [line for line in log.splitlines()
             if re.search(r"Link.* starting on|Starting protocol|Stopping protocol|Port .* Closed\)", line)]
    assert noise == [], log
