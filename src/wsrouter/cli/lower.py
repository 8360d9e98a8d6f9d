"""
The command line lowered into the nested config schema (docs/config.md).

L{options_to_raw} is pure: parsed option values in, plain data out, the
same shape a TOML file gives, so the file and the command line are
validated by one function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from wsrouter.config import listener_from_short_form, program_name

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
    routes: list[Any] = list(options.get("routes") or ())  # route strings: the schema lowers them
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
    _table(raw, "compression", {"permessage_deflate": True if options.get("permessage-deflate") else None})
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
