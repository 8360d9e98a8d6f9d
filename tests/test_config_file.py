"""
Tests for configuration files and the nested schema: every problem of a bad
file reported with the file, key path and problem; the command line combined
over a file; the normalised form round-tripping; and the model holding
objects built in Python to the rules a file is held to.
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wsrouter.cli.check import main_check
from wsrouter.config import (
    ConfigError,
    EchoTarget,
    ExecTarget,
    Framing,
    Lifetime,
    Limits,
    LogSettings,
    Recording,
    ReplayTarget,
    Route,
    RouterConfig,
    TcpTarget,
    UdpTarget,
    WebRoot,
    WrappedTarget,
    build_config,
    load_config,
    read_file,
    route_from_string,
    spec,
    to_data,
)
from wsrouter.config.emit import dumps

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "wsrouter.toml"
ROUTE = '[[routes]]\npath = "/"\ntarget = "echo:"\n'
TARGET_FORMS = ("tcp://HOST:PORT, HOST:PORT, tls://HOST:PORT, ws[s]://HOST:PORT/PATH, unix:///PATH, "
                "udp://HOST:PORT, unix-dgram:///PATH, "
                "exec:COMMAND, wrap:MODE:PROGRAM, program:NAME, replay:FILE[?speed=FACTOR], resolve:NAME, "
                "python:MODULE:FACTORY or echo:")

BAD_FILES = [
    pytest.param('workerz = 2\n' + ROUTE, ["workerz: unknown key (did you mean workers?)"], id="unknown-top-key"),
    pytest.param(ROUTE + '[[routes]]\npath = "/a"\ntarget = "tcp://h:1"\n[[routes]]\npath = "/b"\n'
                 'target = "exec:cat"\nframng = "line"\n',
                 ["routes[2].framng: unknown key (did you mean framing?)"], id="unknown-route-key"),
    pytest.param('[limits]\nzzz = 1\n' + ROUTE,
                 ["limits.zzz: unknown key (expected max_message_size, ping_interval, ping_timeout, "
                  "session_idle_timeout, handshake_timeout, connect_timeout, shutdown_grace, max_forks, "
                  "max_header_bytes, max_connections, max_connections_per_client, max_handshakes_per_client)"],
                 id="unknown-key-no-near-miss"),
    pytest.param('idle_timeout = 5\nrecord = "r"\n' + ROUTE,
                 ["idle_timeout: unknown key (did you mean limits.session_idle_timeout?)",
                  "record: unknown key (did you mean recording.directory?)"], id="flat-keys-of-old"),
    pytest.param('[limits]\nidle_timeout = 5\n' + ROUTE,
                 ["limits.idle_timeout: unknown key (did you mean session_idle_timeout?)"], id="renamed-limit"),
    pytest.param('[limit]\nmax_forks = 1\n' + ROUTE, ["limit: unknown key (did you mean limits?)"],
                 id="unknown-table"),
    pytest.param('listen = ["bogus:1"]\n' + ROUTE,
                 ["listen[0]: unknown endpoint type 'bogus' (expected tcp, tcp6, unix, ssl, systemd)"],
                 id="bogus-listener"),
    pytest.param('listen = "tcp:8080"\n' + ROUTE,
                 ["listen: must be a list of Twisted endpoint strings, not 'tcp:8080'"], id="listen-not-list"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "udp://127.0.0.1:53"\nframing = "line"\n',
                 ["routes[0].framing: is only for stream targets (tcp, unix, exec, program), not udp"],
                 id="framing-on-udp"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "unix-dgram:///run/log"\nframing = "line"\n',
                 ["routes[0].framing: is only for stream targets (tcp, unix, exec, program), not unix-dgram"],
                 id="framing-on-unix-dgram"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "echo:"\nframing = "line"\n',
                 ["routes[0].framing: is only for stream targets (tcp, unix, exec, program), not echo"],
                 id="framing-on-echo"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "replay:a.jsonl"\nframing = "binary"\n',
                 ["routes[0].framing: is only for stream targets (tcp, unix, exec, program), not replay"],
                 id="framing-on-replay"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "tcp://h:1"\nmax_forks = 2\n',
                 ["routes[0].max_forks: is only for exec targets"], id="max-forks-on-tcp"),
    pytest.param('[programs.p]\nmode = "respawn"\ncommand = "server --port 1"\n'
                 '[[routes]]\npath = "/"\ntarget = "program:p"\nenv = { A = "b" }\n',
                 ["routes[0].env: is only for exec targets"], id="env-on-program"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "exec:env"\nenv = { A = 1 }\n',
                 ["routes[0].env.A: must be a string, not 1"], id="env-value-not-string"),
    pytest.param('[programs.telnetd]\nmode = "respawn"\ncommand = ["telnetd"]\n'
                 '[[routes]]\npath = "/"\ntarget = "program:telnet"\n',
                 ["routes[0].target: no program 'telnet' in [programs] (did you mean telnetd?)"],
                 id="unknown-program"),
    pytest.param('[programs.p]\nports = "2023"\n' + ROUTE,
                 ["programs.p.mode: required", "programs.p.command: required"], id="program-required-keys"),
    pytest.param('[programs.p]\nmode = "restart"\ncommand = []\nports = "http"\nkeep_env = "yes"\n' + ROUTE,
                 ["programs.p.mode: must be respawn or ignore or exit or per-session, not 'restart'",
                  "programs.p.command: must be an executable and its arguments, not []",
                  "programs.p.ports: must be comma-separated port numbers or '*', not 'http'",
                  "programs.p.keep_env: must be true or false, not 'yes'"], id="program-bad-values"),
    pytest.param('[programs."a b"]\nmode = "exit"\ncommand = "x"\n' + ROUTE,
                 ["programs.a b: a program name must be letters, digits, '_', '.' or '-'"], id="program-bad-name"),
    pytest.param('[[routes]]\nsubprotocols = ["a"]\n',
                 ["routes[0].path: required", "routes[0].target: required"], id="route-required-keys"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "http://example.com:80"\n',
                 [f"routes[0].target: unknown target 'http://example.com:80'; use {TARGET_FORMS}"], id="bad-target"),
    pytest.param('[[routes]]\npath = "/"\ntarget = 5\n',
                 [f"routes[0].target: must be a target string ({TARGET_FORMS}), not 5"], id="target-not-string"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "tcp://h:0"\n',
                 ["routes[0].target: port must be a number from 1 to 65535, not '0'"], id="bad-port"),
    pytest.param('[[routes]]\npath = "/a/*/b"\ntarget = "echo:"\n',
                 ["routes[0].path: '*' is only allowed as a final '/*', not '/a/*/b'"], id="star-in-path"),
    pytest.param('[[routes]]\npath = "/"\ntarget = "tcp://h:1"\nframing = "separator:\\\\u20ac"\n',
                 ["routes[0].framing: separator '\\\\u20ac' must be bytes: plain characters or escapes like "
                  "\\n, \\0, \\x1e"], id="separator-not-bytes"),
    pytest.param('[[routes]]\npath = "/a"\ntarget = "echo:"\n[[routes]]\npath = "/a"\nsubprotocols = []\n'
                 'target = "exec:cat"\n', ["routes[1]: duplicates routes[0] (/a)"], id="duplicate-route"),
    pytest.param('workers = "many"\npass_env = "LANG"\nfollow_program_port = 1\n' + ROUTE,
                 ["pass_env: must be a list of environment variable names, not 'LANG'",
                  "follow_program_port: must be true or false, not 1",
                  "workers: must be a whole number greater than 0, not 'many'"], id="wrong-types"),
    pytest.param('[limits]\nmax_message_size = 0\nping_interval = -1\nhandshake_timeout = "soon"\n'
                 'max_forks = 1.5\n' + ROUTE,
                 ["limits.max_message_size: must be a whole number greater than 0, not 0",
                  "limits.ping_interval: must be a number greater than 0, not -1",
                  "limits.handshake_timeout: must be a number greater than 0, not 'soon'",
                  "limits.max_forks: must be a whole number greater than 0, not 1.5"], id="limits"),
    pytest.param('[lifetime]\nrun_once = "yes"\nstart_timeout = -1\n[log]\nlevel = "verbose"\nformat = "xml"\n'
                 'traffic = 1\n' + ROUTE,
                 ["lifetime.run_once: must be true or false, not 'yes'",
                  "lifetime.start_timeout: must be a number greater than 0, not -1",
                  "log.level: must be info or debug, not 'verbose'",
                  "log.traffic: must be true or false, not 1",
                  "log.format: must be text or json, not 'xml'"], id="lifetime-and-log"),
    pytest.param('[web]\nlisting = true\n[recording]\nformat = "mp4"\nmax_bytes = -1\nredact = [1]\n' + ROUTE,
                 ["web.root: required: the directory of static files to serve",
                  "recording.format: must be jsonl or asciicast, not 'mp4'",
                  "recording.max_bytes: must be a whole number greater than 0, not -1",
                  "recording.redact[0]: must be a request header name, not 1"], id="web-and-recording"),
    pytest.param('follow_program_port = true\n' + ROUTE,
                 ["follow_program_port: needs exactly one wrapped program, not 0"], id="follow-without-program"),
    pytest.param('listen = ["tcp:8080"]\n', ["routes: nothing to serve: give at least one route (or a web root)"],
                 id="nothing-to-serve"),
    pytest.param('workers = 2\nlisten = ["ssl:443"]\n' + ROUTE,
                 ["listen[0]: workers cannot share 'ssl:443'; with workers > 1 use tcp:..., tcp6:..., unix:... "
                  "listeners"], id="workers-need-shareable-listeners"),
    pytest.param('[[routes]]\npath = "/"\ntarget = echo:\n',
                 ["not valid TOML: Invalid value (at line 3, column 10)"], id="toml-syntax"),
]


@pytest.mark.parametrize("text, problems", BAD_FILES)
def test_bad_file_problems(tmp_path: Path, text: str, problems: list[str]) -> None:
    """A bad file is refused with exactly these lines, each naming the file, the key path and the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert str(caught.value).splitlines() == [f"{path}: {problem}" for problem in problems]


