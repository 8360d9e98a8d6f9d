"""
The sandbox's limits (issue 13): values checked when the configuration is
read, the --wrap-* rlimit options, and the log line naming the limit that
likely ended a program (unit, and end to end with a CPU-bound command).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

import pytest
from websockets.exceptions import ConnectionClosed

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.config import ConfigError, Sandbox, build_config
from wsrouter.process.sandbox import limit_hint

from .other_user import needs_root
from .support import connect, free_port
from .test_sandbox import SYSTEM_PYTHON, TCP_SERVER, as_other_user, router_with, toml_value, wait_for_log, write_config

__all__ = ["router_with"]  # the fixture, used by name


@pytest.mark.parametrize(("fields", "key", "problem"), [
    ({"memory": 4096}, "memory", "too small for any program to start"),
    ({"open_files": 2}, "open_files", "at least 3"),
    ({"open_files": 2**40}, "open_files", "fs.nr_open"),
    ({"cpu_seconds": 2**64}, "cpu_seconds", "at most 9223372036854775807"),
    ({"processes": 10}, "processes", "needs a user"),
])
def test_rlimit_values_are_checked(fields, key, problem):
    """Limits no program could run under, or the kernel would refuse, are config errors naming the key."""
    with pytest.raises(ConfigError) as caught:
        Sandbox(name="j", **fields)
    assert problem in dict(caught.value.problems)[key]


def test_sensible_limits_pass():
    """16 MiB of memory, 3 open files, processes with a user: accepted."""
    Sandbox(name="j", memory=16 * 2**20, open_files=3, processes=1, user="nobody", cpu_seconds=1)


def test_wrap_rlimit_options_make_the_programs_sandbox():
    """--wrap-memory, --wrap-cpu-seconds, --wrap-open-files and --wrap-processes fill its own sandbox, as numbers."""
    raw = options_to_raw({"wrap": "respawn", "wrap-user": "nobody", "wrap-memory": "268435456",
                          "wrap-cpu-seconds": "60", "wrap-open-files": "64", "wrap-processes": "8",
                          "program": ["srv", "--port", "9"]})
    assert raw["sandbox"] == {"srv": {"user": "nobody", "memory": 268435456, "cpu_seconds": 60, "open_files": 64,
                                      "processes": 8}}
    sandbox = build_config(raw).programs[0].sandbox
    assert sandbox is not None and (sandbox.memory, sandbox.processes) == (268435456, 8)
    alone = options_to_raw({"wrap": "respawn", "wrap-memory": "268435456", "program": ["srv"]})
    assert alone["sandbox"] == {"srv": {"memory": 268435456}} and alone["programs"]["srv"]["sandbox"] == "srv"
    with pytest.raises(ConfigError) as caught:
        build_config(options_to_raw({"wrap": "respawn", "wrap-memory": "lots", "program": ["srv"]}))
    assert "sandbox.srv.memory" in dict(caught.value.problems)
    with pytest.raises(LoweringError, match="--wrap-memory applies to the program"):
        options_to_raw({"wrap-memory": "1000000000", "short_form": ["8080", "localhost:5900"]})


@pytest.mark.parametrize(("sandbox", "code", "signum", "expected"), [
    (Sandbox(name="j", memory=2**28), 1, None, "limits address space to 268435456 bytes (memory)"),
    (Sandbox(name="j", memory=2**28), None, signal.SIGSEGV, "limits address space"),
    (Sandbox(name="j", memory=2**28), 0, None, None),
    (Sandbox(name="j", memory=2**28), None, signal.SIGTERM, None),
    (Sandbox(name="j", cpu_seconds=5, memory=2**28), None, signal.SIGKILL, "limits CPU time to 5 s"),
    (Sandbox(name="j", open_files=9), 1, None, None),
    (None, 1, None, None),
])
def test_limit_hint(sandbox, code, signum, expected):
    """The hint names the limit that fits how the program ended, and nothing for clean exits or other causes."""
    hint = limit_hint(sandbox, code, signum)
    assert hint == expected if expected is None else expected in (hint or "")


def test_cpu_limit_death_is_logged_naming_the_limit(tmp_path, router_with):
    """A command spinning past cpu_seconds is killed by the kernel; the router logs which limit did it."""
    spin = "exec:" + shlex.join([os.path.realpath(sys.executable), "-c", "while True: pass"])
    config = write_config(tmp_path, {"cpu_seconds": 1},
                          f'[[routes]]\npath = "/spin"\ntarget = {toml_value(spin)}\nsandbox = "jail"\n')
    router = router_with(config)
    with connect(f"{router.url}/spin") as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=30)
    wait_for_log(router, "killed by signal 9 (SIGKILL): the sandbox 'jail' limits CPU time to 1 s (cpu_seconds)")


@needs_root
@as_other_user
def test_program_named_without_a_slash_runs_as_nobody(tmp_path, router_with):
    """A sandboxed wrapped program given as `sh` (found on PATH after the switch to nobody) starts and serves."""
    port = free_port()
    server = shlex.join([SYSTEM_PYTHON, TCP_SERVER, "--host", "127.0.0.1", "--port", str(port), "--banner", "hi"])
    programs = (f'[programs.p]\nmode = "respawn"\ncommand = {toml_value(["sh", "-c", "exec " + server])}\n'
                'keep_env = true\nsandbox = "jail"\n')
    router = router_with(write_config(tmp_path, {"user": "nobody"},
                                      '[[routes]]\npath = "/p"\ntarget = "program:p"\n', programs))
    with connect(f"{router.url}/p") as ws:
        assert ws.recv(timeout=15) == b"hi\n"
    assert "ModuleNotFoundError" not in router.log()
