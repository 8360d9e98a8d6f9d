#!/usr/bin/env python3
"""
atheris target: the token resolvers' parsing of client input
(resolvers/base.py, template.py, tokenfile.py): the token from query,
cookie, path or Host; the template resolver's value checks; websockify's
token file lines and HOST:PORT text; the token's redaction.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import (
        check_redaction,
        check_split_target,
        check_template,
        check_token_lines,
        check_token_of,
        resolve_request,
    )
    from fuzz.harness import run

#: Templates of each kind of placeholder, in host labels, ports and socket paths.
TEMPLATES = [
    "tcp://10.0.0.{query.n}:5900", "unix:///run/vnc/{token}.sock", "tcp://{query.host}.internal:5900",
    "unix:///run/{path}.sock", "tcp://vnc-{cookie.id}.example:{query.port}", "tcp://[::1]:59{header.x-display}",
    "tcp://{token}:{query.port}",
]
#: Text worth trying where client input goes.
PIECES = ["", "token", "..", "/", "a/b", "a:1", "%2F", "\0", "x\n", "[::1]", "host:22", "unix_socket:", "-", "_",
          "REDACTED", "5900", "99999"]


def _text(provider: atheris.FuzzedDataProvider, size: int) -> str:
    if provider.ConsumeBool():
        return str(provider.PickValueInList(PIECES))
    return str(provider.ConsumeUnicodeNoSurrogates(size))


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    surface = provider.ConsumeIntInRange(0, 4)
    if surface == 0:
        query = [(provider.PickValueInList(["token", "t", "n"]) if provider.ConsumeBool() else _text(provider, 8),
                  _text(provider, 30)) for _ in range(provider.ConsumeIntInRange(0, 3))]
        cookies = {"token": _text(provider, 30)} if provider.ConsumeBool() else {}
        check_token_of(query, cookies, "/" + _text(provider, 30), _text(provider, 30), provider.ConsumeBool())
    elif surface == 1:
        pattern = provider.PickValueInList(TEMPLATES)
        value = _text(provider, 70)
        other = _text(provider, 10)
        request = resolve_request([("n", value), ("host", other), ("port", _text(provider, 6)), ("token", value)],
                                  {"id": other}, "/" + value, "", [("x-display", _text(provider, 4))])
        check_template(pattern, request.with_token(value or None))
    elif surface == 2:
        check_token_lines(provider.ConsumeUnicodeNoSurrogates(400), provider.ConsumeIntInRange(0, 20))
    elif surface == 3:
        check_split_target(_text(provider, 60))
    else:
        check_redaction(_text(provider, 30), _text(provider, 20))


if __name__ == "__main__":
    run(one_input)