def test_all_problems_of_a_file_at_once(tmp_path: Path) -> None:
    """Problems in several tables and routes of one file are all reported together."""
    path = tmp_path / "bad.toml"
    path.write_text('workerz = 1\n[limits]\nping_interval = -1\n[[routes]]\npath = "x"\ntarget = "echo:"\n'
                    '[[routes]]\npath = "/b"\ntarget = "nowhere"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert [key for key, _ in caught.value.problems] == [
        "workerz", "limits.ping_interval", "routes[0].path", "routes[1].target"]


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file, not an OSError traceback."""
    with pytest.raises(ConfigError) as caught:
        read_file(str(tmp_path / "missing.toml"))
    assert str(caught.value) == f"{tmp_path / 'missing.toml'}: cannot read the configuration: No such file or directory"


# -- the same rules for objects built in Python -------------------------------------


@pytest.mark.parametrize("build, text, problem", [
    pytest.param(lambda: Route("/", UdpTarget("h", 1), framing=Framing("line")),
                 '[[routes]]\npath = "/"\ntarget = "udp://h:1"\nframing = "line"\n',
                 ("routes[0].framing", "is only for stream targets (tcp, unix, exec, program), not udp"),
                 id="route-framing"),
    pytest.param(lambda: Route("/", TcpTarget("h", 1), max_forks=2),
                 '[[routes]]\npath = "/"\ntarget = "tcp://h:1"\nmax_forks = 2\n',
                 ("routes[0].max_forks", "is only for exec targets"), id="route-max-forks"),
    pytest.param(lambda: Route("a", EchoTarget()), '[[routes]]\npath = "a"\ntarget = "echo:"\n',
                 ("routes[0].path", "must start with '/', not 'a'"), id="route-path"),
    pytest.param(lambda: Limits(ping_interval=-1), '[limits]\nping_interval = -1\n' + ROUTE,
                 ("limits.ping_interval", "must be a number greater than 0, not -1"), id="limits"),
    pytest.param(lambda: Lifetime(idle_exit=-2), '[lifetime]\nidle_exit = -2\n' + ROUTE,
                 ("lifetime.idle_exit", "must be a number greater than 0, not -2"), id="lifetime"),
    pytest.param(lambda: LogSettings(level="loud"), '[log]\nlevel = "loud"\n' + ROUTE,
                 ("log.level", "must be info or debug, not 'loud'"), id="log"),
    pytest.param(lambda: Recording(format="gif"), '[recording]\nformat = "gif"\n' + ROUTE,
                 ("recording.format", "must be jsonl or asciicast, not 'gif'"), id="recording"),
    pytest.param(lambda: WebRoot(""), '[web]\nroot = ""\n', ("web.root", "must be a directory, not ''"), id="web"),
    pytest.param(lambda: WrappedTarget("respawn", ("x",), ports="http", name="p"),
                 '[programs.p]\nmode = "respawn"\ncommand = ["x"]\nports = "http"\n' + ROUTE,
                 ("programs.p.ports", "must be comma-separated port numbers or '*', not 'http'"), id="program"),
    pytest.param(lambda: RouterConfig(listeners=("bogus:1",), routes=(Route("/", EchoTarget()),)),
                 'listen = ["bogus:1"]\n' + ROUTE,
                 ("listen[0]", "unknown endpoint type 'bogus' (expected tcp, tcp6, unix, ssl, systemd)"),
                 id="router"),
])
def test_python_objects_fail_like_files(tmp_path: Path, build: Any, text: str, problem: tuple[str, str]) -> None:
    """Building a model object in Python with a bad value fails with the problem the file reports."""
    with pytest.raises(ConfigError) as direct:
        build()
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as from_file:
        load_config(str(path), {})
    assert from_file.value.problems == [problem]
    assert [p for _, p in direct.value.problems] == [problem[1]]
    assert problem[0].endswith(direct.value.problems[0][0])


@pytest.mark.parametrize("build", [
    lambda: TcpTarget("h", 0),
    lambda: ExecTarget(()),
    lambda: ReplayTarget("a.jsonl", speed=0),
    lambda: Framing("fixed", length=0),
    lambda: Framing("zigzag"),
    lambda: Limits(max_message_size=True),
    lambda: RouterConfig(routes=(Route("/", EchoTarget()),), workers=0),
    lambda: RouterConfig(routes=()),
])
def test_model_refuses_bad_values(build: Any) -> None:
    """Each model class refuses a bad value when built directly, with a ConfigError."""
    with pytest.raises(ConfigError):
        build()


# -- the command line's route language and the file ------------------------------


@pytest.mark.parametrize("text, entry", [
    pytest.param("/vnc/*@binary=tcp://127.0.0.1:5900", {"path": "/vnc/*", "subprotocols": ["binary"],
                                                       "target": "tcp://127.0.0.1:5900"}, id="prefix-subprotocol"),
    pytest.param("/t[framing=line;max-forks=4;env=TERM:xterm;env=A:b:c]@tty=exec:login",
                 {"path": "/t", "target": "exec:login", "framing": "line", "max_forks": 4, "subprotocols": ["tty"],
                  "env": {"TERM": "xterm", "A": "b:c"}}, id="options"),
    pytest.param("/r[record=off]=replay:a.jsonl?speed=2", {"path": "/r", "target": "replay:a.jsonl?speed=2",
                                                          "record": "off"}, id="record"),
    pytest.param("/s[framing=separator:\\r\\n]=tcp://h:1", {"path": "/s", "target": "tcp://h:1",
                                                           "framing": "separator:\\r\\n"}, id="separator"),
    pytest.param("/w=wrap:respawn:telnetd -debug 2023", {"path": "/w", "target": "wrap:respawn:telnetd -debug 2023"},
                 id="wrap"),
])
def test_route_string_equals_file_entry(tmp_path: Path, text: str, entry: dict[str, Any]) -> None:
    """A command-line route string lowers to the routes[] entry, and gives the same Route as that entry in a file."""
    assert route_from_string(text) == entry
    path = tmp_path / "routes.toml"
    path.write_text(dumps({"routes": [entry]}))
    from_file = load_config(str(path), {})
    from_command_line = build_config({"routes": [route_from_string(text)]})
    assert from_file.routes == from_command_line.routes


@pytest.mark.parametrize("text, fragment", [
    ("/x", "expected PATH[[OPTIONS]][@SUBPROTOCOLS]=TARGET"),
    ("/x[framng=line]=echo:", "(did you mean framing?)"),
    ("/x[env=NOVALUE]=exec:env", "env must be NAME:VALUE"),
])
def test_route_string_syntax_errors(text: str, fragment: str) -> None:
    """A route string that cannot be lowered raises ValueError saying what is wrong."""
    with pytest.raises(ValueError) as caught:
        route_from_string(text)
    assert fragment in str(caught.value)


def test_program_route_and_programs_share_one_object() -> None:
    """A program:NAME route's target is the very WrappedTarget listed in programs."""
    config = build_config({"programs": {"t": {"mode": "respawn", "command": "telnetd -debug 2023", "ports": 2023}},
                           "routes": [{"path": "/a", "target": "program:t"}, {"path": "/b", "target": "program:t"}]})
    assert config.programs == (WrappedTarget("respawn", ("telnetd", "-debug", "2023"), "2023", name="t"),)
    assert config.routes[0].target is config.programs[0] and config.routes[1].target is config.programs[0]


