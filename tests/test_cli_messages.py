"""
Command-line mistakes a new user makes get one line that says what to write instead: the modes a program
after -- may run in, options written after PORT, and options twistd's plugin does not take.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from wsrouter.cli.lower import LoweringError, options_to_raw
from wsrouter.config import WRAP_MODES

from .support import PYTHON, REPO, child_env


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, check=False, text=True, env=child_env(), cwd=REPO, timeout=60)


def test_program_without_wrap_lists_every_mode() -> None:
    """`wsrouter PORT -- prog` (no --wrap) names every wrap mode, per-session included, in the config's order."""
    with pytest.raises(LoweringError) as raised:
        options_to_raw({"program": ["prog"], "short_form": ("22300",)})
    assert str(raised.value).endswith("MODE one of " + ", ".join(WRAP_MODES))
    assert "per-session" in WRAP_MODES


@pytest.mark.parametrize(("short", "expected"), [
    (("22201", "--wrap-max-instances", "1"), "options (--wrap-max-instances) go before [HOST:]PORT"),
    (("22201", "22202"), None),
])
def test_positional_after_port_says_where_options_go(short: tuple[str, ...], expected: str | None) -> None:
    """Extra arguments after the wrap form's PORT say that options go before PORT, when some are options."""
    with pytest.raises(LoweringError) as raised:
        options_to_raw({"wrap": "per-session", "program": ["prog"], "short_form": short})
    message = str(raised.value)
    assert message.startswith(f"expected [HOST:]PORT before --, got {' '.join(short)}")
    assert (expected in message) if expected else "go before" not in message


def test_short_form_with_option_after_target() -> None:
    """`wsrouter PORT HOST:PORT --verbose` says the option goes before PORT."""
    with pytest.raises(LoweringError, match=re.escape("options (--verbose) go before [HOST:]PORT")):
        options_to_raw({"short_form": ("8080", "127.0.0.1:5900", "--verbose")})


def test_misplaced_option_is_one_line() -> None:
    """The command as the trial user typed it stops with exit 2 and one problem line, no traceback."""
    result = run([PYTHON, "-m", "wsrouter", "--wrap", "per-session", "22201", "--wrap-max-instances", "1", "--",
                  "cat"])
    assert result.returncode == 2
    problem = result.stderr.splitlines()[0]
    assert problem.endswith("options (--wrap-max-instances) go before [HOST:]PORT"), result.stderr
    assert "Traceback" not in result.stderr


TWISTD = str(Path(PYTHON).parent / "twistd")


@pytest.mark.parametrize(("argv", "problem"), [
    (["--log-format", "json"], "--log-format json: under twistd, give twistd's own --logger "
                               "wsrouter.ops.logformat.json_logger before 'wsrouter'"),
    (["--no-such-option"], "option --no-such-option not recognized"),
    (["--wrap", "per-session", "22201", "--wrap-max-instances", "1", "--", "cat"], "go before [HOST:]PORT"),
])
def test_twistd_mistake_is_the_problem_not_the_option_list(argv: list[str], problem: str) -> None:
    """Under twistd a bad option prints the problem after a pointer to --help, not ~100 lines of options."""
    result = run([TWISTD, "-n", "--pidfile=", "wsrouter", *argv])
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[:2] == ["Usage: twistd [options]", "(twistd -n wsrouter --help lists the options)"], lines
    assert len(lines) == 3 and lines[2].endswith(problem), lines


def test_twistd_help_still_lists_the_options() -> None:
    """`twistd -n wsrouter --help` still prints the whole option list."""
    result = run([TWISTD, "-n", "wsrouter", "--help"])
    assert result.returncode == 0 and "--log-format" in result.stdout and len(result.stdout.splitlines()) > 50


def test_wrap_written_after_port_says_where_it_goes() -> None:
    """`wsrouter PORT --wrap respawn -- prog` says --wrap goes before PORT, not that --wrap is missing."""
    with pytest.raises(LoweringError) as raised:
        options_to_raw({"program": ["prog"], "short_form": ("25011", "--wrap", "respawn")})
    message = str(raised.value)
    assert "options (--wrap) go before [HOST:]PORT" in message and "needs --wrap" not in message
