"""
Start-up checks: what a valid config still needs from the machine (web
root, exec: commands and wrapped programs, recording directories, listener strings), all reported at
once in the config's `key: problem` form, by `wsrouter` and `twistd wsrouter`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from wsrouter.config import ConfigError, build_config, route_from_string
from wsrouter.preflight import check_or_raise, directory_problem, preflight

from .support import PYTHON, REPO, child_env, free_port

TWISTD = str(Path(PYTHON).parent / "twistd")


def nested(listen=None, web=None, record=None, routes=("/=echo:",)):
    """The schema for a few test settings; routes in the command-line language."""
    raw = {"routes": [route_from_string(text) for text in routes]}
    if listen is not None:
        raw["listen"] = listen
    if web is not None:
        raw["web"] = {"root": web}
    if record is not None:
        raw["recording"] = {"directory": record}
    return raw


def problems(**settings):
    """Every problem with the config: the config's own (lexical) ones, else the start-up checks'."""
    try:
        config = build_config(nested(**settings))
    except ConfigError as e:
        return e.problems
    return preflight(config, environ={"PATH": "/usr/bin:/bin"})


def test_a_good_config_has_no_problems(tmp_path):
    """A config the machine can serve passes."""
    assert problems(web=str(tmp_path), record=str(tmp_path / "rec"), routes=["/=exec:cat"]) == []


@pytest.mark.parametrize("listener", ["bogus:1", "tcp:notaport", "tcp:80:bogus=1"])
def test_listener_strings_are_parsed(listener):
    """A listener that is not a Twisted endpoint string is a problem naming it."""
    (problem,) = problems(listen=[listener])
    assert problem[0] == "listen[0]"
    assert repr(listener) in problem[1] or repr(listener.split(":")[0]) in problem[1]


def test_web_root_must_be_a_directory(tmp_path):
    """A web root that is missing or a file is a problem."""
    (tmp_path / "file").write_text("")
    assert problems(web=str(tmp_path / "missing")) == [
        ("web.root", f"{str(tmp_path / 'missing')!r} is not an existing directory")]
    assert problems(web=str(tmp_path / "file"))[0][0] == "web.root"


def test_exec_command_is_found_on_its_path(tmp_path):
    """An exec: command not on the PATH it will get is found at start-up, not per connection."""
    script = tmp_path / "not-executable"
    script.write_text("")
    found = problems(routes=["/a=exec:no-such-command-xyz", f"/b=exec:{script}", "/c=exec:cat"])
    assert [key for key, _ in found] == ["routes[0].target", "routes[1].target"]
    assert "command 'no-such-command-xyz' not found" in found[0][1]
    assert "is not executable" in found[1][1]


def test_exec_path_follows_route_env(tmp_path):
    """A route's env=PATH:... is the PATH its command is looked up on."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert problems(routes=[f"/[env=PATH:{tmp_path}]=exec:tool"]) == []
    assert problems(routes=["/=exec:tool"])[0][0] == "routes[0].target"


def test_wrapped_program_is_found(tmp_path):
    """A wrapped program missing from the router's PATH is a problem."""
    (problem,) = problems(routes=["/=wrap:respawn:no-such-program-xyz"])
    assert problem[0] == "routes[0].target" and "'no-such-program-xyz' not found" in problem[1]


def test_recording_directories_creatable_and_writable(tmp_path):
    """Recording directories (router-wide and per route) must be creatable and writable."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    found = problems(record=str(blocker / "sub"), routes=["/a=echo:", f"/b[record={blocker}]=echo:"])
    assert [key for key, _ in found] == ["recording.directory", "routes[1].record"]
    assert "is not a directory" in found[0][1]
    assert "exists and is not a directory" in found[1][1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory(tmp_path):
    """A directory without write permission is a problem."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "not writable" in (directory_problem(str(locked)) or "")
    assert "not writable" in (directory_problem(str(locked / "new")) or "")


def test_every_problem_at_once(tmp_path):
    """All problems are raised together, each on its own line."""
    config = build_config(nested(listen=["tcp:notaport"], web=str(tmp_path / "none"), routes=["/=exec:no-such-xyz"]))
    with pytest.raises(Exception) as raised:
        check_or_raise(config)
    text = str(raised.value)
    assert len(text.splitlines()) == 3 and "listen[0]" in text and "web.root" in text and "routes[0].target" in text


@pytest.mark.parametrize("runner", ["wsrouter", "twistd"])
def test_both_runners_report_problems_without_traceback(tmp_path, runner):
    """`wsrouter` and `twistd wsrouter` list every start-up problem and exit 2, without a traceback."""
    args = ["--listen", "tcp:notaport", "--web", str(tmp_path / "nonexistent"), "--route", "/=exec:no-such-command-xyz",
            "--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
    argv = ([TWISTD, "--nodaemon", "--pidfile=", "wsrouter", *args] if runner == "twistd"
            else [PYTHON, "-m", "wsrouter", *args])
    result = subprocess.run(argv, capture_output=True, check=False, text=True, env=child_env(), cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "listen[0]: not a Twisted endpoint string ('tcp:notaport'" in result.stderr
    assert "web.root:" in result.stderr
    assert "routes[0].target: command 'no-such-command-xyz' not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unwritable_directory_as_any_user(tmp_path, monkeypatch):
    """Without write permission (as the access check reports it), existing and new directories are problems."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    existing = tmp_path / "rec"
    existing.mkdir()
    assert directory_problem(str(existing)) == f"directory {str(existing)!r} is not writable"
    assert directory_problem(str(tmp_path / "new" / "deeper")) == (
        f"cannot create {str(tmp_path / 'new' / 'deeper')!r}: {str(tmp_path)!r} is not writable")


@pytest.mark.parametrize("runner, status", [("wsrouter", 2), ("twistd", 1)])
def test_unknown_endpoint_type_is_a_one_line_problem(runner, status):
    """`--listen bogus:1` is a config problem naming the key, no traceback (twistd exits 1 on usage errors)."""
    args = ["--listen", "bogus:1", "--route", "/=echo:"]
    argv = ([TWISTD, "--nodaemon", "--pidfile=", "wsrouter", *args] if runner == "twistd"
            else [PYTHON, "-m", "wsrouter", *args])
    result = subprocess.run(argv, capture_output=True, check=False, text=True, env=child_env(), cwd=REPO, timeout=60)
    output = result.stderr + result.stdout
    assert result.returncode == status
    assert "command line: listen[0]: unknown endpoint type 'bogus'" in output
    assert "Traceback" not in output