def test_inline_programs_get_distinct_names() -> None:
    """Inline wrap: programs are named after their command, never a name already used; a repeat is one program."""
    config = build_config({
        "programs": {"server": {"mode": "exit", "command": ["other"]}},
        "routes": [route_from_string("/a=wrap:respawn:/usr/sbin/server -p 1"),
                   route_from_string("/b=wrap:respawn:server -p 2"),
                   route_from_string("/c=wrap:respawn:/usr/sbin/server -p 1")],
    })
    assert [(p.name, p.argv) for p in config.programs] == [
        ("server", ("other",)), ("server-2", ("/usr/sbin/server", "-p", "1")), ("server-3", ("server", "-p", "2"))]
    assert config.routes[0].target is config.routes[2].target


# -- normalised form -----------------------------------------------------------------


CONFIGS = [
    pytest.param({"routes": [{"path": "/", "target": "echo:"}]}, id="minimal"),
    pytest.param({"routes": [{"path": "/", "target": "echo:"}], "limits": {"ping_interval": 5, "ping_timeout": 0}},
                 id="ping-without-timeout"),
    pytest.param({"follow_program_port": True, "routes": [route_from_string("/*=wrap:exit:server --port 80")]},
                 id="follow-program-port"),
    pytest.param({"web": {"root": "www"}, "limits": {"ping_interval": 0.1, "ping_timeout": 7},
                  "lifetime": {"run_once": True, "start_timeout": 2.5, "idle_exit": 60},
                  "log": {"file": "a log", "level": "debug", "traffic": True},
                  "recording": {"directory": "r", "redact": ["X-A"], "max_bytes": 10},
                  "routes": [route_from_string(text) for text in (
                      "/a/*@x,y=tcp://[::1]:1", "/b=unix:///run/a b.sock", "/c=unix-dgram:///run/d",
                      "/d[framing=separator:\\x00\\\\\\x7f\"]=exec:sh -c 'echo \"hi\"'",
                      "/e[framing=fixed:3;max-forks=2;record=off;env=A:1]=exec:cat",
                      "/f=replay:a?b.jsonl?speed=0.3", "/g=echo:", "/h=udp://h:9")]},
                 id="everything"),
]


