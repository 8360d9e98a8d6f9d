"""
The command line lowered into the nested config schema (docs/config.md).

L{options_to_raw} is pure: parsed option values in, plain data out, the
same shape a TOML file gives, so the file and the command line are
validated by one function.  L{nested_to_flat} is a temporary adapter to the
older flat C{build_config} input and goes once the nested loader lands.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import wsrouter.config as config_package
from wsrouter.config import WRAP_MODES, Route, WrappedTarget, listener_from_short_form

#: Option name -> limits.KEY.
LIMIT_OPTIONS = {
    "max-message-size": "max_message_size",
    "ping": "ping_interval",
    "ping-timeout": "ping_timeout",
    "session-idle-timeout": "session_idle_timeout",
    "handshake-timeout": "handshake_timeout",
    "connect-timeout": "connect_timeout",
    "shutdown-grace": "shutdown_grace",
    "max-forks": "max_forks",
}

#: Option name -> recording.KEY.
RECORDING_OPTIONS = {"record": "directory", "record-format": "format", "record-max-bytes": "max_bytes"}


class LoweringError(ValueError):
    """The command line cannot be said in the schema; the message says what to write."""


def route_entry(text: str) -> Any:
    """
    One C{--route} string as a routes[] entry: C{route_from_string} once the
    config package has it, else the string (which the flat builder reads).
    """
    lower = getattr(config_package, "route_from_string", None)
    return lower(text) if lower is not None else text


def program_name(argv: list[str]) -> str:
    """An automatic [programs.NAME] name from the program's file name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(argv[0])) if argv else ""
    return name or "program"


def options_to_raw(options: Mapping[str, Any]) -> dict[str, Any]:
    """
    Lower parsed serve options into the nested schema.

    C{options} maps option names (C{"max-message-size"}, ...) to their
    strings, C{None} when not given, plus C{listen}, C{routes},
    C{pass_env} (lists), C{program} (the argv after C{--}) and
    C{short_form} (the positional arguments).  Values stay strings:
    validation belongs to C{build_config}.

    @raise LoweringError: for a combination the schema cannot say.
    """
    raw: dict[str, Any] = {}
    listen = list(options.get("listen") or ())
    routes: list[Any] = [route_entry(text) for text in options.get("routes") or ()]
    short = tuple(options.get("short_form") or ())
    program = list(options.get("program") or ())
    mode = options.get("wrap")
    if program or mode:
        _lower_program(raw, listen, routes, short, program, mode, bool(options.get("wrap-keep-env")))
    elif options.get("unix-target"):
        if len(short) != 1:
            raise LoweringError("--unix-target PATH takes the listening [HOST:]PORT alone, e.g. "
                                "--unix-target /run/app.sock 8080")
        listen.append(_short_listener(short[0]))
        routes.append({"path": "/*", "target": "unix://" + os.path.abspath(options["unix-target"])})
    elif short:
        if len(short) != 2:
            raise LoweringError(f"expected [HOST:]PORT TARGET_HOST:TARGET_PORT, got {' '.join(short)}")
        listen.append(_short_listener(short[0]))
        routes.append({"path": "/*", "target": short[1]})
    if listen:
        raw["listen"] = listen
    if routes:
        raw["routes"] = routes
    if options.get("pass_env"):
        raw["pass_env"] = list(options["pass_env"])
    if options.get("workers") is not None:
        raw["workers"] = options["workers"]
    _table(raw, "limits", {key: options.get(option) for option, key in LIMIT_OPTIONS.items()})
    _table(raw, "recording", {key: options.get(option) for option, key in RECORDING_OPTIONS.items()})
    _table(raw, "web", {"root": options.get("web"), "listing": True if options.get("web-listing") else None})
    _table(raw, "lifetime", {
        "run_once": True if options.get("run-once") else None,
        "start_timeout": options.get("timeout"),
        "idle_exit": options.get("idle-timeout"),
    })
    _table(raw, "log", {
        "file": options.get("log-file"),
        "level": "debug" if options.get("verbose") or options.get("traffic") else None,
        "traffic": True if options.get("traffic") else None,
    })
    return raw


def _table(raw: dict[str, Any], name: str, values: dict[str, Any]) -> None:
    given = {key: value for key, value in values.items() if value is not None}
    if given:
        raw[name] = given


def _short_listener(text: str) -> str:
    try:
        return listener_from_short_form(text)
    except ValueError as e:
        raise LoweringError(f"listen address: {e}") from None


def _lower_program(raw: dict[str, Any], listen: list[str], routes: list[Any], short: tuple[str, ...],
                   program: list[str], mode: Any, keep_env: bool) -> None:
    """C{--wrap MODE [[HOST:]PORT] -- PROGRAM ARGS}: a [programs.NAME] table and a route C{/*} to it."""
    if not program:
        raise LoweringError("--wrap needs the program after --, e.g. --wrap respawn -- telnetd -debug 2023")
    if mode is None:
        raise LoweringError("a program after -- needs --wrap MODE (websockify: --wrap-mode MODE), "
                            "MODE one of respawn, ignore, exit")
    if len(short) > 1:
        raise LoweringError(f"expected [HOST:]PORT before --, got {' '.join(short)}")
    ports = "*"
    if short:
        listen.append(_short_listener(short[0]))
        ports = short[0].rsplit(":", 1)[-1]
    elif not listen:
        raw["follow_program_port"] = True
    name = program_name(program)
    raw["programs"] = {name: {"mode": mode, "command": program, "ports": ports, "keep_env": keep_env}}
    routes.append({"path": "/*", "target": f"program:{name}"})


# -- temporary: the flat build_config input of today ---------------------------------


def nested_to_flat(raw: Mapping[str, Any]) -> dict[str, Any]:
    """
    The nested schema as today's flat C{build_config} input (C{lifetime}
    and C{log} are not part of it: the command line reads them itself).
    """
    flat: dict[str, Any] = {key: raw[key] for key in ("listen", "workers", "pass_env") if key in raw}
    if raw.get("follow_program_port"):
        flat["follow_wrapped_port"] = True
    for key, value in raw.get("limits", {}).items():
        flat["idle_timeout" if key == "session_idle_timeout" else key] = value
    web = raw.get("web", {})
    if "root" in web:
        flat["web"] = web["root"]
    if web.get("listing"):
        flat["web_listing"] = True
    recording = raw.get("recording", {})
    for key, flat_key in (("directory", "record"), ("format", "record_format"),
                          ("max_bytes", "record_max_bytes"), ("redact", "record_redact")):
        if key in recording:
            flat[flat_key] = recording[key]
    programs = raw.get("programs", {})
    flat["routes"] = [_flat_route(entry, programs) for entry in raw.get("routes", ())]
    return flat


def _flat_route(entry: Any, programs: Mapping[str, Any]) -> Any:
    if not isinstance(entry, Mapping):
        return entry
    target = str(entry.get("target", ""))
    if target.startswith("program:") and target[len("program:"):] in programs:
        program = programs[target[len("program:"):]]
        if program.get("mode") not in WRAP_MODES:
            return f"{entry['path']}=wrap:{program.get('mode')}:{shlex.join(program['command'])}"
        wrapped = WrappedTarget(program["mode"], tuple(program["command"]), ports=program.get("ports", "*"),
                                keep_env=bool(program.get("keep_env")))
        path = str(entry["path"])
        return Route(path=path[:-1] if path.endswith("/*") else path, prefix=path.endswith("/*"), target=wrapped)
    path = str(entry.get("path", ""))
    return f"{path}={target}"
