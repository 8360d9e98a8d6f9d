"""
Tests for the wrapping, sandbox and operations defects a new-user trial
found (issues 11 and 13): each problem reported once, keys that would do
nothing refused, health of idle programs, clean-up after a failed start,
the sandbox environment, and quiet UDP sessions.
"""

from __future__ import annotations

import pytest

from wsrouter.cli.lower import options_to_raw
from wsrouter.config import ConfigError, WrappedTarget, build_config


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