@pytest.mark.parametrize("raw", CONFIGS)
def test_round_trip(raw: dict[str, Any]) -> None:
    """to_data gives data that builds the same configuration, through JSON and through TOML alike."""
    config = build_config(raw)
    data = to_data(config)
    assert build_config(data) == config
    assert json.loads(json.dumps(data)) == data
    assert tomllib.loads(dumps(data)) == data


def test_example_round_trips() -> None:
    """The example file's configuration survives to_data and back."""
    config = load_config(str(EXAMPLE), {})
    assert build_config(to_data(config)) == config


def test_example_uses_every_key() -> None:
    """examples/wsrouter.toml sets every key of the schema, so it documents them all."""
    raw = read_file(str(EXAMPLE))
    assert set(raw) == set(spec.TOP_KEYS)
    for table, keys in [("limits", spec.LIMITS_KEYS), ("lifetime", spec.LIFETIME_KEYS), ("log", spec.LOG_KEYS),
                        ("web", spec.WEB_KEYS), ("recording", spec.RECORDING_KEYS),
                        ("compression", spec.COMPRESSION_KEYS), ("terminal", spec.TERMINAL_KEYS)]:
        assert set(raw[table]) == set(keys), table
    # idle_stop (on-demand) and max_instances (per-session) cannot both be in one program.
    assert set().union(*raw["programs"].values()) == set(spec.PROGRAM_KEYS)
    assert set().union(*raw["routes"]) == set(spec.ROUTE_KEYS)


