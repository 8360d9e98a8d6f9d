"""
A route's own cap on per-session instances (issue 13), beside the program's:
end to end with a real router and tests/programs/pid_server.py, and the
route key's checks.
"""

from __future__ import annotations

import json
import re

import pytest

from wsrouter.config import ConfigError, build_config, to_data

from .support import connect, handshake_status
from .test_instances import PID_SERVER, PYTHON, alive, banner, private_dirs, sockets_dir, start, wait_until

__all__ = ["sockets_dir"]  # the fixture, used by name


def two_routes(program_cap: int, route_cap: int) -> str:
    # Generous waits: a loaded machine may take seconds to start an instance (the default is 5 s).
    return ('[limits]\nhandshake_timeout = 30\n\n'
            f'[programs.inst]\nmode = "per-session"\ncommand = {json.dumps([PYTHON, PID_SERVER, "7000"])}\n'
            f'max_instances = {program_cap}\nready_timeout = 20\n\n'
            f'[[routes]]\npath = "/a"\ntarget = "program:inst"\nmax_instances = {route_cap}\n\n'
            '[[routes]]\npath = "/b"\ntarget = "program:inst"\n')


def test_route_cap_and_program_cap_each_give_503(tmp_path, sockets_dir):
    """Route /a's own cap of 1 refuses its second client while /b still starts instances, up to the program's 3."""
    router = start(tmp_path, two_routes(3, 1))
    try:
        with connect(f"{router.url}/a", open_timeout=30) as a1:
            pid_a = int(banner(a1)[1])
            status, body = handshake_status(f"{router.url}/a")
            assert status == 503 and b"route /a already runs 1 instances" in body
            with connect(f"{router.url}/b", open_timeout=30) as b1, connect(f"{router.url}/b", open_timeout=30) as b2:
                banner(b1), banner(b2)
                status, body = handshake_status(f"{router.url}/b")
                assert status == 503 and b"already runs 3 instances (max_instances)" in body
            a1.close()
            wait_until(lambda: not alive(pid_a), "the /a instance is stopped")
            wait_until(lambda: private_dirs(sockets_dir) == [], "every instance is reaped, its slot free")
            with connect(f"{router.url}/a", open_timeout=30) as a2:
                assert int(banner(a2)[1]) != pid_a
    finally:
        router.stop()


def config_with(route: dict[str, object], mode: str = "per-session") -> dict[str, object]:
    return {"programs": {"p": {"mode": mode, "command": ["srv"], "max_instances": 4}},
            "routes": [{"path": "/", "target": "program:p", **route}]}


def test_route_max_instances_round_trips():
    """A route's max_instances loads (also from a numeric string) and survives to_data."""
    config = build_config(config_with({"max_instances": "2"}))
    assert config.routes[0].max_instances == 2
    assert build_config(to_data(config)) == config


@pytest.mark.parametrize(("route", "mode", "problem"), [
    ({"max_instances": 0}, "per-session", "greater than 0"),
    ({"max_instances": 5}, "per-session", "more than the program's own max_instances (4)"),
    ({"max_instances": 2}, "respawn", "only for routes to a per-session program"),
])
def test_bad_route_max_instances(route, mode, problem):
    """A route cap that is not positive, exceeds the program's, or is on a shared program names its key path."""
    with pytest.raises(ConfigError) as caught:
        build_config(config_with(route, mode))
    assert problem in dict(caught.value.problems)["routes[0].max_instances"]


def test_route_max_instances_on_a_non_program_route():
    """max_instances on an exec route is a config error naming the key."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [{"path": "/", "target": "exec:cat", "max_instances": 1}]})
    assert "only for routes to a per-session program" in dict(caught.value.problems)["routes[0].max_instances"]


def test_filled_in_values_reach_the_instance_but_no_router_log_line_of_its_own(tmp_path, sockets_dir):
    """A {query.token} value reaches the instance's argv; only the session lines (the request URI) log it."""
    router = start(tmp_path, '[programs.inst]\nmode = "per-session"\n'
                   f'command = {json.dumps([PYTHON, PID_SERVER, "7000", "0", "{query.token}"])}\n\n'
                   '[[routes]]\npath = "/s"\ntarget = "program:inst"\n')
    try:
        with connect(f"{router.url}/s?token=Sekrit42value") as ws:
            assert banner(ws)[-1] == "Sekrit42value"  # the instance got it
    finally:
        router.stop()
    lines = [line for line in router.log().splitlines() if "Sekrit42value" in line]
    assert lines and all(re.search(r"\] session \S+ (open|closed): ", line) for line in lines), lines
    assert any("started inst.1" in line and "{query.token}" in line for line in router.log().splitlines())


def test_router_stop_with_an_on_demand_session_open_leaves_nothing(tmp_path, sockets_dir):
    """Stopping the router while an on-demand program serves a session stops it (by PID) and removes its directory."""
    router = start(tmp_path, '[programs.inst]\nmode = "respawn"\nstart = "on-demand"\nidle_stop = 600\n'
                   f'command = {json.dumps([PYTHON, PID_SERVER, "7000"])}\n\n'
                   '[[routes]]\npath = "/s"\ntarget = "program:inst"\n')
    with connect(f"{router.url}/s") as ws:
        pid = int(banner(ws)[1])
        assert alive(pid) and len(private_dirs(sockets_dir)) == 1
        assert router.stop() == 0
    assert not alive(pid) and private_dirs(sockets_dir) == []
