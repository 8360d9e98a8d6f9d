"""
The command line lowered into the nested config schema (docs/config.md).

L{options_to_raw} is pure: parsed option values in, plain data out, the
same shape a TOML file gives, so the file and the command line are
validated by one function.  (One exception: websockify's
C{--auth-source USER:PASSWORD} is bcrypt-hashed here, with a random salt,
so no plain password is ever part of a config.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from wsrouter.auth import hash_password
from wsrouter.config import WRAP_MODES, listener_from_short_form, program_name

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
    "max-header-bytes": "max_header_bytes",
    "max-connections": "max_connections",
    "max-connections-per-client": "max_connections_per_client",
    "max-handshakes-per-client": "max_handshakes_per_client",
}

#: Option name -> recording.KEY.
RECORDING_OPTIONS = {"record": "directory", "record-format": "format", "record-max-bytes": "max_bytes"}


#: Option name -> ops.KEY (the operator's pages, L{wsrouter.ops}).
OPS_OPTIONS = {"metrics": "metrics", "status": "status", "healthz": "healthz", "ops-auth": "auth"}


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
    if options.get("wrap-socket") is not None and not program:
        raise LoweringError("--wrap-socket applies to the program after --wrap MODE ... --; "
                            "in a config file use socket = \"loopback\" in [programs.NAME]")
    for name in ("wrap-user", "wrap-protocol", *SANDBOX_OPTIONS):
        if options.get(name) is not None and not program:
            raise LoweringError(f"--{name} applies to the program after --wrap MODE ... --; in a config file "
                                "use [sandbox.NAME] and protocol in [programs.NAME] (docs/sandbox.md)")
    token = _token_plugin(options)
    if token is not None:
        if program or mode or options.get("unix-target"):
            raise LoweringError("--token-plugin picks the target by token: give no program, --wrap or --unix-target "
                                "with it")
        _listen_alone(listen, short, "--token-plugin", "--token-plugin TokenFile --token-source tokens.txt")
        routes.append({"path": "/*", "target": "resolve:token"})
        raw["resolvers"] = {"token": token}
    elif program or mode:
        _lower_program(raw, listen, routes, short, program, mode, bool(options.get("wrap-keep-env")))
        if options.get("wrap-socket") is not None:
            raw["programs"][program_name(program)]["socket"] = options["wrap-socket"]
        _lower_wrap_sandbox(raw, program_name(program), options)
        raw["programs"][program_name(program)].update(_instance_options(options))
    elif any(options.get(name) is not None for name in INSTANCE_OPTIONS):
        raise LoweringError("--wrap-start, --wrap-idle-stop, --wrap-ready-timeout and --wrap-max-instances apply "
                            "to the program after --wrap MODE ... --; in a config file use [programs.NAME] keys")
    elif options.get("unix-target"):
        _listen_alone(listen, short, "--unix-target PATH", "--unix-target /run/app.sock")
        routes.append({"path": "/*", "target": "unix://" + os.path.abspath(options["unix-target"])})
    elif short:
        if len(short) != 2:
            raise LoweringError(_positional_problem("[HOST:]PORT TARGET_HOST:TARGET_PORT", short))
        listen.append(_short_listener(short[0]))
        routes.append({"path": "/*", "target": _ssl_target(short[1]) if options.get("ssl-target") else short[1]})
    if options.get("ssl-target") and not (short and len(short) == 2 and not program and not mode):
        raise LoweringError("--ssl-target applies to the short form's target; in a --route write tls://HOST:PORT")
    _lower_proxies(raw, listen, options)
    if listen:
        raw["listen"] = listen
    if routes:
        raw["routes"] = routes
    if options.get("pass_env"):
        raw["pass_env"] = list(options["pass_env"])
    if options.get("workers") is not None:
        raw["workers"] = options["workers"]
    if options.get("unknown-host") is not None:
        raw["unknown_host"] = options["unknown-host"]
    _table(raw, "limits", {key: options.get(option) for option, key in LIMIT_OPTIONS.items()})
    _security(raw, options)
    _table(raw, "recording", {key: options.get(option) for option, key in RECORDING_OPTIONS.items()})
    _table(raw, "compression", {"permessage_deflate": True if options.get("permessage-deflate") else None})
    _table(raw, "web", {"root": options.get("web"), "listing": True if options.get("web-listing") else None})
    _table(raw, "tls", tls_settings(options))
    _table(raw, "terminal", {"mount": options.get("terminal")})
    _table(raw, "lifetime", {
        "run_once": True if options.get("run-once") else None,
        "start_timeout": options.get("timeout"),
        "idle_exit": options.get("idle-timeout"),
    })
    _table(raw, "log", {
        "file": options.get("log-file"),
        "level": "debug" if options.get("verbose") or options.get("traffic") else None,
        "traffic": True if options.get("traffic") else None,
        "format": options.get("log-format"),
    })
    _table(raw, "ops", {key: options.get(option) for option, key in OPS_OPTIONS.items()})
    return raw


def _listen_alone(listen: list[str], short: tuple[str, ...], what: str, example: str) -> None:
    """
    Where a route C{/*} that names its own target listens: the positional
    C{[HOST:]PORT}, or the C{--listen} listeners (the route serves on each).
    """
    if len(short) == 1:
        listen.append(_short_listener(short[0]))
    elif short or not listen:
        raise LoweringError(f"{what} takes the listening [HOST:]PORT alone (no target), or --listen; e.g. "
                            f"{example} 8080, or {example} --listen tcp:8080:interface=127.0.0.1")


def _token_plugin(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """
    websockify's C{--token-plugin}, C{--token-source}, C{--host-token} (and
    C{--target-config FILE}, its older C{TokenFile}) as a C{[resolvers.token]} table.
    """
    plugin, source = options.get("token-plugin"), options.get("token-source")
    if options.get("target-config"):
        if plugin:
            raise LoweringError("--target-config is websockify's older --token-plugin TokenFile; give one of them")
        plugin, source = "TokenFile", os.path.abspath(options["target-config"])
    if not plugin:
        for name in ("token-source", "host-token"):
            if options.get(name):
                raise LoweringError(f"--{name} needs --token-plugin (as in websockify)")
        return None
    table: dict[str, Any] = {"plugin": plugin}
    if source is not None:
        table["source"] = source
    if options.get("host-token"):
        table["host_token"] = True
    return table


def _lower_proxies(raw: dict[str, Any], listen: list[str], options: Mapping[str, Any]) -> None:
    """--proxy-listen adds a listener and names it in proxy_protocol; --trusted-proxy fills trusted_proxies."""
    proxied = list(options.get("proxy_listen") or ())
    if proxied:
        listen.extend(proxied)
        raw["proxy_protocol"] = proxied
    if options.get("trusted_proxies"):
        raw["trusted_proxies"] = list(options["trusted_proxies"])


#: The C{[auth.NAME]} websockify's C{--auth-plugin BasicHTTPAuth} becomes.
WEBSOCKIFY_AUTH = "websockify"


def _security(raw: dict[str, Any], options: Mapping[str, Any]) -> None:
    """
    C{--origin-policy}, and websockify's C{--auth-plugin} with C{--auth-source}:
    C{ExpectOrigin "ORIGIN ..."} (the trusted origins) or C{BasicHTTPAuth
    user:password} (kept only as a bcrypt hash) or C{ClientCertCNAuth "CN
    ..."} (C{client_cert_names}), and C{--web-auth}.
    """
    plugin, source, policy = options.get("auth-plugin"), options.get("auth-source"), options.get("origin-policy")
    web_auth = bool(options.get("web-auth"))
    security: dict[str, Any] = {"origin": policy}
    kind = plugin.rsplit(".", 1)[-1] if plugin else None
    if plugin is None and source is not None:
        raise LoweringError("--auth-source needs --auth-plugin (ExpectOrigin, BasicHTTPAuth or ClientCertCNAuth)")
    if kind == "ExpectOrigin":
        if not source or not source.split():
            raise LoweringError('--auth-plugin ExpectOrigin needs --auth-source "ORIGIN [ORIGIN...]"')
        if policy is not None:
            raise LoweringError("--auth-plugin ExpectOrigin and --origin-policy both set the origin policy; give one")
        security["origin"] = source.split()
    elif kind == "BasicHTTPAuth":
        user, sep, password = (source or "").partition(":")
        if not sep or not user or not password:
            raise LoweringError("--auth-plugin BasicHTTPAuth needs --auth-source USER:PASSWORD")
        raw.setdefault("auth", {})[WEBSOCKIFY_AUTH] = {"users": [f"{user}:{hash_password(password)}"]}
        security["auth"] = WEBSOCKIFY_AUTH
        security["web_auth"] = WEBSOCKIFY_AUTH if web_auth else None
    elif kind == "ClientCertCNAuth":
        if not source or not source.split():
            raise LoweringError('--auth-plugin ClientCertCNAuth needs --auth-source "CN [CN...]"')
        if not options.get("verify-client"):
            raise LoweringError("--auth-plugin ClientCertCNAuth needs --verify-client (and --cafile)")
        raw.setdefault("auth", {})[WEBSOCKIFY_AUTH] = {"client_cert_names": source.split()}
        security["auth"] = WEBSOCKIFY_AUTH
        security["web_auth"] = WEBSOCKIFY_AUTH if web_auth else None
    elif plugin is not None:
        raise LoweringError(f"--auth-plugin {plugin}: not supported; wsrouter has ExpectOrigin, BasicHTTPAuth "
                            "and ClientCertCNAuth (and [auth.NAME] tables in a config file)")
    if web_auth and kind not in ("BasicHTTPAuth", "ClientCertCNAuth"):
        raise LoweringError("--web-auth needs --auth-plugin BasicHTTPAuth or ClientCertCNAuth "
                            "(or security.web_auth in a config file)")
    _table(raw, "security", security)


#: Option name -> tls.KEY (websockify's names).
TLS_OPTIONS = {"cert": "cert", "key": "key", "ssl-version": "min_version", "ssl-ciphers": "ciphers"}


def tls_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The C{[tls]} table of websockify's C{--cert}, C{--key}, C{--ssl-only}, C{--ssl-version}, C{--ssl-ciphers},
    C{--verify-client} and C{--cafile}."""
    values = {key: options.get(option) for option, key in TLS_OPTIONS.items()}
    values["ssl_only"] = True if options.get("ssl-only") else None
    values["verify_client"] = True if options.get("verify-client") else None
    values["cafile"] = options.get("cafile")
    return values


def _ssl_target(target: str) -> str:
    """websockify's C{--ssl-target}: the short form's C{HOST:PORT} spoken to over TLS."""
    if "://" in target:
        raise LoweringError(f"--ssl-target takes the short form's HOST:PORT, not {target!r}; or write tls://HOST:PORT")
    return "tls://" + target


def _table(raw: dict[str, Any], name: str, values: dict[str, Any]) -> None:
    given = {key: value for key, value in values.items() if value is not None}
    if given:
        raw[name] = given


def _short_listener(text: str) -> str:
    try:
        return listener_from_short_form(text)
    except ValueError as e:
        raise LoweringError(f"listen address: {e}") from None


def _lower_wrap_sandbox(raw: dict[str, Any], name: str, options: Mapping[str, Any]) -> None:
    """--wrap-user USER[:GROUP] (a sandbox of its own, named after the program) and --wrap-protocol."""
    if options.get("wrap-protocol") is not None:
        raw["programs"][name]["protocol"] = options["wrap-protocol"]
    user = options.get("wrap-user")
    sandbox: dict[str, Any] = {}
    if user is not None:
        user_name, _, group = str(user).partition(":")
        sandbox["user"] = int(user_name) if user_name.isdigit() else user_name
        if group:
            sandbox["group"] = int(group) if group.isdigit() else group
    for option, key in SANDBOX_OPTIONS.items():
        value = options.get(option)
        if value is not None:
            sandbox[key] = int(value) if str(value).isascii() and str(value).isdigit() else value
    if sandbox:
        raw["sandbox"] = {name: sandbox}
        raw["programs"][name]["sandbox"] = name


#: --wrap-* options for the common rlimits of the wrapped program's own sandbox, and their [sandbox.NAME] keys.
SANDBOX_OPTIONS = {"wrap-cpu-seconds": "cpu_seconds", "wrap-memory": "memory", "wrap-open-files": "open_files",
                   "wrap-processes": "processes"}
#: Options for a --wrap program's instances and on-demand start, and their [programs.NAME] keys.
INSTANCE_OPTIONS = {"wrap-start": "start", "wrap-idle-stop": "idle_stop", "wrap-ready-timeout": "ready_timeout",
                    "wrap-max-instances": "max_instances"}


def _instance_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: options[name] for name, key in INSTANCE_OPTIONS.items() if options.get(name) is not None}


def _lower_program(raw: dict[str, Any], listen: list[str], routes: list[Any], short: tuple[str, ...],
                   program: list[str], mode: Any, keep_env: bool) -> None:
    """C{--wrap MODE [[HOST:]PORT] -- PROGRAM ARGS}: a [programs.NAME] table and a route C{/*} to it."""
    if not program:
        raise LoweringError("--wrap needs the program after --, e.g. --wrap respawn -- telnetd -debug 2023")
    if len(short) > 1:
        # E.g. "PORT --wrap respawn -- prog": the options after PORT were not read as options.
        raise LoweringError(_positional_problem("[HOST:]PORT before --", short))
    if mode is None:
        raise LoweringError("a program after -- needs --wrap MODE (websockify: --wrap-mode MODE), "
                            f"MODE one of {', '.join(WRAP_MODES)}")
    ports = "*"
    if short:
        listen.append(_short_listener(short[0]))
        ports = short[0].rsplit(":", 1)[-1]
    elif not listen:
        raw["follow_program_port"] = True
    name = program_name(program)
    raw["programs"] = {name: {"mode": mode, "command": program, "ports": ports, "keep_env": keep_env}}
    routes.append({"path": "/*", "target": f"program:{name}"})


def _positional_problem(expected: str, short: tuple[str, ...]) -> str:
    """Too many positional arguments, saying so when some are options written after PORT (which ends the options)."""
    problem = f"expected {expected}, got {' '.join(short)}"
    misplaced = [arg for arg in short if arg.startswith("-")]
    if misplaced:
        problem += f": options ({', '.join(misplaced)}) go before [HOST:]PORT"
    return problem