def test_docs_name_every_key() -> None:
    """docs/config.md documents every key of the schema."""
    text = (REPO / "docs" / "config.md").read_text()
    for key in {*spec.TOP_KEYS, *spec.LIMITS_KEYS, *spec.LIFETIME_KEYS, *spec.LOG_KEYS, *spec.WEB_KEYS,
                *spec.RECORDING_KEYS, *spec.PROGRAM_KEYS, *spec.ROUTE_KEYS, *spec.TLS_KEYS, *spec.COMPRESSION_KEYS,
                *spec.TERMINAL_KEYS}:
        assert f"`{key}`" in text or f"`[{key}" in text or f"`[[{key}]]`" in text, key


# -- wsrouter check ------------------------------------------------------------------


def check(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main_check(argv, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_check_example_passes() -> None:
    """wsrouter check accepts the example and prints it normalised, as TOML that reads back to the same config."""
    status, out, err = check([str(EXAMPLE)])
    assert (status, err) == (0, "")
    assert build_config(tomllib.loads(out)) == load_config(str(EXAMPLE), {})


def test_check_lists_every_problem(tmp_path: Path) -> None:
    """wsrouter check exits 1 listing each problem as FILE: key.path: problem, with no traceback."""
    path = tmp_path / "bad.toml"
    path.write_text('workerz = 2\n[[routes]]\npath = "/"\ntarget = "udp://h:1"\nframing = "line"\n')
    status, out, err = check([str(path)])
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"{path}: workerz: unknown key (did you mean workers?)",
        f"{path}: routes[0].framing: is only for stream targets (tcp, unix, exec, program), not udp",
    ]


@pytest.mark.parametrize("argv", [[], ["a.toml", "b.toml"]])
def test_check_usage(argv: list[str]) -> None:
    """wsrouter check without exactly one file is a usage error (status 2)."""
    status, _out, err = check(argv)
    assert status == 2 and "usage: wsrouter check FILE" in err


def test_check_missing_file(tmp_path: Path) -> None:
    """wsrouter check on a missing file exits 1 naming it."""
    status, _, err = check([str(tmp_path / "none.toml")])
    assert status == 1 and str(tmp_path / "none.toml") in err


# -- file and command line combined -------------------------------------------------------


@pytest.fixture
def base_file(tmp_path: Path) -> str:
    path = tmp_path / "base.toml"
    path.write_text('listen = ["tcp:9000"]\nworkers = 2\n[limits]\nping_interval = 10\nmax_forks = 3\n'
                    '[[routes]]\npath = "/a"\ntarget = "echo:"\n[[routes]]\npath = "/b"\ntarget = "echo:"\n')
    return str(path)


def test_command_line_combined_over_file(base_file: str) -> None:
    """Command-line scalars win, its listen and routes come after the file's, and tables merge key by key."""
    config = load_config(base_file, {"workers": 3, "listen": ["tcp:9001"], "limits": {"max_forks": 5},
                                     "routes": [route_from_string("/c=echo:")]})
    assert config.workers == 3
    assert config.listeners == ("tcp:9000", "tcp:9001")
    assert (config.limits.ping_interval, config.limits.max_forks) == (10, 5)
    assert [route.path for route in config.routes] == ["/a", "/b", "/c"]


def test_file_alone_and_command_line_alone(base_file: str) -> None:
    """Without a command line the file decides; without a file the command line does."""
    assert load_config(base_file, {}).workers == 2
    assert load_config(None, {"routes": [route_from_string("/=echo:")]}).workers == 1


def test_problems_name_where_they_were_written(base_file: str) -> None:
    """Problems from the file name the file, the others the command line, with each one's own list index."""
    Path(base_file).write_text(Path(base_file).read_text() + '[[routes]]\npath = "/x"\ntarget = "echo:"\nfrmaing = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(base_file, {"limits": {"ping_timeout": -1}, "routes": [route_from_string("/d=nowhere")]})
    assert str(caught.value).splitlines() == [
        "command line: limits.ping_timeout: must be a number greater than 0, not -1",
        f"{base_file}: routes[2].frmaing: unknown key (did you mean framing?)",
        f"command line: routes[0].target: unknown target 'nowhere'; use {TARGET_FORMS}",
    ]


def test_command_line_route_duplicating_file_route(base_file: str) -> None:
    """A command-line route with a file route's path and subprotocols is an error naming both."""
    with pytest.raises(ConfigError) as caught:
        load_config(base_file, {"routes": [route_from_string("/c=echo:"), route_from_string("/b=exec:cat")]})
    assert str(caught.value).splitlines() == [f"command line: routes[1]: duplicates routes[1] in {base_file} (/b)"]


def test_check_as_a_process(tmp_path: Path) -> None:
    """Run as its own process, check exits 0 for the example, 1 with the problem list (no traceback) for a bad file."""
    import subprocess
    import sys

    from tests.support import child_env

    script = "import sys; from wsrouter.cli.check import main_check; sys.exit(main_check(sys.argv[1:]))"
    good = subprocess.run([sys.executable, "-c", script, str(EXAMPLE)], capture_output=True, check=False, text=True,
                          timeout=60, env=child_env())
    assert (good.returncode, good.stderr) == (0, "")
    assert tomllib.loads(good.stdout)["routes"]
    path = tmp_path / "bad.toml"
    path.write_text('listen = ["bogus:1"]\n')
    bad = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, check=False, text=True,
                         timeout=60, env=child_env())
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        f"{path}: listen[0]: unknown endpoint type 'bogus' (expected tcp, tcp6, unix, ssl, systemd)",
        f"{path}: routes: nothing to serve: give at least one route (or a web root)",
    ]
