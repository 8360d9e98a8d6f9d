"""
Tests for the wrapping, sandbox and operations defects a new-user trial
found (issues 11 and 13): each problem reported once, keys that would do
nothing refused, health of idle programs, clean-up after a failed start,
the sandbox environment, and quiet UDP sessions.
"""

from __future__ import annotations

import pytest

from wsrouter.cli.lower import options_to_raw
from wsrouter.config import ConfigError, build_config


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
